"""The paper's transfer protocol: L2-normalised features, linear SVMs (C = 1), no fine-tuning.

Two scores:

* multi-label (VOC 2007 classification): one SVM per class, one-vs-rest; targets are +1 (the
  image holds a non-difficult object of the class), -1 (no object of the class) or 0 (only
  difficult ones), and 0s are left out of that class's training and scoring, as VOC's devkit
  does; AP per class is VOC 2007's 11-point rule over the test images ranked by score.
* single-label (Caltech101): one-vs-rest SVMs, the prediction is the highest score; the score
  is the mean over classes of the per-class accuracy on the test images. Splits draw
  ``train_per_class`` training and at most ``test_per_class`` test images of every class.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.svm import LinearSVC

from sppnet_jax.detection.voc_eval import voc_ap


def l2_normalize(x: np.ndarray) -> np.ndarray:
  """Rows scaled to unit L2 norm (all-zero rows stay zero)."""
  x = np.asarray(x, np.float32)
  norm = np.linalg.norm(x, axis=1, keepdims=True)
  return x / np.maximum(norm, np.finfo(np.float32).tiny)


@dataclasses.dataclass(frozen=True)
class LinearModel:
  """One-vs-rest linear SVMs: ``scores = features @ weights + biases``, (D, K) and (K,)."""
  weights: np.ndarray
  biases: np.ndarray
  converged: bool

  def scores(self, features: np.ndarray) -> np.ndarray:
    return np.asarray(features, np.float32) @ self.weights + self.biases


def fit_svms(features: np.ndarray, targets: np.ndarray, C: float = 1.0, max_iter: int = 10000) -> LinearModel:
  """One linear SVM per column of ``targets`` (N, K) in {+1, 0, -1}, rows with 0 left out.

  scikit-learn's ``LinearSVC`` (liblinear: L2-regularised squared hinge) with ``C`` and a fixed
  ``random_state`` (liblinear shuffles its coordinates), so a rerun gives the same SVMs; a class
  needs at least one positive and one negative example.
  """
  x = np.asarray(features, np.float32)
  t = np.asarray(targets)
  if t.ndim != 2 or t.shape[0] != x.shape[0]:
    raise ValueError(f"targets must be (N, K) for N = {x.shape[0]} feature rows; got shape {t.shape}.")
  weights = np.zeros((x.shape[1], t.shape[1]), np.float32)
  biases = np.zeros(t.shape[1], np.float32)
  converged = True
  for k in range(t.shape[1]):
    use = t[:, k] != 0
    y = t[use, k] > 0
    if y.all() or not y.any():
      raise ValueError(f"class {k} has {int(y.sum())} positive and {int((~y).sum())} negative training images; "
                       "an SVM needs both. Use a larger training split.")
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always", ConvergenceWarning)
      svm = LinearSVC(C=C, max_iter=max_iter, random_state=0).fit(x[use], y)
    converged &= not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    weights[:, k], biases[k] = svm.coef_[0], svm.intercept_[0]
  return LinearModel(weights, biases, bool(converged))


def one_vs_rest_targets(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """(N, K) +1 at each example's class, -1 elsewhere."""
  labels = np.asarray(labels, np.int64)
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"labels must lie in [0, {num_classes}); got {labels.min()}..{labels.max()}.")
  return np.where(np.arange(num_classes)[None, :] == labels[:, None], 1, -1).astype(np.int8)


def classification_ap(scores: np.ndarray, targets: np.ndarray) -> float:
  """VOC 2007 11-point AP of one class: images ranked by ``scores``, ``targets`` +1/-1, 0 ignored."""
  scores, targets = np.asarray(scores, np.float64), np.asarray(targets)
  keep = targets != 0
  scores, targets = scores[keep], targets[keep]
  positives = int((targets > 0).sum())
  if positives == 0:
    raise ValueError("the class has no positive test image, so its AP is undefined.")
  order = np.argsort(-scores, kind="stable")
  tp = np.cumsum(targets[order] > 0)
  fp = np.cumsum(targets[order] < 0)
  return voc_ap(tp / positives, tp / np.maximum(tp + fp, 1), use_07=True)


def mean_ap(scores: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
  """Mean and per-class 11-point AP (in %) of (N, K) scores against (N, K) targets."""
  aps = np.array([classification_ap(scores[:, k], targets[:, k]) for k in range(targets.shape[1])]) * 100.0
  return float(aps.mean()), aps


def _resamples(targets: np.ndarray, num_resamples: int, seed: int) -> list[np.ndarray]:
  """Bootstrap draws of test images (with replacement), each kept only if every class still has a
  positive (a mean AP needs one); at least half must be kept."""
  rng = np.random.default_rng(seed)
  n = targets.shape[0]
  picks = [rng.integers(0, n, n) for _ in range(num_resamples)]
  picks = [pick for pick in picks if ((targets[pick] > 0).sum(0) > 0).all()]
  if len(picks) < num_resamples // 2:
    raise ValueError("too few test images per class for a bootstrap interval of the mean AP.")
  return picks


def mean_ap_interval(scores: np.ndarray, targets: np.ndarray, num_resamples: int = 1000,
                     seed: int = 0) -> tuple[float, float]:
  """95 % basic bootstrap interval of the mean AP over test images (resampled with replacement)."""
  values = [mean_ap(scores[pick], targets[pick])[0] for pick in _resamples(targets, num_resamples, seed)]
  # Basic (reverse-percentile) interval: duplicated images in a resample raise its AP, and this
  # interval reflects that bias about the estimate instead of carrying it.
  value = mean_ap(scores, targets)[0]
  return float(2 * value - np.percentile(values, 97.5)), float(2 * value - np.percentile(values, 2.5))


def chance_map(targets: np.ndarray, draws: int = 100, seed: int = 0) -> float:
  """Mean AP (%) of random scores on these targets, averaged over seeded draws: the floor a
  feature must clear (above the positives' share, as the 11-point rule rounds recall up)."""
  rng = np.random.default_rng(seed)
  return float(np.mean([mean_ap(rng.random(targets.shape), targets)[0] for _ in range(draws)]))


def mean_class_accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
  """Mean over the classes present in ``labels`` of the fraction predicted right, in %."""
  predicted, labels = np.asarray(predicted), np.asarray(labels)
  classes = np.unique(labels)
  return float(np.mean([np.mean(predicted[labels == c] == c) for c in classes]) * 100.0)


def class_split(labels: np.ndarray, seed: int, train_per_class: int = 30,
                test_per_class: int = 50) -> tuple[np.ndarray, np.ndarray]:
  """Training and test indices: per class, ``train_per_class`` drawn at random for training and
  up to ``test_per_class`` of the rest for testing (the Caltech101 protocol). Reproducible per seed."""
  labels = np.asarray(labels, np.int64)
  rng = np.random.default_rng(seed)
  train, test = [], []
  for c in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == c))
    if len(members) <= train_per_class:
      raise ValueError(f"class {c} has {len(members)} images; the split needs more than train_per_class="
                       f"{train_per_class} (at least one left to test).")
    train.append(members[:train_per_class])
    test.append(members[train_per_class:train_per_class + test_per_class])
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


@dataclasses.dataclass(frozen=True)
class Score:
  """One table cell: the score (%), its 95 % interval and how the interval was made."""
  value: float
  low: float
  high: float
  interval: str
  converged: bool
  per_split: tuple[float, ...] = ()

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


def multilabel_scores(train_x, train_t, test_x, C: float = 1.0) -> tuple[np.ndarray, bool]:
  """Test scores (N_test, K) of SVMs fitted on L2-normalised training features, and whether they converged."""
  model = fit_svms(l2_normalize(train_x), train_t, C)
  return model.scores(l2_normalize(test_x)), model.converged


def multilabel_score(scores: np.ndarray, targets: np.ndarray, converged: bool = True, seed: int = 0) -> Score:
  """Mean 11-point AP of test ``scores`` with its bootstrap interval over test images."""
  value, _ = mean_ap(scores, targets)
  low, high = mean_ap_interval(scores, targets, seed=seed)
  return Score(value, low, high, "bootstrap over test images", converged)


def paired_map_difference(scores_a: np.ndarray, scores_b: np.ndarray, targets: np.ndarray, num_resamples: int = 1000,
                          seed: int = 0) -> tuple[float, float, float, float]:
  """mAP(A) - mAP(B) on the same test images, its 95 % basic paired bootstrap interval and a two-sided
  bootstrap p-value (twice the smaller share of that distribution on either side of 0)."""
  diffs = np.array([mean_ap(scores_a[pick], targets[pick])[0] - mean_ap(scores_b[pick], targets[pick])[0]
                    for pick in _resamples(targets, num_resamples, seed)])
  value = mean_ap(scores_a, targets)[0] - mean_ap(scores_b, targets)[0]
  reflected = 2 * value - diffs  # the basic bootstrap's distribution of the difference
  p = min(1.0, 2 * min(np.mean(reflected <= 0), np.mean(reflected >= 0)))
  return value, float(np.percentile(reflected, 2.5)), float(np.percentile(reflected, 97.5)), float(p)


def split_score(features: np.ndarray, labels: np.ndarray, num_splits: int, C: float = 1.0,
                train_per_class: int = 30, test_per_class: int = 50) -> Score:
  """Mean class accuracy over ``num_splits`` random splits (seeds 0..n-1), with the 95 % t
  interval of the mean over splits."""
  from scipy import stats as scipy_stats

  x = l2_normalize(features)
  labels = np.asarray(labels, np.int64)
  num_classes = int(labels.max()) + 1
  accuracies, converged = [], True
  for seed in range(num_splits):
    train, test = class_split(labels, seed, train_per_class, test_per_class)
    model = fit_svms(x[train], one_vs_rest_targets(labels[train], num_classes), C)
    converged &= model.converged
    accuracies.append(mean_class_accuracy(np.argmax(model.scores(x[test]), 1), labels[test]))
  acc = np.array(accuracies)
  if len(acc) < 2:
    return Score(float(acc.mean()), float("nan"), float("nan"), "one split: no interval", converged, tuple(acc))
  half = scipy_stats.t.ppf(0.975, len(acc) - 1) * acc.std(ddof=1) / np.sqrt(len(acc))
  return Score(float(acc.mean()), float(acc.mean() - half), float(acc.mean() + half),
               f"t interval over {len(acc)} splits (std {acc.std(ddof=1):.2f})", converged, tuple(acc))


def format_score(score: Score) -> str:
  if np.isnan(score.low):
    return f"{score.value:.2f}"
  return f"{score.value:.2f} [{score.low:.1f}, {score.high:.1f}]"

