"""95% intervals for the figures lape reports: Wilson for rates, bootstrap over items for means and
ratios of means, hypergeometric tails for overlaps.

Every effect lape prints carries one of these, computed here and nowhere else:

- a success rate ``k / n`` (steering, prediction accuracy): :func:`wilson`;
- a statistic of per-item values (a mean change, a perplexity ratio, a PCR): :func:`bootstrap`,
  percentile interval over items resampled with replacement, seeded;
- the overlap of two sets drawn from one population: :func:`overlap_p` (the one-sided
  hypergeometric p-value of at least the observed overlap); summed over layers or tensors drawn
  independently, :func:`overlap_law` (its law) and :func:`overlap_p_layers`.

Example:
    >>> wilson(65, 70)
    Interval(value=0.9286, low=0.8434, high=0.9691)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


@dataclass(frozen=True)
class Interval:
    """A point estimate with its 95% interval (``low <= value <= high`` unless the estimate is NaN)."""

    value: float
    low: float
    high: float

    def __repr__(self) -> str:
        return f"Interval(value={self.value:.4g}, low={self.low:.4g}, high={self.high:.4g})"

    def to_dict(self) -> dict[str, float]:
        """``{"value", "low", "high"}``, for sidecars and tables."""
        return {"value": self.value, "low": self.low, "high": self.high}

    @classmethod
    def from_dict(cls, d: dict[str, float]) -> Interval:
        return cls(float(d["value"]), float(d["low"]), float(d["high"]))

    def excludes(self, other: Interval) -> bool:
        """Whether the two intervals do not overlap (the usual "separated" reading)."""
        return self.low > other.high or self.high < other.low

    def format(self, digits: int = 2, percent: bool = False) -> str:
        """``"93% (84-97%)"`` or ``"2.61 [1.90, 3.40]"``."""
        if percent:
            return f"{self.value * 100:.0f}% ({self.low * 100:.0f}-{self.high * 100:.0f}%)"
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def wilson(successes: int, n: int, z: float = Z95) -> Interval:
    """The Wilson score interval of a rate ``successes / n`` (NaN for ``n == 0``).

    ``centre = (p + z^2/2n) / (1 + z^2/n)``, ``half = z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n)``.
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"wilson needs 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half))


def bootstrap(values: Sequence[float] | np.ndarray, statistic: Callable[[np.ndarray], float] = np.mean, *,
              resamples: int = 2000, seed: int = 0, level: float = 0.95) -> Interval:
    """Percentile bootstrap interval of ``statistic`` over items (rows of ``values``).

    ``values`` may be 1-D (one value per item) or 2-D (a row per item: e.g. the related and the
    unrelated change of one question, for a ratio of means). The point value is the statistic on
    all items; resampling draws items with replacement from a seeded generator. NaN for no items.

    Example:
        >>> bootstrap([1.0, 2.0, 3.0, 4.0]).value
        2.5
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape[0] == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    value = float(statistic(arr))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, arr.shape[0], size=(resamples, arr.shape[0]))
    stats = np.array([statistic(arr[i]) for i in idx], dtype=np.float64)
    return percentile_interval(value, stats, level)


def geomean_interval(ratios: Sequence[float], *, resamples: int = 2000, seed: int = 0) -> Interval:
    """The geometric mean of positive ``ratios`` (one per item, e.g. a PPL ratio per language)
    with its percentile bootstrap 95% interval over the items (NaN ones dropped).

    Example:
        >>> geomean_interval([2.0, 8.0]).value
        4.0
    """
    logs = [math.log(r) for r in ratios if not math.isnan(r)]
    if any(not math.isfinite(v) for v in logs):  # an overflowed (infinite) ratio: no finite mean
        return Interval(math.exp(sum(logs) / len(logs)), float("nan"), float("nan"))
    log_mean = bootstrap(logs, resamples=resamples, seed=seed)
    return Interval(*(math.exp(v) if math.isfinite(v) else float("nan")
                      for v in (log_mean.value, log_mean.low, log_mean.high)))


def percentile_interval(value: float, stats: Sequence[float] | np.ndarray, level: float = 0.95) -> Interval:
    """``value`` with the ``(1 - level) / 2`` and ``(1 + level) / 2`` percentiles of the resampled
    statistics ``stats`` (non-finite ones dropped; NaN bounds when none is left)."""
    stats = np.asarray(stats, dtype=np.float64)
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return Interval(value, float("nan"), float("nan"))
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(stats, [tail, 100 - tail])
    return Interval(value, float(low), float(high))


def bootstrap_weights(n: int, *, resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """How many times each of ``n`` items is drawn in each resample, float64 ``[resamples, n]``:
    the same draws as :func:`bootstrap` with the same ``seed``. For statistics built from sums over
    items, all resamples at once: ``weights @ table`` (then :func:`percentile_interval`).

    Example:
        >>> bootstrap_weights(3, resamples=2).sum(1).tolist()
        [3.0, 3.0]
    """
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n)) if n else np.zeros((resamples, 0), dtype=np.int64)
    flat = (idx + n * np.arange(resamples)[:, None]).ravel()
    return np.bincount(flat, minlength=resamples * n).reshape(resamples, n).astype(np.float64)


def ratio_of_means(rows: np.ndarray) -> float:
    """``|mean(rows[:, 0])| / |mean(rows[:, 1])|``: a ratio statistic for :func:`bootstrap` (PCR)."""
    den = abs(float(np.mean(rows[:, 1])))
    return abs(float(np.mean(rows[:, 0]))) / den if den > 0 else float("inf")


def overlap_p(overlap: int, size_a: int, size_b: int, population: int) -> float:
    """One-sided hypergeometric p-value: the chance that two sets of ``size_a`` and ``size_b``
    drawn at random from ``population`` share at least ``overlap`` members."""
    from scipy.stats import hypergeom

    if not 0 <= overlap <= min(size_a, size_b) or max(size_a, size_b) > population:
        raise ValueError(f"impossible overlap {overlap} of sets {size_a} and {size_b} in {population}")
    return float(hypergeom.sf(overlap - 1, population, size_a, size_b))


def overlap_law(parts: Sequence[tuple[int, int, int]], tail: float = 0.0) -> tuple[int, np.ndarray]:
    """The law of ``X = sum_t X_t``, the total overlap of two sets drawn at random independently
    in every part ``t`` (a layer, a tensor): ``X_t ~ Hypergeom(n_t, a_t, b_t)`` for sets of
    ``a_t`` and ``b_t`` of the part's ``n_t`` members; the law is the convolution of the parts'.

    Args:
        parts: ``(n, a, b)`` per part.
        tail: 0 keeps the whole support; otherwise probabilities below ``tail`` times the peak are
            dropped after each convolution (at least 1e-30), for sums over many large parts whose
            support would grow to millions of values.

    Returns:
        ``(x0, pmf)`` with ``pmf[i] = P(X = x0 + i)`` (float64; sums to 1 but for dropped tails).

    Raises:
        ValueError: a part whose sets are larger than it, or a tail in (0, 1e-30).

    Example:
        >>> overlap_law([(4, 2, 2)])   # P(X = 0, 1, 2) = 1/6, 4/6, 1/6
        (0, array([0.16666667, 0.66666667, 0.16666667]))
    """
    from scipy.stats import hypergeom

    if 0 < tail < 1e-30:
        raise ValueError(f"tail={tail} is below 1e-30: use 0 for the whole support")
    x0, pmf = 0, np.ones(1)
    for n, a, b in parts:
        if not (0 <= a <= n and 0 <= b <= n):
            raise ValueError(f"cannot draw {a} and {b} of {n} members")
        lo, hi = max(0, a + b - n), min(a, b)
        if tail > 0 and n > 1:  # mean +- (40 sd + 100) holds every probability above 1e-30 of the peak
            mean, sd = a * b / n, math.sqrt(a * b * (n - a) * (n - b) / (n * n * (n - 1)))
            lo, hi = max(lo, math.floor(mean - 40 * sd - 100)), min(hi, math.ceil(mean + 40 * sd + 100))
        x0, pmf = x0 + lo, np.convolve(pmf, hypergeom.pmf(np.arange(lo, hi + 1), n, a, b))
        if tail > 0:
            keep = np.nonzero(pmf >= tail * pmf.max())[0]
            x0, pmf = x0 + int(keep[0]), pmf[keep[0]:keep[-1] + 1]
    return x0, pmf


def overlap_p_layers(overlap: int, sizes_a: Sequence[int], sizes_b: Sequence[int], width: int) -> float:
    """One-sided p-value of at least ``overlap`` shared members when, in every layer ``l``, two
    sets of ``sizes_a[l]`` and ``sizes_b[l]`` are drawn at random from its ``width`` members: the
    null of :func:`lape.masks.chance_overlap` (counts per layer kept). The total
    overlap is a sum of independent hypergeometric counts, whose distribution is the convolution
    of the layers' pmfs: ``P(X >= overlap)``, ``X = sum_l X_l``, ``X_l ~ Hypergeom(width, a_l, b_l)``.
    """
    if len(sizes_a) != len(sizes_b) or any(not 0 <= s <= width for s in (*sizes_a, *sizes_b)):
        raise ValueError(f"per-layer sizes {list(sizes_a)} and {list(sizes_b)} do not fit layers of {width}")
    x0, pmf = overlap_law([(width, a, b) for a, b in zip(sizes_a, sizes_b)])
    if not 0 <= overlap < x0 + len(pmf):
        raise ValueError(f"impossible overlap {overlap} of sets with per-layer sizes {list(sizes_a)}, {list(sizes_b)}")
    return float(min(1.0, pmf[max(0, overlap - x0):].sum()))
