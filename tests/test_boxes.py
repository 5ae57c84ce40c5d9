"""Tests of sppnet_jax.detection.boxes."""

import numpy as np
import pytest

from sppnet_jax.detection import boxes as B


def test_iou_uses_plus_one_areas():
  a = np.array([[0, 0, 9, 9]], np.float32)  # 10x10 = 100 px
  b = np.array([[5, 0, 14, 9], [10, 10, 20, 20], [0, 0, 9, 9]], np.float32)
  iou = B.iou_matrix(a, b)
  assert iou.shape == (1, 3)
  np.testing.assert_allclose(iou[0], [50 / 150, 0.0, 1.0])
  # Touching boxes (x2 == x1 of the other) share one column.
  np.testing.assert_allclose(B.iou_matrix([[0, 0, 9, 9]], [[9, 0, 18, 9]]), [[10 / 190]])
  assert B.iou_matrix(np.zeros((0, 4)), b).shape == (0, 3)


def test_nms_greedy_and_stable_ties():
  boxes = np.array([[0, 0, 9, 9], [1, 1, 10, 10], [50, 50, 60, 60], [0, 0, 9, 9]], np.float64)
  scores = np.array([0.5, 0.9, 0.7, 0.9])
  keep = B.nms(boxes, scores, threshold=0.3)
  # Box 1 (0.9, first of the tie) wins, suppresses 0 and 3; box 2 survives.
  np.testing.assert_array_equal(keep, [1, 2])
  np.testing.assert_array_equal(B.nms(boxes, scores, 0.3, max_keep=1), [1])
  # Threshold is strict: IoU exactly equal to it is kept.
  pair = np.array([[0, 0, 9, 9], [5, 0, 14, 9]], np.float64)  # IoU = 1/3
  np.testing.assert_array_equal(B.nms(pair, [1.0, 0.5], threshold=1 / 3), [0, 1])
  assert B.nms(np.zeros((0, 4)), np.zeros(0)).shape == (0,)
  with pytest.raises(ValueError, match="scores"):
    B.nms(boxes, scores[:2])


def test_encode_decode_roundtrip():
  rng = np.random.default_rng(0)
  p = rng.uniform(0, 200, (50, 2))
  p = np.concatenate([p, p + rng.uniform(0, 100, (50, 2))], axis=1)
  t = rng.uniform(0, 200, (50, 2))
  t = np.concatenate([t, t + rng.uniform(0, 100, (50, 2))], axis=1)
  d = B.encode_boxes(p, t)
  np.testing.assert_allclose(B.decode_boxes(p, d), t, atol=1e-9)
  np.testing.assert_allclose(B.encode_boxes(p, p), 0.0, atol=1e-12)
  # Known value: same centre, twice the inclusive width.
  np.testing.assert_allclose(B.encode_boxes([[0, 0, 9, 9]], [[-5, 0, 14, 9]]), [[0, 0, np.log(2), 0]])
  # Multi-class deltas keep their layout.
  assert B.decode_boxes(p, np.tile(d, (1, 3))).shape == (50, 12)


def test_clip_and_validate():
  clipped = B.clip_boxes(np.array([[-5, -1, 600, 30]], np.float32), height=20, width=500)
  np.testing.assert_array_equal(clipped, [[0, 0, 499, 19]])
  assert clipped.dtype == np.float32
  with pytest.raises(ValueError, match="NaN"):
    B.validate_boxes([[0, 0, np.nan, 3]])
  with pytest.raises(ValueError, match="inverted"):
    B.validate_boxes([[0, 0, 5, 5], [4, 0, 3, 3]])
  with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
    B.validate_boxes(np.zeros((3, 5)))
  with pytest.raises(ValueError, match="outside"):
    B.validate_boxes([[0, 0, 10, 10]], height=10, width=20)
  assert B.validate_boxes([[0, 0, 9, 9]], height=10, width=10).shape == (1, 4)


def test_tfds_conversion_roundtrip():
  h, w = 375, 500
  pix = np.array([[0, 0, 499, 374], [47, 239, 194, 370]], np.float64)
  norm = B.pixel_to_tfds(pix, h, w)
  # VOC XML corners are 1-based: xmin 48 -> 48 / 500.
  np.testing.assert_allclose(norm[1], [240 / h, 48 / w, 371 / h, 195 / w])
  np.testing.assert_allclose(B.tfds_to_pixel(norm, h, w, round_coords=True), pix)
  np.testing.assert_allclose(B.tfds_to_pixel(B.pixel_to_tfds(pix, h, w, False), h, w, False), pix)


def greedy_nms_reference(boxes, scores, threshold, max_keep=None):
  """One box at a time: keep the best remaining box, drop every box whose '+1' IoU with it is
  strictly above the threshold, repeat. Ties in score keep input order."""
  boxes = np.asarray(boxes, np.float64)
  remaining = sorted(range(len(boxes)), key=lambda i: -scores[i])  # sorted() is stable
  keep = []
  while remaining and (max_keep is None or len(keep) < max_keep):
    best, remaining = remaining[0], remaining[1:]
    keep.append(best)
    a = boxes[best]
    survivors = []
    for j in remaining:
      b = boxes[j]
      iw = max(min(a[2], b[2]) - max(a[0], b[0]) + 1.0, 0.0)
      ih = max(min(a[3], b[3]) - max(a[1], b[1]) + 1.0, 0.0)
      inter = iw * ih
      union = (a[2] - a[0] + 1.0) * (a[3] - a[1] + 1.0) + (b[2] - b[0] + 1.0) * (b[3] - b[1] + 1.0) - inter
      if not (union > 0 and inter / union > threshold):
        survivors.append(j)
    remaining = survivors
  return np.asarray(keep, np.int64)


@pytest.mark.parametrize("seed", range(40))
def test_nms_equals_one_box_at_a_time_greedy(seed):
  """Random small cases, more boxes than one block, tied scores, integer and fractional boxes,
  every threshold from 0 to 1 and a max_keep, against the hand-written greedy loop."""
  rng = np.random.default_rng(seed)
  n = int(rng.integers(0, 150))
  corner = rng.uniform(0, 80, (n, 2))
  boxes = np.concatenate([corner, corner + rng.uniform(0, 50, (n, 2))], 1)
  if seed % 2:
    boxes = np.round(boxes)
  scores = rng.integers(0, 10, n).astype(np.float64) if seed % 3 == 0 else rng.random(n)
  threshold = float(rng.choice([0.0, 0.1, 0.3, 0.5, 0.7, 1.0]))
  max_keep = None if seed % 4 else int(rng.integers(0, 30))
  got = B.nms(boxes, scores, threshold, max_keep)
  assert got.dtype == np.int64
  np.testing.assert_array_equal(got, greedy_nms_reference(boxes, scores, threshold, max_keep))


def test_nms_chain_inside_one_block():
  """A chain where each box suppresses the next: the block's fixed point must follow the greedy
  order (keep 0, drop 1, keep 2, ...), not drop every box that has any suppressor."""
  boxes = np.array([[10 * i, 0, 10 * i + 14, 9] for i in range(40)], np.float64)  # neighbours: IoU 50 / 250 = 0.2
  scores = np.linspace(1.0, 0.5, 40)
  np.testing.assert_array_equal(B.nms(boxes, scores, threshold=0.1), np.arange(0, 40, 2))
  np.testing.assert_array_equal(B.nms(boxes, scores, threshold=0.1),
                                greedy_nms_reference(boxes, scores, 0.1))
