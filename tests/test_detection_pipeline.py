"""Detection system: window features, scale selection, caching, R-CNN, bad input, end to end."""

from __future__ import annotations

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sppnet_jax import models, ops
from sppnet_jax import workdir as workdir_lib
from sppnet_jax.compile_count import count_compiles
from sppnet_jax.detection import data as det_data
from sppnet_jax.detection import features as feats
from sppnet_jax.detection import cache, pipeline, rcnn, timing
from sppnet_jax.detection import svm as svm_lib, system as system_lib
from sppnet_jax.detection.config import detection_config
from sppnet_jax.detection.system import DetectionSystem


@pytest.fixture(scope="module")
def net():
  model = models.create_model("zf5", num_classes=3, width=0.125, fc_width=32)
  params = model.init(jax.random.key(0), jnp.zeros((1, 96, 96, 3)))["params"]
  return model, params


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------- scale selection

def test_select_scales_hand_computed():
  hw, scales = (300, 400), (100, 200, 300)
  windows = np.array([
      [0, 0, 99, 99],     # area 1e4: scaled areas 1111, 4444, 10000 -> the largest scale
      [0, 0, 399, 299],   # area 1.2e5: 13333, 53333, 120000 -> |53333 - 50176| smallest -> 200
      [0, 0, 299, 299],   # area 9e4: 10000, 40000, 90000 -> |40000 - 50176| = 10176 < 39824 -> 200
  ], np.float32)
  assert feats.select_scales(windows, hw, scales, 224.0, "area").tolist() == [2, 1, 1]
  # The released code's rule: expected s = 224 * 300 / sqrt(area) = 672, 194, 224.
  assert feats.select_scales(windows, hw, scales, 224.0, "side").tolist() == [2, 1, 1]
  # Where the rules differ: a 128 x 128 window, scales (300, 700). Area rule: scaled areas 16384 and
  # 89180, distances to 50176 are 33792 and 39004 -> 300. Side rule: expected 224 * 300 / 128 = 525,
  # distances 225 and 175 -> 700.
  w = np.array([[0, 0, 127, 127]], np.float32)
  assert feats.select_scales(w, hw, (300, 700), 224.0, "area").tolist() == [0]
  assert feats.select_scales(w, hw, (300, 700), 224.0, "side").tolist() == [1]
  # Ties pick the first scale: expected side 200 is equidistant from 100 and 300.
  w = np.array([[0, 0, 335, 335]], np.float32)  # 224 * 300 / 336 = 200
  assert feats.select_scales(w, hw, (100, 300), 224.0, "side").tolist() == [0]


def test_scale_windows_maps_pixel_centres():
  w = np.array([[0, 0, 399, 299], [100, 50, 200, 150]], np.float32)
  out = feats.scale_windows(w, (300, 400), (600, 800))
  np.testing.assert_allclose(out[0], [0, 0, 799, 599], atol=1e-4)
  np.testing.assert_allclose(out[1], np.array([100, 50, 200, 150]) * np.array([799 / 399, 599 / 299] * 2), atol=1e-3)


# ------------------------------------------------------------------------------------- features

def test_window_features_match_spp_of_the_conv_crop(net):
  model, params = net
  settings = feats.FeatureSettings(scales=(96, 160), target_side=80.0, window_batch=4)
  image = _image(120, 170)
  windows = np.array([[0, 0, 169, 119], [10, 20, 80, 90], [50, 50, 60, 60], [100, 30, 160, 110], [5, 5, 40, 100]],
                     np.float32)
  wf = feats.window_features(model, params, image, windows, settings)
  assert wf.pool5.shape == (5, ops.spp_output_dim(32, settings.levels)) and wf.fc7.shape == (5, 32)
  assert set(wf.scale_index.tolist()) == {0, 1}  # both scales used
  geometry = models.geometry(model.layers)
  for r, (window, s_idx) in enumerate(zip(windows, wf.scale_index)):
    x, hw = feats.prepare_image(image, settings.scales[s_idx], settings)
    conv = model.apply({"params": params}, jnp.asarray(x[None, :hw[0], :hw[1]]), method=models.SPPNet.conv_features)
    scaled = feats.scale_windows(window[None], image.shape[:2], hw)[0]
    # Hand projection with the appendix rule: left = floor((x - o) / S) + 1, right = ceil((x - o) / S) - 1.
    s, o = geometry.stride, geometry.offset
    cells = []
    for lo, hi, size in ((scaled[0], scaled[2], conv.shape[2]), (scaled[1], scaled[3], conv.shape[1])):
      a, b = np.floor((lo - o) / s) + 1, np.ceil((hi - o) / s) - 1
      if a > b:
        a = b = np.floor(((lo + hi) / 2 - o) / s + 0.5)
      cells.append((int(np.clip(a, 0, size - 1)), int(np.clip(b, 0, size - 1))))
    (x1, x2), (y1, y2) = cells
    expected = np.asarray(ops.spp(conv[:, y1:y2 + 1, x1:x2 + 1], settings.levels))[0]
    # The padded-bucket conv and the exact-size conv differ only by float rounding.
    np.testing.assert_allclose(wf.pool5[r], expected, rtol=1e-4, atol=1e-5)
  head = model.apply({"params": params}, jnp.asarray(wf.pool5), return_fc7=True, method=models.SPPNet.classify)
  np.testing.assert_allclose(wf.fc7, np.asarray(head), rtol=1e-5, atol=1e-5)


def test_padded_window_batches_equal_unpadded(net):
  model, params = net
  image = _image(100, 130, 1)
  windows = np.array([[0, 0, 129, 99], [10, 10, 70, 60], [30, 40, 90, 95]], np.float32)
  exact = feats.window_features(model, params, image, windows, feats.FeatureSettings(scales=(96,), window_batch=3))
  padded = feats.window_features(model, params, image, windows, feats.FeatureSettings(scales=(96,), window_batch=8))
  chunked = feats.window_features(model, params, image, windows, feats.FeatureSettings(scales=(96,), window_batch=2))
  np.testing.assert_array_equal(exact.pool5, padded.pool5)
  np.testing.assert_array_equal(exact.pool5, chunked.pool5)
  # the fc layers' matrix products sum in an order that follows the window batch: equal to float rounding
  np.testing.assert_allclose(exact.fc7, padded.fc7, rtol=1e-5, atol=1e-5)


def test_no_recompile_for_another_image_size_in_the_same_bucket(net):
  model, params = net
  settings = feats.FeatureSettings(scales=(96,), window_batch=4, size_multiple=64)
  first = _image(100, 130, 2)  # resized to 96 x 125 -> bucket 128 x 128
  second = _image(90, 110, 3)  # resized to 96 x 117 -> the same bucket
  windows = np.array([[0, 0, 50, 50], [10, 10, 80, 80]], np.float32)
  feats.window_features(model, params, first, windows, settings)
  more = np.concatenate([windows, [[5, 5, 60, 40], [0, 0, 109, 89], [20, 30, 40, 50]]]).astype(np.float32)
  with count_compiles() as compiles:
    feats.window_features(model, params, second, more, settings)
  assert sum(compiles.values()) == 0, compiles


def test_empty_and_bad_windows(net):
  model, params = net
  settings = feats.FeatureSettings(scales=(96,), window_batch=4)
  image = _image(100, 130)
  empty = feats.window_features(model, params, image, np.zeros((0, 4)), settings)
  assert empty.pool5.shape == (0, ops.spp_output_dim(32, settings.levels)) and empty.fc7.shape == (0, 32)
  with pytest.raises(ValueError, match="inverted"):
    feats.window_features(model, params, image, np.array([[50, 10, 20, 40]]), settings)
  raw = np.array([[-20, -20, 40, 40], [50, 10, 20, 40], [200, 200, 300, 300], [0, 0, np.nan, 5], [10, 10, 500, 99]])
  kept, rows = feats.sanitize_windows(raw, 100, 130)
  assert rows.tolist() == [0, 4]
  np.testing.assert_array_equal(kept, [[0, 0, 40, 40], [10, 10, 129, 99]])
  with pytest.raises(ValueError, match="uint8"):
    feats.window_features(model, params, image.astype(np.float32), kept, settings)


# ------------------------------------------------------------------------------------- R-CNN and timing

def test_rcnn_features_shapes_and_warp(net):
  model, params = net
  settings = feats.FeatureSettings(scales=(96,))
  image = _image(100, 130)
  windows = np.array([[0, 0, 129, 99], [10, 20, 70, 90], [40, 40, 60, 50]], np.float32)
  wf = rcnn.rcnn_window_features(model, params, image, windows, settings, warp_size=64, batch=2)
  assert wf.pool5.shape == (3, ops.spp_output_dim(32, model.levels)) and wf.fc7.shape == (3, 32)
  assert np.isfinite(wf.fc7).all()
  x = rcnn.prepare_rcnn_image(image, settings)
  crop = rcnn.warp_crops(jnp.asarray(x), jnp.asarray([[10, 20, 73, 83]], jnp.float32), 64)  # a 64 x 64 window
  np.testing.assert_allclose(np.asarray(crop[0]), x[20:84, 10:74], atol=1e-5)
  # The network on the warped crop directly gives the same pooled vector.
  direct = model.apply({"params": params}, crop, method=models.SPPNet.conv_features)
  direct = model.apply({"params": params}, direct, method=models.SPPNet.pool)
  one = rcnn.rcnn_window_features(model, params, image, [[10, 20, 73, 83]], settings, 64, 2, with_fc7=False)
  np.testing.assert_allclose(one.pool5[0], np.asarray(direct)[0], rtol=1e-5, atol=1e-5)


def test_timing_table_runs(net):
  model, params = net
  images = [_image(100, 130)]
  windows = [np.array([[0, 0, 129, 99], [10, 20, 70, 90], [40, 40, 60, 50], [5, 5, 50, 50]], np.float32)]
  res = timing.time_detection(model, params, images, windows, feats.FeatureSettings(scales=(96,)),
                              feats.FeatureSettings(scales=(64, 96, 128)), warp_size=64, rcnn_batch=2,
                              rcnn_max_windows=2)
  assert res["rcnn_extrapolated"] and res["rcnn_windows_run"] == 2
  table = timing.format_table(res)
  assert "extrapolated" in table and "0.142" in table and "14.37" in table
  assert all(res[k]["total"] > 0 for k in ("spp_1scale", "spp_5scale", "rcnn"))


# ------------------------------------------------------------------------------------- data

def _png(array: np.ndarray) -> bytes:
  from PIL import Image
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="PNG")
  return buf.getvalue()


def test_bad_images_converted_or_rejected():
  rng = np.random.default_rng(0)
  grey = rng.integers(0, 256, (60, 80), dtype=np.uint8)
  assert det_data.check_image(grey, "g").shape == (60, 80, 3)
  rgba = rng.integers(0, 256, (60, 80, 4), dtype=np.uint8)
  assert det_data.check_image(rgba, "a").shape == (60, 80, 3)
  deep = rng.integers(0, 65536, (60, 80, 3), dtype=np.uint16)
  out = det_data.check_image(deep, "d")
  assert out.dtype == np.uint8 and out.max() > 200
  assert det_data.check_image(_png(grey), "png").shape == (60, 80, 3)
  with pytest.raises(ValueError, match="tiny.jpg.*at least"):
    det_data.check_image(np.zeros((10, 12, 3), np.uint8), "tiny.jpg")
  with pytest.raises(ValueError, match="cannot decode image 'broken.jpg'"):
    det_data.check_image(b"not an image at all", "broken.jpg")
  with pytest.raises(ValueError, match="x.png.*inverted"):
    det_data.make_example(_image(60, 80), [[30, 10, 20, 40]], [1], None, "x.png")
  with pytest.raises(ValueError, match="y.png.*labels must lie in 0..11"):
    det_data.make_example(_image(60, 80), [[10, 10, 20, 40]], [12], None, "y.png", num_classes=12)


def test_synthetic_source_format():
  src = det_data.SyntheticDetectionSource("train", 2)
  ex = src[0]
  h, w = ex["image"].shape[:2]
  assert ex["boxes"].dtype == np.float32 and ex["boxes"].shape[1] == 4
  assert (ex["boxes"][:, 2] <= w - 1).all() and (ex["boxes"][:, 3] <= h - 1).all()
  assert ex["labels"].min() >= 0 and ex["labels"].max() <= 11 and ex["id"] == "synthetic_train_000000"


def test_voc_source_with_mocked_tfds():
  tfds = pytest.importorskip("tensorflow_datasets")
  rng = np.random.default_rng(0)
  photo = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
  grey = rng.integers(0, 256, (333, 500, 1), dtype=np.uint8)
  # VOC box (1-based, inclusive) x 48..195, y 240..371 on 375 x 500 -> TFDS [ymin, xmin, ymax, xmax].
  bbox = np.array([[240 / 375, 48 / 500, 371 / 375, 195 / 500]], np.float32)
  examples = [
      {"image": photo, "image/filename": "000005.jpg",
       "objects": {"bbox": bbox, "label": np.array([8]), "is_difficult": np.array([True])}},
      {"image": _png(grey[..., 0]), "image/filename": b"000007.jpg",
       "objects": {"bbox": np.zeros((0, 4), np.float32), "label": np.zeros(0, np.int64),
                   "is_difficult": np.zeros(0, bool)}},
      {"image": np.zeros((8, 8, 3), np.uint8), "image/filename": "000009.jpg",
       "objects": {"bbox": bbox, "label": np.array([1]), "is_difficult": np.array([False])}},
  ]
  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                              as_data_source_fn=lambda builder, split, **kw: examples):
    src = det_data.VocDetectionSource("test")
  first = src[0]
  np.testing.assert_array_equal(first["boxes"], [[47, 239, 194, 370]])
  assert first["labels"].tolist() == [8] and first["difficult"].tolist() == [True] and first["id"] == "000005.jpg"
  second = src[1]
  assert second["image"].shape == (333, 500, 3) and second["boxes"].shape == (0, 4) and second["id"] == "000007.jpg"
  with pytest.raises(ValueError, match="000009.jpg"):
    src[2]


# ------------------------------------------------------------------------------------- end to end

def _tiny_config():
  c = detection_config("synthetic", scales=(128,), num_train=3, num_test=2)
  c.test_split = "validation"
  c.trunk.width = 0.125
  c.trunk.fc_width = 32
  c.features.target_side = 64.0
  c.features.size_multiple = 128
  c.features.window_batch = 64
  c.proposals.max_side = 160
  c.proposals.max_per_image = 60
  c.proposals.ks = (100,)
  c.proposals.strategies = ("CTSF",)
  c.finetune.steps = 10
  c.finetune.batch_size = 16
  c.finetune.lr = 0.01
  c.finetune.log_every = 5
  c.svm.retrain_every = 50
  return c


@pytest.mark.filterwarnings("ignore:class .* has no positive:RuntimeWarning")
def test_end_to_end_tiny_synthetic_and_cache_reuse(tmp_path, monkeypatch):
  config = _tiny_config()
  metrics = pipeline.train_and_evaluate_detection(config, tmp_path, log=lambda s: None)
  assert np.isfinite(metrics["mAP"]) and 0.0 <= metrics["mAP"] <= 1.0
  assert np.isfinite(metrics["ftfc7"]["mAP"]) and metrics["trunk_is_random"]
  for name in ("config.json", "system/head", "system/svms", "system/bbox", "metrics.json", "detections.npz"):
    assert (tmp_path / name).exists(), name
  cached = sorted((tmp_path / "cache").rglob("*.npz"))
  assert len(cached) == 5
  assert all(cache.read(p)["pool5"].dtype == np.float16 for p in cached)
  mtimes = [p.stat().st_mtime_ns for p in cached]

  def fail(*args, **kwargs):
    raise AssertionError("features were recomputed although they are cached")

  monkeypatch.setattr(cache.feats, "window_features", fail)
  with count_compiles() as compiles:
    again = pipeline.train_and_evaluate_detection(config, tmp_path, log=lambda s: None)
  assert again["mAP"] == metrics["mAP"]
  assert [p.stat().st_mtime_ns for p in cached] == mtimes
  assert sum(compiles.values()) == 0, compiles

  # Classes without a training positive have no SVM: no detections, AP undefined, left out of the mAP.
  ftfc7 = metrics["ftfc7"]
  untrained = ftfc7["no_svm"]
  assert untrained and ftfc7["classes_in_mAP"] == sum(np.isfinite(list(ftfc7["ap"].values())))
  assert all(np.isnan(ftfc7["ap"][n]) for n in untrained)
  assert ftfc7["mAP"] == pytest.approx(np.nanmean(list(ftfc7["ap"].values())))
  names = list(det_data.class_names("synthetic"))
  with np.load(tmp_path / "detections.npz") as z:
    drawn = {names[k] for key in z.files if key.endswith("/labels") for k in z[key]}
  assert drawn and not drawn & set(untrained)

  # A changed config is refused while an output that depends on it exists (the one workdir policy) ...
  changed = _tiny_config()
  changed.test.nms = 0.4
  with pytest.raises(workdir_lib.ConfigChangedError, match="test.nms.*--start_over"):
    pipeline.train_and_evaluate_detection(changed, tmp_path, log=lambda s: None)
  assert (tmp_path / "system" / "head").exists()
  # ... and start_over redoes only the test: features, head, SVMs and regressors are reused.
  def retrained(*args, **kwargs):
    raise AssertionError("the head or the SVMs were retrained although only test.nms changed")

  monkeypatch.setattr(pipeline.finetune, "finetune_from_cache", retrained)
  monkeypatch.setattr(pipeline.svm_lib, "train_svms", retrained)
  redone = pipeline.train_and_evaluate_detection(changed, tmp_path, log=lambda s: None, start_over=True)
  assert np.isfinite(redone["mAP"]) and [p.stat().st_mtime_ns for p in cached] == mtimes

  # Test-time detection on an empty proposal set gives no detections, not an error.
  system = DetectionSystem.restore(tmp_path, with_trunk=False)
  empty = system.detect_windows(np.zeros((0, 1)), np.zeros((0, 4)), (100, 120))
  assert empty["boxes"].shape == (0, 4) and empty["scores"].shape == (0,)


def test_a_class_without_an_svm_has_no_detections_and_no_ap():
  """Class 'b' was never fit (its SVM has zero weights): its tied scores must not become detections
  or an AP that counts in the mAP."""
  names = ("a", "b")
  svms = svm_lib.LinearSVMs(np.eye(2, dtype=np.float32), np.zeros(2, np.float32), 1.0,
                            {"retrains": np.array([1, 0]), "positives": np.array([3, 0])})
  config = detection_config("synthetic", num_train=1, num_test=1)
  system = system_lib.DetectionSystem(None, svms, None, names, config)
  windows = np.array([[0, 0, 9, 9], [50, 50, 59, 59]], np.float64)
  det = system.detect_windows(np.zeros((2, 1)), windows, (100, 100), scores=np.array([[2.0, 0.0], [1.0, 0.0]]))
  assert det["labels"].tolist() == [0, 0]
  gt = {"boxes": windows, "labels": np.array([0, 1]), "difficult": np.zeros(2, bool)}
  m = system_lib.voc_metrics([det], [gt], names, svms.trained)
  assert m["ap"]["a"] == 1.0 and np.isnan(m["ap"]["b"]) and m["mAP"] == 1.0 and m["npos"]["b"] == 1
  assert m["no_svm"] == ["b"] and m["classes_in_mAP"] == 1 and m["no_test_positives"] == []
  assert system_lib.left_out_note(m) == "mAP over 1 of 2 classes; left out: 1 without an SVM (no training positive) (b)"
  # Without the mask the missed class would count as AP 0.
  assert system_lib.voc_metrics([det], [gt], names)["mAP"] == 0.5
  assert system_lib.bootstrap_map([det] * 2, [gt] * 2, names, num_resamples=10, trained=svms.trained) == (1.0, 1.0)


def test_detect_image_names_a_too_small_file_before_loading_anything(tmp_path):
  from PIL import Image
  Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp_path / "dot.png")
  with pytest.raises(ValueError, match=r"image '.*dot.png' is 1x1 pixels"):
    pipeline.detect_image(tmp_path / "untrained", tmp_path / "dot.png", tmp_path / "out.png")
  assert not (tmp_path / "out.png").exists()
  # DetectionSystem.detect names the image as its caller does (the trunk is not reached).
  svms = svm_lib.LinearSVMs(np.zeros((2, 1), np.float32), np.zeros(1, np.float32), 1.0)
  system = system_lib.DetectionSystem(None, svms, None, ("a",), detection_config("synthetic"), trunk=object())
  with pytest.raises(ValueError, match=r"image 'test\[7\]' is 1x1 pixels"):
    system.detect(np.zeros((1, 1, 3), np.uint8), name="test[7]")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:class .* has no positive:RuntimeWarning")
def test_detect_image_and_rcnn_on_a_trained_workdir(tmp_path):
  from PIL import Image
  config = _tiny_config()
  pipeline.train_and_evaluate_detection(config, tmp_path, log=lambda s: None)
  image = det_data.SyntheticDetectionSource("test", 1)[0]["image"]
  Image.fromarray(image).save(tmp_path / "in.png")
  det = pipeline.detect_image(tmp_path, tmp_path / "in.png", tmp_path / "out.png", score_threshold=-10)
  assert (tmp_path / "out.png").stat().st_size > 1000 and len(det["names"]) == len(det["scores"])
  res = rcnn.evaluate_rcnn(str(tmp_path), max_images=1, max_windows=8, warp_size=64, batch=8)
  assert res["images"] == 1 and "ftfc7_bb" in res
