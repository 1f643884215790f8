"""LAPE selection and its baselines on hand-made statistics worked out by hand (methods.md §2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lape.errors import LapeError
from lape.neurons.select import (
    IdentifyConfig,
    identify,
    language_agnostic,
    lape_entropy,
    select_by_entropy,
)
from lape.neurons.stats import ActivationStats


def _stats(probs: list[list[list[float]]], tokens: int = 100, fire_sums=None) -> ActivationStats:
    """Stats whose activation probabilities are ``probs`` ``[languages][layers][neurons]``."""
    p = torch.tensor(probs, dtype=torch.float64)
    counts = (p * tokens).round().to(torch.int64)
    k = p.shape[0]
    sums = counts.to(torch.float64) if fire_sums is None else torch.tensor(fire_sums, dtype=torch.float64)
    return ActivationStats(["a", "b", "c"][:k], counts, torch.full((k,), tokens, dtype=torch.int64),
                           sums.clone(), sums.clone())


# Two languages, 2 layers x 4 neurons; (p_a, p_b) per neuron:
#   (0,0) 0,0 dead        (0,1) .05,0 rare     (0,2) .9,.1 mostly a   (0,3) .5,.5 both
#   (1,0) .1,.8 mostly b  (1,1) .6,.4 both     (1,2) .02,.03 rare     (1,3) .7,0  only a
# The 16 probabilities sorted: 0,0,0,0,.02,.03,.05,.1,.1,.4,.5,.5,.6,.7,.8,.9.
# filter_rate .5 -> the 8th smallest, tau = 0.1; neurons with no p > 0.1 are excluded:
# (0,0), (0,1), (1,2). Entropies of the others: (1,3) 0 < (0,2) H(.9,.1) < (1,0) H(1/9,8/9)
# < (1,1) H(.6,.4) < (0,3) ln 2.
HAND = [[[0.0, 0.05, 0.9, 0.5], [0.1, 0.6, 0.02, 0.7]],
        [[0.0, 0.0, 0.1, 0.5], [0.8, 0.4, 0.03, 0.0]]]


def _h(*p: float) -> float:
    s = sum(p)
    return -sum(x / s * math.log(x / s) for x in p if x > 0)


def test_entropy_of_hand_vectors():
    v = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.2, 0.2, 0.2], [0.2, 0.2, 0.0],
                      [0.0, 0.0, 0.0]], dtype=torch.float64).T.reshape(3, 1, 5)
    h = lape_entropy(v)
    assert h.shape == (1, 5)
    expected = [math.log(2), 0.0, math.log(3), math.log(2), 0.0]  # normalised over languages first
    torch.testing.assert_close(h[0], torch.tensor(expected, dtype=torch.float64))
    p = torch.tensor([0.9, 0.1], dtype=torch.float64).view(2, 1, 1)
    assert math.isclose(float(lape_entropy(p)), -(0.9 * math.log(0.9) + 0.1 * math.log(0.1)))


def test_filter_excludes_dead_and_rare_neurons_and_selects_globally():
    sets = identify(_stats(HAND), IdentifyConfig(top_rate=0.375, filter_rate=0.5, activation_bar_ratio=0.5))
    assert sets.labels == ["a", "b"]
    assert math.isclose(sets.meta["thresholds"]["tau_filter"], 0.1)
    # the 3 lowest-entropy neurons over both layers: (1,3), (0,2), (1,0); not the dead (0,0) nor
    # the rare monolingual (0,1), whose entropy 0 would rank them first without the filter
    assert sets.neurons("a") == [(0, 2), (1, 3)]
    assert sets.neurons("b") == [(1, 0)]  # (0,2) has p_b = 0.1, not above the bar
    assert sets.meta["thresholds"]["selected"] == 3


def test_a_neuron_can_belong_to_several_languages():
    sets = identify(_stats(HAND), IdentifyConfig(top_rate=0.5, filter_rate=0.5, activation_bar_ratio=0.5))
    assert sets.neurons("a") == [(0, 2), (1, 1), (1, 3)]
    assert sets.neurons("b") == [(1, 0), (1, 1)]
    assert sets.overlaps().tolist() == [[3, 1], [1, 2]]
    # a higher membership bar (the 12th smallest, 0.5) drops (1,1) from b (p_b = 0.4) but keeps
    # it in a (p_a = 0.6); the selection itself (filter at 0.1) is unchanged
    sets = identify(_stats(HAND), IdentifyConfig(top_rate=0.5, filter_rate=0.5, activation_bar_ratio=0.75))
    assert math.isclose(sets.meta["thresholds"]["tau_bar"], 0.5)
    assert sets.neurons("a") == [(0, 2), (1, 1), (1, 3)]
    assert sets.neurons("b") == [(1, 0)]


def test_lave_uses_mean_positive_activation_values():
    # one layer, 4 neurons, 10 tokens; every neuron fires equally often in both languages, so
    # LAPE sees no difference, but the firing values differ: E[max(act,0)] per language
    #   n0 .5,.5 (ln 2)   n1 .9,.1   n2 0,0 (dead)   n3 0,.8 (only b)
    # sorted: 0,0,0,.1,.5,.5,.8,.9; filter .5 -> 4th smallest = 0.1; lowest entropies n3, n1
    counts = torch.full((2, 1, 4), 5, dtype=torch.int64)
    fire_sums = torch.tensor([[[5.0, 9.0, 0.0, 0.0]], [[5.0, 1.0, 0.0, 8.0]]], dtype=torch.float64)
    stats = ActivationStats(["a", "b"], counts, torch.tensor([10, 10]), fire_sums.clone(), fire_sums)
    cfg = dict(top_rate=0.5, filter_rate=0.5, activation_bar_ratio=0.5, min_tokens=10)
    lave = identify(stats, IdentifyConfig(method="lave", **cfg))
    assert lave.neurons("a") == [(0, 1)] and lave.neurons("b") == [(0, 3)]
    lape = identify(stats, IdentifyConfig(method="lape", **cfg))
    assert lape.counts() == {"a": 0, "b": 0}  # equal probabilities: nothing is specific


def test_lap_takes_each_languages_highest_probabilities_with_lapes_counts():
    cfg = dict(top_rate=0.5, filter_rate=0.5, activation_bar_ratio=0.5)
    lape = identify(_stats(HAND), IdentifyConfig(**cfg))
    lap = identify(_stats(HAND), IdentifyConfig(method="lap", **cfg))
    assert lap.counts() == lape.counts() == {"a": 3, "b": 2}
    assert lap.neurons("a") == [(0, 2), (1, 1), (1, 3)]  # p_a .9, .6, .7
    assert lap.neurons("b") == [(0, 3), (1, 0)]  # p_b .5, .8 (LAPE has (1,1) instead of (0,3))


def _random_stats(k=3, layers=4, neurons=60, seed=0) -> ActivationStats:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.tensor([1000, 800, 1200][:k])
    counts = (torch.rand(k, layers, neurons, generator=g) ** 3 * tokens.view(-1, 1, 1)).long()
    counts[:, 0, :5] = 0  # a few dead neurons
    sums = counts.double() * 0.7
    return ActivationStats(["a", "b", "c"][:k], counts, tokens, sums.clone(), sums)


def test_random_baseline_matches_lapes_counts_per_layer_and_is_seeded():
    stats = _random_stats()
    cfg = dict(top_rate=0.1, filter_rate=0.9, activation_bar_ratio=0.9)
    lape = identify(stats, IdentifyConfig(**cfg))
    r0 = identify(stats, IdentifyConfig(method="random", seed=0, **cfg))
    assert sum(lape.counts().values()) > 10
    for lang in stats.languages:
        assert lape.mask(lang).sum(1).tolist() == r0.mask(lang).sum(1).tolist()
    assert torch.equal(r0.masks, identify(stats, IdentifyConfig(method="random", seed=0, **cfg)).masks)
    r1 = identify(stats, IdentifyConfig(method="random", seed=1, **cfg))
    assert not torch.equal(r0.masks, r1.masks)
    assert not torch.equal(r0.masks, lape.masks)


def test_language_agnostic_neurons_pass_the_bar_in_every_language():
    stats = _stats(HAND)
    agn = language_agnostic(stats, activation_bar_ratio=0.5)  # bar 0.1, strict
    assert agn.labels == ["all"]
    assert agn.neurons("all") == [(0, 3), (1, 1)]  # (0,2) has p_b = 0.1, not above
    assert language_agnostic(stats, min_probability=0.45).neurons("all") == [(0, 3)]


def _reference_lape(p: np.ndarray, top_rate: float, rate: float) -> np.ndarray:
    """methods.md §2(b) pseudo-code, with ``p`` as ``[layers, neurons, languages]``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        pn = np.nan_to_num(p / p.sum(-1, keepdims=True), nan=0.0)
        h = -np.where(pn > 0, pn * np.log(pn), 0.0).sum(-1)
    q = np.sort(p.reshape(-1))[round(rate * p.size) - 1]
    h[(p > q).sum(-1) == 0] = np.inf
    sel = np.argsort(h.reshape(-1), kind="stable")[:round(top_rate * h.size)]
    out = np.zeros((p.shape[-1], h.size), dtype=bool)
    for k in range(p.shape[-1]):
        for flat in sel:
            out[k, flat] = p.reshape(-1, p.shape[-1])[flat, k] > q
    return out.reshape(p.shape[-1], *h.shape)


@pytest.mark.parametrize("seed", [0, 1])
def test_select_by_entropy_matches_the_reference_pseudo_code(seed):
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(4, 5, 40, generator=g, dtype=torch.float64) ** 4  # [languages, layers, neurons]
    p[:, 1, :6] = 0.0  # dead neurons
    masks, thr = select_by_entropy(p, top_rate=0.05, filter_rate=0.9, activation_bar_ratio=0.9)
    expected = _reference_lape(p.permute(1, 2, 0).numpy(), 0.05, 0.9)
    assert masks.any()
    assert np.array_equal(masks.numpy(), expected)
    assert thr["selected"] == round(0.05 * 200)


def test_identify_refuses_bad_inputs():
    stats = _stats(HAND)
    with pytest.raises(LapeError, match="at least two languages"):
        identify(stats.subset(["a"]))
    # a language with 5 tokens would get hundreds of "specific" neurons: refused, not served
    few = _stats(HAND, tokens=5)
    with pytest.raises(LapeError, match="language 'a' has only 5 recorded tokens"):
        identify(few)
    # doubtful (few, but enough) token counts are allowed with a warning recorded in the sidecar
    warned = identify(_stats(HAND, tokens=500), IdentifyConfig(top_rate=0.375, filter_rate=0.5,
                                                                activation_bar_ratio=0.5))
    assert any("a has only 500 recorded tokens" in w for w in warned.meta["warnings"])
    assert identify(_stats(HAND, tokens=5000), IdentifyConfig(top_rate=0.375, filter_rate=0.5,
                                                                activation_bar_ratio=0.5)).meta["warnings"] == []
    stats.token_counts[1] = 0
    with pytest.raises(LapeError, match="language 'b' has only 0 recorded tokens"):
        identify(stats)
    with pytest.raises(LapeError, match="method \\(--method\\) is 'pv': use one of lape, lave, lap, random"):
        IdentifyConfig(method="pv")
    for bad in (1.5, 0.0, float("nan")):
        with pytest.raises(LapeError, match="top_rate \\(--top-rate\\)"):
            IdentifyConfig(top_rate=bad)
    with pytest.raises(LapeError, match="unknown IdentifyConfig setting"):
        IdentifyConfig.from_dict({"top_rate": 0.1, "tpo_rate": 0.2})
