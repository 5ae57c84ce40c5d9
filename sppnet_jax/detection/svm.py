"""Per-class linear SVMs on region features with hard-negative mining (the R-CNN/SPP-net recipe).

Training data are given per image, as an :class:`ImageFeatures` (or a tuple with its fields in
order, or a zero-argument callable returning either, so that features can be loaded lazily), in
any sized collection that can be iterated twice (once for positives, once for mining; a reader
that loads several images per read, as the detection pipeline's, is such a collection):

* ``features`` (R, D): features of R candidate windows (e.g. fc7 after ReLU);
* ``boxes`` (R, 4): those windows, pixel ``[x1, y1, x2, y2]``;
* ``gt_boxes`` (G, 4), ``gt_labels`` (G,) class ids in ``[0, K)``, ``gt_difficult`` (G,) bool;
* ``gt_features`` (G, D), optional: features of the GT boxes themselves. If omitted, the
  positives are the windows that coincide with a GT box (IoU >= ``positive_iou``), i.e. the
  caller appended the GT boxes to the window list, as R-CNN does.

Recipe (R-CNN ``rcnn_train.m`` defaults, which SPP-net's code reuses):

* features are multiplied by one global scale so that their mean L2 norm is ``target_norm`` (20),
  estimated on the windows of a seeded sample of images (``scaling.mean_norm_scale``); the scale
  is stored with the model;
* positives of class c: the non-difficult GT boxes of class c;
* negatives of class c: windows whose IoU with every GT box of class c (difficult ones included,
  so that windows on a difficult object are never negatives) is below ``negative_iou`` (0.3);
* a class with no positive gets no SVM: it is left out of mining and training with a warning,
  its column of :attr:`LinearSVMs.trained` is False and :func:`score` gives it NaN, so it has no
  detections and its AP is undefined (left out of the mAP), instead of the tied scores of an
  all-zero model (the same holds for a class with positives but no negative window);
* one pass over the images; per image and class, negatives scoring above ``hard_threshold``
  (-1.0001) that are not cached yet are added (before the first training the model is zero,
  so the first image contributes all its negatives); once ``retrain_every`` (2000) new hard
  negatives have accumulated the class's SVM is retrained and cached negatives scoring below
  ``easy_threshold`` (-1.2) are evicted; every class is retrained once more at the end;
* solver: ``sklearn.svm.LinearSVC(loss='hinge', C=0.001, class_weight={1: 2},
  intercept_scaling=10)``, i.e. liblinear's L2-regularised L1-loss SVM with positive weight 2
  and bias multiplier 10 (``-s 3 -w1 2 -B 10``).
"""

from __future__ import annotations

import ctypes
import dataclasses
import warnings
from typing import Callable, Collection, Sequence, Union

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.svm import LinearSVC

from sppnet_jax.detection.boxes import as_boxes, iou_matrix
from sppnet_jax.detection.scaling import mean_norm_scale


@dataclasses.dataclass
class ImageFeatures:
  """Features and annotations of one training image (see the module docstring)."""
  features: np.ndarray
  boxes: np.ndarray
  gt_boxes: np.ndarray
  gt_labels: np.ndarray
  gt_difficult: np.ndarray | None = None
  gt_features: np.ndarray | None = None


ImageSource = Union[ImageFeatures, tuple, Callable[[], Union[ImageFeatures, tuple]]]


@dataclasses.dataclass
class LinearSVMs:
  """Trained per-class linear SVMs: ``score = (features * feature_scale) @ weights + biases``.

  Attributes:
    weights: (D, K) float32.
    biases: (K,) float32 (the liblinear bias already multiplied by the bias multiplier).
    feature_scale: the factor applied to raw features before scoring.
    stats: per-class training diagnostics: ``positives``, ``negatives`` (final cache size),
      ``hard_added`` (negatives ever added), ``retrains``.
  """
  weights: np.ndarray
  biases: np.ndarray
  feature_scale: float
  stats: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

  @property
  def trained(self) -> np.ndarray:
    """(K,) bool: the classes whose SVM was fit (``stats['retrains'] > 0``). A class without a
    positive or a negative example was never fit and has no SVM; without ``retrains`` in the stats
    (SVMs set by hand) every class counts as fit."""
    retrains = self.stats.get("retrains")
    if retrains is None:
      return np.ones(self.weights.shape[1], bool)
    return np.asarray(retrains).reshape(-1) > 0


def load_image(source: ImageSource, index: int = 0) -> ImageFeatures:
  """Resolves a callable / tuple / ImageFeatures into a validated :class:`ImageFeatures`."""
  item = source() if callable(source) else source
  if isinstance(item, tuple):
    if not 4 <= len(item) <= 6:
      raise ValueError(f"image {index}: a tuple must be (features, boxes, gt_boxes, gt_labels[, gt_difficult"
                       f"[, gt_features]]); got {len(item)} fields.")
    item = ImageFeatures(*item)
  if not isinstance(item, ImageFeatures):
    raise ValueError(f"image {index}: expected ImageFeatures, a tuple or a callable returning one; got {type(item)}.")
  feats = np.asarray(item.features, np.float32)
  boxes = as_boxes(item.boxes, f"image {index} boxes")
  if feats.ndim != 2 or feats.shape[0] != boxes.shape[0]:
    raise ValueError(f"image {index}: features must be (R, D) with one row per window box; got features "
                     f"{feats.shape} for {boxes.shape[0]} boxes.")
  gt_boxes = as_boxes(item.gt_boxes, f"image {index} gt_boxes")
  labels = np.asarray(item.gt_labels).reshape(-1).astype(np.int64)
  difficult = (np.zeros(len(labels), bool) if item.gt_difficult is None
               else np.asarray(item.gt_difficult).reshape(-1).astype(bool))
  if not len(gt_boxes) == len(labels) == len(difficult):
    raise ValueError(f"image {index}: {len(gt_boxes)} gt_boxes, {len(labels)} gt_labels and {len(difficult)} "
                     "gt_difficult flags; they must match.")
  gt_feats = None
  if item.gt_features is not None:
    gt_feats = np.asarray(item.gt_features, np.float32)
    if gt_feats.shape != (len(labels), feats.shape[1]):
      raise ValueError(f"image {index}: gt_features must be (G, D) = ({len(labels)}, {feats.shape[1]}); "
                       f"got {gt_feats.shape}.")
  return ImageFeatures(feats, boxes, gt_boxes, labels, difficult, gt_feats)


def score(features: np.ndarray, svm: LinearSVMs) -> np.ndarray:
  """Scores of every window for every class: ``(R, D) -> (R, K)`` float32; NaN in the columns of
  classes without an SVM (``svm.trained`` False), which have no score to give."""
  feats = np.asarray(features, np.float32)
  if feats.ndim != 2 or feats.shape[1] != svm.weights.shape[0]:
    raise ValueError(f"features must be (R, {svm.weights.shape[0]}); got {feats.shape}.")
  scores = (feats * np.float32(svm.feature_scale)) @ svm.weights + svm.biases
  scores[:, ~svm.trained] = np.nan
  return scores


def _glibc():
  """The C library when it is glibc (Linux), else None."""
  global _LIBC
  if _LIBC is None:
    try:
      libc = ctypes.CDLL("libc.so.6")
      _LIBC = libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else False
    except OSError:
      _LIBC = False
  return _LIBC or None


_LIBC = None
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
_LARGE_BLOCK_BYTES = 256 * 1024


def _mmap_large_blocks() -> None:
  """Makes the C heap serve blocks of 256 KiB and more from their own mappings, returned to the
  system when freed (glibc ``mallopt(M_MMAP_THRESHOLD)``; elsewhere nothing). Mining allocates and
  frees the tens-of-MB buffers of hundreds of fits; carved out of the heap they fragment it and the
  resident memory creeps up with the number of fits."""
  libc = _glibc()
  if libc is not None:
    libc.mallopt(_M_MMAP_THRESHOLD, _LARGE_BLOCK_BYTES)


def _release_freed_memory() -> None:
  """Returns the C heap's freed pages to the system (glibc ``malloc_trim``; elsewhere nothing)."""
  libc = _glibc()
  if libc is not None:
    libc.malloc_trim(0)


def _fit_one(pos: np.ndarray, neg: np.ndarray, C: float, positive_weight: float, bias_multiplier: float,
             max_iter: int) -> tuple[np.ndarray, float]:
  x = np.concatenate([pos, neg]).astype(np.float64)
  y = np.concatenate([np.ones(len(pos)), -np.ones(len(neg))])
  svc = LinearSVC(loss="hinge", C=C, class_weight={1: positive_weight}, intercept_scaling=bias_multiplier,
                  dual=True, max_iter=max_iter, tol=1e-4, random_state=0)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    svc.fit(x, y)
  w, b = svc.coef_[0].astype(np.float32), float(svc.intercept_[0])
  del svc, x, y
  _release_freed_memory()
  return w, b


def train_svms(per_image: Collection[ImageSource], num_classes: int, C: float = 0.001,
               positive_weight: float = 2.0, bias_multiplier: float = 10.0, negative_iou: float = 0.3,
               positive_iou: float = 1.0 - 1e-6, hard_threshold: float = -1.0001,
               easy_threshold: float = -1.2, retrain_every: int = 2000, max_negatives: int | None = 10000,
               target_norm: float = 20.0,
               feature_scale: float | None = None, scale_sample_images: int = 100, max_iter: int = 10000,
               seed: int = 0, log: Callable[[str], None] | None = None,
               class_names: Sequence[str] | None = None) -> LinearSVMs:
  """Trains one linear SVM per class with hard-negative mining (see the module docstring).

  Args:
    per_image: training images (ImageFeatures, tuples or callables).
    num_classes: K; GT labels must lie in ``[0, K)``.
    C, positive_weight, bias_multiplier: liblinear/LinearSVC settings.
    negative_iou: windows below this IoU with every GT of a class are its negatives.
    positive_iou: when ``gt_features`` is absent, windows at or above this IoU with a
      non-difficult GT are that GT's positive features.
    hard_threshold, easy_threshold, retrain_every: mining settings.
    max_negatives: the most negatives a class's cache holds (None: unbounded, as R-CNN).
    target_norm: mean L2 norm after scaling. feature_scale: use this scale instead of estimating it.
    scale_sample_images: how many (seeded, random) images the scale is estimated on.
    max_iter: LinearSVC iteration cap. seed: seed of the image sample.
    log: called with a progress line about every tenth of the mining pass, and with a line per
      class left without an SVM (None: silent).
    class_names: names of the K classes for the messages (None: ``class <id>`` only).

  Returns:
    :class:`LinearSVMs` with float32 weights (D, K) and biases (K,); a class with no positive (or no
    negative) example is left out of training with a warning: zero weights, ``trained`` False.
  """
  n_img = len(per_image)
  if n_img == 0:
    raise ValueError("train_svms needs at least one training image.")
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1; got {num_classes}.")
  if retrain_every < 1:
    raise ValueError(f"retrain_every must be >= 1; got {retrain_every}.")
  if max_negatives is not None and max_negatives < 1:
    raise ValueError(f"max_negatives must be >= 1 or None (unbounded); got {max_negatives}.")
  if class_names is not None and len(class_names) != num_classes:
    raise ValueError(f"class_names has {len(class_names)} entries but num_classes is {num_classes}.")
  sample = set(np.random.default_rng(seed).permutation(n_img)[:scale_sample_images].tolist())
  _mmap_large_blocks()

  # Pass 1: positives and the feature-scale sample.
  positives: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
  scale_rows, dim = [], None
  for i, src in enumerate(per_image):
    im = load_image(src, i)
    if dim is None:
      dim = im.features.shape[1]
    elif im.features.shape[1] != dim:
      raise ValueError(f"image {i} has {im.features.shape[1]}-d features but earlier images have {dim}-d.")
    bad = (im.gt_labels < 0) | (im.gt_labels >= num_classes)
    if bad.any():
      raise ValueError(f"image {i} has GT label {int(im.gt_labels[bad][0])} outside [0, {num_classes}).")
    if feature_scale is None and i in sample:
      scale_rows.append(im.features)
    for c in range(num_classes):
      sel = (im.gt_labels == c) & ~im.gt_difficult
      if not sel.any():
        continue
      if im.gt_features is not None:
        positives[c].append(im.gt_features[sel])
      elif len(im.boxes):
        rows = (iou_matrix(im.boxes, im.gt_boxes[sel]) >= positive_iou).any(axis=1)
        positives[c].append(im.features[rows])
  scale = float(feature_scale) if feature_scale is not None else mean_norm_scale(scale_rows, target_norm)
  pos = [np.concatenate(p) * np.float32(scale) if p else np.zeros((0, dim), np.float32) for p in positives]
  mined = [c for c in range(num_classes) if len(pos[c])]  # a class without positives is not trained

  # Pass 2: hard-negative mining.
  weights = np.zeros((dim, num_classes), np.float32)
  biases = np.zeros(num_classes, np.float32)
  cache_x: list[np.ndarray] = [np.zeros((0, dim), np.float32) for _ in range(num_classes)]
  pending = np.zeros(num_classes, np.int64)
  hard_added = np.zeros(num_classes, np.int64)
  retrains = np.zeros(num_classes, np.int64)

  def retrain(c: int) -> None:
    if len(pos[c]) == 0 or len(cache_x[c]) == 0:
      return
    w, b = _fit_one(pos[c], cache_x[c], C, positive_weight, bias_multiplier, max_iter)
    weights[:, c], biases[c] = w, b
    retrains[c] += 1
    pending[c] = 0
    keep = cache_x[c] @ w + b >= easy_threshold
    cache_x[c] = cache_x[c][keep]

  report_every = max(1, n_img // 10)
  for i, src in enumerate(per_image):
    if log is not None and i and i % report_every == 0:
      log(f"  mining: {i}/{n_img} images, hard negatives cached per class {[len(x) for x in cache_x]}, "
          f"retrains {int(retrains.sum())}")
    im = load_image(src, i)
    if len(im.boxes) == 0:
      continue
    x = im.features * np.float32(scale)
    scores = x @ weights + biases
    ious = iou_matrix(im.boxes, im.gt_boxes) if len(im.gt_boxes) else np.zeros((len(im.boxes), 0))
    for c in mined:
      own = im.gt_labels == c
      max_iou = ious[:, own].max(axis=1) if own.any() else np.zeros(len(im.boxes))
      # Each image is visited once, so these windows cannot be in the cache already.
      rows = np.flatnonzero((max_iou < negative_iou) & (scores[:, c] > hard_threshold))
      if not len(rows):
        continue
      cache_x[c] = np.concatenate([cache_x[c], x[rows]])
      pending[c] += len(rows)
      hard_added[c] += len(rows)
      if pending[c] >= retrain_every:
        retrain(c)
      if max_negatives is not None and len(cache_x[c]) > max_negatives:
        hardest = np.argsort(-(cache_x[c] @ weights[:, c]), kind="stable")[:max_negatives]
        cache_x[c] = cache_x[c][np.sort(hardest)]
  for c in range(num_classes):
    name = f"class {c}" + (f" ({class_names[c]})" if class_names is not None else "")
    lacking = "positive (non-difficult GT)" if len(pos[c]) == 0 else "negative" if len(cache_x[c]) == 0 else None
    if lacking is not None:
      message = (f"{name} has no {lacking} training example: it gets no SVM, so no detections, and its AP is "
                 "undefined (left out of the mAP).")
      warnings.warn(message, RuntimeWarning, stacklevel=2)
      if log is not None:
        log(f"  {message}")
    elif pending[c] > 0 or retrains[c] == 0:
      retrain(c)
  stats = {"positives": np.array([len(p) for p in pos]), "negatives": np.array([len(x) for x in cache_x]),
           "hard_added": hard_added, "retrains": retrains}
  return LinearSVMs(weights=weights, biases=biases, feature_scale=scale, stats=stats)
