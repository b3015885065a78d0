"""Statistics of timing rounds, as pure functions over lists of numbers (scipy does the work).

Ratios are taken per round: within one round every backend of a comparison group is timed back
to back, so a slow spell of a shared machine hits both sides of a ratio alike. The interval of
a median ratio is a percentile bootstrap over rounds (scipy.stats.bootstrap, fixed seed, so the
same rounds always give the same interval).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

RESAMPLES = 2000
CONFIDENCE = 0.95


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    q25, q50, q75 = (float(v) for v in np.quantile(np.asarray(values, float), [0.25, 0.5, 0.75]))
    return q25, q50, q75


def round_ratios(reference: Sequence[float], candidate: Sequence[float]) -> list[float]:
    """reference time / candidate time of each round both timed (> 1: candidate faster)."""
    return [r / c for r, c in zip(reference, candidate) if r and c and r > 0 and c > 0]


def median_ci(
    values: Sequence[float],
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(median, low, high): the median of `values` and its percentile-bootstrap interval.

    With one value the interval is that value (nothing is known about its spread: callers
    require a minimum number of rounds before trusting it)."""
    from scipy.stats import bootstrap

    data = np.asarray(values, float)
    if data.size == 0:
        return math.nan, math.nan, math.nan
    point = float(np.median(data))
    if data.size == 1 or np.all(data == data[0]):
        return point, point, point
    with warnings.catch_warnings():  # scipy warns on degenerate resamples of tiny samples
        warnings.simplefilter("ignore")
        res = bootstrap(
            (data,),
            np.median,
            confidence_level=confidence,
            n_resamples=resamples,
            method="percentile",
            random_state=np.random.default_rng(seed),
            vectorized=True,
            axis=-1,
        )
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return point, min(low, point), max(high, point)


def relative_half_width(point: float, low: float, high: float) -> float:
    """Half the interval's width as a fraction of the point estimate."""
    if not point or not math.isfinite(point):
        return math.inf
    return (high - low) / 2 / abs(point)


def undecided(low: float | None, high: float | None) -> bool:
    """True when an interval of a ratio contains 1.0: faster or slower is not shown."""
    return low is not None and high is not None and low <= 1.0 <= high


def ratio_change_ci(
    base: Sequence[float],
    new: Sequence[float],
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> tuple[float, float, float]:
    """median(new) / median(base) and its percentile-bootstrap interval (the two samples
    resampled independently)."""
    from scipy.stats import bootstrap

    b, n = np.log(np.asarray(base, float)), np.log(np.asarray(new, float))
    point = float(np.exp(np.median(n) - np.median(b)))

    def statistic(x, y, axis=-1):
        return np.median(y, axis=axis) - np.median(x, axis=axis)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = bootstrap(
            (b, n),
            statistic,
            confidence_level=confidence,
            n_resamples=resamples,
            method="percentile",
            random_state=np.random.default_rng(seed),
            vectorized=True,
            paired=False,
        )
    return (
        point,
        float(np.exp(res.confidence_interval.low)),
        float(np.exp(res.confidence_interval.high)),
    )


def mann_whitney_p(base: Sequence[float], new: Sequence[float]) -> float:
    """Two-sided Mann-Whitney U p-value of two samples of ratios."""
    from scipy.stats import mannwhitneyu

    return float(mannwhitneyu(new, base, alternative="two-sided").pvalue)
