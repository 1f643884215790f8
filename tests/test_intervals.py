"""Interval code against hand-worked examples."""

import math

import numpy as np
import pytest

from lape.intervals import (
    Interval,
    bootstrap,
    bootstrap_weights,
    overlap_law,
    overlap_p,
    overlap_p_layers,
    percentile_interval,
    ratio_of_means,
    wilson,
)


def test_wilson_zero_of_ten_by_hand():
    # p = 0: centre = (z^2/2n) / (1 + z^2/n) and half = (z^2/2n) / (1 + z^2/n), so the interval is [0, z^2/n / (1 + z^2/n)]
    z2 = 1.959963984540054 ** 2
    iv = wilson(0, 10)
    assert iv.value == 0 and iv.low == 0
    assert iv.high == pytest.approx((z2 / 10) / (1 + z2 / 10), abs=1e-12)  # 0.2775
    assert iv.high == pytest.approx(0.2775, abs=1e-4)


def test_wilson_textbook_values():
    # 65 of 70 (the steering rate the issue quotes as es 93%: 84-97%)
    iv = wilson(65, 70)
    assert (round(iv.low, 2), round(iv.high, 2)) == (0.84, 0.97)
    # symmetric: k of n mirrors n-k of n
    a, b = wilson(3, 20), wilson(17, 20)
    assert a.low == pytest.approx(1 - b.high) and a.high == pytest.approx(1 - b.low)
    assert math.isnan(wilson(0, 0).value)
    with pytest.raises(ValueError):
        wilson(5, 4)


def test_bootstrap_two_items_by_hand():
    # resampled means of [0, 1] are 0, 0.5, 1 with chances 1/4, 1/2, 1/4: the 2.5% and 97.5% points are 0 and 1
    iv = bootstrap([0.0, 1.0], resamples=4000, seed=1)
    assert iv.value == 0.5 and iv.low == 0.0 and iv.high == 1.0
    # constant data: no spread
    iv = bootstrap([2.0] * 7)
    assert iv.low == iv.value == iv.high == 2.0
    # seeded: the same twice, and it contains the point value
    x = np.random.default_rng(0).normal(size=50)
    assert bootstrap(x, seed=3) == bootstrap(x, seed=3)
    iv = bootstrap(x)
    assert iv.low < iv.value < iv.high
    # the normal-theory interval of a mean is close to the bootstrap one for 50 normal draws
    se = x.std(ddof=1) / np.sqrt(50)
    assert iv.high - iv.low == pytest.approx(2 * 1.96 * se, rel=0.2)


def test_bootstrap_weights_are_the_bootstrap_draws():
    # two items, 4000 resamples: each row draws 2 items, so the weights are (2, 0), (1, 1) or (0, 2)
    w = bootstrap_weights(2, resamples=4000, seed=1)
    assert w.shape == (4000, 2) and set(map(tuple, w.tolist())) == {(2.0, 0.0), (1.0, 1.0), (0.0, 2.0)}
    # the weighted means are bootstrap's resampled means: the same interval as test_bootstrap_two_items_by_hand
    assert percentile_interval(0.5, w @ np.array([0.0, 1.0]) / 2) == bootstrap([0.0, 1.0], resamples=4000, seed=1)
    x = np.random.default_rng(0).normal(size=30)
    a, b = bootstrap(x, seed=3), percentile_interval(float(x.mean()), bootstrap_weights(30, seed=3) @ x / 30)
    assert a.value == pytest.approx(b.value) and a.low == pytest.approx(b.low) and a.high == pytest.approx(b.high)
    # percentile_interval by hand: 0..100 -> the 2.5% and 97.5% points; non-finite values dropped
    iv = percentile_interval(50.0, [*range(101), float("inf"), float("nan")])
    assert iv.value == 50.0 and iv.low == pytest.approx(2.5) and iv.high == pytest.approx(97.5)
    assert math.isnan(percentile_interval(1.0, [float("nan")]).low)


def test_bootstrap_ratio_of_means_rows():
    rows = np.array([[2.0, 1.0], [4.0, 1.0], [6.0, 1.0]])
    iv = bootstrap(rows, ratio_of_means)
    assert iv.value == pytest.approx(4.0)
    assert 2.0 <= iv.low <= iv.value <= iv.high <= 6.0


def test_overlap_p_by_hand():
    assert overlap_p(1, 1, 1, 4) == pytest.approx(1 / 4)
    assert overlap_p(2, 2, 2, 4) == pytest.approx(1 / 6)
    assert overlap_p(0, 3, 3, 10) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        overlap_p(3, 2, 2, 4)


def test_interval_round_trip_and_format():
    iv = wilson(65, 70)
    assert Interval.from_dict(iv.to_dict()) == iv
    assert iv.format(percent=True) == "93% (84-97%)"
    assert Interval(1, 0, 2).excludes(Interval(3, 2.5, 4)) and not Interval(1, 0, 3).excludes(Interval(3, 2.5, 4))


def test_overlap_law_by_hand():
    # 2 of 4 and 2 of 4: P(X = 0, 1, 2) = 1/6, 4/6, 1/6; 1 of 4 and 1 of 4: P(0, 1) = 3/4, 1/4
    x0, pmf = overlap_law([(4, 2, 2), (4, 1, 1)])
    assert x0 == 0 and pmf == pytest.approx([1 / 8, 13 / 24, 7 / 24, 1 / 24], rel=1e-12)
    # 3 of 4 twice share at least 2: P(2) = C(3,2) C(1,1) / C(4,3) = 3/4, P(3) = 1/4
    x0, pmf = overlap_law([(4, 3, 3)])
    assert x0 == 2 and pmf == pytest.approx([3 / 4, 1 / 4], rel=1e-12)
    assert overlap_law([]) == (0, pytest.approx([1.0]))
    # dropped tails: a law centred on 3 * 100 = 300 from a narrow window, the moments kept
    x0, pmf = overlap_law([(10**6, 10**4, 10**4)] * 3, tail=1e-30)
    x = np.arange(x0, x0 + len(pmf))
    assert len(pmf) < 700 and pmf.sum() == pytest.approx(1.0, abs=1e-9)  # scipy rounding: 1.5e-11
    assert (x * pmf).sum() == pytest.approx(300.0, rel=1e-9)
    with pytest.raises(ValueError):
        overlap_law([(4, 5, 1)])
    with pytest.raises(ValueError):
        overlap_law([(4, 2, 2)], tail=1e-40)


def test_overlap_p_layers_by_hand():
    # layer 0: 2 of 4 and 2 of 4 -> X0 in {0, 1, 2} with P 1/6, 4/6, 1/6; layer 1: 1 of 4 and 1 of 4 ->
    # X1 = 1 with P 1/4. P(X >= 3) = P(2)P(1) = 1/24; P(X >= 2) = 1/6 + 4/6 * 1/4 = 1/3
    assert overlap_p_layers(3, [2, 1], [2, 1], 4) == pytest.approx(1 / 24)
    assert overlap_p_layers(2, [2, 1], [2, 1], 4) == pytest.approx(1 / 3)
    assert overlap_p_layers(0, [2, 1], [2, 1], 4) == pytest.approx(1.0)
    assert overlap_p_layers(1, [1], [1], 4) == pytest.approx(overlap_p(1, 1, 1, 4))  # one layer: hypergeometric
    with pytest.raises(ValueError):
        overlap_p_layers(1, [2, 0], [0, 2], 4)
    with pytest.raises(ValueError):
        overlap_p_layers(0, [5], [1], 4)
