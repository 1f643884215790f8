"""Chunked NLL against plain cross-entropy on full logits; the deactivation matrix; results I/O."""

from __future__ import annotations

import copy
import math
import statistics
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from tiny_models import FAMILIES, WIDTH, random_ids, tiny_model

from lape.errors import LapeError
from lape.evaluate.perplexity import PerplexityConfig, PerplexityResult, ppl_matrix, sequence_nll
from lape.fingerprint import fingerprint
from lape.masks import NeuronSets
from lape.neurons.select import random_like


@dataclass
class Seq:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor


def _reference_nll(model, ids, mask):
    """Summed next-token NLL from the model's own full logits, and the number of targets."""
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits.double()
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                          reduction="none")
    keep = (mask[:, 1:] * mask[:, :-1]).reshape(-1).bool()
    return float(nll[keep].sum()), int(keep.sum())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_chunked_nll_equals_full_logits_cross_entropy(family):
    model = tiny_model(family)
    if family == "gemma2":  # the head soft-caps its logits: the chunked path must do it too
        assert model.config.final_logit_softcapping
    ids = random_ids(3, 7, seed=1)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    with torch.no_grad():
        nll, n = sequence_nll(model, ids, mask, chunk_size=3)
    ref, ref_n = _reference_nll(model, ids, mask)
    assert n == ref_n == 6 + 4 + 2
    assert math.isclose(nll, ref, rel_tol=1e-5)
    if family == "gemma2":  # capping moves the loss by far more than the tolerance above
        with torch.no_grad():
            raw = model.get_output_embeddings()(model.base_model(ids, attention_mask=mask).last_hidden_state)
        keep = (mask[:, 1:] * mask[:, :-1]).bool()
        uncapped = float(F.cross_entropy(raw[:, :-1][keep], ids[:, 1:][keep], reduction="sum"))
        assert not math.isclose(uncapped, ref, rel_tol=1e-4)


def _corpus(lengths: dict[str, int]) -> dict[str, list[Seq]]:
    """Fake languages: each draws its tokens from its own part of the vocabulary."""
    out = {}
    for k, (lang, n) in enumerate(lengths.items()):
        g = torch.Generator().manual_seed(k)
        lo = 3 + 30 * k
        seqs = []
        for i in range(n):
            ids = torch.randint(lo, lo + 30, (6,), generator=g)
            mask = torch.ones(6, dtype=torch.long)
            if i == n - 1:
                mask[4:] = 0
                ids[4:] = 0
            seqs.append(Seq(ids, mask))
        out[lang] = seqs
    return out


def _mean_nll(model, seqs):
    total, n = 0.0, 0
    for s in seqs:  # one sequence at a time, from the full logits
        t, c = _reference_nll(model, s.input_ids[None], s.attention_mask[None])
        total, n = total + t, n + c
    return total / n


def _zeroed(model, mask):
    model = copy.deepcopy(model)
    with torch.no_grad():
        for layer, index in mask.nonzero().tolist():
            model.model.layers[layer].mlp.down_proj.weight[:, index] = 0.0
    return model


def test_ppl_matrix_rows_columns_base_and_random_baseline():
    model = tiny_model("llama")
    corpus = _corpus({"a": 3, "b": 2, "c": 2})
    sets = NeuronSets.from_neurons(
        {"a": [(0, 1), (0, 2), (2, 9)], "b": [(1, 4), (1, 5), (1, 6), (2, 30)], "c": [(0, 40)]},
        (3, WIDTH["llama"]), {"fingerprint": fingerprint(model), "method": "lape"})
    cfg = PerplexityConfig(batch_size=2, chunk_size=4, seed=3)
    res = ppl_matrix(model, corpus, sets, cfg, rows=["a", "b"], progress=False)
    assert res.rows == ["a", "b"] and res.languages == ["a", "b", "c"]
    assert len(res.base_nll) == 3
    assert [len(r) for r in res.nll] == [3, 3] and [len(r) for r in res.random_nll] == [3, 3]
    assert res.tokens == {"a": 5 + 5 + 3, "b": 5 + 3, "c": 5 + 3}
    for j, lang in enumerate(res.languages):
        assert math.isclose(res.base_nll[j], _mean_nll(model, corpus[lang]), rel_tol=1e-5)

    # the random control: cfg.random_draws draws seeded seed, seed+1, ..., as many neurons per layer as
    # each row's set; random_nll is their mean
    assert len(res.random_draws_nll) == cfg.random_draws == 3
    draws = [random_like(sets, seed=cfg.seed + k) for k in range(cfg.random_draws)]
    for i, row in enumerate(res.rows):
        zeroed = _zeroed(model, sets.mask(row))
        # deactivating a set gives the perplexity of the model with those down-projection columns zeroed
        for j, lang in enumerate(res.languages):
            assert math.isclose(res.nll[i][j], _mean_nll(zeroed, corpus[lang]), rel_tol=1e-5)
        for k, randoms in enumerate(draws):
            assert randoms.mask(row).sum(1).tolist() == sets.mask(row).sum(1).tolist()
            assert not torch.equal(randoms.mask(row), sets.mask(row))
            zeroed_rnd = _zeroed(model, randoms.mask(row))
            for j, lang in enumerate(res.languages):
                assert math.isclose(res.random_draws_nll[k][i][j], _mean_nll(zeroed_rnd, corpus[lang]), rel_tol=1e-5)
        for j in range(3):
            assert res.random_nll[i][j] == pytest.approx(statistics.fmean(m[i][j] for m in res.random_draws_nll))
            assert not math.isclose(res.nll[i][j], res.random_nll[i][j], rel_tol=1e-6)
    # the row test against every draw, and the draws' spread, by hand
    for d in res.diagonal_summary("nll"):
        i, j = res.rows.index(d["row"]), res.languages.index(d["language"])
        own_random = [m[i][j] - res.base_nll[j] for m in res.random_draws_nll]
        assert d["random_own_delta_nll_sd"] == pytest.approx(statistics.stdev(own_random))
        assert d["random_own_delta_nll_max"] == pytest.approx(max(own_random))
        assert d["own_above_every_random"] == all(res.nll[i][j] - res.base_nll[j] > v for v in own_random)
    for i in range(2):  # deactivation changed every language's perplexity
        assert all(not math.isclose(v, b, rel_tol=1e-6) for v, b in zip(res.nll[i], res.base_nll))


def test_diagonal_random_baseline_evaluates_only_each_rows_own_language(tmp_path):
    model = tiny_model("llama")
    corpus = _corpus({"a": 2, "b": 2, "c": 1})
    sets = NeuronSets.from_neurons({"a": [(0, 1), (2, 9)], "b": [(1, 4), (1, 5)]}, (3, WIDTH["llama"]),
                                   {"fingerprint": fingerprint(model), "method": "lape"})
    full = ppl_matrix(model, corpus, sets, PerplexityConfig(seed=3), progress=False)
    diag = ppl_matrix(model, corpus, sets, PerplexityConfig(seed=3, random_baseline="diagonal"), progress=False)
    for i, row in enumerate(diag.rows):
        for j, lang in enumerate(diag.languages):
            if lang == row:  # the same seeded random set as the full baseline
                assert diag.random_nll[i][j] == pytest.approx(full.random_nll[i][j], rel=1e-6)
            else:
                assert math.isnan(diag.random_nll[i][j])
    assert [v for r in diag.nll for v in r] == pytest.approx([v for r in full.nll for v in r], rel=1e-6)
    assert [d["random_own_delta_ppl"] for d in diag.diagonal_summary()] == pytest.approx(
        [d["random_own_delta_ppl"] for d in full.diagonal_summary()], rel=1e-6)
    none = ppl_matrix(model, corpus, sets, PerplexityConfig(random_baseline="none"), progress=False)
    assert all(math.isnan(v) for r in none.random_nll for v in r)
    diag.save(tmp_path / "ppl")  # standard JSON: NaN is written as null and read back as NaN
    assert "NaN" not in (tmp_path / "ppl" / "ppl.json").read_text()
    back = PerplexityResult.load(tmp_path / "ppl")
    assert math.isnan(back.random_nll[0][1]) and back.random_nll[0][0] == pytest.approx(diag.random_nll[0][0])
    with pytest.raises(LapeError, match="random_baseline \\(--random-baseline\\) is 'some'"):
        PerplexityConfig(random_baseline="some")


def test_result_roundtrip_and_deltas(tmp_path):
    res = PerplexityResult(["fr", "ja"], ["fr", "ja", "en"], [2.0, 3.0, 1.5],
                           [[2.5, 3.1, 1.6], [2.1, 3.9, 1.5]], [[2.0, 3.05, 1.5], [2.02, 3.0, 1.55]],
                           {"fr": 10, "ja": 12, "en": 9}, {"model_id": "tiny"})
    dp, dn = res.delta_ppl(), res.delta_nll()
    for i in range(2):
        for j in range(3):
            assert math.isclose(dp[i][j], math.exp(res.nll[i][j]) - math.exp(res.base_nll[j]))
            assert math.isclose(dn[i][j], res.nll[i][j] - res.base_nll[j])
            assert math.isclose(res.delta_ppl(random=True)[i][j],
                                math.exp(res.random_nll[i][j]) - math.exp(res.base_nll[j]))
    diag = res.diagonal_summary()
    assert [d["language"] for d in diag] == ["fr", "ja"]
    fr_off = ((math.exp(3.1) - math.exp(3.0)) + (math.exp(1.6) - math.exp(1.5))) / 2
    assert math.isclose(diag[0]["off_diagonal_mean_delta_ppl"], fr_off)
    assert diag[0]["own_above_off_diagonal"] and diag[1]["own_above_off_diagonal"]

    res.save(tmp_path / "ppl")
    back = PerplexityResult.load(tmp_path / "ppl")
    assert (back.rows, back.languages, back.base_nll, back.nll, back.random_nll, back.tokens) == \
           (res.rows, res.languages, res.base_nll, res.nll, res.random_nll, res.tokens)
    assert back.meta["model_id"] == "tiny"
    csv_lines = (tmp_path / "ppl" / "delta_ppl.csv").read_text().splitlines()
    assert csv_lines[0] == "deactivated,fr,ja,en" and len(csv_lines) == 3
