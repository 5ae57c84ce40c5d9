"""Tests of sppnet_jax.detection.voc_eval against hand-computed APs and a plain-loop devkit re-implementation."""

import warnings

import numpy as np
import pytest

from sppnet_jax.detection import voc_eval as V


def _grid_gt(n: int, difficult=None) -> dict:
  """n disjoint 20x20 GT boxes of class 0 on a row."""
  boxes = np.array([[30 * i, 0, 30 * i + 19, 19] for i in range(n)], np.float64)
  diff = np.zeros(n, bool) if difficult is None else np.asarray(difficult, bool)
  return {"boxes": boxes, "labels": np.zeros(n, np.int64), "difficult": diff}


def _dets_from_pattern(pattern: str) -> dict:
  """'T' = a detection exactly on the next unmatched GT, 'F' = a detection far from every GT.

  Scores decrease along the pattern.
  """
  boxes, gt_i = [], 0
  for c in pattern:
    if c == "T":
      boxes.append([30 * gt_i, 0, 30 * gt_i + 19, 19])
      gt_i += 1
    else:
      boxes.append([1000, 1000, 1019, 1019])
  n = len(pattern)
  return {"boxes": np.array(boxes, np.float64), "scores": np.linspace(1.0, 0.1, n),
          "labels": np.zeros(n, np.int64)}


def test_hand_computed_npos10_and_arange_trap():
  gt, det = _grid_gt(10), _dets_from_pattern("TTTFTTTTFF")
  # recall .1 .2 .3 .3 .4 .5 .6 .7 .7 .7 ; precision 1 1 1 3/4 4/5 5/6 6/7 7/8 7/9 7/10
  # t = 0..0.3 -> 1 ; t = 0.4..0.7 -> 7/8 ; t = 0.8..1 -> 0.
  res = V.evaluate_class([det], [gt], 0)
  assert res["npos"] == 10
  assert res["ap"] == pytest.approx((4 + 4 * 7 / 8) / 11)
  # np.arange thresholds: 0.30000000000000004 is missed by recall 0.3 (max over later = 7/8),
  # 0.7000000000000001 by recall 0.7 (-> 0).
  trap = V.evaluate_class([det], [gt], 0, arange_thresholds=True)
  assert trap["ap"] == pytest.approx((3 + 4 * 7 / 8) / 11)


def test_hand_computed_npos5():
  gt, det = _grid_gt(5), _dets_from_pattern("TFTTFT")
  # recall .2 .2 .4 .6 .6 .8 ; precision 1 1/2 2/3 3/4 3/5 4/6.
  # t 0..0.2 -> 1 ; 0.3..0.6 -> 3/4 ; 0.7, 0.8 -> 2/3 ; 0.9, 1 -> 0.
  res = V.evaluate_class([det], [gt], 0)
  assert res["ap"] == pytest.approx((3 + 4 * 0.75 + 2 * 2 / 3) / 11)
  np.testing.assert_allclose(res["recall"], [.2, .2, .4, .6, .6, .8])
  # Trap: recall 0.6 misses 0.6000000000000001 -> that threshold gets 2/3.
  trap = V.evaluate_class([det], [gt], 0, arange_thresholds=True)
  assert trap["ap"] == pytest.approx((3 + 3 * 0.75 + 3 * 2 / 3) / 11)
  # Area AP: 0.2*1 + 0.2*3/4 + 0.2*3/4 + 0.2*2/3.
  area = V.evaluate_class([det], [gt], 0, use_07=False)
  assert area["ap"] == pytest.approx(0.2 + 0.15 + 0.15 + 0.2 * 2 / 3)


def test_difficult_match_is_ignored():
  gt = _grid_gt(4, difficult=[False, False, False, True])
  base = _dets_from_pattern("TFT")
  ref = V.evaluate_class([base], [gt], 0)
  # Add a top-scoring detection on the difficult GT (index 3): ignored, AP unchanged.
  extra = {"boxes": np.vstack([[[90, 0, 109, 19]], base["boxes"]]), "scores": np.r_[2.0, base["scores"]],
           "labels": np.r_[0, base["labels"]]}
  res = V.evaluate_class([extra], [gt], 0)
  assert res["npos"] == 3
  assert not res["tp"][0] and not res["fp"][0]
  assert res["ap"] == pytest.approx(ref["ap"])
  # A detection ignored first gives precision 0 (not NaN) at that rank.
  assert res["precision"][0] == 0.0


def test_duplicate_is_false_positive():
  gt = _grid_gt(2)
  det = {"boxes": np.array([[0, 0, 19, 19], [1, 0, 19, 19], [30, 0, 49, 19]], np.float64),
         "scores": np.array([0.9, 0.8, 0.7]), "labels": np.zeros(3, np.int64)}
  res = V.evaluate_class([det], [gt], 0)
  np.testing.assert_array_equal(res["tp"], [True, False, True])
  np.testing.assert_array_equal(res["fp"], [False, True, False])
  # recall .5 .5 1 ; precision 1 .5 2/3 -> t<=.5: 1 ; t>.5: 2/3.
  assert res["ap"] == pytest.approx((6 + 5 * 2 / 3) / 11)


def test_threshold_is_inclusive_and_strict_option():
  gt = {"boxes": np.array([[0, 0, 9, 9]], np.float64), "labels": np.array([0])}
  det = {"boxes": np.array([[0, 0, 9, 19]], np.float64), "scores": np.array([1.0]), "labels": np.array([0])}
  assert V.evaluate_class([det], [gt], 0)["ap"] == pytest.approx(1.0)  # IoU exactly 0.5 counts
  assert V.evaluate_class([det], [gt], 0, strict_threshold=True)["ap"] == 0.0


def test_no_positives_gives_nan_with_warning():
  gt = {"boxes": np.zeros((0, 4)), "labels": np.zeros(0, np.int64)}
  det = {"boxes": np.array([[0, 0, 9, 9]], np.float64), "scores": np.array([1.0]), "labels": np.array([0])}
  with pytest.warns(RuntimeWarning, match="no non-difficult"):
    res = V.evaluate_class([det], [gt], 0)
  assert np.isnan(res["ap"])


def _py_faster_rcnn_voc07_ap(rec, prec):
  """py-faster-rcnn's ``voc_ap(rec, prec, use_07_metric=True)``, transcribed (with i / 10 thresholds)."""
  ap = 0.0
  for t in np.arange(11) / 10:
    p = 0.0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
    ap += p / 11.0
  return ap


def test_no_positives_follows_the_reference_rule_on_request():
  """npos = 0: recall is 0/0 = NaN as in the devkit and py-faster-rcnn; no recall then reaches a
  threshold, so their AP is 0 and counts in the mAP. The default reports it as undefined instead
  and leaves it out of the mAP; no_positives='devkit' gives the references' 0."""
  gt = {"boxes": np.array([[0, 0, 9, 9], [50, 50, 59, 59]], np.float64), "labels": np.array([0, 1]),
        "difficult": np.array([False, True])}  # class 1: one difficult GT only, so npos = 0
  det = {"boxes": np.array([[0, 0, 9, 9], [50, 50, 59, 59], [80, 80, 89, 89]], np.float64),
         "scores": np.array([3.0, 2.0, 1.0]), "labels": np.array([0, 1, 1])}
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    tp = np.cumsum([0.0, 0.0])  # the difficult match is ignored, the far one is an FP
    fp = np.cumsum([0.0, 1.0])
    ref_rec, ref_prec = tp / 0.0, tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
  assert np.isnan(ref_rec).all()
  reference = _py_faster_rcnn_voc07_ap(ref_rec, ref_prec)
  assert reference == 0.0
  devkit = V.evaluate_class([det], [gt], 1, no_positives="devkit")
  assert devkit["npos"] == 0 and np.isnan(devkit["recall"]).all() and devkit["ap"] == reference
  np.testing.assert_array_equal(devkit["precision"], ref_prec)
  with pytest.warns(RuntimeWarning, match="undefined"):
    default = V.evaluate_class([det], [gt], 1)
  assert np.isnan(default["ap"]) and np.isnan(default["recall"]).all()
  both = V.evaluate_detections([det], [gt], 2, no_positives="devkit")
  assert both["ap"].tolist() == [1.0, 0.0] and both["mAP"] == 0.5 and both["num_in_mAP"] == 2
  with pytest.warns(RuntimeWarning, match=r"class 1 \(b\) has no non-difficult"):
    left_out = V.evaluate_detections([det], [gt], 2, class_names=["a", "b"])
  assert left_out["mAP"] == 1.0 and left_out["num_in_mAP"] == 1 and np.isnan(left_out["ap"][1])
  with pytest.raises(ValueError, match="no_positives"):
    V.evaluate_class([det], [gt], 1, no_positives="zero")


def test_classes_not_evaluated_are_left_out_of_the_map():
  gt = {"boxes": np.array([[0, 0, 9, 9], [50, 50, 59, 59]], np.float64), "labels": np.array([0, 1])}
  det = {"boxes": np.array([[0, 0, 9, 9], [50, 50, 59, 59]], np.float64), "scores": np.array([1.0, 0.0]),
         "labels": np.array([0, 1])}
  res = V.evaluate_detections([det], [gt], 2, evaluated=[True, False])
  assert res["ap"][0] == 1.0 and np.isnan(res["ap"][1]) and res["npos"].tolist() == [1, 1]
  assert res["mAP"] == 1.0 and res["num_in_mAP"] == 1
  with pytest.raises(ValueError, match="evaluated has 1 entries"):
    V.evaluate_detections([det], [gt], 2, evaluated=[True])


def test_bad_input_messages():
  with pytest.raises(ValueError, match="one entry per image"):
    V.evaluate_class([], [_grid_gt(1)], 0)
  with pytest.raises(ValueError, match="lacks key 'scores'"):
    V.evaluate_class([{"boxes": np.zeros((0, 4)), "labels": []}], [_grid_gt(1)], 0)


# ---- independent plain-loop re-implementation of VOCevaldet.m ----

def _devkit_ap(dets, gts, cls):
  npos = 0
  gt_used = []
  for g in gts:
    npos += sum(1 for l, d in zip(g["labels"], g["difficult"]) if l == cls and not d)
    gt_used.append([False] * len(g["labels"]))
  flat = []
  for i, d in enumerate(dets):
    for j in range(len(d["scores"])):
      if d["labels"][j] == cls:
        flat.append((float(d["scores"][j]), i, j))
  flat = sorted(flat, key=lambda x: -x[0])  # Python's sort is stable
  tp, fp = [], []
  for _, i, j in flat:
    bb = dets[i]["boxes"][j]
    ovmax, jmax = -1e300, -1
    for k in range(len(gts[i]["labels"])):
      if gts[i]["labels"][k] != cls:
        continue
      bbgt = gts[i]["boxes"][k]
      bi = [max(bb[0], bbgt[0]), max(bb[1], bbgt[1]), min(bb[2], bbgt[2]), min(bb[3], bbgt[3])]
      iw, ih = bi[2] - bi[0] + 1, bi[3] - bi[1] + 1
      if iw > 0 and ih > 0:
        ua = (bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1) + (bbgt[2] - bbgt[0] + 1) * (bbgt[3] - bbgt[1] + 1) - iw * ih
        ov = iw * ih / ua
        if ov > ovmax:
          ovmax, jmax = ov, k
    if ovmax >= 0.5:
      if gts[i]["difficult"][jmax]:
        tp.append(0); fp.append(0)
      elif not gt_used[i][jmax]:
        gt_used[i][jmax] = True
        tp.append(1); fp.append(0)
      else:
        tp.append(0); fp.append(1)
    else:
      tp.append(0); fp.append(1)
  ctp = cfp = 0
  rec, prec = [], []
  for a, b in zip(tp, fp):
    ctp += a; cfp += b
    rec.append(ctp / npos)
    prec.append(ctp / max(ctp + cfp, np.finfo(float).eps))
  ap = 0.0
  for t10 in range(11):
    t = t10 / 10
    ps = [p for r, p in zip(rec, prec) if r >= t]
    ap += (max(ps) if ps else 0.0) / 11
  return ap


def test_random_against_plain_loop_devkit():
  rng = np.random.default_rng(7)
  num_classes = 3
  gts, dets = [], []
  for _ in range(25):
    g = int(rng.integers(0, 6))
    xy = rng.uniform(0, 300, (g, 2))
    wh = rng.uniform(15, 120, (g, 2))
    gboxes = np.concatenate([xy, xy + wh], 1)
    glabels = rng.integers(0, num_classes, g)
    gts.append({"boxes": gboxes, "labels": glabels, "difficult": rng.random(g) < 0.2})
    n = int(rng.integers(0, 12))
    src = rng.integers(0, max(g, 1), n)
    jitter = rng.normal(0, 12, (n, 4))
    base = gboxes[src] if g else rng.uniform(0, 300, (n, 4))
    dboxes = np.sort((base + jitter).reshape(n, 2, 2), axis=1).reshape(n, 4)
    dlabels = np.where(rng.random(n) < 0.8, glabels[src] if g else 0, rng.integers(0, num_classes, n))
    # Coarse scores so that ties occur and the stable order matters.
    dets.append({"boxes": dboxes, "scores": np.round(rng.random(n), 1), "labels": dlabels})
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    res = V.evaluate_detections(dets, gts, num_classes)
  for c in range(num_classes):
    assert res["ap"][c] == pytest.approx(_devkit_ap(dets, gts, c), abs=1e-12)
  assert res["mAP"] == pytest.approx(np.mean(res["ap"]))
  assert 0.05 < res["mAP"] < 0.95  # the case is not degenerate
