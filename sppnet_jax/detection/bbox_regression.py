"""Class-specific bounding-box regression (the R-CNN/SPP-net post-processing step).

For every class a ridge regressor maps a window's features (SPP-net: the pooled conv5 vector,
12,800-d for ZF-5) to the R-CNN deltas ``(dx, dy, log dw, log dh)`` = ``encode_boxes(window, gt)``
of its assigned GT box. Following the authors' code (R-CNN ``rcnn_train_bbox_regressor.m``):

* training windows: those whose best IoU with a GT box is **strictly greater** than
  ``min_overlap`` = 0.5 (the code's ``> 0.5``; the paper's text says "at least 50%"), assigned to
  that best GT and its class; difficult GT are not used as targets unless asked;
* features are multiplied by one scale that makes their mean L2 norm 20 (``scaling.mean_norm_scale``,
  stored);
* a constant-1 bias column is appended and regularised together with the weights
  (``(Xa' Xa + lambda I) W = Xa' Y``, lambda = 4000);
* targets are whitened per class: centred, then decorrelated with
  ``T = V diag(1 / sqrt(d + 0.001)) V'`` from the eigen-decomposition ``V diag(d) V'`` of their
  covariance (``whiten='zca'``, the code's choice; ``'std'`` only divides by
  ``sqrt(var + 0.001)``, ``'none'`` does nothing). Predictions are un-whitened with the inverse.

The closed form is solved in the primal ``(D+1) x (D+1)`` system when there are at least as many
examples as feature dimensions, otherwise in the equivalent dual ``N x N`` system
``Xa' (Xa Xa' + lambda I)^-1 Y``; both give the same solution.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Union

import numpy as np
import scipy.linalg

from sppnet_jax.detection.boxes import as_boxes, decode_boxes, encode_boxes, iou_matrix
from sppnet_jax.detection.scaling import mean_norm_scale

WHITEN_EPS = 0.001


@dataclasses.dataclass
class BoxRegressor:
  """Per-class ridge box regressors.

  Attributes:
    weights: (K, D, 4) float32, acting on scaled features.
    biases: (K, 4) float32.
    target_mean: (K, 4) mean of the raw deltas.
    target_unwhiten: (K, 4, 4): ``deltas = whitened @ target_unwhiten + target_mean``.
    feature_scale: factor applied to raw features.
    trained: (K,) bool; an untrained class predicts zero deltas (boxes unchanged).
  """
  weights: np.ndarray
  biases: np.ndarray
  target_mean: np.ndarray
  target_unwhiten: np.ndarray
  feature_scale: float
  trained: np.ndarray


def select_training_windows(windows: np.ndarray, gt_boxes: np.ndarray, gt_labels: np.ndarray,
                            gt_difficult: np.ndarray | None = None, min_overlap: float = 0.5,
                            use_difficult: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Windows of one image usable for regression: best IoU with a GT strictly above ``min_overlap``.

  Returns ``(rows, target_boxes (n, 4), labels (n,))``: the window indices, their best GT boxes
  (first on ties) and that GT's class.
  """
  windows = as_boxes(windows, "windows")
  gt_boxes = as_boxes(gt_boxes, "gt_boxes")
  gt_labels = np.asarray(gt_labels).reshape(-1).astype(np.int64)
  if len(gt_labels) != len(gt_boxes):
    raise ValueError(f"{len(gt_boxes)} gt_boxes but {len(gt_labels)} gt_labels; they must match.")
  if gt_difficult is not None and not use_difficult:
    keep = ~np.asarray(gt_difficult).reshape(-1).astype(bool)
    gt_boxes, gt_labels = gt_boxes[keep], gt_labels[keep]
  if len(gt_boxes) == 0 or len(windows) == 0:
    return np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0, np.int64)
  iou = iou_matrix(windows, gt_boxes)
  best = np.argmax(iou, axis=1)
  rows = np.flatnonzero(iou[np.arange(len(windows)), best] > min_overlap)
  return rows, gt_boxes[best[rows]].astype(np.float64), gt_labels[best[rows]]


def _whitening(y: np.ndarray, whiten: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Returns ``(mean, T, T_inv)`` so that ``(y - mean) @ T`` is whitened."""
  if whiten == "none":
    return np.zeros(4), np.eye(4), np.eye(4)
  mean = y.mean(axis=0)
  yc = y - mean
  if whiten == "std":
    sd = np.sqrt(yc.var(axis=0) + WHITEN_EPS)
    return mean, np.diag(1.0 / sd), np.diag(sd)
  if whiten == "zca":
    d, v = np.linalg.eigh(yc.T @ yc / len(yc))
    d = np.clip(d, 0.0, None) + WHITEN_EPS
    return mean, (v / np.sqrt(d)) @ v.T, (v * np.sqrt(d)) @ v.T
  raise ValueError(f"whiten must be 'zca', 'std' or 'none'; got {whiten!r}.")


def ridge_solve(x: np.ndarray, y: np.ndarray, lam: float, solver: str = "auto") -> np.ndarray:
  """Ridge solution ``W`` of ``min |x W - y|^2 + lam |W|^2`` (no separate bias), float64.

  ``solver``: 'primal' (D x D), 'dual' (N x N) or 'auto' (the smaller system).
  """
  if lam <= 0:
    raise ValueError(f"the ridge penalty lambda must be positive; got {lam}.")
  n, d = x.shape
  if solver == "auto":
    solver = "primal" if n >= d else "dual"
  if solver == "primal":
    gram = x.T @ x
    gram[np.diag_indices(d)] += lam
    return scipy.linalg.solve(gram, x.T @ y, assume_a="pos")
  if solver == "dual":
    gram = x @ x.T
    gram[np.diag_indices(n)] += lam
    return x.T @ scipy.linalg.solve(gram, y, assume_a="pos")
  raise ValueError(f"solver must be 'auto', 'primal' or 'dual'; got {solver!r}.")


def fit(features: np.ndarray, windows: np.ndarray, target_boxes: np.ndarray, labels: np.ndarray,
        num_classes: int, lam: float = 4000.0, target_norm: float = 20.0, feature_scale: float | None = None,
        whiten: str = "zca", solver: str = "auto", min_examples: int = 1) -> BoxRegressor:
  """Fits one ridge regressor per class.

  Args:
    features: (N, D) features of the training windows (all images concatenated).
    windows: (N, 4) the windows; target_boxes: (N, 4) their assigned GT boxes; labels: (N,) the
      GT classes in ``[0, K)`` (see :func:`select_training_windows`).
    num_classes: K. lam: ridge penalty. target_norm / feature_scale: feature scaling (the scale
      is estimated on ``features`` unless given). whiten: 'zca', 'std' or 'none'.
    solver: 'auto', 'primal' or 'dual'. min_examples: classes with fewer examples stay untrained.
  """
  x = np.asarray(features)
  if not np.issubdtype(x.dtype, np.floating):
    x = x.astype(np.float64)
  windows = as_boxes(windows, "windows")
  target_boxes = as_boxes(target_boxes, "target_boxes")
  labels = np.asarray(labels).reshape(-1).astype(np.int64)
  if x.ndim != 2 or not len(x) == len(windows) == len(target_boxes) == len(labels):
    raise ValueError(f"features {x.shape}, windows {windows.shape}, target_boxes {target_boxes.shape} and "
                     f"labels {labels.shape} must all have the same number of rows N (features (N, D)).")
  if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"labels must lie in [0, {num_classes}); got values in [{labels.min()}, {labels.max()}].")
  dim = x.shape[1]
  if feature_scale is None:
    try:
      feature_scale = mean_norm_scale(x, target_norm)
    except ValueError as e:
      raise ValueError(f"{e} Pass feature_scale.") from e
  deltas = encode_boxes(windows, target_boxes)
  reg = BoxRegressor(weights=np.zeros((num_classes, dim, 4), np.float32), biases=np.zeros((num_classes, 4), np.float32),
                     target_mean=np.zeros((num_classes, 4)), target_unwhiten=np.tile(np.eye(4), (num_classes, 1, 1)),
                     feature_scale=float(feature_scale), trained=np.zeros(num_classes, bool))
  for c in range(num_classes):
    sel = labels == c
    if sel.sum() < max(min_examples, 1):
      continue
    mean, t, t_inv = _whitening(deltas[sel], whiten)
    y = (deltas[sel] - mean) @ t
    xa = np.concatenate([x[sel].astype(np.float64) * feature_scale, np.ones((int(sel.sum()), 1))], axis=1)
    w = ridge_solve(xa, y, lam, solver)
    reg.weights[c], reg.biases[c] = w[:-1], w[-1]
    reg.target_mean[c], reg.target_unwhiten[c], reg.trained[c] = mean, t_inv, True
  return reg


def predict_deltas(reg: BoxRegressor, features: np.ndarray, classes: int | np.ndarray | None = None) -> np.ndarray:
  """Un-whitened deltas: ``(R, K, 4)`` for all classes, or ``(R, 4)`` for one class per window.

  ``classes`` is None (all classes), one int, or an (R,) int array. Untrained classes give 0.
  """
  x = np.asarray(features, np.float64) * reg.feature_scale
  if x.ndim != 2 or x.shape[1] != reg.weights.shape[1]:
    raise ValueError(f"features must be (R, {reg.weights.shape[1]}); got {np.shape(features)}.")
  num_classes = reg.weights.shape[0]
  if classes is None:
    cls = None
  else:
    cls = np.broadcast_to(np.asarray(classes, np.int64), (x.shape[0],))
    if len(cls) and (cls.min() < 0 or cls.max() >= num_classes):
      raise ValueError(f"classes must lie in [0, {num_classes}).")
  out = np.zeros((x.shape[0], num_classes, 4))
  for c in range(num_classes):
    if not reg.trained[c]:
      continue
    rows = slice(None) if cls is None else np.flatnonzero(cls == c)
    whitened = x[rows] @ reg.weights[c] + reg.biases[c]
    out[rows, c] = whitened @ reg.target_unwhiten[c] + reg.target_mean[c]
  if cls is None:
    return out
  return out[np.arange(x.shape[0]), cls]


def apply(reg: BoxRegressor, features: np.ndarray, windows: np.ndarray,
          classes: int | np.ndarray | None = None) -> np.ndarray:
  """Regressed boxes: ``(R, K, 4)`` (all classes) or ``(R, 4)`` (given classes). Not clipped to the image."""
  windows = as_boxes(windows, "windows")
  deltas = predict_deltas(reg, features, classes)
  if deltas.ndim == 3:
    r, k, _ = deltas.shape
    return decode_boxes(windows, deltas.reshape(r, 4 * k)).reshape(r, k, 4)
  return decode_boxes(windows, deltas)


RegressionImage = tuple  # (features, windows, gt_boxes, gt_labels, gt_difficult)


def fit_from_images(per_image: Iterable[Union[RegressionImage, Callable[[], RegressionImage]]], num_classes: int,
                    min_overlap: float = 0.5, max_per_class: int | None = None, **kwargs) -> BoxRegressor:
  """Selects the training windows of every image and calls :func:`fit` (keyword arguments are passed on).

  ``per_image`` yields ``(features, windows, gt_boxes, gt_labels, gt_difficult)`` per image, or
  zero-argument callables returning one (read one at a time, so a feature cache is streamed).
  Only the selected rows are kept, in the features' own dtype (16-bit from a 16-bit cache).
  ``max_per_class``: keep at most this many windows per class, the first ones in image order
  (None: all), which bounds memory whatever the number of images.
  """
  feats, wins, targets, labels = [], [], [], []
  kept = np.zeros(num_classes, np.int64)
  images = 0
  for item in per_image:
    features, windows, gt_boxes, gt_labels, gt_difficult = item() if callable(item) else item
    images += 1
    rows, tgt, lab = select_training_windows(windows, gt_boxes, gt_labels, gt_difficult, min_overlap)
    if len(lab) and (lab.min() < 0 or lab.max() >= num_classes):
      raise ValueError(f"image {images - 1}: GT labels must lie in [0, {num_classes}); got {np.unique(lab).tolist()}.")
    if max_per_class is not None:
      rank = np.zeros(len(lab), np.int64)
      for c in np.unique(lab):
        at = np.flatnonzero(lab == c)
        rank[at] = kept[c] + np.arange(len(at))
      take = rank < max_per_class
      rows, tgt, lab = rows[take], tgt[take], lab[take]
    np.add.at(kept, lab, 1)
    feats.append(np.asarray(features)[rows])
    wins.append(as_boxes(windows)[rows])
    targets.append(tgt)
    labels.append(lab)
  if not images:
    raise ValueError("fit_from_images needs at least one image.")
  return fit(np.concatenate(feats), np.concatenate(wins), np.concatenate(targets), np.concatenate(labels),
             num_classes, **kwargs)
