"""The trained detection system as one object: fine-tuned head, per-class SVMs, box regressors.

``DetectionSystem.detect(image)`` runs proposals, window features, SVM scores on fine-tuned fc7,
per-class box regression, clipping and per-class NMS on one image. ``detect_windows`` does the
part after the features (the test-time loop of both SPP-net and the R-CNN baseline goes through
it), ``evaluate`` scores a stream of images with VOC07 AP. Labels are 0..K-1 throughout.

Saved with orbax under ``workdir/system/``, one item per trained part (``head``, ``svms``,
``bbox``), so the orchestrator can skip each part that exists; :meth:`DetectionSystem.restore`
reads them back together with the workdir's ``config.json`` (which names the trunk).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import warnings
from typing import Any, Iterable, Sequence

import ml_collections
import numpy as np

from sppnet_jax.detection import bbox_regression, boxes as box_ops, cache, data as det_data, features as feats
from sppnet_jax.detection import svm as svm_lib, voc_eval
from sppnet_jax.detection.trunk import Trunk, load_trunk

SYSTEM_DIR = "system"
PARTS = ("head", "svms", "bbox")


# ------------------------------------------------------------------------------------- orbax items

def part_path(workdir: str | os.PathLike, part: str) -> pathlib.Path:
  if part not in PARTS:
    raise ValueError(f"part must be one of {PARTS}; got {part!r}.")
  return pathlib.Path(workdir).resolve() / SYSTEM_DIR / part


def _svms_tree(s: svm_lib.LinearSVMs) -> dict:
  return {"weights": s.weights, "biases": s.biases, "feature_scale": np.float64(s.feature_scale),
          "stats": {k: np.asarray(v) for k, v in s.stats.items()}}


def _svms_from(tree: dict) -> svm_lib.LinearSVMs:
  return svm_lib.LinearSVMs(np.asarray(tree["weights"]), np.asarray(tree["biases"]), float(tree["feature_scale"]),
                            {k: np.asarray(v) for k, v in (tree.get("stats") or {}).items()})


def _bbox_tree(r: bbox_regression.BoxRegressor) -> dict:
  return {f.name: (np.float64(getattr(r, f.name)) if f.name == "feature_scale" else np.asarray(getattr(r, f.name)))
          for f in dataclasses.fields(r)}


def _bbox_from(tree: dict) -> bbox_regression.BoxRegressor:
  kw = {k: np.asarray(v) for k, v in tree.items()}
  kw["feature_scale"] = float(kw["feature_scale"])
  return bbox_regression.BoxRegressor(**kw)


_TO_TREE = {"head": lambda h: h, "svms": _svms_tree, "bbox": _bbox_tree}
_FROM_TREE = {"head": lambda t: t, "svms": _svms_from, "bbox": _bbox_from}


def save_part(workdir: str | os.PathLike, part: str, value: Any) -> pathlib.Path:
  """Writes one trained part with orbax (replacing an older copy) and returns its path."""
  import orbax.checkpoint as ocp
  path = part_path(workdir, part)
  path.parent.mkdir(parents=True, exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path, _TO_TREE[part](value), force=True)
  checkpointer.wait_until_finished()
  return path


def load_part(workdir: str | os.PathLike, part: str) -> Any:
  """Reads one trained part written by :func:`save_part`."""
  import orbax.checkpoint as ocp
  path = part_path(workdir, part)
  if not path.exists():
    raise FileNotFoundError(f"{path} does not exist; train the detection system first ('sppnet detect --config ...').")
  return _FROM_TREE[part](ocp.StandardCheckpointer().restore(path))


# ------------------------------------------------------------------------------------- the system

@dataclasses.dataclass
class DetectionSystem:
  """A trained detector (see the module docstring).

  Attributes:
    head: fine-tuned fc6/fc7 (and fc8) parameters.
    svms: per-class linear SVMs on fine-tuned fc7.
    regressor: per-class box regressors on pooled conv5, or None.
    class_names: label k is ``class_names[k]``.
    config: the detection config (``proposals``, ``test``, ``features`` settings).
    trunk: the conv trunk features are computed with (needed by :meth:`detect` only).
  """
  head: Any
  svms: svm_lib.LinearSVMs
  regressor: bbox_regression.BoxRegressor | None
  class_names: tuple[str, ...]
  config: ml_collections.ConfigDict
  trunk: Trunk | None = None

  @property
  def window_batch(self) -> int:
    return int(self.config.features.window_batch)

  def window_scores(self, pool5: np.ndarray) -> np.ndarray:
    """(R, K) SVM scores of windows on fine-tuned fc7, from their pooled features (R, D)."""
    fc7 = feats.fc7_features(self.head, pool5, self.window_batch)
    return svm_lib.score(fc7, self.svms)

  def detect_windows(self, pool5: np.ndarray, windows: np.ndarray, image_hw: Sequence[int],
                     use_regressor: bool = True, scores: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Detections of one image from its windows' pooled features.

    SVM scores on fine-tuned fc7 (``scores``, when already computed by :meth:`window_scores`),
    per-class box regression (if a regressor is present and ``use_regressor``), clipping,
    per-class NMS (``config.test.nms``) and at most ``config.test.max_per_class`` per class.
    A class without an SVM (``svms.trained`` False) has no detections.
    Returns ``{'boxes' (M, 4), 'scores' (M,), 'labels' (M,)}``.
    """
    h, w = int(image_hw[0]), int(image_hw[1])
    num_classes = self.svms.weights.shape[1]
    t = self.config.test
    parts: dict[str, list] = {"boxes": [], "scores": [], "labels": []}
    if len(windows):
      scores = self.window_scores(pool5) if scores is None else scores
      reg = self.regressor if use_regressor else None
      boxes_k = (bbox_regression.apply(reg, pool5, windows) if reg is not None
                 else np.repeat(np.asarray(windows, np.float64)[:, None], num_classes, 1))
      for c in np.flatnonzero(self.svms.trained):
        b = box_ops.clip_boxes(boxes_k[:, c], h, w)
        s = scores[:, c]
        sel = np.flatnonzero(s > float(t.score_threshold))
        keep = sel[box_ops.nms(b[sel], s[sel], float(t.nms), int(t.max_per_class))]
        parts["boxes"].append(b[keep])
        parts["scores"].append(s[keep])
        parts["labels"].append(np.full(len(keep), c, np.int64))
    if not parts["boxes"]:
      return {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, np.int64)}
    return {k: np.concatenate(v) for k, v in parts.items()}

  def detect(self, image: np.ndarray, proposals: np.ndarray | None = None,
             name: str = "image") -> dict[str, np.ndarray]:
    """Detections of one uint8 RGB image (proposals by selective search unless given); ``name``
    (its file, or its index) is what an error about the image calls it."""
    if self.trunk is None:
      raise ValueError("this DetectionSystem has no trunk; restore it with DetectionSystem.restore(workdir).")
    image = det_data.check_image(image, name)
    windows = cache.image_proposals(image, self.config, proposals)
    wf = feats.window_features(self.trunk.model, self.trunk.params, image, windows, self.trunk.settings,
                               with_fc7=False)
    return self.detect_windows(wf.pool5, windows, image.shape[:2])

  def save(self, workdir: str | os.PathLike) -> None:
    """Writes head, SVMs and box regressors with orbax under ``workdir/system/``."""
    save_part(workdir, "head", self.head)
    save_part(workdir, "svms", self.svms)
    if self.regressor is not None:
      save_part(workdir, "bbox", self.regressor)

  @classmethod
  def restore(cls, workdir: str | os.PathLike, with_trunk: bool = True) -> "DetectionSystem":
    """The system trained in ``workdir`` (its ``config.json`` and ``system/`` items)."""
    workdir = pathlib.Path(workdir)
    missing = [n for n in ("config.json", f"{SYSTEM_DIR}/head", f"{SYSTEM_DIR}/svms") if not (workdir / n).exists()]
    if missing:
      raise FileNotFoundError(f"{workdir} is not a trained detection workdir (no {missing[0]}); run "
                              "'sppnet detect --config ... --workdir DIR' first.")
    config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    regressor = load_part(workdir, "bbox") if part_path(workdir, "bbox").exists() else None
    return cls(head=load_part(workdir, "head"), svms=load_part(workdir, "svms"), regressor=regressor,
               class_names=det_data.class_names(config.dataset), config=config,
               trunk=load_trunk(config) if with_trunk else None)


# ------------------------------------------------------------------------------------- evaluation

def voc_metrics(detections: Sequence[dict], gts: Sequence[dict], class_names: Sequence[str],
                trained: Sequence[bool] | None = None) -> dict:
  """VOC07 AP per class and mAP; detections and GT both carry labels 0..K-1.

  A class outside ``trained`` (no SVM; None: every class has one) or with no non-difficult test GT
  has an undefined AP (NaN) and is left out of the mAP; the result names both kinds
  (``no_svm``, ``no_test_positives``) and counts the classes the mAP averages (``classes_in_mAP``).
  """
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    res = voc_eval.evaluate_detections(list(detections), list(gts), len(class_names), class_names,
                                       evaluated=trained)
  has_svm = np.ones(len(class_names), bool) if trained is None else np.asarray(trained, bool)
  return {"mAP": res["mAP"], "ap": {k: float(v) for k, v in res["ap_by_name"].items()},
          "npos": {n: int(x) for n, x in zip(class_names, res["npos"])}, "classes_in_mAP": res["num_in_mAP"],
          "no_svm": [n for n, ok in zip(class_names, has_svm) if not ok],
          "no_test_positives": [n for n, ok, x in zip(class_names, has_svm, res["npos"]) if ok and x == 0]}


def left_out_note(metrics: dict) -> str:
  """How many classes a :func:`voc_metrics` mAP averages and why the others are left out ('' when none is)."""
  parts = [f"{len(metrics[key])} {why} ({', '.join(metrics[key])})"
           for key, why in (("no_svm", "without an SVM (no training positive)"),
                            ("no_test_positives", "without a test positive"))
           if metrics.get(key)]
  if not parts:
    return ""
  return f"mAP over {metrics['classes_in_mAP']} of {len(metrics['ap'])} classes; left out: {'; '.join(parts)}"


def bootstrap_map(detections: Sequence[dict], gts: Sequence[dict], class_names: Sequence[str],
                  num_resamples: int = 1000, seed: int = 0, level: float = 0.95,
                  trained: Sequence[bool] | None = None) -> tuple[float, float]:
  """Percentile bootstrap interval of the mAP over test images (images resampled with replacement,
  seeded: the same call gives the same interval); ``trained`` as in :func:`voc_metrics`."""
  from sppnet_jax import stats
  if len(detections) != len(gts):
    raise ValueError(f"{len(detections)} detection sets for {len(gts)} images; give one per image.")
  statistic = lambda idx: voc_metrics([detections[i] for i in idx], [gts[i] for i in idx], class_names,
                                      trained)["mAP"]
  return stats.bootstrap_interval(np.arange(len(gts)), statistic, num_resamples, seed, level)


def evaluate(system: DetectionSystem, images: Iterable[tuple[np.ndarray, np.ndarray, Sequence[int], dict]]) -> dict:
  """The test-time loop: ``images`` yields ``(pool5, windows, image_hw, gt)`` one image at a time
  (``gt``: ``boxes``, ``labels``, ``difficult``).

  Returns ``{'ftfc7': metrics, 'detections': [...], 'images': n}`` and, with a regressor,
  ``'ftfc7_bb'`` and ``'detections_bb'``; the metrics are :func:`voc_metrics` with the classes that
  have an SVM (``system.svms.trained``).
  """
  dets, dets_bb, gts = [], [], []
  for pool5, windows, image_hw, gt in images:
    scores = system.window_scores(pool5) if len(windows) else None  # once for both variants
    dets.append(system.detect_windows(pool5, windows, image_hw, use_regressor=False, scores=scores))
    if system.regressor is not None:
      dets_bb.append(system.detect_windows(pool5, windows, image_hw, use_regressor=True, scores=scores))
    gts.append(gt)
  trained = system.svms.trained
  out = {"ftfc7": voc_metrics(dets, gts, system.class_names, trained), "detections": dets, "gts": gts,
         "images": len(gts)}
  if system.regressor is not None:
    out["ftfc7_bb"] = voc_metrics(dets_bb, gts, system.class_names, trained)
    out["detections_bb"] = dets_bb
  return out


def cached_test_images(paths: Iterable[pathlib.Path]):
  """``(pool5, windows, image_hw, gt)`` of cached test images, read one at a time."""
  for p in paths:
    c = cache.read(p)
    yield c["pool5"], c["windows"], c["image_hw"], cache.gt_of(c)
