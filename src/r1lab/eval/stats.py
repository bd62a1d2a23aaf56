"""95% intervals for evaluation accuracies, and whether a difference is inside the noise.

Methods (stated in the summaries and the report):
- greedy and maj@k (cons@k), one 0/1 verdict per problem: the Wilson score interval over the n problems
  (sound at 0% and 100% and for small n, where the normal interval collapses to a point);
- pass@1, the mean over problems of each problem's share of k correct samples, two intervals:
  "over problems": the normal (CLT) interval mean +- 1.96 * sd / sqrt(n) of the per-problem shares (it holds
  both the problem-to-problem spread and the sampling noise), widened to the Wilson interval over the n
  problems when every problem scored the same (sd 0 says nothing about noise);
  "over samples": the noise of re-drawing the k samples for these same problems, +- 1.96 * sqrt(sum of
  p_i (1 - p_i) / (k - 1)) / n (p_i a problem's share); 0 with k = 1 or no spread inside problems.
A difference of two accuracies a - b has the interval a - b +- sqrt(h_a^2 + h_b^2) from the two half-widths
(independent estimates; with normal intervals h = 1.96 * se, so this is +- 1.96 * sqrt(se_a^2 + se_b^2)). It is
inside the noise when that interval contains 0 (its ends included); the two are told apart ("intervals apart")
only when it lies wholly above or below 0. The report's findings use this rule for every claim of a difference:
"A beats B by >= X" holds only when the lower end is above 0 and the measured gain is >= X.
Two models judged on the same problems are compared problem by problem where their per-problem shares are at
hand (paired_difference): the normal interval of the mean of the per-problem differences, which removes the
problem-to-problem spread that both share, under the same rule.
"""
from __future__ import annotations

import math

Z95 = 1.959963984540054


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval of a proportion; None without data."""
    if n <= 0:
        return None
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def binary_interval(verdicts: list[float]) -> tuple[float, float] | None:
    """95% interval of the share of 0/1 verdicts (one per problem): Wilson over problems."""
    return wilson(sum(verdicts), len(verdicts))


def mean_interval(shares: list[float]) -> tuple[float, float] | None:
    """95% interval over problems of the mean of per-problem shares in [0, 1] (normal, Wilson at sd 0)."""
    n = len(shares)
    if n == 0:
        return None
    mean = sum(shares) / n
    sd = math.sqrt(sum((s - mean) ** 2 for s in shares) / (n - 1)) if n > 1 else 0.0
    if sd == 0.0:
        return wilson(mean * n, n)
    half = Z95 * sd / math.sqrt(n)
    return max(0.0, mean - half), min(1.0, mean + half)


def value_interval(values: list[float]) -> tuple[float, float] | None:
    """95% interval over problems of the mean of unbounded per-problem values (e.g. mean response length):
    normal, mean +- 1.96 * sd / sqrt(n); a point when every value is the same."""
    n = len(values)
    if n == 0:
        return None
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean - Z95 * sd / math.sqrt(n), mean + Z95 * sd / math.sqrt(n)


def sample_interval(shares: list[float], k: int) -> tuple[float, float] | None:
    """95% interval of the mean share from re-drawing the k samples of the same problems."""
    n = len(shares)
    if n == 0 or k < 1:
        return None
    mean = sum(shares) / n
    variance = sum(s * (1 - s) for s in shares) / (k - 1) / n ** 2 if k > 1 else 0.0
    half = Z95 * math.sqrt(variance)
    return max(0.0, mean - half), min(1.0, mean + half)


def paired_difference(a: list[float | None], b: list[float | None]) -> tuple[float, float, float] | None:
    """Mean of a - b over the problems both were judged on (same order; None: skipped), and its 95% interval
    (normal over the per-problem differences; Wilson-like care is not needed: differences are not bounded
    at 0). None without common problems."""
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    n = len(pairs)
    if n == 0:
        return None
    diffs = [x - y for x, y in pairs]
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1)) if n > 1 else 0.0
    half = Z95 * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def half_width(interval) -> float:
    return 0.0 if not interval else (interval[1] - interval[0]) / 2


def difference(a: float, a_interval, b: float, b_interval) -> tuple[float, float, float]:
    """(a - b, low, high): the difference of two independent estimates and its 95% interval,
    a - b +- sqrt(h_a^2 + h_b^2) from their intervals' half-widths."""
    margin = math.hypot(half_width(a_interval), half_width(b_interval))
    return a - b, a - b - margin, a - b + margin


def inside_noise(a: float, a_interval, b: float, b_interval) -> bool:
    """Whether a - b is indistinguishable from 0 at 95% given the two intervals (its interval holds 0)."""
    _, low, high = difference(a, a_interval, b, b_interval)
    return low <= 0 <= high


def fmt_points(value: float, low: float, high: float) -> str:
    """'+18.5 pts [+12.1, +24.9]': a difference of two shares and its interval, in percentage points."""
    return f"{100 * value:+.1f} pts [{100 * low:+.1f}, {100 * high:+.1f}]"


def fmt_interval(interval) -> str:
    """'[81.2, 93.4]' in percent, or '' without one."""
    return "" if not interval else f"[{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"
