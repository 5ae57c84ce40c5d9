"""Tests of the detection SVMs (hard-negative mining) and of bounding-box regression."""

import numpy as np
import pytest

from sppnet_jax.detection import bbox_regression as R
from sppnet_jax.detection import svm as S
from sppnet_jax.detection.boxes import decode_boxes, encode_boxes, iou_matrix

K, D = 3, 16


def _means(rng):
  return rng.normal(0, 1, (K, D)) * 3.0


def _random_boxes(rng, n, size=200):
  xy = rng.uniform(0, size - 60, (n, 2))
  wh = rng.uniform(20, 60, (n, 2))
  return np.concatenate([xy, xy + wh], axis=1)


def _synthetic_image(rng, means, windows=80):
  """Windows overlapping a GT by >= 0.5 carry its class's blob, the rest background noise."""
  g = 2
  gt = _random_boxes(rng, g)
  labels = rng.integers(0, K, g)
  boxes = np.concatenate([_random_boxes(rng, windows - 2 * g),
                          gt + rng.normal(0, 2, (g, 4)), gt + rng.normal(0, 4, (g, 4))])
  boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 5)
  iou = iou_matrix(boxes, gt)
  feats = rng.normal(0, 1, (len(boxes), D))
  best = iou.argmax(1)
  on = iou.max(1) >= 0.5
  feats[on] += means[labels[best[on]]]
  gt_feats = means[labels] + rng.normal(0, 1, (g, D))
  return S.ImageFeatures(feats.astype(np.float32), boxes, gt, labels, np.zeros(g, bool), gt_feats.astype(np.float32))


def test_svm_mining_on_separable_blobs():
  rng = np.random.default_rng(0)
  means = _means(rng)
  images = [_synthetic_image(rng, means) for _ in range(40)]
  svm = S.train_svms([lambda im=im: im for im in images], K, retrain_every=300)
  assert svm.weights.shape == (D, K) and svm.biases.shape == (K,)
  # Mean norm of the scaled features is ~20 on the sample.
  norms = np.linalg.norm(np.concatenate([im.features for im in images]) * svm.feature_scale, axis=1)
  assert norms.mean() == pytest.approx(20.0, rel=1e-5)
  st = svm.stats
  first_image_negatives = 80 - 4
  assert (st["retrains"] >= 2).all()
  assert (st["hard_added"] > first_image_negatives).all()  # mining added negatives after the first image
  assert (st["negatives"] < st["hard_added"]).all()  # easy negatives were evicted
  # Held-out points: blobs must win their class with a positive score, background must score < 0.
  pts = np.concatenate([means[c] + rng.normal(0, 1, (100, D)) for c in range(K)])
  truth = np.repeat(np.arange(K), 100)
  s = S.score(pts.astype(np.float32), svm)
  acc = np.mean((s.argmax(1) == truth) & (s.max(1) > 0))
  bg = S.score(rng.normal(0, 1, (300, D)).astype(np.float32), svm)
  assert acc > 0.95 and np.mean(bg.max(1) < 0) > 0.95


def test_svm_positives_from_windows_and_tuples():
  rng = np.random.default_rng(1)
  means = _means(rng)
  images = []
  for _ in range(10):
    im = _synthetic_image(rng, means, windows=40)
    # No gt_features: append the GT boxes to the windows instead, passed as a plain tuple.
    images.append((np.concatenate([im.features, im.gt_features]), np.concatenate([im.boxes, im.gt_boxes]),
                   im.gt_boxes, im.gt_labels, im.gt_difficult))
  svm = S.train_svms(images, K, retrain_every=100)
  assert svm.stats["positives"].sum() == 20
  with pytest.raises(ValueError, match="outside"):
    S.train_svms([(images[0][0], images[0][1], images[0][2], np.array([0, 5]))], K)


def test_svm_negative_cache_cap_keeps_the_earliest_under_the_zero_model_then_bounds_the_cache():
  """Before the first training every score is 0, so the cap keeps the earliest negatives (stable
  order); the final SVM is then exactly liblinear on the positives and those negatives."""
  rng = np.random.default_rng(5)
  pos = rng.normal(3, 1, (4, D)).astype(np.float32)
  gt = np.array([[0, 0, 40, 40]], np.float32)
  far = np.array([[100, 100, 150, 150]] * 20, np.float32)  # IoU 0 with the GT: every window a negative
  images = [S.ImageFeatures(rng.normal(0, 1, (20, D)).astype(np.float32), far, gt, np.array([0]),
                            gt_features=pos[i:i + 1]) for i in range(3)]
  svm = S.train_svms(images, 1, retrain_every=10**6, max_negatives=30, feature_scale=1.0)
  assert svm.stats["hard_added"][0] == 60 and svm.stats["retrains"][0] == 1
  kept = np.concatenate([images[0].features, images[1].features[:10]])
  w, b = S._fit_one(pos[:3], kept, 0.001, 2.0, 10.0, 10000)
  np.testing.assert_array_equal(svm.weights[:, 0], w)
  assert svm.biases[0] == np.float32(b)
  mined = S.train_svms(images, 1, retrain_every=10, max_negatives=12, feature_scale=1.0)
  assert mined.stats["negatives"][0] <= 12 < mined.stats["hard_added"][0]
  with pytest.raises(ValueError, match="max_negatives"):
    S.train_svms(images, 1, max_negatives=0)


def test_a_class_without_positives_gets_no_svm_and_no_scores():
  """Class 2 has no GT in any image: it is left out of mining and training with a warning naming it,
  instead of an all-zero SVM whose tied scores would earn it an AP."""
  rng = np.random.default_rng(3)
  means = _means(rng)
  images = []
  for _ in range(12):
    im = _synthetic_image(rng, means, windows=40)
    im.gt_labels = im.gt_labels % 2  # classes 0 and 1 only
    images.append(im)
  lines = []
  with pytest.warns(RuntimeWarning, match=r"class 2 \(ring\) has no positive .* no SVM"):
    svm = S.train_svms(images, K, retrain_every=100, log=lines.append, class_names=("a", "b", "ring"))
  np.testing.assert_array_equal(svm.trained, [True, True, False])
  assert svm.stats["positives"][2] == 0 and svm.stats["hard_added"][2] == 0 and svm.stats["retrains"][2] == 0
  assert any("class 2 (ring)" in line for line in lines)
  scores = S.score(images[0].features, svm)
  assert np.isnan(scores[:, 2]).all() and np.isfinite(scores[:, :2]).all()
  # SVMs set by hand (no training stats) count as trained for every class.
  assert S.LinearSVMs(np.zeros((D, K), np.float32), np.zeros(K, np.float32), 1.0).trained.all()


def test_encode_decode_roundtrip():
  rng = np.random.default_rng(2)
  p, t = _random_boxes(rng, 100), _random_boxes(rng, 100)
  np.testing.assert_allclose(decode_boxes(p, encode_boxes(p, t)), t, atol=1e-9)


def _linear_problem(rng, n, d):
  x = rng.normal(0, 1, (n, d))
  w_true = rng.normal(0, 0.05, (d, 4))
  b_true = np.array([0.02, -0.01, 0.05, 0.0])
  windows = _random_boxes(rng, n)
  targets = decode_boxes(windows, x @ w_true + b_true)
  return x, windows, targets


@pytest.mark.parametrize("whiten", ["zca", "std", "none"])
def test_bbox_regression_recovers_linear_map(whiten):
  rng = np.random.default_rng(3)
  x, windows, targets = _linear_problem(rng, 400, 12)
  labels = np.zeros(len(x), np.int64)
  reg = R.fit(x, windows, targets, labels, num_classes=2, lam=1e-8, feature_scale=1.0, whiten=whiten)
  assert reg.trained.tolist() == [True, False]
  x_new, w_new, t_new = _linear_problem(np.random.default_rng(3), 400, 12)  # same map
  np.testing.assert_allclose(R.apply(reg, x_new, w_new, classes=0), t_new, atol=1e-4)
  all_cls = R.apply(reg, x_new, w_new)
  assert all_cls.shape == (400, 2, 4)
  np.testing.assert_allclose(all_cls[:, 1], w_new, atol=1e-9)  # untrained class: unchanged boxes


def test_bbox_primal_equals_dual_and_wide_features():
  rng = np.random.default_rng(4)
  x, windows, targets = _linear_problem(rng, 60, 200)  # D > N: dual form
  labels = np.zeros(60, np.int64)
  primal = R.fit(x, windows, targets, labels, 1, lam=4000.0, solver="primal")
  dual = R.fit(x, windows, targets, labels, 1, lam=4000.0, solver="dual")
  np.testing.assert_allclose(primal.weights, dual.weights, rtol=1e-6, atol=1e-9)
  np.testing.assert_allclose(primal.biases, dual.biases, rtol=1e-6, atol=1e-9)
  tight = R.fit(x, windows, targets, labels, 1, lam=1e-8, feature_scale=1.0)  # interpolates
  np.testing.assert_allclose(R.apply(tight, x, windows, 0), targets, atol=1e-3)


def test_select_training_windows_threshold():
  gt = np.array([[0, 0, 9, 9], [100, 100, 119, 119]], np.float64)
  windows = np.array([[0, 0, 9, 19],    # IoU exactly 0.5: excluded (strict >)
                      [0, 0, 9, 10],    # IoU 10/11
                      [100, 100, 118, 119],
                      [50, 50, 60, 60]], np.float64)
  rows, tgt, lab = R.select_training_windows(windows, gt, [3, 1], [False, True])
  np.testing.assert_array_equal(rows, [1])  # the difficult GT is not a target
  np.testing.assert_array_equal(tgt, gt[:1])
  np.testing.assert_array_equal(lab, [3])
  rows, _, lab = R.select_training_windows(windows, gt, [3, 1], [False, True], use_difficult=True)
  np.testing.assert_array_equal(rows, [1, 2])
  np.testing.assert_array_equal(lab, [3, 1])


def test_fit_from_images_streams_images_and_caps_each_class():
  gt = np.array([[10.0, 10.0, 49.0, 49.0]])
  # Windows with IoU > 0.5 with the GT: the GT itself and two 1-px shifts; the last one is far away.
  windows = np.array([[10, 10, 49, 49], [11, 10, 50, 49], [10, 11, 49, 50], [80, 80, 99, 99]], float)
  rng = np.random.default_rng(0)
  images = [(rng.normal(size=(4, 6)).astype(np.float16), windows, gt, np.array([k % 2]), np.array([False]))
            for k in range(4)]
  calls = []

  def lazy(k):
    return lambda: calls.append(k) or images[k]

  full = R.fit_from_images((lazy(k) for k in range(4)), 2, lam=1.0)
  assert calls == [0, 1, 2, 3]  # read once each, in order
  capped = R.fit_from_images(images, 2, max_per_class=4, lam=1.0)
  # Class 0 has images 0 and 2 (3 windows each): the cap keeps images 0's three and one of image 2's.
  x = np.concatenate([images[0][0][:3], images[2][0][:1]]).astype(np.float64)
  kept_capped = np.concatenate([images[k][0][:3] for k in (0, 1)] + [images[k][0][:1] for k in (2, 3)])
  assert capped.feature_scale == pytest.approx(20.0 / np.linalg.norm(kept_capped.astype(np.float64), axis=1).mean())
  expected = R.fit(x, np.concatenate([windows[:3], windows[:1]]), np.repeat(gt, 4, 0), np.zeros(4, np.int64), 2,
                   lam=1.0, feature_scale=capped.feature_scale)
  np.testing.assert_allclose(capped.weights[0], expected.weights[0], rtol=1e-6)
  assert not np.allclose(full.weights[0], capped.weights[0])
  # The feature scale is the one mean-norm rule: 20 / mean row norm of the kept rows.
  kept = np.concatenate([images[k][0][:3] for k in range(4)]).astype(np.float64)
  assert full.feature_scale == pytest.approx(20.0 / np.linalg.norm(kept, axis=1).mean())
  with pytest.raises(ValueError, match="at least one image"):
    R.fit_from_images([], 2)


def test_mean_norm_scale_over_blocks_and_chunks():
  """Rows of norm 5 and 15 (3-4-0 and 9-12-0 triangles) in equal numbers: mean norm 10, so the
  factor to a mean norm of 20 is 2, whether the rows come as one array longer than a block or as chunks."""
  from sppnet_jax.detection.scaling import BLOCK_ROWS, mean_norm_scale
  rows = np.tile(np.array([[3, 4, 0], [9, 12, 0]], np.float16), (BLOCK_ROWS + 7, 1))
  assert mean_norm_scale(rows) == 2.0
  assert mean_norm_scale([rows[:5], rows[5:]], target_norm=10.0) == 1.0
  with pytest.raises(ValueError, match="all zero"):
    mean_norm_scale(np.zeros((4, 3)))
