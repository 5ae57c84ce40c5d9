"""Detection end to end on hand-set features, head, SVMs and box regressor, so the mAP is known exactly.

The pooled features are 2-d and the fine-tuned head is the identity (fc6 = fc7 = I, biases 0), so
fc7 is the feature vector itself; the SVMs score class 0 by the first feature and class 1 by the
second (the other ten classes score 0, below ``test.score_threshold = 0``: no detections). The
box regressor leaves class 0 alone and moves every class-1 box right by half its width.

The orchestrator finds the system parts and the feature cache already written, so it runs only
the test stage: fc7, SVM scores, regression, clipping, per-class NMS, VOC07 AP, metrics.json.

Image 0 (GT: class 0 at A = [10, 10, 49, 49], class 1 at B = [60, 60, 89, 89]):
  A itself, class-0 score 3 (TP); [12, 12, 51, 51], score 2.5 (IoU 0.82 with the first: removed by NMS);
  [60, 10, 89, 39], score 2 (FP); [45, 60, 74, 89], class-1 score 4 (IoU 1/3 with B: FP; regressed
  15 px right onto B: TP).
Image 1 (GT: class 0 at C = [20, 20, 59, 59], and a difficult class-0 box D = [65, 65, 94, 94]):
  C itself, class-0 score 1 (TP); D itself, score 2.2 (on a difficult box: ignored);
  [5, 70, 34, 99], class-1 score 1 (FP with or without regression).

Class 0, ranked: TP (3), FP (2), TP (1) with 2 positives: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1.
VOC07 11-point AP = (6 * 1 + 5 * 2/3) / 11 = 28/33. Class 1: AP 0 without regression (both FP),
1 with it (the TP ranks first). mAP over the classes with positives: 14/33 (ftfc7), 61/66 (ftfc7 bb).
"""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from sppnet_jax import run_files
from sppnet_jax.detection import bbox_regression, cache, diagnose, pipeline, svm as svm_lib, system
from sppnet_jax.detection.config import detection_config
from sppnet_jax.detection.data import class_names as data_names
from sppnet_jax.detection.trunk import load_trunk

K = 12  # the synthetic scenes' classes


def _config():
  c = detection_config("synthetic", scales=(128,), num_train=1, num_test=2)
  c.test_split = "validation"
  c.trunk.width = 0.125
  c.trunk.fc_width = 32
  c.test.score_threshold = 0.0
  return c


def _write_image(path, windows, pool5, gt_boxes, gt_labels, gt_difficult):
  run_files.write_npz(path, windows=np.asarray(windows, np.float32), num_gt=np.int64(0),
                     pool5=np.asarray(pool5, np.float16), scale_index=np.zeros(len(windows), np.int32),
                     gt_boxes=np.asarray(gt_boxes, np.float32), gt_labels=np.asarray(gt_labels, np.int64),
                     gt_difficult=np.asarray(gt_difficult, bool), image_hw=np.array([100, 100]), id=np.asarray("x"))


def _hand_set_system(workdir):
  eye = jnp.eye(2, dtype=jnp.float32)
  zeros = jnp.zeros(2, jnp.float32)
  head = {"fc6": {"kernel": eye, "bias": zeros}, "fc7": {"kernel": eye, "bias": zeros},
          "fc8": {"kernel": jnp.zeros((2, K + 1)), "bias": jnp.zeros(K + 1)}}
  weights = np.zeros((2, K), np.float32)
  weights[0, 0] = weights[1, 1] = 1.0
  svms = svm_lib.LinearSVMs(weights, np.zeros(K, np.float32), 1.0, {"positives": np.zeros(K, np.int64)})
  mean = np.zeros((K, 4))
  mean[1, 0] = 0.5  # dx = 0.5: half a width to the right
  trained = np.zeros(K, bool)
  trained[1] = True
  reg = bbox_regression.BoxRegressor(np.zeros((K, 2, 4), np.float32), np.zeros((K, 4), np.float32), mean,
                                     np.tile(np.eye(4), (K, 1, 1)), 1.0, trained)
  for part, value in (("head", head), ("svms", svms), ("bbox", reg)):
    system.save_part(workdir, part, value)


def test_hand_set_system_gives_the_hand_computed_map(tmp_path):
  config = _config()
  trunk = load_trunk(config)
  train_dir = cache.split_dir(tmp_path, config, trunk, "train")
  test_dir = cache.split_dir(tmp_path, config, trunk, "test")
  train_dir.mkdir(parents=True)
  test_dir.mkdir(parents=True)
  _write_image(train_dir / "000000.npz", np.zeros((0, 4)), np.zeros((0, 2)), np.zeros((0, 4)), [], [])
  _write_image(test_dir / "000000.npz",
               [[10, 10, 49, 49], [12, 12, 51, 51], [60, 10, 89, 39], [45, 60, 74, 89]],
               [[3, 0], [2.5, 0], [2, 0], [0, 4]],
               [[10, 10, 49, 49], [60, 60, 89, 89]], [0, 1], [False, False])
  _write_image(test_dir / "000001.npz",
               [[20, 20, 59, 59], [65, 65, 94, 94], [5, 70, 34, 99]],
               [[1, 0], [2.2, 0], [0, 1]],
               [[20, 20, 59, 59], [65, 65, 94, 94]], [0, 0], [False, True])
  _hand_set_system(tmp_path)
  metrics = pipeline.train_and_evaluate_detection(config, tmp_path, log=lambda s: None)

  names = list(data_names("synthetic"))
  assert metrics["ftfc7"]["ap"][names[0]] == pytest.approx(28 / 33, abs=1e-12)
  assert metrics["ftfc7"]["ap"][names[1]] == 0.0 and metrics["ftfc7_bb"]["ap"][names[1]] == 1.0
  assert metrics["ftfc7_bb"]["ap"][names[0]] == pytest.approx(28 / 33, abs=1e-12)
  assert metrics["ftfc7"]["mAP"] == pytest.approx(14 / 33, abs=1e-12)
  assert metrics["ftfc7_bb"]["mAP"] == metrics["mAP"] == pytest.approx(61 / 66, abs=1e-12)
  assert all(np.isnan(metrics["ftfc7"]["ap"][n]) for n in names[2:])
  assert json.loads((tmp_path / "metrics.json").read_text())["mAP"] == pytest.approx(61 / 66, abs=1e-12)

  # The saved detections: class 0 keeps A (3), the FP (2), the difficult one (2.2) and C (1) after NMS;
  # class 1 is the regressed box on B and the regressed FP.
  with np.load(tmp_path / "detections.npz") as z:
    np.testing.assert_allclose(z["000000/boxes"], [[10, 10, 49, 49], [60, 10, 89, 39], [60, 60, 89, 89]])
    np.testing.assert_array_equal(z["000000/labels"], [0, 0, 1])
    np.testing.assert_allclose(z["000000/scores"], [3, 2, 4])
    np.testing.assert_allclose(z["000001/boxes"], [[65, 65, 94, 94], [20, 20, 59, 59], [20, 70, 49, 99]])

  # The same parts restored as one object give the same detections.
  restored = system.DetectionSystem.restore(tmp_path, with_trunk=False)
  c = cache.read(test_dir / "000000.npz")
  det = restored.detect_windows(c["pool5"], c["windows"], c["image_hw"])
  np.testing.assert_allclose(det["boxes"], [[10, 10, 49, 49], [60, 10, 89, 39], [60, 60, 89, 89]])

  # Where the mAP is lost, by hand: 3 objects count (D is difficult); A and C have their own window
  # (IoU 1), B's best window has IoU 1/3: recall 2/3. The windows covering A or C at IoU >= 0.5 are A
  # itself, [12, 12, 51, 51] (IoU 0.82 with A) and C itself, all scored highest for class 0: right.
  # A and C are 40 px on a side.
  found = diagnose.diagnose(tmp_path)
  assert found["objects"] == 3
  assert found["proposal_recall_iou50"] == found["proposal_recall_iou70"] == pytest.approx(2 / 3)
  assert (found["covering_windows"], found["covering_window_accuracy"]) == (3, 1.0)
  assert found["best_window_accuracy_by_object_side"] == {"40-79 px": {"accuracy": 1.0, "objects": 2}}


def test_bootstrap_map_interval():
  names = ("a", "b")
  gt = {"boxes": np.array([[0, 0, 9, 9]]), "labels": np.array([0]), "difficult": np.array([False])}
  det = {"boxes": np.array([[0, 0, 9, 9], [50, 50, 59, 59]]), "scores": np.array([2.0, 1.0]), "labels": np.array([0, 0])}
  # Every resample ranks all true positives (score 2) before all false positives (score 1): AP 1.
  assert system.bootstrap_map([det] * 3, [gt] * 3, names, num_resamples=20) == (1.0, 1.0)
  missed = {"boxes": np.array([[50, 50, 59, 59]]), "scores": np.array([1.0]), "labels": np.array([0])}
  lo, hi = system.bootstrap_map([det, missed], [gt, gt], names, num_resamples=200)
  assert lo == 0.0 and hi == 1.0  # a resample of only the missed image has AP 0, of only the found one AP 1
  with pytest.raises(ValueError, match="one per image"):
    system.bootstrap_map([det], [gt, gt], names)
