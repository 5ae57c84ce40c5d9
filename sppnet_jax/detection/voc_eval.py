"""PASCAL VOC detection average precision, following the official devkit (``VOCevaldet.m``).

Data layout (one dict per image, lists aligned by image):

* ground truth: ``{'boxes': (G, 4), 'labels': (G,) int, 'difficult': (G,) bool}``; ``difficult``
  may be omitted (all False).
* detections: ``{'boxes': (M, 4), 'scores': (M,), 'labels': (M,) int}``.

Boxes are pixel ``[x1, y1, x2, y2]``, inclusive (any consistent origin: IoU is shift-invariant).
Labels are class ids in ``[0, num_classes)``; there is no background class here.

Matching rules for one class (devkit behaviour; the options reproduce other implementations):

1. All detections of the class, over all images, are sorted by descending score with a *stable*
   sort (MATLAB's ``sort``), so ties keep the input order: image order, then order within the
   image.
2. Each detection is compared (IoU with "+1" areas) with every GT box of the class in its
   image, difficult ones included; the GT with the largest IoU is taken, the first one on ties.
3. If that IoU is ``>= 0.5`` (MATLAB ``>=``; py-faster-rcnn and detectron2 use ``>``, choose it with
   ``strict_threshold=True``; they differ only at exactly 0.5): a difficult GT makes the detection
   *ignored* (neither TP nor FP); an unmatched GT makes it a TP and marks the GT; an already
   matched GT makes it an FP (duplicate). Otherwise it is an FP.
4. ``npos`` counts the non-difficult GT of the class. ``recall = tp / npos`` and
   ``precision = tp / max(tp + fp, eps)`` on cumulative counts (the ``eps`` floor, as detectron2,
   turns the 0/0 of leading ignored detections into precision 0 instead of py-faster-rcnn's NaN).
   With ``npos == 0`` the recall is ``0 / 0 = NaN``, as in the devkit, py-faster-rcnn and
   detectron2; there no recall then reaches any threshold, so their VOC07 AP is 0 and counts in
   the mAP. Here such a class's AP is reported as NaN (undefined) with a warning and left out of
   the mAP: a class absent from the test images says nothing about the detector. VOC 2007 test
   holds every class, so the two agree on it; ``no_positives='devkit'`` gives the references' value.
5. VOC07 11-point AP: the mean over ``t = i / 10, i = 0..10`` of ``max(precision[recall >= t])``
   (0 when no recall reaches ``t``). py-faster-rcnn builds the thresholds with
   ``np.arange(0, 1.1, 0.1)``, whose 0.30000000000000004, 0.6000000000000001 and
   0.7000000000000001 make a recall of exactly 0.3, 0.6 or 0.7 fail ``recall >= t``;
   ``arange_thresholds=True`` reproduces that. ``use_07=False`` gives the VOC2010+ area AP.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from sppnet_jax.detection.boxes import as_boxes, iou_matrix

_EPS = float(np.finfo(np.float64).eps)


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07: bool = True,
           arange_thresholds: bool = False) -> float:
  """Average precision from cumulative ``recall`` and ``precision`` (same length, score order).

  ``use_07=True``: VOC2007 11-point interpolation with thresholds ``i / 10`` (or py-faster-rcnn's
  ``np.arange(0, 1.1, 0.1)`` when ``arange_thresholds``). ``use_07=False``: VOC2010+ area under the
  monotone precision envelope with sentinels ``(0, 0)`` and ``(1, 0)``.
  """
  rec = np.asarray(recall, np.float64).reshape(-1)
  prec = np.asarray(precision, np.float64).reshape(-1)
  if rec.shape != prec.shape:
    raise ValueError(f"recall and precision must have the same length; got {rec.shape[0]} and {prec.shape[0]}.")
  if use_07:
    thresholds = np.arange(0.0, 1.1, 0.1) if arange_thresholds else np.arange(11) / 10.0
    # reaches[t, d]: detection d's recall reaches threshold t.
    reaches = rec[None, :] >= thresholds[:, None]
    best = np.where(reaches, prec[None, :], -np.inf).max(axis=1, initial=-np.inf)
    return float(np.where(np.isfinite(best), best, 0.0).sum() / 11.0)
  mrec = np.concatenate([[0.0], rec, [1.0]])
  mpre = np.concatenate([[0.0], prec, [0.0]])
  mpre = np.maximum.accumulate(mpre[::-1])[::-1]
  step = np.flatnonzero(mrec[1:] != mrec[:-1])
  return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))


def _gt_fields(gt: Mapping[str, Any], i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  try:
    boxes = as_boxes(gt["boxes"], f"ground_truth[{i}]['boxes']")
    labels = np.asarray(gt["labels"]).reshape(-1).astype(np.int64)
  except KeyError as e:
    raise ValueError(f"ground_truth[{i}] lacks key {e}; each image needs {{'boxes', 'labels'}} and "
                     "optionally 'difficult'.") from None
  difficult = np.asarray(gt.get("difficult", np.zeros(len(labels), bool))).reshape(-1).astype(bool)
  if not len(boxes) == len(labels) == len(difficult):
    raise ValueError(f"ground_truth[{i}] has {len(boxes)} boxes, {len(labels)} labels and "
                     f"{len(difficult)} difficult flags; they must match.")
  return boxes, labels, difficult


def _det_fields(det: Mapping[str, Any], i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  try:
    boxes = as_boxes(det["boxes"], f"detections[{i}]['boxes']")
    scores = np.asarray(det["scores"], np.float64).reshape(-1)
    labels = np.asarray(det["labels"]).reshape(-1).astype(np.int64)
  except KeyError as e:
    raise ValueError(f"detections[{i}] lacks key {e}; each image needs {{'boxes', 'scores', 'labels'}}.") from None
  if not len(boxes) == len(scores) == len(labels):
    raise ValueError(f"detections[{i}] has {len(boxes)} boxes, {len(scores)} scores and {len(labels)} labels; "
                     "they must match.")
  if np.isnan(scores).any():
    raise ValueError(f"detections[{i}] has NaN scores; drop those detections before evaluation.")
  return boxes, scores, labels


def match_detections(detections: Sequence[Mapping[str, Any]], ground_truth: Sequence[Mapping[str, Any]],
                     class_id: int, iou_threshold: float = 0.5,
                     strict_threshold: bool = False) -> dict[str, np.ndarray | int]:
  """Labels every detection of ``class_id`` as TP, FP or ignored, in devkit order.

  Returns ``{'scores', 'tp', 'fp', 'image', 'index', 'npos'}``: the detections sorted by descending
  score (stable), boolean ``tp``/``fp`` (both False = ignored), the image and within-image index
  of each sorted detection, and the number of non-difficult GT of the class.
  """
  if len(detections) != len(ground_truth):
    raise ValueError(f"got detections for {len(detections)} images but ground truth for "
                     f"{len(ground_truth)}; pass one entry per image (empty dicts/arrays for none).")
  det_img, det_idx, det_scores, best_iou, best_gt = [], [], [], [], []
  gt_difficult, gt_offset, npos = [], 0, 0
  for i, (det, gt) in enumerate(zip(detections, ground_truth)):
    gboxes, glabels, gdiff = _gt_fields(gt, i)
    dboxes, dscores, dlabels = _det_fields(det, i)
    gsel, dsel = glabels == class_id, np.flatnonzero(dlabels == class_id)
    gboxes, gdiff = gboxes[gsel], gdiff[gsel]
    npos += int((~gdiff).sum())
    if dsel.size:
      det_img.append(np.full(dsel.size, i))
      det_idx.append(dsel)
      det_scores.append(dscores[dsel])
      if gboxes.shape[0]:
        iou = iou_matrix(dboxes[dsel], gboxes)
        best_gt.append(gt_offset + np.argmax(iou, axis=1))  # first index on ties
        best_iou.append(iou.max(axis=1))
      else:
        best_gt.append(np.full(dsel.size, -1))
        best_iou.append(np.full(dsel.size, -np.inf))
    gt_difficult.append(gdiff)
    gt_offset += gboxes.shape[0]
  cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)
  scores, img, idx = cat(det_scores, np.float64), cat(det_img, np.int64), cat(det_idx, np.int64)
  ious, gts, difficult = cat(best_iou, np.float64), cat(best_gt, np.int64), cat(gt_difficult, bool)
  order = np.argsort(-scores, kind="stable")
  scores, img, idx, ious, gts = scores[order], img[order], idx[order], ious[order], gts[order]
  hit = ious > iou_threshold if strict_threshold else ious >= iou_threshold
  hit_difficult = hit & difficult[np.where(gts >= 0, gts, 0)] if difficult.size else np.zeros_like(hit)
  candidate = np.flatnonzero(hit & ~hit_difficult)
  # A candidate is a TP iff it is the first (in score order) to reach its GT; later ones are duplicates.
  _, first = np.unique(gts[candidate], return_index=True)
  tp = np.zeros(scores.size, bool)
  tp[candidate[first]] = True
  fp = ~tp & ~hit_difficult
  return {"scores": scores, "tp": tp, "fp": fp, "image": img, "index": idx, "npos": npos}


NO_POSITIVES = ("nan", "devkit")


def count_positives(ground_truth: Sequence[Mapping[str, Any]], class_id: int) -> int:
  """``npos``: the non-difficult GT boxes of ``class_id`` over the images."""
  total = 0
  for i, gt in enumerate(ground_truth):
    _, labels, difficult = _gt_fields(gt, i)
    total += int(((labels == class_id) & ~difficult).sum())
  return total


def evaluate_class(detections: Sequence[Mapping[str, Any]], ground_truth: Sequence[Mapping[str, Any]],
                   class_id: int, iou_threshold: float = 0.5, use_07: bool = True,
                   strict_threshold: bool = False, arange_thresholds: bool = False,
                   no_positives: str = "nan") -> dict[str, Any]:
  """AP of one class over a set of images (see the module docstring for the rules and layouts).

  Returns ``{'ap', 'recall', 'precision', 'npos', 'tp', 'fp'}`` with cumulative recall and
  precision over the score-sorted detections (ignored ones included, as the devkit does) and
  boolean per-detection ``tp``/``fp``. If the class has no non-difficult GT the recall is NaN and
  ``ap`` is NaN with a warning (``no_positives='nan'``) or the references' value, the AP rule
  applied to that NaN recall (``'devkit'``: 0 for VOC07).
  """
  if no_positives not in NO_POSITIVES:
    raise ValueError(f"no_positives must be one of {NO_POSITIVES}; got {no_positives!r}.")
  m = match_detections(detections, ground_truth, class_id, iou_threshold, strict_threshold)
  tp, fp = np.cumsum(m["tp"], dtype=np.float64), np.cumsum(m["fp"], dtype=np.float64)
  npos = int(m["npos"])
  precision = tp / np.maximum(tp + fp, _EPS)
  if npos == 0:
    recall = np.full_like(tp, np.nan)  # the references' tp / npos = 0 / 0
    if no_positives == "devkit":
      ap = voc_ap(recall, precision, use_07=use_07, arange_thresholds=arange_thresholds)
    else:
      warnings.warn(f"class {class_id} has no non-difficult ground truth in these images; its AP is NaN "
                    "(undefined) and it is left out of the mAP.", RuntimeWarning, stacklevel=2)
      ap = float("nan")
  else:
    recall = tp / npos
    ap = voc_ap(recall, precision, use_07=use_07, arange_thresholds=arange_thresholds)
  return {"ap": ap, "recall": recall, "precision": precision, "npos": npos, "tp": m["tp"], "fp": m["fp"]}


def evaluate_detections(detections_per_image: Sequence[Mapping[str, Any]],
                        ground_truth_per_image: Sequence[Mapping[str, Any]], num_classes: int,
                        class_names: Sequence[str] | None = None, iou_threshold: float = 0.5,
                        use_07: bool = True, strict_threshold: bool = False,
                        arange_thresholds: bool = False, evaluated: Sequence[bool] | None = None,
                        no_positives: str = "nan") -> dict[str, Any]:
  """Per-class AP and mAP over all images, for class ids ``0 .. num_classes - 1``.

  ``evaluated`` (K,) bool, optional: the classes to score; the others (e.g. classes without a
  trained detector) get AP NaN. ``no_positives``: see :func:`evaluate_class`.

  Returns ``{'ap': (K,) array, 'ap_by_name': {name: ap}, 'npos': (K,) int array, 'mAP': float,
  'num_in_mAP': int}``. ``mAP`` averages the ``num_in_mAP`` classes with a defined AP (NaN-AP
  classes are left out); it is NaN if no class has one. Names default to ``'class_<id>'``.
  """
  if int(num_classes) < 1:
    raise ValueError(f"num_classes must be >= 1; got {num_classes}.")
  names = list(class_names) if class_names is not None else [f"class_{k}" for k in range(num_classes)]
  if len(names) != num_classes:
    raise ValueError(f"class_names has {len(names)} entries but num_classes is {num_classes}.")
  scored = np.ones(num_classes, bool) if evaluated is None else np.asarray(evaluated, bool).reshape(-1)
  if scored.shape != (num_classes,):
    raise ValueError(f"evaluated has {scored.size} entries but num_classes is {num_classes}.")
  aps, npos = np.full(num_classes, np.nan), np.zeros(num_classes, np.int64)
  for k in range(num_classes):
    if not scored[k]:
      npos[k] = count_positives(ground_truth_per_image, k)
      continue
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      res = evaluate_class(detections_per_image, ground_truth_per_image, k, iou_threshold, use_07,
                           strict_threshold, arange_thresholds, no_positives)
    for w in caught:
      warnings.warn(str(w.message).replace(f"class {k} ", f"class {k} ({names[k]}) "), w.category, stacklevel=2)
    aps[k], npos[k] = res["ap"], res["npos"]
  defined = ~np.isnan(aps)
  m_ap = float(aps[defined].mean()) if defined.any() else float("nan")
  return {"ap": aps, "ap_by_name": dict(zip(names, aps.tolist())), "npos": npos, "mAP": m_ap,
          "num_in_mAP": int(defined.sum())}
