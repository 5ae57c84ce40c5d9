"""Transfer classification (paper Tables 6-7): the SVM protocol against hand-checkable cases, layer
features against independent computations, the TFDS tasks on mocked data, and a run end to end."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from sklearn.svm import LinearSVC

from sppnet_jax import models, ops
from sppnet_jax import workdir as workdir_lib
from sppnet_jax.data import augment
from sppnet_jax.transfer import configs as transfer_configs
from sppnet_jax.transfer import features, protocol, run, tasks


# --- the protocol -----------------------------------------------------------------------------

def test_separable_features_give_ap_one_and_accuracy_one():
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(3), 40)
  x = np.eye(3)[labels] * 5 + rng.normal(0, 0.1, (120, 3))
  targets = protocol.one_vs_rest_targets(labels, 3)
  model = protocol.fit_svms(protocol.l2_normalize(x), targets)
  scores = model.scores(protocol.l2_normalize(x))
  value, per_class = protocol.mean_ap(scores, targets)
  assert value == pytest.approx(100.0) and np.allclose(per_class, 100.0)
  assert protocol.mean_class_accuracy(np.argmax(scores, 1), labels) == pytest.approx(100.0)
  score = protocol.split_score(x, labels, num_splits=3, train_per_class=10, test_per_class=20)
  assert score.value == pytest.approx(100.0) and score.per_split == (100.0, 100.0, 100.0)


def test_eleven_point_ap_of_a_known_ranking():
  # Ranked +, -, +, -: recall 0.5 at precision 1, then recall 1 at precision 2/3; the 11-point
  # rule takes 1 at thresholds 0..0.5 and 2/3 at 0.6..1: (6 + 5 * 2/3) / 11. A 0 (difficult)
  # target is ignored wherever it ranks.
  scores = np.array([4.0, 3.0, 2.0, 1.0, 5.0])
  targets = np.array([1, -1, 1, -1, 0])
  assert protocol.classification_ap(scores, targets) == pytest.approx((6 + 5 * 2 / 3) / 11)
  assert protocol.classification_ap(-scores, targets) == pytest.approx((6 * 0.5 + 5 * 0.5) / 11)
  with pytest.raises(ValueError, match="no positive"):
    protocol.classification_ap(scores, -np.abs(targets))


def test_chance_map_is_the_positive_share_rounded_up():
  # One positive among n images at a uniformly random rank r: precision 1/r reaches every recall
  # threshold, so the 11-point AP is 1/r and its mean over ranks is H(n)/n.
  targets = np.array([[1], [-1], [-1], [-1]])
  assert protocol.chance_map(targets, draws=4000) == pytest.approx(100 * (1 + 1 / 2 + 1 / 3 + 1 / 4) / 4, abs=1.0)


def test_l2_normalize_and_targets():
  x = protocol.l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
  assert np.allclose(x, [[0.6, 0.8], [0.0, 0.0]])
  assert tasks.multilabel_targets([2, 0, 2], [False, True, True], 4).tolist() == [0, -1, 1, -1]
  assert protocol.one_vs_rest_targets(np.array([1, 0]), 2).tolist() == [[-1, 1], [1, -1]]
  with pytest.raises(ValueError, match="lie in"):
    tasks.multilabel_targets([4], [False], 4)


def test_class_split_follows_the_caltech_rule():
  labels = np.concatenate([np.full(31, 0), np.full(200, 1), np.full(60, 2)])
  train, test = protocol.class_split(labels, seed=3)
  assert np.bincount(labels[train]).tolist() == [30, 30, 30]
  assert np.bincount(labels[test]).tolist() == [1, 50, 30]
  assert not set(train) & set(test)
  again = protocol.class_split(labels, seed=3)
  assert np.array_equal(again[0], train) and np.array_equal(again[1], test)
  assert not np.array_equal(protocol.class_split(labels, seed=4)[0], train)
  with pytest.raises(ValueError, match="class 0 has 30 images"):
    protocol.class_split(np.full(30, 0), seed=0)


def test_svm_needs_both_signs():
  with pytest.raises(ValueError, match="class 0 has 3 positive and 0 negative"):
    protocol.fit_svms(np.ones((3, 2)), np.ones((3, 1)))


def test_paired_difference_of_identical_scores_is_zero():
  rng = np.random.default_rng(0)
  targets = np.where(rng.random((80, 3)) < 0.4, 1, -1)
  scores = rng.normal(size=(80, 3)) + targets
  value, low, high, p = protocol.paired_map_difference(scores, scores, targets, num_resamples=200)
  assert value == 0 and low == 0 and high == 0 and p == 1.0
  better = protocol.paired_map_difference(scores + 3 * targets, scores, targets, num_resamples=200)
  assert better[0] > 0 and better[1] > 0 and better[3] < 0.05


# --- features ---------------------------------------------------------------------------------

def _tiny(spp: bool = True):
  model = models.create_model("zf5", num_classes=5, spp=spp, channels=(8, 8, 12, 12, 8), fc_width=16, dropout=0.0)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))["params"]
  return model, params


def _images(shapes, seed=0):
  rng = np.random.default_rng(seed)
  return [{"image": rng.integers(0, 256, (*hw, 3), dtype=np.uint8)} for hw in shapes]


def test_full_view_through_padded_buckets_equals_each_image_alone():
  model, params = _tiny()
  source = _images([(70, 100), (90, 64), (64, 80)])
  view = features.FeatureView("full", 64, augment.PER_IMAGE, batch_size=2, bucket=16, max_aspect=1.6)
  layers = ("pool5", "spp", "fc6", "fc7")
  batched = features.extract(model, params, source, layers, view)
  for i, example in enumerate(source):
    alone = features.layer_features(model, params, jnp.asarray(view.prepare(example["image"]))[None], layers)
    # XLA's CPU convolutions sum in an order that follows the map's shape, so a padded bucket and the
    # image alone agree to float rounding; padding that leaked into the valid region would differ by far more.
    for name in ("pool5", "spp"):
      np.testing.assert_allclose(batched[name][i], np.asarray(alone[name])[0], rtol=1e-5, atol=1e-6,
                                 err_msg=f"image {i} {name}")
    for name in ("fc6", "fc7"):  # a matrix product's summation order follows the batch size
      np.testing.assert_allclose(batched[name][i], np.asarray(alone[name])[0], rtol=1e-5, atol=1e-6)


def test_crop_layers_against_independent_computations():
  model, params = _tiny()
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 64, 64, 3)), jnp.float32)
  out = features.layer_features(model, params, x, ("conv4", "conv5", "pool5", "spp", "fc6", "fc7"))
  conv5 = jax.jit(lambda p, x: model.apply({"params": p}, x, method=models.SPPNet.conv_features))(params, x)
  np.testing.assert_array_equal(out["conv5"], conv5.reshape(2, -1))
  # conv5 is relu(conv(conv4)) with the released ZF-5's 3x3 / stride 1 / pad 1: rebuild it by hand.
  conv4 = out["conv4"].reshape(2, *conv5.shape[1:3], -1)
  p5 = params["trunk"]["conv5"]
  again = jax.nn.relu(jax.lax.conv_general_dilated(conv4, p5["kernel"], (1, 1), [(1, 1), (1, 1)],
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC")) + p5["bias"])
  np.testing.assert_allclose(again, conv5, rtol=1e-5, atol=1e-5)
  # pool5 (6x6) is torch's adaptive max pooling of conv5 (channel-major there, bin-major here).
  oracle = torch.nn.functional.adaptive_max_pool2d(torch.from_numpy(np.array(conv5)).permute(0, 3, 1, 2), 6)
  np.testing.assert_array_equal(np.sort(out["pool5"], 1), np.sort(oracle.reshape(2, -1).numpy(), 1))
  np.testing.assert_array_equal(out["spp"], ops.spp(conv5, model.levels))
  fc6 = np.maximum(out["spp"] @ np.asarray(params["head"]["fc6"]["kernel"]) + np.asarray(params["head"]["fc6"]["bias"]), 0)
  np.testing.assert_allclose(out["fc6"], fc6, rtol=1e-5, atol=1e-6)
  fc7 = np.maximum(fc6 @ np.asarray(params["head"]["fc7"]["kernel"]) + np.asarray(params["head"]["fc7"]["bias"]), 0)
  np.testing.assert_allclose(out["fc7"], fc7, rtol=1e-4, atol=1e-5)


def test_nospp_pool5_is_the_baseline_pool_and_bad_requests_are_refused():
  model, params = _tiny(spp=False)
  x = jnp.ones((1, 64, 64, 3))
  out = features.layer_features(model, params, x, ("pool5",))
  pool5 = jax.jit(lambda p, x: model.apply({"params": p}, model.apply({"params": p}, x, method=models.SPPNet.conv_features),
                                           method=models.SPPNet.pool))(params, x)
  np.testing.assert_array_equal(out["pool5"], pool5)
  with pytest.raises(ValueError, match="needs an SPP network"):
    features.check_layers(model, ("spp",), "crop")
  with pytest.raises(ValueError, match="only an SPP network"):
    features.check_layers(model, ("fc7",), "full")
  spp_model = models.create_model("zf5", num_classes=5, channels=(8, 8, 12, 12, 8), fc_width=16)
  with pytest.raises(ValueError, match="only in the crop view"):
    features.check_layers(spp_model, ("conv4",), "full")
  with pytest.raises(ValueError, match="unknown layer"):
    features.check_layers(spp_model, ("fc9",), "crop")
  with pytest.raises(ValueError, match="fc6 takes"):
    features.extract(model, params, _images([(80, 80)]), ("fc7",), features.FeatureView("crop", 96, 128.0))


def test_feature_cache_is_float16_and_keyed(tmp_path):
  calls = []

  def compute():
    calls.append(1)
    return {"fc7": np.array([[1.5, 2.25]], np.float32), "conv4": np.array([[1e6]], np.float32)}

  path = tmp_path / "f.npz"
  first = features.cached_extract(path, "k1", compute, ("fc7", "conv4"))
  with np.load(path) as f:
    assert f["fc7"].dtype == np.float16 and f["conv4"].dtype == np.float32  # 1e6 does not fit float16
  again = features.cached_extract(path, "k1", compute, ("fc7", "conv4"))
  assert len(calls) == 1 and np.array_equal(first["fc7"], again["fc7"])
  features.cached_extract(path, "k2", compute, ("fc7",))
  assert len(calls) == 2


# --- tasks ------------------------------------------------------------------------------------

def test_voc_and_caltech_tasks_on_mocked_tfds():
  tfds = pytest.importorskip("tensorflow_datasets")
  rng = np.random.default_rng(0)
  photo = lambda h, w: rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  voc = {"train+validation": [{"image": photo(30, 40), "objects": {"label": np.array([2, 2, 7]),
                                                                   "is_difficult": np.array([True, False, False])}},
                              {"image": photo(20, 25), "objects": {"label": np.array([19]),
                                                                   "is_difficult": np.array([True])}}],
         "test": [{"image": photo(25, 30), "objects": {"label": np.array([0]), "is_difficult": np.array([False])}}]}
  caltech = {"train": [{"image": photo(20, 20), "label": 101}, {"image": photo(21, 22), "label": 4}],
             "test": [{"image": photo(23, 20), "label": 4}]}

  def as_data_source(builder, split, **_):
    return (voc if builder.name == "voc" else caltech)[split]

  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, as_data_source_fn=as_data_source):
    v = tasks.voc2007()
    c = tasks.caltech101()
    assert v.kind == "multilabel" and len(v.class_names) == 20
    t = v.targets["train"]
    assert t.shape == (2, 20) and t[0, 2] == 1 and t[0, 7] == 1 and t[1, 19] == 0 and (t[1, :19] == -1).all()
    assert v.targets["test"][0, 0] == 1 and np.array_equal(v.images["test"][0]["image"], voc["test"][0]["image"])
    assert c.kind == "split" and c.targets["pool"].tolist() == [101, 4, 4]
    assert np.array_equal(c.images["pool"][2]["image"], caltech["test"][0]["image"])


def test_image_folder_task(tmp_path):
  from PIL import Image
  for name, count in (("bird", 2), ("car", 3)):
    (tmp_path / name).mkdir()
    for i in range(count):
      Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(tmp_path / name / f"{i}.png")
  task = tasks.image_folder(str(tmp_path))
  assert task.kind == "split" and task.class_names == ("bird", "car")
  assert task.targets["pool"].tolist() == [0, 0, 1, 1, 1]
  assert task.images["pool"][3]["image"].shape == (20, 30, 3)


def test_synthetic_tasks_have_their_targets():
  scenes = tasks.synthetic_scenes(num_train=4, num_test=3)
  assert scenes.targets["train"].shape == (4, 12) and (scenes.targets["train"] == 1).any(1).all()
  shapes = tasks.synthetic_shapes(num_examples=24)
  assert shapes.targets["pool"].tolist() == [shapes.images["pool"][i]["label"] for i in range(24)]


# --- end to end -------------------------------------------------------------------------------

TINY_TRUNK = """
from sppnet_jax import configs


def get_config():
  c = configs.synthetic("single")
  c.model.channels = (8, 16, 16, 16, 16)
  c.model.fc_width = 32
  c.data.update(num_train=256, num_eval=64, mean_samples=16)
  c.train.update(num_epochs=2, lr_drop_epochs=(), eval_every_epochs=2, batch_size=32, learning_rate=3e-3)
  c.eval.update(views=("crop",), sweep_sizes=(), curve_examples=64)
  return c
"""


def test_transfer_end_to_end_on_the_built_in_scenes(tmp_path):
  trunk = tmp_path / "trunk.py"
  trunk.write_text(TINY_TRUNK)
  config = transfer_configs.synthetic_scenes()
  config.trunks = {"spp": str(trunk)}
  config.trunk_dir = str(tmp_path / "trunks")
  config.task.update(num_train=48, num_test=48)
  config.columns = [transfer_configs.column("b", "spp", "crop", 96, ("pool5", "fc7")),
                    transfer_configs.column("c", "spp", "full", 96, ("pool5", "fc7"))]
  config.comparisons = [("c", "b")]
  config.progress = False
  results = run.transfer_and_evaluate(config, tmp_path / "run")
  # Column b's pool5 cell from scratch: each image's features alone (float16, as cached),
  # scikit-learn's SVMs and an 11-point AP written out here.
  task = tasks.synthetic_scenes(48, 48, max_objects=3, object_size=(0.2, 0.6))
  _, model, params, mean = workdir_lib.load_run(tmp_path / "trunks" / "spp")
  view = features.FeatureView("crop", 96, mean)  # one shape, one compile
  feats = {split: np.stack([np.asarray(features.layer_features(
      model, params, jnp.asarray(view.prepare(task.images[split][i]["image"]))[None], ("pool5",))["pool5"][0])
      for i in range(48)]).astype(np.float16).astype(np.float32) for split in ("train", "test")}
  unit = {k: v / np.linalg.norm(v, axis=1, keepdims=True) for k, v in feats.items()}
  aps = []
  for k in range(12):
    t_train, t_test = task.targets["train"][:, k], task.targets["test"][:, k]
    if not (t_test > 0).any():
      continue
    svm = LinearSVC(C=1.0, max_iter=10000, random_state=0).fit(unit["train"][t_train != 0], t_train[t_train != 0] > 0)
    keep = t_test != 0
    ranked = (t_test[keep] > 0)[np.argsort(-svm.decision_function(unit["test"][keep]))]
    recall, precision = np.cumsum(ranked) / ranked.sum(), np.cumsum(ranked) / np.arange(1, len(ranked) + 1)
    aps.append(np.mean([precision[recall >= r].max() if (recall >= r).any() else 0 for r in np.linspace(0, 1, 11)]))
  assert results["columns"]["b"]["cells"]["pool5"]["value"] == pytest.approx(100 * np.mean(aps), abs=0.05)
  cells = results["columns"]["c"]["cells"]
  assert cells["pool5"]["low"] <= cells["pool5"]["value"] <= cells["pool5"]["high"]
  assert cells["fc7"]["dim"] == 32 and cells["pool5"]["dim"] == 36 * 16
  assert [(c["a"], c["b"], c["layer"]) for c in results["comparisons"]] == [("c", "b", "pool5"), ("c", "b", "fc7")]
  report = (tmp_path / "run" / "report.md").read_text()
  assert "| pool5 |" in report and "c − b" in report
  # Rerunning reads the cached float16 features and reproduces the table exactly.
  stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run" / "features").iterdir()}
  again = run.transfer_and_evaluate(config, tmp_path / "run")
  assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run" / "features").iterdir()} == stamps
  assert json.dumps(again["columns"], sort_keys=True) == json.dumps(results["columns"], sort_keys=True)
  assert json.loads((tmp_path / "run" / "results.json").read_text())["columns"] == json.loads(json.dumps(results["columns"]))


def test_split_comparisons_need_two_splits_before_any_work(tmp_path):
  config = transfer_configs.synthetic_shapes()
  config.splits.num_splits = 1
  config.trunk_dir = str(tmp_path / "trunks")
  with pytest.raises(ValueError, match="num_splits >= 2"):
    run.transfer_and_evaluate(config, tmp_path / "run")
  assert not (tmp_path / "trunks").exists()


# --- refused before any work -------------------------------------------------------------------

def test_bad_config_and_missing_trunk_are_refused_before_anything_is_written(tmp_path):
  config = transfer_configs.synthetic_scenes()
  config.svm.C = 0.0
  config.columns[2].layers = ("conv5", "fc9")
  with pytest.raises(ValueError) as e:
    run.transfer_and_evaluate(config, tmp_path / "run")
  message = str(e.value)
  assert "\n" not in message and message.startswith("invalid transfer config (3 problems)")
  assert "svm.C=0.0 is not allowed" in message and "'conv5' has a fixed length only in the crop view" in message
  assert "'fc9' is not a layer" in message
  config = transfer_configs.synthetic_scenes()
  config.trunks = {"nospp": "synthetic:nospp", "spp": str(tmp_path / "missing")}
  with pytest.raises(FileNotFoundError, match="trunk 'spp'.*missing"):
    run.transfer_and_evaluate(config, tmp_path / "run")
  config.trunks = {"nospp": "synthetic:nospp", "spp": "synthetic:bogus"}
  with pytest.raises(ValueError, match="trunk 'spp' \\(synthetic:bogus\\).*variant='bogus'"):
    run.transfer_and_evaluate(config, tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_classes_with_too_few_images_are_named_before_any_trunk_or_feature(tmp_path):
  config = transfer_configs.synthetic_shapes()
  config.task.num_examples = 48  # about 4 images per class: fewer than train_per_class = 30
  config.trunk_dir = str(tmp_path / "trunks")
  task = tasks.synthetic_shapes(num_examples=48)
  first = task.class_names[int(np.unique(task.targets["pool"])[0])]
  with pytest.raises(ValueError, match=f"have too few images for the split.*'{first}' \\([0-9]+ images\\)"):
    run.transfer_and_evaluate(config, tmp_path / "run")
  scenes = transfer_configs.synthetic_scenes()
  scenes.task.update(num_train=6, num_test=1)  # one test scene cannot hold every class
  scenes.trunk_dir = str(tmp_path / "trunks")
  scene_task = tasks.synthetic_scenes(6, 1, max_objects=3, object_size=(0.2, 0.6))
  absent = scene_task.class_names[int(np.flatnonzero(scene_task.targets["test"][0] <= 0)[0])]
  with pytest.raises(ValueError, match=f"cannot be scored.*'{absent}' \\(.*0 positive test images\\)"):
    run.transfer_and_evaluate(scenes, tmp_path / "run")
  assert not (tmp_path / "trunks").exists() and not (tmp_path / "run").exists()
