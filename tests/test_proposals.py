"""Tests of sppnet_jax.detection.proposals (selective search, proposal files, recall)."""

import numpy as np
import pytest
import skimage.data
from scipy.io import savemat
from skimage.transform import resize

from sppnet_jax.detection import proposals as P

RECTS = np.array([[20, 15, 79, 64], [110, 30, 169, 119], [40, 90, 99, 139]], np.float64)
COLOURS = [(200, 30, 30), (30, 180, 40), (40, 60, 210)]


def _synthetic() -> np.ndarray:
  img = np.full((160, 200, 3), 235, np.uint8)
  for (x1, y1, x2, y2), c in zip(RECTS.astype(int), COLOURS):
    img[y1:y2 + 1, x1:x2 + 1] = c
  return img


@pytest.fixture(scope="module")
def small_natural() -> np.ndarray:
  return np.round(resize(skimage.data.chelsea(), (150, 225), preserve_range=True)).astype(np.uint8)


@pytest.fixture(scope="module")
def natural_boxes(small_natural) -> np.ndarray:
  return P.selective_search(small_natural, seed=3)


def test_output_shape_dtype_ranges(small_natural, natural_boxes):
  b = natural_boxes
  h, w = small_natural.shape[:2]
  assert b.dtype == np.float32 and b.ndim == 2 and b.shape[1] == 4 and len(b) > 100
  assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= w - 1).all() and (b[:, 3] <= h - 1).all()
  assert (b[:, 2] - b[:, 0] + 1 >= 20).all() and (b[:, 3] - b[:, 1] + 1 >= 20).all()
  assert len(np.unique(b, axis=0)) == len(b)
  np.testing.assert_array_equal(b, np.round(b))


def test_deterministic_for_seed(small_natural, natural_boxes):
  np.testing.assert_array_equal(P.selective_search(small_natural, seed=3), natural_boxes)
  other = P.selective_search(small_natural, seed=4)
  assert not np.array_equal(other, natural_boxes)  # a different ranking ...
  # ... of the same set of unique boxes.
  np.testing.assert_array_equal(np.unique(other, axis=0), np.unique(natural_boxes, axis=0))


def test_synthetic_rectangles_recalled():
  boxes = P.selective_search(_synthetic())
  assert P.recall([boxes], [RECTS], iou=0.7) == 1.0
  assert P.best_overlaps([boxes], [RECTS]).min() > 0.9


def test_min_box_size_rule():
  boxes = np.array([[0, 0, 18, 40], [0, 0, 19, 40], [5, 5, 60, 23], [5, 5, 60, 24], [0, 0, 19, 40]], np.float64)
  kept = P._filter_and_dedup(boxes, 20)  # inclusive width/height >= 20, duplicates dropped
  np.testing.assert_array_equal(kept, [[0, 0, 19, 40], [5, 5, 60, 24]])


def test_grey_rgba_uint16_and_tiny_inputs():
  rgb = _synthetic()
  ref = P.selective_search(rgb, ks=(100,), strategies=("CTSF",))
  rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)  # opaque: alpha changes nothing
  np.testing.assert_array_equal(P.selective_search(rgba, ks=(100,), strategies=("CTSF",)), ref)
  np.testing.assert_array_equal(P.selective_search(rgb.astype(np.uint16) * 257, ks=(100,), strategies=("CTSF",)), ref)
  np.testing.assert_array_equal(P.selective_search(rgb / 255.0, ks=(100,), strategies=("CTSF",)), ref)
  grey = P.selective_search(rgb.mean(axis=2).astype(np.uint8), ks=(100,), strategies=("CTSF",))
  assert grey.shape[1] == 4 and len(grey) > 0
  for tiny in (np.zeros((19, 300, 3), np.uint8), np.zeros((5, 5), np.uint8)):
    out = P.selective_search(tiny)
    assert out.shape == (0, 4) and out.dtype == np.float32


def test_corrupt_inputs_raise():
  bad = _synthetic().astype(np.float64)
  bad[3, 3, 0] = np.nan
  with pytest.raises(ValueError, match="NaN"):
    P.selective_search(bad)
  with pytest.raises(ValueError, match="shape"):
    P.selective_search(np.zeros((30, 30, 5), np.uint8))
  with pytest.raises(ValueError, match="empty"):
    P.selective_search(np.zeros((0, 30, 3), np.uint8))
  with pytest.raises(ValueError, match="numeric"):
    P.selective_search(np.array([["a"]], object))
  with pytest.raises(ValueError, match=r"\[0, 255\]"):
    P.selective_search(np.full((30, 30), 1000, np.int32))
  with pytest.raises(ValueError, match="strategy"):
    P.selective_search(_synthetic(), strategies=("CX",))


def test_region_adjacency_uses_pixels_not_boxes():
  labels = np.array([[0, 0, 1],
                     [0, 2, 1],
                     [3, 3, 3]])
  # 1 and 2 touch; 2's bbox sits inside 0's bbox but 0-2 also touch; 1-3 touch; 0-3 touch.
  np.testing.assert_array_equal(P.region_adjacency(labels), [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]])
  ring = np.zeros((5, 5), np.int64)
  ring[0, 0] = 1
  ring[4, 4] = 2  # 1 and 2 share no border: not adjacent although both touch 0
  np.testing.assert_array_equal(P.region_adjacency(ring), [[0, 1], [0, 2]])


def test_load_precomputed_formats(tmp_path):
  a = np.array([[1, 2, 30, 40], [5, 6, 7, 8]], np.float64)  # R-CNN [y1 x1 y2 x2], 1-based
  cells = np.empty((1, 2), object)
  cells[0, 0], cells[0, 1] = a, a[:1] + 10
  names = np.empty((2, 1), object)
  names[0, 0], names[1, 0] = "000001", "000002"
  savemat(tmp_path / "ss.mat", {"boxes": cells, "images": names})
  boxes, ids = P.load_precomputed(tmp_path / "ss.mat")
  assert ids == ["000001", "000002"]
  np.testing.assert_array_equal(boxes[0], [[1, 0, 39, 29], [5, 4, 7, 6]])
  assert boxes[1].shape == (1, 4) and boxes[0].dtype == np.float32
  savemat(tmp_path / "one.mat", {"boxes": a.astype(np.uint16)})  # a plain matrix: one image
  boxes, ids = P.load_precomputed(tmp_path / "one.mat")
  assert ids is None and len(boxes) == 1
  np.testing.assert_array_equal(boxes[0], [[1, 0, 39, 29], [5, 4, 7, 6]])
  xyxy = np.array([[0, 0, 10, 10]], np.float32)
  np.savez(tmp_path / "p.npz", img_a=xyxy, img_b=xyxy[:0])
  boxes, ids = P.load_precomputed(tmp_path / "p.npz")
  assert ids == ["img_a", "img_b"] and boxes[1].shape == (0, 4)
  np.save(tmp_path / "p.npy", xyxy)
  boxes, ids = P.load_precomputed(tmp_path / "p.npy")
  assert ids is None and len(boxes) == 1
  with pytest.raises(ValueError, match="extension"):
    P.load_precomputed(_touch(tmp_path / "p.txt"))


def _touch(path):
  path.write_text("x")
  return path


def test_recall_helper():
  props = [np.array([[0, 0, 9, 9]], np.float64), np.zeros((0, 4))]
  gts = [np.array([[0, 0, 9, 9], [0, 0, 9, 19]], np.float64), np.array([[0, 0, 5, 5]], np.float64)]
  assert P.recall(props, gts, 0.5) == pytest.approx(2 / 3)
  assert P.recall(props, gts, 0.7) == pytest.approx(1 / 3)


@pytest.mark.slow
def test_fast_mode_on_375x500_natural_image():
  img = np.round(resize(skimage.data.coffee(), (375, 500), preserve_range=True)).astype(np.uint8)
  boxes = P.selective_search(img)
  assert 1000 <= len(boxes) <= 4000


def test_histograms_drop_the_no_vote_code_and_normalise_each_region():
  """Code ``bins`` means no vote: it is counted in a spare column that is dropped before normalising."""
  from sppnet_jax.detection.proposals import _histograms
  labels = np.array([[0, 0, 1], [1, 1, 2]])
  codes = np.array([[0, 3], [1, 3], [2, 2], [2, 0], [3, 3], [1, 1]], np.int32)  # bins = 3, code 3 = no vote
  hist = _histograms(labels, 3, codes, 3)
  np.testing.assert_allclose(hist, [[0.5, 0.5, 0.0], [0.25, 0.0, 0.75], [0.0, 1.0, 0.0]])


def test_texture_histogram_matches_the_definition_pixel_by_pixel():
  """Each channel's Gaussian derivatives steered to 8 orientations k * 45 deg; a pixel votes for
  orientation k where the response is positive, into one of 10 bins over [0, the channel's largest
  gradient magnitude]. Counted here pixel by pixel, with orientation k + 4 as the negated k."""
  from scipy import ndimage
  from sppnet_jax.detection.proposals import _histograms, _texture_codes
  img = np.random.default_rng(0).integers(0, 256, (9, 11, 3)).astype(np.uint8)
  expected = np.zeros(240)
  for ch in range(3):
    x = img[:, :, ch].astype(np.float32)
    gx, gy = ndimage.gaussian_filter(x, 1.0, order=(0, 1)), ndimage.gaussian_filter(x, 1.0, order=(1, 0))
    top = float(np.sqrt(gx * gx + gy * gy).max())
    for r in range(9):
      for c in range(11):
        for k in range(8):
          a = np.float32((k % 4) * np.pi / 4)  # in float32, as the responses are computed
          resp = (np.cos(a) * gx[r, c] + np.sin(a) * gy[r, c]) * np.float32(1 if k < 4 else -1)
          if resp > 0:
            expected[(ch * 8 + k) * 10 + min(int(resp * np.float32(10 / top)), 9)] += 1
  hist = _histograms(np.zeros((9, 11), np.int64), 1, _texture_codes(img), 240)[0]
  np.testing.assert_allclose(hist, expected / expected.sum(), atol=1e-12)
