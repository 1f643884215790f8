"""Weight edits: exactly the masked entries change, bit-exact restore (also after an exception,
nested, tied weights), norm removal, freezing in training loops, and refusing bad input."""

from __future__ import annotations

import pytest
import torch
from tiny_models import Seq, random_ids, tiny_model

from lape.errors import LapeError
from lape.masks import ParamRegions
from lape.space import ParamSpace
from lape.weights import edit_weights, freeze, patch_weights, removal_value


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _assert_unchanged(model, snapshot) -> None:
    for n, p in model.named_parameters():
        assert torch.equal(p, snapshot[n]), n


def _random_masks(model, share: float = 0.2, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random masks on every decoder-block tensor of ``model``."""
    g = torch.Generator().manual_seed(seed)
    space = ParamSpace.of(model)
    return {n: torch.rand(space.info(n).shape, generator=g) < share for n in space.names()}


@pytest.mark.parametrize("op,value", [("zero", None), ("scale", 3.0), ("set", 0.25), ("remove", None)])
@pytest.mark.parametrize("family", ["gemma3", "gpt2"])
def test_edit_changes_the_masked_entries_and_restores_bit_exactly(family, op, value):
    model = tiny_model(family)
    before = _snapshot(model)
    masks = _random_masks(model)
    expected = {n: t.clone() for n, t in before.items()}  # edited by hand
    for n, m in masks.items():
        if op == "scale":
            expected[n][m] *= value
        else:
            fill = {"zero": 0.0, "set": value}.get(op, removal_value(model, n))
            expected[n][m] = fill
    with edit_weights(model, masks, op=op, value=value) as handle:
        assert handle.names == list(masks)
        for n, p in model.named_parameters():
            assert torch.equal(p, expected[n]), n
    _assert_unchanged(model, before)


def test_restore_is_bit_exact_after_an_exception_and_the_model_computes_as_before():
    model = tiny_model("llama")
    ids = random_ids(2, 5)
    before = _snapshot(model)
    with torch.no_grad():
        logits = model(ids).logits
    with pytest.raises(RuntimeError, match="boom"):
        with edit_weights(model, _random_masks(model, 0.5), op="scale", value=1.1):
            raise RuntimeError("boom")
    _assert_unchanged(model, before)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, logits)


def test_patch_handle_restores_once_and_nested_overlapping_edits_unwind():
    model = tiny_model("qwen2")
    before = _snapshot(model)
    outer = _random_masks(model, 0.3, seed=1)
    inner = _random_masks(model, 0.3, seed=2)  # overlaps outer
    handle = patch_weights(model, outer, op="scale", value=-2.0)
    with edit_weights(model, inner, op="set", value=7.0):
        name = next(iter(inner))
        p = model.get_parameter(name)
        assert (p[inner[name]] == 7.0).all()
    for n, m in outer.items():  # inner undone: outer's edit back in force
        assert torch.equal(model.get_parameter(n)[m], before[n][m] * -2.0)
    handle.restore()
    handle.restore()  # a second restore changes nothing
    _assert_unchanged(model, before)


def test_tied_weights_edited_under_both_names_restore_exactly():
    model = tiny_model("gemma")  # lm_head.weight is model.embed_tokens.weight
    assert model.lm_head.weight is model.model.embed_tokens.weight
    before = _snapshot(model)
    g = torch.Generator().manual_seed(0)
    shape = model.lm_head.weight.shape
    masks = {"model.embed_tokens.weight": torch.rand(shape, generator=g) < 0.5,
             "lm_head.weight": torch.rand(shape, generator=g) < 0.5}
    with edit_weights(model, masks, op="scale", value=3.0):
        both = masks["model.embed_tokens.weight"] & masks["lm_head.weight"]
        torch.testing.assert_close(model.lm_head.weight[both], before["model.embed_tokens.weight"][both] * 9.0)
    _assert_unchanged(model, before)


def test_regions_with_a_label_are_accepted():
    model = tiny_model("llama")
    before = _snapshot(model)
    core, other = _random_masks(model, seed=3), _random_masks(model, seed=4)
    regions = ParamRegions(["core", "other"], {n: torch.stack([core[n], other[n]]) for n in core})
    with edit_weights(model, regions, label="core"):
        for n, m in core.items():
            p = model.get_parameter(n)
            assert (p[m] == 0).all() and torch.equal(p[~m], before[n][~m])
    with edit_weights(model, regions.mask("other")):
        assert all((model.get_parameter(n)[m] == 0).all() for n, m in other.items())
    _assert_unchanged(model, before)
    with pytest.raises(LapeError, match="label="):
        patch_weights(model, regions)


@pytest.mark.parametrize("family", ["gemma", "gemma2", "gemma3"])
def test_removing_a_gemma_norm_weight_makes_its_output_zero(family):
    model = tiny_model(family)
    name = "model.layers.1.input_layernorm.weight"
    norm = model.get_submodule(name.rsplit(".", 1)[0])
    assert removal_value(model, name) == -1.0
    assert removal_value(model, "model.layers.1.self_attn.q_norm.weight" if family == "gemma3" else name) == -1.0
    x = torch.randn(2, 4, 32)
    full = {name: torch.ones(32, dtype=torch.bool)}
    with torch.no_grad():
        with edit_weights(model, full, op="remove"):
            assert torch.equal(norm(x), torch.zeros_like(x))
        with edit_weights(model, full, op="zero"):  # zero leaves x * (1 + 0): nothing removed
            out = norm(x)
            torch.testing.assert_close(out, x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps))


@pytest.mark.parametrize("family,name", [("llama", "model.layers.0.post_attention_layernorm.weight"),
                                         ("gpt2", "transformer.h.0.ln_1.weight"),
                                         ("gemma", "model.layers.0.mlp.up_proj.weight")])
def test_removal_value_is_zero_for_plain_norms_and_other_tensors(family, name):
    model = tiny_model(family)
    assert removal_value(model, name) == 0.0
    if "norm" in name:  # and zeroing such a norm weight does give 0 (no bias here)
        norm = model.get_submodule(name.rsplit(".", 1)[0])
        with torch.no_grad(), edit_weights(model, {name: torch.ones(32, dtype=torch.bool)}, op="remove"):
            assert torch.equal(norm(torch.randn(3, 32)), torch.zeros(3, 32))


def _loss(model, seed: int = 0):
    ids = random_ids(2, 8, seed=seed)
    return model(ids, labels=ids).loss


@pytest.mark.parametrize("make_opt", [lambda ps: torch.optim.SGD(ps, lr=0.1),
                                      lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.0)],
                         ids=["sgd", "adamw"])
def test_freeze_keeps_masked_entries_through_an_optimizer_step(make_opt):
    model = tiny_model("llama").train()
    masks = _random_masks(model, 0.5)
    before = _snapshot(model)
    opt = make_opt(model.parameters())
    with freeze(model, masks) as frozen:
        assert frozen.names == list(masks)
        _loss(model).backward()
        for n, m in masks.items():
            assert (model.get_parameter(n).grad[m] == 0).all()
        opt.step()
    for n, m in masks.items():
        p = model.get_parameter(n)
        assert torch.equal(p[m], before[n][m]), n
        assert not torch.equal(p[~m], before[n][~m]), n
    # hooks are gone: gradients reach the masked entries again
    opt.zero_grad()
    _loss(model).backward()
    assert all(model.get_parameter(n).grad[m].abs().sum() > 0 for n, m in masks.items())


def test_after_step_undoes_weight_decay_and_hooks_go_after_an_exception():
    model = tiny_model("gpt2").train()
    masks = _random_masks(model, 0.5)
    before = _snapshot(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.5)
    with pytest.raises(RuntimeError, match="stop"):
        with freeze(model, masks) as frozen:
            _loss(model).backward()
            opt.step()
            name, m = next(iter(masks.items()))
            assert not torch.equal(model.get_parameter(name)[m], before[name][m])  # decay moved them
            frozen.after_step()
            for n, m in masks.items():
                assert torch.equal(model.get_parameter(n)[m], before[n][m]), n
            raise RuntimeError("stop")
    opt.zero_grad()
    _loss(model).backward()
    assert all(model.get_parameter(n).grad[m].abs().sum() > 0 for n, m in masks.items())


def test_bad_input_gets_lape_error_and_changes_nothing():
    model = tiny_model("llama")
    before = _snapshot(model)
    name = "model.layers.0.mlp.down_proj.weight"
    good = torch.zeros(32, 48, dtype=torch.bool)
    good[0, 0] = True
    cases = [
        (dict(masks={"model.layers.9.mlp.down_proj.weight": good}), "no parameter"),
        (dict(masks={name: good, "model.layers.0.mlp.up_proj.weight": good}), "shape"),
        (dict(masks={name: good.float()}), "bool"),
        (dict(masks={name: good}, op="scale", value=float("nan")), "NaN"),
        (dict(masks={name: good}, op="set"), "value="),
        (dict(masks={name: good}, op="zero", value=1.0), "no value="),
        (dict(masks={name: good}, op="drop"), "unknown weight edit op"),
        (dict(masks=[good]), "masks must be"),
        (dict(masks={name: good}, label="core"), "ParamRegions"),
    ]
    for kwargs, message in cases:
        with pytest.raises(LapeError, match=message):
            patch_weights(model, **kwargs)
        _assert_unchanged(model, before)  # the valid first mask was not applied either
    with pytest.raises(LapeError, match="bool"):
        freeze(model, {name: good.int()})
    with pytest.raises(LapeError, match="no parameter"):
        removal_value(model, "model.norm.bias")


def test_an_edited_model_never_shares_a_cache_key_with_the_unedited_one(tmp_path):
    """A stage run inside ``edit_weights`` with ``out=`` was served the unedited model's cached
    result: the fingerprint sampled 48 values, none of them in the edited entry. Catches a
    fingerprint that misses an edit far from its samples, or one that stays changed after restore."""
    from lape.fingerprint import fingerprint, same_model
    from lape.neurons.stats import RecordConfig, record

    model = tiny_model("llama")
    corpus = {"aa": [Seq(ids, torch.ones(16, dtype=torch.long)) for ids in random_ids(4, 16, seed=1)]}
    config = RecordConfig(seq_len=16)
    plain = record(model, corpus, config, out=tmp_path / "stats", progress=False)
    before = fingerprint(model)
    name = "model.layers.1.mlp.down_proj.weight"
    mask = {name: torch.zeros_like(dict(model.named_parameters())[name], dtype=torch.bool)}
    mask[name][5, 7] = True  # one entry, in no sampled tensor
    with edit_weights(model, mask, op="scale", value=4.0):
        edited = fingerprint(model)
        assert edited["content"] != before["content"] and same_model(edited, before)  # still its neurons' model
        again = record(model, corpus, config, out=tmp_path / "stats", progress=False)
        assert not again.from_cache and again.meta["cache_key"] != plain.meta["cache_key"]
    assert fingerprint(model) == before  # restored bit-exactly: the unedited key again
    assert record(model, corpus, config, out=tmp_path / "stats-2", progress=False).meta["cache_key"] == \
        plain.meta["cache_key"]
