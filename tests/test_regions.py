"""Linguistic regions: importance against plain ``loss.backward()``; resume and cache; selection
on hand-made scores; bad inputs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import Interrupted, Seq, interrupt_after, random_sequences, tiny_model

from lape.errors import LapeError
from lape.fingerprint import fingerprint
from lape.masks import ParamRegions
from lape.regions import (
    ImportanceConfig,
    ParamImportance,
    RegionConfig,
    param_importance,
    select_regions,
)
from lape.regions.select import extreme_mask, random_mask
from lape.space import ParamSpace

pytestmark = pytest.mark.usefixtures("one_thread")


_seqs = random_sequences


def _frozen_model(family: str = "llama", seed: int = 0) -> torch.nn.Module:
    model = tiny_model(family, seed=seed)
    model.requires_grad_(False)  # as lape.load_model leaves it
    return model


def _expected(model, seqs: list[Seq], batch_size: int) -> dict[str, torch.Tensor]:
    """``(theta - r) * sum_b grad loss_b`` by plain ``loss.backward()`` on Hugging Face's own loss
    (``labels=``, padding as -100: the mean over a batch's real targets), grads accumulating in
    ``.grad`` over the batches; ``r`` = 0, or -1 for Gemma's ``x * (1 + w)`` norm weights (named
    here, so that a wrong detection fails the test)."""
    names = ParamSpace.of(model).names()
    params = dict(model.named_parameters())
    for n in names:
        params[n].requires_grad_(True)
        params[n].grad = None
    try:
        for i in range(0, len(seqs), batch_size):
            chunk = seqs[i:i + batch_size]
            ids = torch.stack([s.input_ids for s in chunk])
            mask = torch.stack([s.attention_mask for s in chunk])
            loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
            loss.backward()
        return {n: ((params[n].detach() - _removal(model, n)) * params[n].grad).float() for n in names}
    finally:
        for n in names:
            params[n].requires_grad_(False)
            params[n].grad = None


def _removal(model, name: str) -> float:
    """The removal value written by hand: -1 for the norm weights of Gemma 1-3 (x * (1 + w))."""
    gemma = type(model).__name__.startswith("Gemma")
    return -1.0 if gemma and name.endswith("norm.weight") else 0.0


def _count_calls(module):
    calls = []
    return calls, module.register_forward_pre_hook(lambda m, a, kw: calls.append(1), with_kwargs=True)


def _relative_error(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    num = sum(float((a[n] - b[n]).pow(2).sum()) for n in b)
    return (num / sum(float(b[n].pow(2).sum()) for n in b)) ** 0.5


# --------------------------------------------------------------------------------------------
# importance


def test_importance_is_theta_times_the_summed_gradient_and_leaves_the_model_alone():
    model = _frozen_model()
    model.train()  # restored afterwards; the scores are taken in eval mode
    # "aa": 3 batches of 2, 2, 1 sequences, the last sequence padded; "bb": 2 full batches
    corpus = {"aa": _seqs(5, 7, seed=1, real_last=4), "bb": _seqs(4, 7, seed=2)}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    imp = param_importance(model, corpus, ImportanceConfig(batch_size=2, chunk_size=5), progress=False)

    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # bit-identical
    assert not any(p.requires_grad for p in model.parameters())  # flags restored
    assert all(p.grad is None for p in model.parameters())  # no .grad left behind
    assert model.training
    space = ParamSpace.of(model)
    assert imp.languages == ["aa", "bb"] and list(imp.scores) == space.names()  # norms included
    assert all(s.dtype == torch.float32 for s in imp.scores.values())
    assert imp.meta["token_counts"] == {"aa": 4 * 6 + 3, "bb": 4 * 6}  # predicted targets
    assert imp.meta["batches"] == {"aa": 3, "bb": 2}
    assert imp.meta["params"]["model.layers.2.mlp.down_proj.weight"] == {
        "layer": 2, "type": "mlp.down_proj.weight", "shape": [32, 48], "is_norm": False, "removal_value": 0.0,
        "norm_scale": None}
    assert imp.meta["params"]["model.layers.1.input_layernorm.weight"]["norm_scale"] == "w"

    model.eval()
    for lang, seqs in corpus.items():
        want = _expected(model, seqs, batch_size=2)
        got = imp.score(lang)
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6)
        assert any(bool((s < 0).any()) for s in got.values())  # the sign is kept
    # a sum over batches, not one batch: the first batch alone gives other scores
    first = _expected(model, corpus["aa"][:2], batch_size=2)
    assert _relative_error(first, imp.score("aa")) > 0.1


@pytest.mark.parametrize("family", ["gpt2", "gemma3", "phi3"])
def test_other_families_match_their_own_loss(family):
    """GPT-2's Conv1D weights, Gemma 3's soft-capped logits and (1 + w) norms, Phi-3's fused gate_up."""
    model = _frozen_model(family)
    if family == "gemma3":  # norm weights are 0 at init: (1 + w) * G and w * G would differ by all of G
        _randomise_norms(model, low=0.5, high=1.5)
    seqs = _seqs(3, 6, seed=17, real_last=4)
    imp = param_importance(model, {"aa": seqs}, ImportanceConfig(batch_size=2, chunk_size=4), progress=False)
    want = _expected(model, seqs, batch_size=2)
    assert list(imp.scores) == list(want)
    for name, w in want.items():
        torch.testing.assert_close(imp.score("aa")[name], w, rtol=1e-4, atol=1e-6 * float(w.abs().max()) + 1e-9)
    scales = {imp.meta["params"][n]["norm_scale"] for n in want if imp.meta["params"][n]["is_norm"]}
    assert scales == ({"1 + w"} if family == "gemma3" else {"w"})


def _randomise_norms(model, low: float, high: float, seed: int = 0) -> None:
    """Every norm weight of the decoder blocks drawn uniformly from [low, high)."""
    space = ParamSpace.of(model)
    params = dict(model.named_parameters())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n in space.names():
            if space.info(n).is_norm:
                p = params[n]
                p.copy_(torch.empty(p.shape, dtype=torch.float64).uniform_(low, high, generator=g).to(p.dtype))


def _nll64(model, seqs: list[Seq]) -> float:
    """Mean next-token NLL over the real targets of one batch, in float64 (Hugging Face's own loss
    is float32: too coarse for a finite difference)."""
    ids = torch.stack([s.input_ids for s in seqs])
    mask = torch.stack([s.attention_mask for s in seqs])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits.double()
    valid = (mask[:, 1:] * mask[:, :-1]).bool()
    return float(torch.nn.functional.cross_entropy(logits[:, :-1][valid], ids[:, 1:][valid]))


ENTRIES = [("model.layers.0.input_layernorm.weight", 3), ("model.layers.1.post_attention_layernorm.weight", 7),
           ("model.layers.1.post_feedforward_layernorm.weight", 5), ("model.layers.2.pre_feedforward_layernorm.weight", 11),
           ("model.layers.2.self_attn.q_norm.weight", 2)]


@pytest.mark.parametrize("family", ["gemma3", "llama"])
def test_norm_importance_is_the_first_order_effect_of_the_removal_applied(family):
    """-S must be the linear prediction of the loss change of the removal ablate applies:
    ``(1 + w) * G`` for Gemma's x * (1 + w) norms (removal writes -1), ``w * G`` for LLaMA's x * w
    (removal writes 0). Two independent checks on single entries, in float64:

    * ordinary scales (1 + w in [1.5, 2.5]): the central difference of the loss along the removal
      edit, theta -> theta + t (r - theta), at t = 0, equals -S; Gemma's old w * G is off by the
      factor w / (1 + w);
    * scales next to the removal (1 + w = 0.05, small-effect regime: first order holds): the loss
      change of the actual removal (``edit_weights(op="remove")``) equals -S within second-order
      terms, while w * G has the wrong sign and 19x the size.
    """
    from lape.weights import edit_weights

    model = _frozen_model(family).double()
    offset = -1.0 if family == "gemma3" else 0.0  # stored w for a scale of 0
    _randomise_norms(model, 1.5 + offset, 2.5 + offset)
    params = dict(model.named_parameters())
    entries = [(n, i) for n, i in ENTRIES if n in params]
    near = entries[:3]  # these get a scale of 0.05
    with torch.no_grad():
        for name, i in near:
            params[name][i] = offset + 0.05
    seqs = _seqs(4, 12, seed=5)
    imp = param_importance(model, {"aa": seqs}, ImportanceConfig(batch_size=4), progress=False)
    assert {imp.meta["params"][n]["norm_scale"] for n, _ in entries} == {"1 + w" if family == "gemma3" else "w"}
    before = _nll64(model, seqs)
    for name, i in entries:
        mask = torch.zeros(params[name].shape, dtype=torch.bool)
        mask[i] = True
        theta = float(params[name][i])
        with edit_weights(model, {name: mask}, op="remove"):
            r = float(params[name][i])  # what the removal writes: read back, not assumed
            removed = _nll64(model, seqs)
        assert r == offset
        s = float(imp.scores[name][0, i])
        old = theta * s / (theta - r)  # the old score theta * G
        if (name, i) in near:
            actual = removed - before
            assert abs(-s - actual) < 0.1 * abs(actual), (name, s, actual)  # measured: <= 6%
            if family == "gemma3":
                assert old * actual > 0 and abs(-old - actual) > 10 * abs(actual)  # wrong sign, 19x
        else:
            h = 0.01 / abs(theta - r)  # the weight moves by +-0.01
            at = []  # the loss at theta + t (r - theta), t = +h and -h
            for t in (h, -h):
                with edit_weights(model, {name: mask}, op="set", value=theta + t * (r - theta)):
                    at.append(_nll64(model, seqs))
            slope = (at[0] - at[1]) / (2 * h)  # d loss / dt at t = 0: G * (r - theta) = -S
            assert abs(-s - slope) < 2e-3 * abs(slope), (name, s, slope)  # measured: <= 5e-4
            if family == "gemma3":
                assert abs(-old - slope) > 0.3 * abs(slope)
            else:
                assert old == pytest.approx(s)


def test_bfloat16_model_gives_float32_scores_close_to_float32():
    corpus = {"aa": _seqs(4, 8, seed=3), "bb": _seqs(4, 8, seed=4)}
    cfg = ImportanceConfig(batch_size=2)
    ref = param_importance(_frozen_model(), corpus, cfg, progress=False)
    model = _frozen_model().to(torch.bfloat16)
    imp = param_importance(model, corpus, cfg, progress=False)
    assert all(s.dtype == torch.float32 for s in imp.scores.values())
    assert imp.meta["model_dtype"] == "bfloat16"
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    for lang in corpus:
        assert _relative_error(imp.score(lang), ref.score(lang)) < 0.06  # measured: 0.03


def test_params_and_norms_choose_the_scored_tensors():
    model = _frozen_model()
    corpus = {"aa": _seqs(2, 5, seed=5)}
    space = ParamSpace.of(model)
    no_norms = param_importance(model, corpus, ImportanceConfig(norms=False), progress=False)
    assert list(no_norms.scores) == space.names(norms=False) and len(space.names(norms=False)) < len(space.names())
    some = ["model.layers.1.mlp.up_proj.weight", "model.layers.1.input_layernorm.weight"]
    picked = param_importance(model, corpus, params=some, progress=False)
    assert list(picked.scores) == some
    full = param_importance(model, corpus, progress=False)
    assert all(torch.equal(picked.scores[n], full.scores[n]) for n in some)
    with pytest.raises(LapeError, match="not a decoder-block parameter"):
        param_importance(model, corpus, params=["lm_head.weight"], progress=False)


def test_resume_after_interruption_gives_identical_scores_and_the_cache_skips(tmp_path):
    model = _frozen_model()
    corpus = {"aa": _seqs(4, 6, seed=6, real_last=3), "bb": _seqs(3, 6, seed=7)}
    cfg = ImportanceConfig(batch_size=1, checkpoint_every=1)
    reference = param_importance(model, corpus, cfg, progress=False)
    with pytest.raises(Interrupted), interrupt_after(model.base_model, 5):  # all of "aa", one of "bb"
        param_importance(model, corpus, cfg, out=tmp_path, progress=False)
    assert not (tmp_path / "importance.json").exists()
    assert not any(p.requires_grad for p in model.parameters())  # restored after the failure too

    calls, handle = _count_calls(model.base_model)
    try:
        resumed = param_importance(model, corpus, cfg, out=tmp_path, progress=False)
        again = param_importance(model, corpus, cfg, out=tmp_path, progress=False)
    finally:
        handle.remove()
    assert len(calls) == 2  # only the two missing batches ran; the third call ran nothing
    assert not resumed.from_cache and again.from_cache
    for name, s in reference.scores.items():
        assert torch.equal(resumed.scores[name], s) and torch.equal(again.scores[name], s), name
    assert resumed.meta["resumed_languages"] == 2

    # other text for "aa" under the same settings: recomputed, "bb" unchanged
    changed = param_importance(model, {"aa": _seqs(4, 6, seed=8), "bb": corpus["bb"]}, cfg, out=tmp_path, progress=False)
    assert not changed.from_cache
    name = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(changed.scores[name][0], reference.scores[name][0])
    assert torch.equal(changed.scores[name][1], reference.scores[name][1])


def test_the_scored_edit_is_in_the_cache_key(tmp_path, monkeypatch):
    """An importance from before (1 + w) * G (estimate version 1) is not reused."""
    import lape.regions.importance as mod  # the submodule, not a function of the same name
    model = _frozen_model("gemma3")
    corpus = {"aa": _seqs(2, 5, seed=9)}
    monkeypatch.setattr(mod, "ESTIMATE_VERSION", 1)
    old = param_importance(model, corpus, out=tmp_path, progress=False)
    monkeypatch.setattr(mod, "ESTIMATE_VERSION", 2)
    new = param_importance(model, corpus, out=tmp_path, progress=False)
    assert not new.from_cache and new.meta["cache_key"] != old.meta["cache_key"]
    assert new.meta["inputs"]["estimate_version"] == 2
    assert param_importance(model, corpus, out=tmp_path, progress=False).from_cache


def test_save_load_roundtrip_and_a_mismatched_model_is_refused(tmp_path):
    model = _frozen_model()
    imp = param_importance(model, {"aa": _seqs(2, 5, seed=9), "bb": _seqs(2, 5, seed=10)}, progress=False)
    imp.save(tmp_path / "imp")
    back = ParamImportance.load(tmp_path / "imp", model=model)
    assert back.languages == ["aa", "bb"] and list(back.scores) == list(imp.scores)
    assert all(torch.equal(back.scores[n], s) and back.scores[n].dtype == torch.float32 for n, s in imp.scores.items())
    assert back.meta["config"]["languages"] == ["aa", "bb"]

    other = _frozen_model(seed=1)
    mine, theirs = fingerprint(model)["checksum"][:8], fingerprint(other)["checksum"][:8]
    with pytest.raises(LapeError) as err:
        ParamImportance.load(tmp_path / "imp", model=other)
    msg = str(err.value)
    assert mine in msg and theirs in msg and "\n" not in msg


def test_bad_inputs_give_one_line_errors():
    model = _frozen_model()
    corpus = {"aa": _seqs(2, 5, seed=11), "bb": _seqs(2, 5, seed=12)}
    cases = [
        (lambda: param_importance(model, corpus, ImportanceConfig(languages=("aa", "xx")), progress=False),
         "'xx' is not in the corpus"),
        (lambda: param_importance(model, {}, progress=False), "no languages"),
        (lambda: param_importance(model, {"aa": corpus["aa"], "bb": []}, progress=False), "'bb' has no text"),
        (lambda: param_importance(model, {"aa": [Seq(torch.tensor([5]), torch.ones(1, dtype=torch.long))]},
                            progress=False), "no token to predict"),
        (lambda: RegionConfig(top_rate=0.0), "greater than 0"),
        (lambda: RegionConfig(top_rate=0.6), "at most 0.5"),
        (lambda: ImportanceConfig(batch_size=0), "at least 1"),
        (lambda: select_regions(_hand_made(), RegionConfig(languages=("aa", "zz"))), "'zz' is not in this importance"),
    ]
    for call, text in cases:
        with pytest.raises(LapeError) as err:
            call()
        assert text in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(LapeError, match="inference_mode"), torch.inference_mode():
        param_importance(model, corpus, progress=False)
    bad = _hand_made()
    bad.scores[DOWN][1, 0, 0] = float("nan")
    with pytest.raises(LapeError, match="NaN"):
        bad.validate()
    with pytest.raises(LapeError, match="float32"):
        ParamImportance(["aa"], {DOWN: torch.zeros(2, 5)}).validate()


# --------------------------------------------------------------------------------------------
# selection on hand-made scores

DOWN = "model.layers.0.mlp.down_proj.weight"  # [2, 5]: 10 entries, k = floor(0.2 * 10) = 2
NORM = "model.layers.1.input_layernorm.weight"  # [4]: k = max(1, floor(0.8)) = 1


def _hand_made() -> ParamImportance:
    down = torch.tensor([
        [5.0, -4, 0, 0, 1, 0, 0, 0, 0, 0.5],  # aa
        [-4.0, 0, 3, 0, 0, 0, 2, 0, 0, 0],  # bb
        [0.0, 0, 0, -6, 0, 0, 2, 0, 0, 0],  # cc
    ]).reshape(3, 2, 5)
    # sum_l |S_l| = [9, 4, 3, 6, 1, 0, 4, 0, 0, 0.5]; |sum_l S_l| would be [1, 4, 3, 6, ...]
    norm = torch.tensor([[1.0, 2, 0, 0], [0.0, 0, 0, -3], [0.0, 0, 1, 0]])  # sum |S| = [1, 2, 1, 3]
    return ParamImportance(["aa", "bb", "cc"], {DOWN: down, NORM: norm})


def _flat(indices: list[int], n: int) -> torch.Tensor:
    m = torch.zeros(n, dtype=torch.bool)
    m[indices] = True
    return m


def test_core_bottom_and_monolingual_regions_on_hand_made_scores():
    regions = select_regions(_hand_made(), RegionConfig(top_rate=0.2))
    assert regions.labels == ["core", "bottom", "random", "mono:aa", "mono:bb", "mono:cc"]
    down, norm = regions.mask("core")[DOWN].reshape(-1), regions.mask("core")[NORM]
    assert torch.equal(down, _flat([0, 3], 10))  # 9 and 6 (|sum S| would have picked 3 and 1)
    assert torch.equal(norm, _flat([3], 4))
    # bottom: the zeros at 5, 7, 8 tie; the lower indices win
    assert torch.equal(regions.mask("bottom")[DOWN].reshape(-1), _flat([5, 7], 10))
    assert torch.equal(regions.mask("bottom")[NORM], _flat([0], 4))  # 1 at 0 and 2 tie
    # per-language tops of |S|: aa {0, 1}, bb {0, 2}, cc {3, 6}; a mono region drops the others'
    expected_down = {"aa": [1], "bb": [2], "cc": [3, 6]}
    expected_norm = {"aa": [1], "bb": [3], "cc": [2]}
    for lang in ("aa", "bb", "cc"):
        assert torch.equal(regions.mask(f"mono:{lang}")[DOWN].reshape(-1), _flat(expected_down[lang], 10)), lang
        assert torch.equal(regions.mask(f"mono:{lang}")[NORM], _flat(expected_norm[lang], 4)), lang
    sizes = regions.meta["sizes"]
    assert sizes["core"] == {"mlp.down_proj.weight": {"0": 2}, "input_layernorm.weight": {"1": 1}}
    assert sizes["mono:cc"]["mlp.down_proj.weight"] == {"0": 2}
    assert regions.meta["numel"] == {"mlp.down_proj.weight": {"0": 10}, "input_layernorm.weight": {"1": 4}}

    # two languages only: bb's top {0, 2} now loses only aa's {0, 1}
    two = select_regions(_hand_made(), RegionConfig(top_rate=0.2, languages=("aa", "bb")))
    assert two.labels == ["core", "bottom", "random", "mono:aa", "mono:bb"]
    # aa + bb only: sum |S| = [9, 4, 3, 0, 1, 0, 2, 0, 0, 0.5]
    assert torch.equal(two.mask("core")[DOWN].reshape(-1), _flat([0, 1], 10))
    assert torch.equal(two.mask("mono:bb")[DOWN].reshape(-1), _flat([2], 10))
    # norms=False leaves the norm weight out
    assert list(select_regions(_hand_made(), RegionConfig(top_rate=0.2, norms=False)).masks) == [DOWN]


def test_random_region_matches_core_per_tensor_and_depends_on_the_seed():
    g = torch.Generator().manual_seed(0)
    big = "model.layers.0.self_attn.q_proj.weight"
    imp = ParamImportance(["aa", "bb"], {big: torch.randn(2, 30, 40, generator=g), NORM: torch.randn(2, 4, generator=g)})
    a = select_regions(imp, RegionConfig(top_rate=0.05, seed=0))
    b = select_regions(imp, RegionConfig(top_rate=0.05, seed=1))
    for name, k in ((big, 60), (NORM, 1)):
        assert int(a.mask("core")[name].sum()) == int(a.mask("random")[name].sum()) == k
        assert int(a.mask("bottom")[name].sum()) == k
    assert not torch.equal(a.mask("random")[big], b.mask("random")[big])
    again = select_regions(imp, RegionConfig(top_rate=0.05, seed=0))
    assert torch.equal(a.mask("random")[big], again.mask("random")[big])
    # a tensor's draw depends on its name and the seed, not on the other tensors selected
    alone = select_regions(imp.subset(["aa"]), RegionConfig(top_rate=0.05, norms=False))
    assert list(alone.masks) == [big] and torch.equal(alone.mask("random")[big], a.mask("random")[big])
    assert torch.equal(random_mask(1200, 60, 0, big), a.mask("random")[big].reshape(-1))


def test_extreme_mask_equals_the_first_k_of_a_stable_sort():
    g = torch.Generator().manual_seed(1)
    for trial in range(20):
        values = torch.randint(0, 4, (50,), generator=g).to(torch.float64)  # many ties
        k = 1 + trial * 2
        for largest in (True, False):
            order = torch.sort(values, descending=largest, stable=True).indices[:k]
            assert torch.equal(extreme_mask(values, k, largest), _flat(order.tolist(), 50))


def test_regions_from_a_model_save_load_and_cache(tmp_path):
    model = _frozen_model()
    imp = param_importance(model, {"aa": _seqs(2, 6, seed=13), "bb": _seqs(2, 6, seed=14)}, progress=False)
    regions = select_regions(imp, out=tmp_path / "regions")
    assert not regions.from_cache and select_regions(imp, out=tmp_path / "regions").from_cache
    assert not select_regions(imp, RegionConfig(seed=3), out=tmp_path / "regions").from_cache
    back = ParamRegions.load(tmp_path / "regions", model=model)
    assert back.labels == ["core", "bottom", "random", "mono:aa", "mono:bb"]
    assert (tmp_path / "regions" / "sizes.csv").is_file()
    space = ParamSpace.of(model)
    for p in space.params:  # 1% of a tensor of n entries: max(1, floor(n / 100)) entries
        k = max(1, torch.Size(p.shape).numel() // 100)
        assert int(back.mask("core")[p.name].sum()) == k == int(back.mask("random")[p.name].sum()), p.name
    assert back.meta["sizes"]["core"]["mlp.down_proj.weight"] == {"0": 15, "1": 15, "2": 15}  # 32 x 48 / 100
    with pytest.raises(LapeError, match="was made with"):
        ParamRegions.load(tmp_path / "regions", model=_frozen_model(seed=1))


# --------------------------------------------------------------------------------------------
# torchrun

_RANK_SCRIPT = """
import sys
import torch
sys.path.insert(0, {tests!r})
from test_regions import _dist_corpus, _frozen_model
from lape.regions import ImportanceConfig, param_importance
from lape.cli.common import finish_distributed
torch.distributed.init_process_group("gloo")
param_importance(_frozen_model(), _dist_corpus(), ImportanceConfig(batch_size=2), out=sys.argv[1], progress=False)
finish_distributed()  # barrier, leave the group, exit before gloo's threads can abort
"""


def _dist_corpus() -> dict[str, list[Seq]]:
    """Every batch full on one process and on each of two ranks (ranks take every second
    sequence): "aa" 8 sequences (2 batches per rank), "bb" 4 (1 batch per rank)."""
    return {"aa": _seqs(8, 6, seed=15), "bb": _seqs(4, 6, seed=16)}


def test_two_gloo_ranks_give_the_scores_of_one_process(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(_RANK_SCRIPT.format(tests=str(Path(__file__).parent)))
    torchrun = Path(sys.executable).with_name("torchrun")
    launcher = [str(torchrun)] if torchrun.is_file() else [sys.executable, "-m", "torch.distributed.run"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([*launcher, "--standalone", "--nproc-per-node", "2", str(script), str(tmp_path / "two")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = ParamImportance.load(tmp_path / "two")
    one = param_importance(_frozen_model(), _dist_corpus(), ImportanceConfig(batch_size=2), progress=False)
    assert two.meta["world_size"] == 2 and two.meta["cache_key"] == one.meta["cache_key"]
    assert two.meta["batches"] == one.meta["batches"] == {"aa": 4, "bb": 2}
    assert two.meta["token_counts"] == one.meta["token_counts"]
    for name, s in one.scores.items():  # the same mean gradients, added in another order
        torch.testing.assert_close(two.scores[name], s, rtol=1e-5, atol=1e-6 * float(s.abs().max()))
