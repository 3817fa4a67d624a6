"""The statistics of the report, on scipy.stats: a group's mean, sample std and n over its
seeds with a 95% t-interval (df = n - 1); paired differences by seed with their own
t-interval and two-sided p-value; the smallest difference the design can detect (at 50% and
at 80% power); Holm's step-down adjustment of a family of tests; and the one decision rule
every finding uses. Imports no torch.

Decision rule: a difference *holds* when its 95% interval excludes 0; otherwise it is
*inconclusive at this n* (printed with its interval). One pair (n = 1) has no interval and is
inconclusive at n=1.
"""
import math
from dataclasses import dataclass

import pandas as pd
from scipy import stats

CONFIDENCE = 0.95  # of every interval the report prints
ALPHA = 1 - CONFIDENCE  # the two-sided test level the intervals invert
POWER = 0.80  # the power of the second detectable difference the report prints


@dataclass(frozen=True)
class Estimate:
    """mean, sample std (ddof 1), n and the 95% t-interval (low, high) of n values; std,
    low and high are nan when n < 2."""
    mean: float
    std: float
    n: int
    low: float
    high: float


def t_quantile(n: int, confidence: float = CONFIDENCE) -> float:
    """The two-sided t quantile of a confidence interval of a mean of n values (df = n - 1);
    nan for n < 2. n=3 at 95%: 4.303."""
    return float(stats.t.ppf((1 + confidence) / 2, n - 1)) if n > 1 else math.nan


def estimate(values) -> Estimate:
    """Mean, sample std, n and 95% t-interval (scipy.stats.t.interval) of values (nan dropped)."""
    x = pd.Series(values, dtype=float).dropna()
    n = len(x)
    if n == 0:
        return Estimate(math.nan, math.nan, 0, math.nan, math.nan)
    if n == 1:
        return Estimate(float(x.iloc[0]), math.nan, 1, math.nan, math.nan)
    mean, std = float(x.mean()), float(x.std(ddof=1))
    if std == 0:  # scipy returns nan for a zero scale; the interval is the point
        return Estimate(mean, 0.0, n, mean, mean)
    low, high = stats.t.interval(CONFIDENCE, n - 1, loc=mean, scale=std / math.sqrt(n))
    return Estimate(mean, std, n, float(low), float(high))


def detectable(std: float, n: int) -> float:
    """The smallest detectable difference: the half-width of the 95% t-interval of a mean
    paired difference over n pairs whose differences have sample std `std`,
    t_quantile(n) * std / sqrt(n). An observed mean difference smaller than this cannot make
    the interval exclude 0, so it cannot hold at this n and spread. nan for n < 2."""
    return t_quantile(n) * std / math.sqrt(n) if n > 1 else math.nan


def detectable_at_power(std: float, n: int, power: float = POWER) -> float:
    """The true mean paired difference that a two-sided level-ALPHA paired t-test over n
    pairs with difference std `std` detects with probability `power` (the usual
    approximation (t_{1-ALPHA/2} + t_power) * std / sqrt(n), df = n - 1). detectable() is
    this at power 0.5. nan for n < 2."""
    if n < 2:
        return math.nan
    return (t_quantile(n) + float(stats.t.ppf(power, n - 1))) * std / math.sqrt(n)


def holm(p_values: pd.Series) -> pd.Series:
    """Holm's step-down adjusted p-values of one family of tests (same index; nan stays nan
    and is not counted): the k-th smallest of m p-values times (m - k + 1), made
    non-decreasing and capped at 1. A test holds after adjustment when its value < ALPHA."""
    p = pd.Series(p_values, dtype=float)
    ranked = p.dropna().sort_values()
    m = len(ranked)
    scaled = (ranked * (m - pd.RangeIndex(m).to_numpy())).cummax().clip(upper=1.0)
    return scaled.reindex(p.index)


@dataclass(frozen=True)
class Paired:
    """a - b over the seeds both have: the per-seed differences and their estimate."""
    differences: pd.Series  # seed -> a - b
    estimate: Estimate

    @property
    def n(self) -> int:
        return self.estimate.n

    @property
    def holds(self) -> bool:
        """The decision rule: the 95% interval excludes 0 (never for n < 2)."""
        e = self.estimate
        return e.n > 1 and (e.low > 0 or e.high < 0)

    @property
    def verdict(self) -> str:
        return "holds" if self.holds else f"inconclusive at n={self.n}"

    @property
    def detectable(self) -> float:
        return detectable(self.estimate.std, self.n)

    @property
    def detectable_80(self) -> float:
        return detectable_at_power(self.estimate.std, self.n)

    @property
    def p_value(self) -> float:
        """The two-sided paired t-test's p-value (mean 0 against not 0); nan for n < 2, 0 or
        1 where the differences do not vary."""
        e = self.estimate
        if e.n < 2:
            return math.nan
        if e.std == 0:
            return 1.0 if e.mean == 0 else 0.0
        t = e.mean / (e.std / math.sqrt(e.n))
        return float(2 * stats.t.sf(abs(t), e.n - 1))


def paired(a: pd.Series, b: pd.Series) -> Paired:
    """Paired differences a - b of two arms indexed by seed, on the seeds both have (values
    that are nan are dropped first)."""
    a, b = pd.Series(a, dtype=float).dropna(), pd.Series(b, dtype=float).dropna()
    seeds = a.index.intersection(b.index).sort_values()
    differences = a.loc[seeds] - b.loc[seeds]
    return Paired(differences, estimate(differences))


def interval_text(e: Estimate, digits: int) -> str:
    """'95% CI [low, high]', or '' when there is no interval (n < 2)."""
    return f"95% CI [{e.low:.{digits}f}, {e.high:.{digits}f}]" if e.n > 1 else ""


def difference_text(p: Paired, digits: int, unit: str = " points") -> str:
    """'+1.23 points, 95% CI [-0.50, 2.96], n=3 pairs (seeds 1, 2, 3), smallest detectable
    difference 1.73: inconclusive at n=3'; for one pair '..., n=1 pair (seed 1), no
    interval: inconclusive at n=1'; for none 'no seed in common'."""
    e = p.estimate
    if e.n == 0:
        return "no seed in common"
    seeds = ", ".join(str(s) for s in p.differences.index)
    text = f"{e.mean:+.{digits}f}{unit}"
    if e.n > 1:
        text += (f", {interval_text(e, digits)}, n={e.n} pairs (seeds {seeds}), smallest "
                 f"detectable difference {p.detectable:.{digits}f}")
    else:
        text += f", n=1 pair (seed {seeds}), no interval"
    return f"{text}: {p.verdict}"
