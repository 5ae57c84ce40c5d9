"""Uncertainty for error rates and for comparisons between networks scored on the same images.

* :func:`wilson_interval` - the 95 % interval of one error rate (Wilson score interval).
* :func:`mcnemar_exact` - the exact two-sided McNemar test of two classifiers on the same
  examples: under the null the discordant examples split Binomial(b + c, 1/2).

scipy computes what it has (the binomial test, the Wilson interval, the paired t-test, the
bootstrap); the tests check each against values worked out by hand.
* :func:`paired_difference` - the difference of two error rates on the same examples with
  its 95 % interval (Wald interval of a paired difference of proportions) and McNemar's p.
* :func:`bootstrap_interval` - a percentile bootstrap with a fixed seed (reproducible).
* :func:`seed_comparison` - mean ± std over training seeds and a paired t-test across seeds.
* :func:`ratio_interval` - the geometric mean of paired speed ratios with its 95 % t interval.
* :func:`verdict` - one generated line per comparison, e.g.
  ``multi − single, full view: −1.3 points [−2.1, −0.5], McNemar p = 0.002``.

All error rates are fractions in these functions' arguments and percentage points in their
results.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import numpy as np
from scipy import stats as scipy_stats

Z95 = 1.959963984540054  # the standard normal's 97.5th percentile


def wilson_interval(errors: int, n: int, level: float = 0.95) -> tuple[float, float]:
  """Wilson score interval of an error rate ``errors / n``, in percent (scipy's
  ``binomtest(...).proportion_ci(method='wilson')``)."""
  if n <= 0:
    raise ValueError(f"an interval needs at least one example; got n={n}.")
  if not 0 <= errors <= n:
    raise ValueError(f"errors must be in [0, n={n}]; got {errors}.")
  ci = scipy_stats.binomtest(int(errors), int(n)).proportion_ci(confidence_level=level, method="wilson")
  return 100 * float(ci.low), 100 * float(ci.high)


def mcnemar_exact(b: int, c: int) -> float:
  """Two-sided exact McNemar p-value from the discordant counts ``b`` (only A wrong) and
  ``c`` (only B wrong): the exact binomial test of ``b`` in ``b + c`` trials at 1/2 (scipy's
  ``binomtest``), which is ``min(1, 2 * P[X <= min(b, c)])`` for this symmetric null."""
  if b < 0 or c < 0:
    raise ValueError(f"discordant counts must be non-negative; got b={b}, c={c}.")
  if b + c == 0:
    return 1.0
  return float(scipy_stats.binomtest(int(b), int(b + c), 0.5).pvalue)


@dataclasses.dataclass(frozen=True)
class PairedDifference:
  """Error of A minus error of B on the same examples, in percentage points."""
  difference: float
  low: float
  high: float
  p_value: float
  only_a_wrong: int
  only_b_wrong: int
  n: int

  @property
  def resolved(self) -> bool:
    """Whether the difference is significant at the 5 % level (McNemar)."""
    return self.p_value < 0.05


def paired_difference(wrong_a: np.ndarray, wrong_b: np.ndarray, z: float = Z95) -> PairedDifference:
  """``error(A) - error(B)`` for per-example mistakes (bool arrays over the same examples).

  Interval: ``d ± z * sqrt((b + c) / n - d**2) / sqrt(n)`` with ``d = (b - c) / n``, the Wald
  interval of a difference of paired proportions; p-value: exact McNemar.
  """
  wrong_a, wrong_b = np.asarray(wrong_a, bool), np.asarray(wrong_b, bool)
  if wrong_a.shape != wrong_b.shape or wrong_a.ndim != 1 or wrong_a.size == 0:
    raise ValueError("paired comparison needs two non-empty 1-D arrays over the same examples; got shapes "
                     f"{wrong_a.shape} and {wrong_b.shape}.")
  n = wrong_a.size
  b = int(np.sum(wrong_a & ~wrong_b))
  c = int(np.sum(~wrong_a & wrong_b))
  d = (b - c) / n
  half = z * math.sqrt(max((b + c) / n - d * d, 0.0) / n)
  return PairedDifference(100 * d, 100 * (d - half), 100 * (d + half), mcnemar_exact(b, c), b, c, n)


def bootstrap_interval(values: np.ndarray, statistic: Callable[[np.ndarray], float] = np.mean,
                       num_resamples: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
  """Percentile bootstrap interval of ``statistic`` over the first axis of ``values`` (scipy's
  ``bootstrap``, resampling row indices, so ``statistic`` may be any function of the rows).

  Resampling draws from ``np.random.default_rng(seed)``, so the same call gives the same interval.
  """
  values = np.asarray(values)
  if values.shape[0] == 0:
    raise ValueError("bootstrap needs at least one value.")
  result = scipy_stats.bootstrap((np.arange(values.shape[0]),), lambda index: statistic(values[index]),
                                 n_resamples=num_resamples, confidence_level=level, method="percentile",
                                 vectorized=False, rng=np.random.default_rng(seed))
  return float(result.confidence_interval.low), float(result.confidence_interval.high)


@dataclasses.dataclass(frozen=True)
class SeedComparison:
  """Errors (%) of two variants over the same training seeds."""
  mean_a: float
  std_a: float
  mean_b: float
  std_b: float
  difference: float
  low: float
  high: float
  p_value: float
  num_seeds: int


def seed_comparison(errors_a: Sequence[float], errors_b: Sequence[float]) -> SeedComparison:
  """Mean ± std (ddof 1) of each, and a paired t-test of ``a - b`` across seeds (seed i of A
  with seed i of B) with the 95 % t interval of the mean difference."""
  a, b = np.asarray(errors_a, float), np.asarray(errors_b, float)
  if a.shape != b.shape or a.size < 2:
    raise ValueError(f"a test across seeds needs the same number (>= 2) of seeds per variant; got {a.size} and "
                     f"{b.size}.")
  d = a - b
  n = d.size
  if d.std(ddof=1) == 0:  # every seed moved by the same amount: no spread to test against
    p, low, high = (1.0 if d.mean() == 0 else 0.0), float(d.mean()), float(d.mean())
  else:
    test = scipy_stats.ttest_rel(a, b)
    ci = test.confidence_interval(0.95)
    p, low, high = float(test.pvalue), float(ci.low), float(ci.high)
  return SeedComparison(float(a.mean()), float(a.std(ddof=1)), float(b.mean()), float(b.std(ddof=1)),
                        float(d.mean()), low, high, p, n)


@dataclasses.dataclass(frozen=True)
class RatioInterval:
  """The geometric mean of ratios measured in pairs (e.g. rounds of a benchmark) and its 95 %
  t interval, taken on the logarithms and mapped back."""
  mean: float
  low: float
  high: float
  count: int


def ratio_interval(ratios: Sequence[float]) -> RatioInterval:
  """:class:`RatioInterval` of positive ``ratios`` (at least two)."""
  values = np.asarray(ratios, float)
  if values.size < 2 or not (np.isfinite(values).all() and (values > 0).all()):
    raise ValueError(f"an interval of ratios needs at least two positive, finite ratios; got {list(ratios)}")
  logs = np.log(values)
  half = float(scipy_stats.t.ppf(0.975, logs.size - 1)) * float(logs.std(ddof=1)) / math.sqrt(logs.size)
  m = float(logs.mean())
  return RatioInterval(math.exp(m), math.exp(m - half), math.exp(m + half), int(logs.size))


def format_p(p: float) -> str:
  """``p = 0.0048`` or ``p < 0.001``."""
  return f"p = {p:.2g}" if p >= 0.001 else "p < 0.001"


def signed(x: float, digits: int = 1) -> str:
  """``+1.3`` or ``−0.4`` (a true minus sign, as in the verdict lines)."""
  return f"{x:+.{digits}f}".replace("-", "−")


def verdict(label: str, diff: PairedDifference | SeedComparison) -> str:
  """One line for one comparison; 'unresolved' unless the interval excludes zero and p < 0.05."""
  if isinstance(diff, SeedComparison):
    test = f"paired t over {diff.num_seeds} seeds, {format_p(diff.p_value)}"
  else:
    test = f"McNemar {format_p(diff.p_value)}"
  unresolved = diff.low <= 0 <= diff.high or diff.p_value >= 0.05
  outcome = "unresolved (inside the noise)" if unresolved else (
      "lower error" if diff.difference < 0 else "higher error")
  return f"{label}: {signed(diff.difference)} points [{signed(diff.low)}, {signed(diff.high)}], {test}: {outcome}"
