"""Intervals and tests against values worked out by hand from their formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sppnet_jax import stats


def test_wilson_interval_from_its_formula():
  # 10 errors in 100: p = 0.1, z = 1.96; centre (p + z^2/2n) / (1 + z^2/n) = 0.11480,
  # half-width z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n) = 0.05957.
  low, high = stats.wilson_interval(10, 100)
  assert low == pytest.approx(5.523, abs=1e-3) and high == pytest.approx(17.437, abs=1e-3)
  # No errors: the interval still has width, [0, z^2 / (n + z^2)].
  low, high = stats.wilson_interval(0, 50)
  z = stats.Z95
  assert low == 0 and high == pytest.approx(100 * z**2 / (50 + z**2))
  low, high = stats.wilson_interval(10, 100, level=0.99)  # z = 2.5758: wider
  assert low == pytest.approx(4.6026, abs=1e-3) and high == pytest.approx(20.375, abs=1e-3)
  with pytest.raises(ValueError, match="at least one example"):
    stats.wilson_interval(0, 0)
  with pytest.raises(ValueError, match=r"errors must be in \[0, n=5\]"):
    stats.wilson_interval(6, 5)


def test_wilson_half_width_at_4500_examples_is_at_most_one_and_a_half_points():
  low, high = stats.wilson_interval(2250, 4500)  # the widest case, p = 0.5
  assert (high - low) / 2 <= 1.5


@pytest.mark.parametrize("b, c, expected", [
    (1, 6, 2 * (1 + 7) / 2**7),          # P[X <= 1], X ~ Bin(7, 1/2) = 8/128; two-sided 0.125
    (0, 5, 2 / 2**5),                     # 0.0625
    (8, 2, 2 * (1 + 10 + 45) / 2**10),    # symmetric in b and c: 0.109375
    (3, 3, 1.0),                          # 2 P[X <= 3] > 1, capped
    (0, 0, 1.0),                          # no discordant pairs, no evidence
])
def test_exact_mcnemar_on_small_tables(b, c, expected):
  assert stats.mcnemar_exact(b, c) == pytest.approx(expected)


def test_paired_difference_by_hand():
  # 10 examples: 3 only A gets wrong, 1 only B gets wrong, 2 both, 4 neither.
  wrong_a = np.array([1, 1, 1, 0, 1, 1, 0, 0, 0, 0], bool)
  wrong_b = np.array([0, 0, 0, 1, 1, 1, 0, 0, 0, 0], bool)
  diff = stats.paired_difference(wrong_a, wrong_b, z=1.96)
  # d = (3 - 1)/10 = 0.2; half = 1.96 sqrt((0.4 - 0.04) / 10) = 0.37188.
  assert diff.difference == pytest.approx(20.0)
  assert (diff.low, diff.high) == pytest.approx((20 - 37.188, 20 + 37.188), abs=1e-3)
  assert diff.p_value == pytest.approx(2 * 5 / 16)  # Bin(4, 1/2): P[X <= 1] = 5/16
  assert (diff.only_a_wrong, diff.only_b_wrong, diff.n) == (3, 1, 10)
  with pytest.raises(ValueError, match="same examples"):
    stats.paired_difference(wrong_a, wrong_b[:5])


def test_bootstrap_is_reproducible_and_covers_the_mean():
  values = np.random.default_rng(1).normal(10.0, 2.0, size=400)
  first = stats.bootstrap_interval(values, seed=3)
  assert first == stats.bootstrap_interval(values, seed=3)
  assert first != stats.bootstrap_interval(values, seed=4)
  # The normal-theory interval of the mean is mean +- 1.96 s / sqrt(n) = +-0.196 here.
  half = 1.96 * values.std(ddof=1) / math.sqrt(values.size)
  assert first[0] == pytest.approx(values.mean() - half, abs=0.03)
  assert first[1] == pytest.approx(values.mean() + half, abs=0.03)


def test_seed_comparison_paired_t_by_hand():
  # d = [1, 2, 3]: mean 2, sd 1, t = 2 sqrt(3) = 3.4641 on 2 degrees of freedom, where the
  # t distribution's tail is P[T > t] = (1 - t / sqrt(t^2 + 2)) / 2 = 0.03709.
  result = stats.seed_comparison([11.0, 12.0, 13.0], [10.0, 10.0, 10.0])
  t = 2 * math.sqrt(3)
  assert result.p_value == pytest.approx(1 - t / math.sqrt(t * t + 2))
  assert result.difference == pytest.approx(2.0)
  # 95 % interval: 2 +- t_{0.975, 2} / sqrt(3), with t_{0.975, 2} = 4.302653.
  assert (result.low, result.high) == pytest.approx((2 - 4.302653 / math.sqrt(3), 2 + 4.302653 / math.sqrt(3)))
  assert (result.mean_a, result.std_a, result.std_b) == pytest.approx((12.0, 1.0, 0.0))
  with pytest.raises(ValueError, match=">= 2"):
    stats.seed_comparison([1.0], [2.0])


def test_verdict_lines():
  diff = stats.PairedDifference(-1.3, -2.1, -0.5, 0.002, 40, 99, 4500)
  assert stats.verdict("multi − single, full view", diff) == (
      "multi − single, full view: −1.3 points [−2.1, −0.5], McNemar p = 0.002: lower error")
  inside = stats.PairedDifference(0.4, -0.6, 1.4, 0.41, 50, 32, 4500)
  assert "unresolved" in stats.verdict("x", inside)


def test_ratio_interval_by_hand():
  # logs of (2, 8): mean log 4 -> geometric mean 4; sd of (ln 2, ln 8) = sqrt(2) ln 2,
  # t(0.975, 1) = 12.7062, half-width = 12.7062 * ln 2 (= sd / sqrt(2) * t).
  r = stats.ratio_interval([2.0, 8.0])
  assert r.mean == pytest.approx(4.0) and r.count == 2
  assert r.low == pytest.approx(4.0 * math.exp(-12.7062047 * math.log(2)), rel=1e-6)
  assert r.high == pytest.approx(4.0 * math.exp(12.7062047 * math.log(2)), rel=1e-6)
  same = stats.ratio_interval([1.5, 1.5, 1.5])
  assert same.low == same.mean == same.high == pytest.approx(1.5)
  with pytest.raises(ValueError, match="at least two positive"):
    stats.ratio_interval([1.0])
  with pytest.raises(ValueError, match="at least two positive"):
    stats.ratio_interval([1.0, 0.0])
