"""Dimension dependence of linguistic regions: residual axes against what each tensor touches in a
forward pass, massive channels planted into tiny models, masks without some channels, region
profiles against brute-force counts, and bad inputs (the super-weight perturbation: test_region_perturb.py)."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from tiny_models import FAMILIES, Seq, random_sequences, tiny_model
from torch import nn

from lape import artifacts
from lape.errors import LapeError
from lape.masks import ParamRegions
from lape.plots.regions import dimension_figure
from lape.regions.dims import DimsConfig, RegionDims, dimension_profile, region_dims
from lape.regions.massive import (
    MassiveDims,
    find_massive_dims,
    residual_axes,
    without_dims,
    writes_residual,
)
from lape.space import ParamSpace

HIDDEN = 32  # every tiny model's hidden size


pytestmark = pytest.mark.usefixtures("one_thread")


def _one_line_error(exc: pytest.ExceptionInfo, *words: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg and ": " in msg, msg  # one line: what is wrong: how to fix it
    for w in words:
        assert w in msg, msg


# --------------------------------------------------------------------------------------------
# residual axes against an independent, functional determination


def _is_linear(mod: nn.Module) -> bool:
    return isinstance(mod, nn.Linear) or type(mod).__name__ == "Conv1D"


def _run_block(model: nn.Module, layer: int, ids: torch.Tensor) -> tuple[dict, torch.Tensor, torch.Tensor, str]:
    """One forward pass recording ``(args, kwargs, output)`` of every module of decoder block
    ``layer`` that owns parameters, and the block's input and output hidden states."""
    space = ParamSpace.of(model)
    prefix = f"{space.layers_path}.{layer}"
    block = model.get_submodule(prefix)
    calls: dict[str, tuple] = {}
    handles = [mod.register_forward_hook(lambda m, a, kw, o, n=name: calls.__setitem__(n, (a, kw, o)),
                                         with_kwargs=True)
               for name, mod in block.named_modules() if name and list(mod.parameters(recurse=False))]
    handles.append(block.register_forward_hook(lambda m, a, kw, o: calls.__setitem__("", (a, kw, o)),
                                               with_kwargs=True))
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        for h in handles:
            h.remove()
    args, kwargs, out = calls.pop("")
    h_in = args[0] if args else kwargs["hidden_states"]
    h_out = out[0] if isinstance(out, tuple) else out
    return calls, h_in, h_out, prefix


def _writers(block: nn.Module, calls: dict, h_in: torch.Tensor, h_out: torch.Tensor) -> set[str]:
    """The linear layers whose output is added to the residual stream, found without names: the
    modules whose outputs sum to ``block output - block input`` (a norm in that sum stands for
    the linear layer whose output it normalises, as in Gemma 2/3)."""
    delta = h_out - h_in
    # OPT runs its MLP on [B * T, H]: compare every [.., H] output in the block's layout
    outs = {n: o.reshape(delta.shape) for n, (_, _, o) in calls.items()
            if isinstance(o, torch.Tensor) and o.shape[-1] == delta.shape[-1] and o.numel() == delta.numel()}
    tol = 1e-4 * float(delta.abs().max())
    found = next((s for r in (1, 2, 3) for s in itertools.combinations(outs, r)
                  if torch.allclose(sum(outs[n] for n in s), delta, atol=tol)), None)
    assert found is not None, "no set of module outputs adds up to the block's residual update"
    writers = set()
    for n in found:
        if _is_linear(block.get_submodule(n)):
            writers.add(n)
            continue
        norm_in = calls[n][0][0]
        writers |= {m for m, (_, _, o) in calls.items()
                    if _is_linear(block.get_submodule(m)) and o.shape == norm_in.shape and torch.equal(o, norm_in)}
    return writers


def _rerun(mod: nn.Module, call: tuple, attr: str, value: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
    args, kwargs, _ = call
    args = (x, *args[1:]) if x is not None else args
    with torch.no_grad():
        return torch.func.functional_call(mod, {attr: value}, args, kwargs)


def _writes_channel(mod: nn.Module, call: tuple, attr: str, axis: int, c: int) -> bool:
    """Raising slice ``c`` of the parameter along ``axis`` changes output channel ``c`` and no other."""
    p = getattr(mod, attr).detach()
    base = _rerun(mod, call, attr, p)
    new = p.clone()
    new.select(axis, c).add_(1.0)
    changed = ((_rerun(mod, call, attr, new) - base).abs().reshape(-1, base.shape[-1]).amax(0) > 1e-6)
    return changed.nonzero().reshape(-1).tolist() == [c]


def _reads_channel(mod: nn.Module, call: tuple, attr: str, axis: int, c: int) -> bool:
    """Zeroing slice ``c`` of the parameter along ``axis`` is the same as zeroing input channel ``c``."""
    p = getattr(mod, attr).detach()
    x = call[0][0].clone()
    if x.shape[-1] <= c:
        return False
    new = p.clone()
    new.select(axis, c).zero_()
    x[..., c] = 0
    by_weight, by_input = _rerun(mod, call, attr, new), _rerun(mod, call, attr, p, x)
    return torch.allclose(by_weight, by_input, atol=1e-6) and not torch.equal(by_weight, _rerun(mod, call, attr, p))


def _expected_axes(model: nn.Module, layer: int) -> dict[str, int | None]:
    """The residual axis of every parameter of one block, from what its entries do in a forward pass."""
    calls, h_in, h_out, prefix = _run_block(model, layer, random_sequences(2, 6, seed=5)[0].input_ids[None])
    block = model.get_submodule(prefix)
    hidden = h_in.shape[-1]
    writers = _writers(block, calls, h_in, h_out)
    expected = {}
    for mod_name, call in calls.items():
        mod = block.get_submodule(mod_name)
        x, y = call[0][0], call[2]
        if mod_name in writers or (not _is_linear(mod) and x.shape[-1] == hidden and y.shape[-1] == hidden):
            test = _writes_channel  # writes into the residual, or a norm over it
        elif _is_linear(mod) and x.shape[-1] == hidden:
            test = _reads_channel
        else:
            test = None
        for attr, p in mod.named_parameters(recurse=False):
            ok = [a for a in range(p.dim()) if test is not None and p.shape[a] >= hidden
                  and all(test(mod, call, attr, a, c) for c in (0, 13, hidden - 1))]
            assert len(ok) <= 1, (mod_name, attr, ok)
            expected[f"{prefix}.{mod_name}.{attr}"] = ok[0] if ok else None
    return expected


@pytest.mark.parametrize("family", list(FAMILIES))
def test_residual_axes_match_what_each_tensor_touches(family):
    model = tiny_model(family)
    axes = residual_axes(model)
    space = ParamSpace.of(model)
    assert list(axes) == space.names()
    expected = _expected_axes(model, layer=1)
    assert expected == {n: a for n, a in axes.items() if space.info(n).layer == 1}
    # every block has tensors on both sides of the residual stream
    assert {0, 1} <= {a for a in expected.values() if a is not None}
    for name, axis in axes.items():  # the same layout in every block
        same = name.replace(f".{space.info(name).layer}.", ".1.", 1)
        assert axis == axes[same], name
        if axis is not None:
            assert space.info(name).shape[axis] == HIDDEN


def test_residual_axes_square_projections_follow_their_role():
    """Where shape cannot tell (q and o projections are both 32 x 32), the role decides."""
    axes = residual_axes(tiny_model("qwen2"))
    assert axes["model.layers.0.self_attn.q_proj.weight"] == 1
    assert axes["model.layers.0.self_attn.o_proj.weight"] == 0
    assert axes["model.layers.0.self_attn.q_proj.bias"] is None  # 32 entries, but on the query side
    gpt2 = residual_axes(tiny_model("gpt2"))  # Conv1D stores [in, out]
    assert gpt2["transformer.h.0.attn.c_attn.weight"] == 0 and gpt2["transformer.h.0.attn.c_proj.weight"] == 1
    assert residual_axes(tiny_model("gemma3"))["model.layers.0.self_attn.q_norm.weight"] is None


# --------------------------------------------------------------------------------------------
# massive activations


def _layer_outputs(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """``[layers, T, H]`` decoder-layer outputs of one unpadded LLaMA sequence, from Hugging Face's
    ``output_hidden_states`` (layers 0..L-2) and the final norm's input (layer L-1)."""
    seen = []
    handle = model.model.norm.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    try:
        with torch.no_grad():
            hs = model(input_ids=ids[None], output_hidden_states=True).hidden_states
    finally:
        handle.remove()
    return torch.stack([*hs[1:-1], seen[0]])[:, 0]


def test_find_massive_dims_finds_a_planted_channel_and_where_it_starts():
    model = tiny_model("llama")
    c = 7
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[c] *= 1000  # layer 1 writes a huge channel 7
    seqs = random_sequences(5, 9, seed=3, real_last=4)
    massive = find_massive_dims(model, seqs, ratio=100.0, batch_size=2)
    assert massive.dims == [c]
    assert massive.first_layer == {c: 1}
    assert massive.sequences == 5
    outputs = [_layer_outputs(model, s.input_ids[s.attention_mask.bool()]) for s in seqs]  # [layers, T_i, H]
    peaks = torch.stack([o.abs().amax(1) for o in outputs]).amax(0)  # [layers, H]
    torch.testing.assert_close(torch.tensor(massive.peak_per_layer, dtype=torch.float32), peaks, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.tensor(massive.peak, dtype=torch.float32), peaks.amax(0), rtol=1e-5, atol=1e-5)
    assert massive.median == pytest.approx(float(torch.quantile(torch.tensor(massive.peak), 0.5)))
    medians = peaks.median(1).values  # per layer; the hidden size is even: torch's lower median ...
    assert massive.layer_median == pytest.approx(torch.quantile(peaks, 0.5, dim=1).tolist(), rel=1e-5)
    assert massive.peak_per_layer[0][c] < 100 * massive.layer_median[0]  # not yet massive after layer 0
    assert massive.peak_per_layer[1][c] > 100 * massive.layer_median[1]  # massive from layer 1 on
    assert massive.times[c] == pytest.approx(float((peaks[:, c] / torch.quantile(peaks, 0.5, dim=1)).max()), rel=1e-5)
    assert float(medians.min()) > 0
    # the position and token of the peak: the real position where channel c is largest in any layer
    i, t = max(((i, t) for i, o in enumerate(outputs) for t in range(o.shape[1])),
               key=lambda it: float(outputs[it[0]][:, it[1], c].abs().max()))
    assert massive.positions == {c: t} and massive.tokens == {c: int(seqs[i].input_ids[t])}
    # a {language: sequences} mapping is read in turn; a budget of 2 sequences is 2 sequences
    mixed = find_massive_dims(model, {"aa": seqs[:1], "bb": seqs[1:]}, ratio=100.0, max_sequences=2)
    assert mixed.sequences == 2
    assert mixed.peak == find_massive_dims(model, seqs[:2], ratio=100.0).peak


def test_find_massive_dims_at_the_first_token():
    """A huge entry in the embedding of the first token (BOS, id 1): the massive channel is there
    from layer 0 on, at position 0."""
    model = tiny_model("llama")
    c = 11
    with torch.no_grad():
        model.model.embed_tokens.weight[1, c] = 5000.0
    seqs = random_sequences(4, 8, seed=4)
    for s in seqs:
        s.input_ids[0] = 1
    massive = find_massive_dims(model, seqs, ratio=100.0)
    assert massive.dims == [c]
    assert massive.first_layer == {c: 0} and massive.positions == {c: 0} and massive.tokens == {c: 1}


def test_find_massive_dims_ignores_padding_and_finds_nothing_in_a_plain_model():
    model = tiny_model("llama")
    seqs = random_sequences(4, 8, seed=6, real_last=3)
    plain = find_massive_dims(model, seqs, ratio=100.0)
    assert plain.dims == [] and plain.first_layer == {} and plain.positions == {}
    assert len(plain.peak) == HIDDEN and len(plain.peak_per_layer) == 3
    assert plain.peak == [max(col) for col in zip(*plain.peak_per_layer)]
    with torch.no_grad():
        model.model.embed_tokens.weight[0, 5] = 5000.0  # the pad token: only at padded positions
    assert find_massive_dims(model, seqs, ratio=100.0).dims == []
    # the same positions counted as real tokens show the planted channel
    unmasked = [Seq(s.input_ids, torch.ones_like(s.attention_mask)) for s in seqs]
    assert find_massive_dims(model, unmasked, ratio=100.0).dims == [5]


def test_massive_dims_round_trip_and_ordinary_dim():
    m = MassiveDims([2], [1.0, 3.0, 500.0, 2.0, 2.0], 2.0, 100.0, {2: 1}, {2: 0}, {2: 1}, [], 3,
                    [2.0], [0.5, 1.5, 250.0, 1.0, 1.0])
    # channels by (peak, index): 0, 3, 4, 1, 2; the middle one is channel 4
    assert m.ordinary_dim() == 4
    back = MassiveDims.from_dict(json.loads(json.dumps(m.to_dict())))
    assert back == m


def test_find_massive_dims_refuses_bad_inputs():
    model = tiny_model("llama")
    with pytest.raises(LapeError) as e:
        find_massive_dims(model, random_sequences(2, 5, seed=1), ratio=0)
    _one_line_error(e, "ratio")
    with pytest.raises(LapeError) as e:
        find_massive_dims(model, [])
    _one_line_error(e, "text")


# --------------------------------------------------------------------------------------------
# masks without some channels


def _random_mask(space: ParamSpace, density: float, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {p.name: torch.rand(p.shape, generator=g) < density for p in space.params}


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])
def test_without_dims_removes_exactly_the_entries_on_those_dims(family):
    model = tiny_model(family)
    space = ParamSpace.of(model)
    axes = residual_axes(model, space)
    mask = _random_mask(space, 0.3, seed=2)
    before = {n: m.clone() for n, m in mask.items()}
    dims = [3, 17]
    kept = without_dims(mask, axes, dims)
    assert all(torch.equal(mask[n], before[n]) for n in mask)  # the input is not changed
    for name, m in mask.items():
        axis = axes[name]
        on_dims = {tuple(i) for i in m.nonzero().tolist() if axis is not None and i[axis] in dims}
        remaining = {tuple(i) for i in kept[name].nonzero().tolist()}
        assert remaining == {tuple(i) for i in m.nonzero().tolist()} - on_dims, name
    removed = sum(int(mask[n].sum() - kept[n].sum()) for n in mask)
    assert removed > 0
    assert removed == sum(1 for n, m in mask.items() if axes[n] is not None
                          for i in m.nonzero().tolist() if i[axes[n]] in dims)
    unchanged = without_dims(mask, axes, [])
    assert all(torch.equal(unchanged[n], mask[n]) and unchanged[n] is not mask[n] for n in mask)


def test_without_dims_refuses_bad_inputs():
    model = tiny_model("llama")
    space = ParamSpace.of(model)
    axes = residual_axes(model, space)
    mask = _random_mask(space, 0.1, seed=1)
    with pytest.raises(LapeError) as e:
        without_dims(mask, axes, [HIDDEN])
    _one_line_error(e, "outside", "find_massive_dims")
    with pytest.raises(LapeError) as e:
        without_dims({"lm_head.weight": torch.zeros(96, HIDDEN, dtype=torch.bool)}, axes, [1])
    _one_line_error(e, "residual_axes")


# --------------------------------------------------------------------------------------------
# dimension profile


def _regions(space: ParamSpace, core: dict[str, torch.Tensor], seed: int = 9) -> ParamRegions:
    rnd = _random_mask(space, 0.05, seed)
    return ParamRegions(["core", "random"], {n: torch.stack([core[n], rnd[n]]) for n in core})


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_dimension_profile_counts_match_a_brute_force_count(family):
    model = tiny_model(family)
    space = ParamSpace.of(model)
    axes = residual_axes(model, space)
    core = _random_mask(space, 0.1, seed=3)
    regions = _regions(space, core)
    dims = [4, 30]
    prof = dimension_profile(regions, model, "core", dims)

    counts: dict[str, list[int]] = {}
    numel: dict[str, int] = {}
    entries: dict[str, int] = {}
    per_dim: dict[str, list[int]] = {}
    for name, m in core.items():
        t, axis = space.info(name).type, axes[name]
        numel[t] = numel.get(t, 0) + m.numel()
        entries[t] = entries.get(t, 0) + int(m.sum())
        if axis is None:
            continue
        counts.setdefault(t, [0] * HIDDEN)
        per_dim.setdefault(t, [0] * HIDDEN)
        for i in m.nonzero().tolist():
            counts[t][i[axis]] += 1
        for i in itertools.product(*map(range, m.shape)):
            per_dim[t][i[axis]] += 1
    assert prof.types == space.tensor_types()
    assert prof.counts == counts and prof.numel_per_dim == per_dim
    assert prof.numel == numel and prof.entries == entries
    assert prof.tensors == {t: 3 for t in space.tensor_types()}
    for t in counts:
        assert prof.dims_share(t) == pytest.approx(sum(counts[t][c] for c in dims) / entries[t])
        assert prof.dims_chance(t) == pytest.approx(2 / HIDDEN)
        assert prof.enrichment(t)[4] == pytest.approx(counts[t][4] / (entries[t] / HIDDEN))
    # top 1% of rows: at least one row per matrix, the one holding most region entries
    for t in prof.types:
        mats = [m for n, m in core.items() if space.info(n).type == t and m.dim() == 2]
        if not mats:
            assert prof.row_top[t] is None and prof.col_top[t] is None
            continue
        k_rows = [max(1, math.floor(0.01 * m.shape[0])) for m in mats]
        hits = sum(sum(sorted(m.sum(1).tolist(), reverse=True)[:k]) for m, k in zip(mats, k_rows))
        assert prof.row_top[t] == pytest.approx(hits / entries[t])
        hits_c = sum(max(m.sum(0).tolist()) for m in mats)  # tiny matrices: one top column
        assert prof.col_top[t] == pytest.approx(hits_c / entries[t])
        want = sum(int(m.sum()) * k / m.shape[0] for m, k in zip(mats, k_rows)) / entries[t]
        assert prof.row_expected[t] == pytest.approx(want)
    rows = prof.to_rows()
    assert [r["type"] for r in rows] == prof.types and rows[0]["label"] == "core"
    summary = prof.summary()
    assert summary["dims"] == dims and summary["entries"] == sum(entries[t] for t in counts)
    assert summary["dims_entries"] == sum(counts[t][c] for t in counts for c in dims)


def test_dimension_profile_sees_a_region_piled_on_one_channel():
    model = tiny_model("gpt2")
    space = ParamSpace.of(model)
    axes = residual_axes(model, space)
    c = 9
    core = {}
    for p in space.params:  # every entry on channel 9 (along each tensor's residual axis)
        m = torch.zeros(p.shape, dtype=torch.bool)
        if axes[p.name] is not None:
            m.select(axes[p.name], c).fill_(True)
        core[p.name] = m
    prof = dimension_profile(_regions(space, core), model, "core", [c])
    for t in prof.residual_types():
        assert prof.dims_share(t) == 1.0
        assert prof.top_channels(t, 1) == [c]
        assert prof.enrichment(t)[c] == pytest.approx(HIDDEN)
    t = "mlp.c_proj.weight"  # Conv1D [48, 32]: channel 9 is a column
    assert prof.counts[t][c] == 3 * 48 and prof.col_top[t] == 1.0
    assert prof.row_top[t] == pytest.approx(1 / 48)  # one of 48 rows, each holding one entry
    summary = prof.summary()
    assert summary["dims_share"] == 1.0 and summary["dims_enrichment"] == pytest.approx(HIDDEN)


def test_dimension_profile_refuses_bad_inputs():
    model = tiny_model("llama")
    space = ParamSpace.of(model)
    regions = _regions(space, _random_mask(space, 0.1, seed=1))
    with pytest.raises(LapeError) as e:
        dimension_profile(regions, model, "core", [HIDDEN + 3])
    _one_line_error(e, "outside")
    with pytest.raises(LapeError) as e:
        dimension_profile(regions, model, "mono:xx")
    _one_line_error(e, "core")
    with pytest.raises(LapeError) as e:
        dimension_profile(regions, tiny_model("gpt2"), "core")
    _one_line_error(e)


def test_the_dimension_figure_has_a_panel_per_residual_type_and_the_channel_scale():
    model = tiny_model("llama")
    space = ParamSpace.of(model)
    prof = dimension_profile(_regions(space, _random_mask(space, 0.1, seed=1)), model, "core", [3])
    massive = find_massive_dims(model, random_sequences(2, 6, seed=1), ratio=1.2)
    fig = dimension_figure(prof, massive)
    assert len(fig.axes) == len(prof.residual_types()) + 1
    assert fig.axes[-1].get_yscale() == "log"
    assert len(dimension_figure(prof, None).axes) == len(prof.residual_types()) + 1


def test_dimension_dependence_is_one_cached_artifact(tmp_path):
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[7] *= 1000
    space = ParamSpace.of(model)
    regions = _regions(space, _random_mask(space, 0.1, seed=4))
    seqs = random_sequences(6, 8, seed=2, real_last=5)
    config = DimsConfig(max_sequences=4, batch_size=3)
    res = region_dims(model, seqs, regions, config, out=tmp_path / "dims")
    assert not res.from_cache
    assert res.massive == find_massive_dims(model, seqs[:4], ratio=100.0, batch_size=3)
    assert res.massive.dims == [7]
    assert res.profile == dimension_profile(regions, model, "core", [7])
    loaded = RegionDims.load(tmp_path / "dims", model=model)
    assert loaded.massive == res.massive and loaded.profile == res.profile
    assert artifacts.kind_of(tmp_path / "dims") == "region_dims"
    assert (tmp_path / "dims" / "dims_profile.csv").is_file() and (tmp_path / "dims" / "massive_dims.csv").is_file()
    assert "7 (peak" in res.summary_line() and "chance" in res.summary_line()
    again = region_dims(model, seqs, regions, config, out=tmp_path / "dims")
    assert again.from_cache
    other = region_dims(model, seqs, regions, config.replace(label="random"), out=tmp_path / "dims")
    assert not other.from_cache and other.profile.label == "random"
    with pytest.raises(LapeError) as e:
        region_dims(model, seqs, regions, config.replace(label="mono:xx"))
    _one_line_error(e, "core")


def test_massive_is_judged_against_each_layers_median():
    """A channel 500x its layer's median at layer 0 is massive even though later layers' medians
    (the residual stream grows with depth) exceed its peak; a channel large only where everything
    is large is not."""
    from lape.regions.massive import PeakTracker

    tracker = PeakTracker(layers=2, hidden=6)
    tracker.sums["peak"] = torch.tensor([[1.0, 1.0, 2.0, 500.0, 1.0, 1.0],
                                         [1000.0, 900.0, 1100.0, 400.0, 5000.0, 1000.0]], dtype=torch.float64)
    m = tracker.result(ratio=100.0, n_seqs=1)
    assert m.layer_median == [1.0, 1000.0]  # torch's quantile interpolates: (1 + 1) / 2 and (1000 + 1000) / 2
    assert m.dims == [3] and m.first_layer == {3: 0}
    assert m.times[3] == pytest.approx(500.0) and m.times[4] == pytest.approx(5.0)
    assert m.peak[3] < m.median  # one median over all layers would have missed it


def test_ordinary_dim_of_a_layer_is_that_layers_median_channel():
    # overall peaks rank the channels 0, 1, 2, 3, 4; layer 1 ranks them 4, 3, 2, 0, 1 (ties: lower index)
    m = MassiveDims([4], [1.0, 2.0, 3.0, 4.0, 500.0], 3.0, 100.0, {4: 0}, {4: 0}, {4: 1},
                    [[1.0, 2.0, 3.0, 4.0, 500.0], [5.0, 6.0, 2.0, 1.0, 0.5]], 1, [3.0, 2.0], [])
    assert m.ordinary_dim() == 2  # sorted peaks 1, 2, 3, 4, 500: the middle is channel 2
    assert m.ordinary_dim(0) == 2
    assert m.ordinary_dim(1) == 2  # sorted layer-1 peaks 0.5 (4), 1 (3), 2 (2), 5 (0), 6 (1): channel 2
    m.peak_per_layer[1] = [5.0, 6.0, 0.1, 1.0, 0.5]  # now 0.1 (2), 0.5 (4), 1 (3), 5 (0), 6 (1): channel 3
    assert m.ordinary_dim(1) == 3 and m.ordinary_dim() == 2
    with pytest.raises(LapeError) as e:
        m.ordinary_dim(2)
    _one_line_error(e, "layer 2", "0 to 1")
    # without per-layer peaks, the overall median
    assert MassiveDims([4], m.peak, 3.0, 100.0, {4: 0}, {4: 0}).ordinary_dim(1) == 2


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2", "bloom"])
def test_writes_residual_is_true_for_the_output_projections_only(family):
    model = tiny_model(family)
    space = ParamSpace.of(model)
    axes = residual_axes(model, space)
    writers = {p.type for p in space.params if p.layer == 0 and writes_residual(model, p.name, axes)}
    want = {"llama": {"self_attn.o_proj.weight", "mlp.down_proj.weight"},
            "gemma3": {"self_attn.o_proj.weight", "mlp.down_proj.weight"},
            "gpt2": {"attn.c_proj.weight", "mlp.c_proj.weight"},
            "bloom": {"self_attention.dense.weight", "mlp.dense_4h_to_h.weight"}}[family]
    assert writers == want
