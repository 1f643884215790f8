"""Super weights (lape.regions.perturb): selection on tiny models with a planted first-token spike,
what zeroing it does to later layers, the norm-scale edit on a tiny Gemma 3, the verdict on
hand-made numbers, the cache, the report section and bad inputs."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from test_region_dims import _layer_outputs
from tiny_models import Seq, random_sequences, tiny_model
from torch import nn

from lape import artifacts
from lape.errors import LapeError
from lape.evaluate.perplexity import PerplexityConfig, corpus_nll
from lape.regions.massive import MassiveDims, find_massive_dims
from lape.regions.perturb import Edit, PerturbConfig, RegionPerturb, applied, region_perturb
from lape.regions.superweights import SuperWeight, super_weights

pytestmark = pytest.mark.usefixtures("one_thread")

HIDDEN, LAYERS = 32, 3
BOS = 1  # the tiny models' BOS id
C, K, J0, J1 = 7, 3, 5, 9  # massive channel, BOS embedding channel, super weight column, decoy column
DOWN = "model.layers.1.mlp.down_proj.weight"
POST_FF = "model.layers.1.post_feedforward_layernorm.weight"


def _one_line_error(exc: pytest.ExceptionInfo, *words: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg and ": " in msg, msg
    for w in words:
        assert w in msg, (w, msg)


def _spiked(family: str = "llama") -> nn.Module:
    """A tiny model whose layer 1 writes a huge value on channel C at the first token only.

    The BOS embedding is channel K alone, so the MLP input of the first token points along K;
    neuron J0 of layer 1 reads only K (gate and up), so its activation is large at the first
    token and ordinary elsewhere; W_down[C, J0] carries it to channel C. Neuron J1 never fires
    (its up row is zero) but has the largest |W_down[C, j]|: a selection by |weight| would take it.
    On Gemma 3 the post-feed-forward norm scale of C is 300, as Gemma 3's real ones are."""
    model = tiny_model(family)
    mlp = model.model.layers[1].mlp
    with torch.no_grad():
        model.model.embed_tokens.weight[BOS].zero_()
        model.model.embed_tokens.weight[BOS, K] = 20.0
        for proj in (mlp.gate_proj, mlp.up_proj):
            proj.weight[J0].zero_()
            proj.weight[J0, K] = 2.0
        mlp.up_proj.weight[J1].zero_()
        mlp.down_proj.weight[C, J0] = 20.0
        mlp.down_proj.weight[C, J1] = 40.0
        if family == "gemma3":
            model.model.layers[1].post_feedforward_layernorm.weight[C] = 299.0  # scale 1 + w = 300
    return model


def _corpus() -> dict[str, list[Seq]]:
    corpus = {"aa": random_sequences(3, 8, seed=11, real_last=5), "bb": random_sequences(2, 8, seed=12)}
    for seqs in corpus.values():
        for s in seqs:
            s.input_ids[0] = BOS  # packed sequences start with BOS
    return corpus


def _first_token_states(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """``[layers, H]``: the residual stream at position 0 after each decoder layer."""
    return _layer_outputs(model, ids)[:, 0].double()


def _down_input_at_first_token(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Layer 1's down-projection input at position 0 of a whole sequence (not the one-token probe)."""
    seen = []
    handle = model.model.layers[1].mlp.down_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0][0, 0]))
    try:
        with torch.no_grad():
            model(input_ids=ids[None])
    finally:
        handle.remove()
    return seen[0].double()


# --------------------------------------------------------------------------------------------
# selection


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_super_weights_finds_the_planted_spike(family):
    model = _spiked(family)
    corpus = _corpus()
    massive = find_massive_dims(model, corpus, ratio=100.0)
    assert massive.dims == [C] and massive.first_layer == {C: 1} and massive.positions == {C: 0}
    (sw,) = super_weights(model, massive, BOS)
    assert (sw.layer, sw.dim, sw.j) == (1, C, J0)
    assert sw.tensor == DOWN and sw.index == [C, J0]
    w = model.get_parameter(DOWN).detach().double()
    assert int(w[C].abs().argmax()) == J1  # the largest weight on the row is the decoy
    # independently: the down-projection input at position 0 of a whole sequence
    a = _down_input_at_first_token(model, corpus["bb"][0].input_ids)
    terms = a * w[C]
    assert int(terms.abs().argmax()) == J0 and float(terms[J1]) == 0.0
    assert sw.activation == pytest.approx(float(a[J0]), rel=1e-4)
    assert sw.weight == 20.0 and sw.contribution == pytest.approx(float(terms[J0]), rel=1e-4)
    assert sw.output == pytest.approx(float(terms.sum()), rel=1e-4)
    assert abs(sw.contribution) > 0.9 * abs(sw.output)  # J0 writes the spike
    # the control: layer 1's median channel, its entry picked the same way
    o = massive.ordinary_dim(1)
    assert sw.control_dim == o != C
    assert sw.control_j == int((a * w[o]).abs().argmax()) and sw.control_index == [o, sw.control_j]
    if family == "gemma3":
        assert sw.norm == POST_FF and sw.norm_type == "post_feedforward_layernorm.weight"
        assert sw.norm_offset == 1.0 and sw.norm_scale == 300.0 and sw.control_norm_scale == 1.0
        mlp_branch = sw.branches["mlp.down_proj.weight"]
        assert mlp_branch["norm"] == "post_feedforward_layernorm.weight"
        assert abs(mlp_branch["value"]) > 100 * abs(sw.branches["self_attn.o_proj.weight"]["value"])
    else:
        assert sw.norm is None and sw.norm_scale is None
        assert all(b["norm"] is None for b in sw.branches.values())
    # another layer and control channel when asked
    (other,) = super_weights(model, massive, BOS, layer=2, ordinary_dim=4)
    assert other.layer == 2 and other.control_dim == 4 and other.tensor == "model.layers.2.mlp.down_proj.weight"


# --------------------------------------------------------------------------------------------
# edits


def test_zeroing_the_super_weight_removes_the_spike_in_later_layers(tmp_path):
    model = _spiked("llama")
    corpus = _corpus()
    massive = find_massive_dims(model, corpus, ratio=100.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = PerturbConfig(batch_size=2, chunk_size=5)
    res = region_perturb(model, corpus, massive, config, out=tmp_path / "perturb", progress=False)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # bit-exact
    o = massive.ordinary_dim(1)
    assert [(e.target, e.control, e.kind, e.index) for e in res.edits] == [
        ("weight", False, "zero", [C, J0]), ("weight", False, "scale", [C, J0]),
        ("weight", True, "zero", res.candidates[0].control_index), ("weight", True, "scale", res.candidates[0].control_index)]
    assert res.channels == [C, o] and res.probe == BOS
    assert res.edits[1].after == 80.0 and res.edits[0].after == 0.0 and res.edits[0].before == 20.0

    ppl = PerplexityConfig(batch_size=2, chunk_size=5)
    assert res.base_nll == [corpus_nll(model, corpus[lang], ppl)[0] for lang in ("aa", "bb")]
    ids = corpus["aa"][0].input_ids
    base = _first_token_states(model, ids)
    torch.testing.assert_close(torch.tensor(res.base_bos, dtype=torch.float64)[:, 0], base[:, C], rtol=1e-4, atol=1e-3)
    assert abs(base[1, C]) > 1000 and abs(base[2, C]) > 1000  # the spike, from layer 1 on
    w = model.get_parameter(DOWN)
    for i, e in enumerate(res.edits):
        with torch.no_grad():
            w[tuple(e.index)] = 0.0 if e.kind == "zero" else before[DOWN][tuple(e.index)] * 4.0
        try:
            assert res.nll[i] == [corpus_nll(model, corpus[lang], ppl)[0] for lang in ("aa", "bb")], e
            states = _first_token_states(model, ids)
        finally:
            with torch.no_grad():
                w.copy_(before[DOWN])
        torch.testing.assert_close(torch.tensor(res.bos[i], dtype=torch.float64), states[:, [C, o]], rtol=1e-4, atol=1e-3)
    # zeroing the super weight removes the spike in layer 1 and after it; the control leaves it
    for layer in (1, 2):
        assert abs(res.bos_value(C, layer, 0)) < 0.05 * abs(res.bos_value(C, layer)), layer
        assert res.bos_value(C, layer, 2) == pytest.approx(res.bos_value(C, layer), rel=1e-3)
    assert abs(res.bos_value(C, 2, 1)) > 3 * abs(res.bos_value(C, 2))  # x4 on a pre-norm model: about 4x
    assert res.bos_value(C, 0, 0) == res.bos_value(C, 0)  # layer 0 is before the edit
    rows = res.edit_rows()
    assert rows[0]["bos_layer"] == res.bos_value(C, 1, 0) and rows[0]["bos_last_base"] == res.bos_value(C, 2)
    assert rows[0]["ppl_ratio"] == pytest.approx(math.exp(sum(n - b for n, b in zip(res.nll[0], res.base_nll)) / 2))
    assert "zeroing channel 7's super weight L1 mlp.down_proj[7, 5]" in res.verdict()
    assert "channel 7: L1 [7, 5]" in res.summary_line()

    # cached; saved with its tables; another factor, control channel or score is another result
    again = region_perturb(model, corpus, massive, config, out=tmp_path / "perturb", progress=False)
    assert again.from_cache and again.payload() == res.payload()
    loaded = RegionPerturb.load(tmp_path / "perturb", model=model)
    assert loaded.nll == res.nll and loaded.bos == res.bos and loaded.candidates == res.candidates
    assert loaded.edits == res.edits and loaded.verdict() == res.verdict()
    assert artifacts.kind_of(tmp_path / "perturb") == "region_perturb"
    for table in ("perturb_edits", "perturb_nll", "perturb_bos", "superweights"):
        assert (tmp_path / "perturb" / f"{table}.csv").is_file(), table
    scores = {DOWN: torch.rand(HIDDEN, 48, generator=torch.Generator().manual_seed(0))}
    for k, kw in enumerate((dict(config=config.replace(factor=2.0)), dict(ordinary_dim=3), dict(scores=scores),
                            dict(config=config.replace(collapse_ratio=5.0)))):
        folder = shutil.copytree(tmp_path / "perturb", tmp_path / f"other{k}")
        args = {"config": config, **kw}
        changed = region_perturb(model, corpus, massive, args.pop("config"), out=folder, progress=False, **args)
        assert not changed.from_cache, kw


def test_gemma3_norm_scale_edit_hits_channel_c_and_is_restored_bit_exactly():
    model = _spiked("gemma3")
    corpus = _corpus()
    massive = find_massive_dims(model, corpus, ratio=100.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = region_perturb(model, corpus, massive, PerturbConfig(batch_size=2), progress=False)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # bit-exact after every edit
    o = res.candidates[0].control_dim
    norm_edits = [(i, e) for i, e in enumerate(res.edits) if e.target == "norm"]
    assert [(e.tensor, e.index, e.control, e.kind) for _, e in norm_edits] == [
        (POST_FF, [C], False, "zero"), (POST_FF, [C], False, "scale"), (POST_FF, [o], True, "zero"),
        (POST_FF, [o], True, "scale")]
    (iz, zero), (iscale, scale) = norm_edits[:2]
    # the effective scale 1 + w: 300 -> 0 (w = -1) and 300 -> 1200 (w = 1199)
    assert (zero.before, zero.after, zero.scale_before, zero.scale_after) == (299.0, -1.0, 300.0, 0.0)
    assert (scale.after, scale.scale_after) == (1199.0, 1200.0)
    assert (norm_edits[3][1].after, norm_edits[3][1].scale_after) == (3.0, 4.0)  # the control: 1 -> 4
    w = model.get_parameter(POST_FF)
    for e in (zero, scale):
        with applied(model, e):
            changed = (w != before[POST_FF]).nonzero().flatten().tolist()
            assert changed == [C] and float(w.detach()[C]) == e.after
        assert torch.equal(w, before[POST_FF])
    # the NLL and first-token states under the zero edit are those of the model with w[C] = -1 by hand
    ppl = PerplexityConfig(batch_size=2)
    with torch.no_grad():
        w[C] = -1.0
    try:
        assert res.nll[iz] == [corpus_nll(model, corpus[lang], ppl)[0] for lang in ("aa", "bb")]
        states = _first_token_states(model, corpus["bb"][0].input_ids)
    finally:
        with torch.no_grad():
            w.copy_(before[POST_FF])
    torch.testing.assert_close(torch.tensor(res.bos[iz], dtype=torch.float64)[:, 0], states[:, C], rtol=1e-4, atol=1e-3)
    # the spike falls with the norm scale and with the super weight; x4 on the scale raises it
    assert abs(res.bos_value(C, 1, iz)) < 0.05 * abs(res.bos_value(C, 1))
    assert abs(res.bos_value(C, 1, 0)) < 0.05 * abs(res.bos_value(C, 1))
    assert abs(res.bos_value(C, 1, iscale)) > 3 * abs(res.bos_value(C, 1))
    # x4 on the super weight itself barely moves it: the norm caps the branch at sqrt(H) x scale
    assert abs(res.bos_value(C, 1, 1)) < 1.1 * abs(res.bos_value(C, 1))
    assert abs(res.bos_value(C, 1)) < math.sqrt(HIDDEN) * 300 + abs(res.bos_value(C, 0)) + 10
    no_norms = region_perturb(model, corpus, massive, PerturbConfig(batch_size=2, norms=False), progress=False)
    assert [e.target for e in no_norms.edits] == ["weight"] * 4


# --------------------------------------------------------------------------------------------
# the verdict, on hand-made numbers


def _hand_made() -> RegionPerturb:
    sw = SuperWeight(dim=7, layer=1, tensor=DOWN, tensor_type="mlp.down_proj.weight", index=[7, 5], j=5,
                     activation=100.0, weight=20.0, contribution=2000.0, output=2001.0, control_dim=6,
                     control_index=[6, 2], control_j=2, control_activation=1.0, control_weight=0.1,
                     control_contribution=0.1, control_output=0.3)
    common = dict(dim=7, channel=7, layer=1, target="weight", control=False, tensor=DOWN, what="mlp.down_proj",
                  index=[7, 5], before=20.0, scale_before=20.0)
    edits = [Edit(kind="zero", op="zero", value=None, after=0.0, scale_after=0.0, **common),
             Edit(kind="scale", op="scale", value=4.0, after=80.0, scale_after=80.0, **common)]
    base_bos = [[1.0, 0.5], [2000.0, 0.4], [2100.0, 0.6]]  # [layers][channels 7, 6]
    bos = [[[1.0, 0.5], [20.0, 0.4], [105.0, 0.6]], [[1.0, 0.5], [8000.0, 0.4], [8100.0, 0.6]]]
    return RegionPerturb(["aa", "bb"], [1.0, 2.0], [[4.0, 4.0], [1.1, 2.3]], [sw], edits, [7, 6], base_bos, bos,
                         4.0, 10.0, BOS, {"aa": 10, "bb": 12}, {})


def test_verdict_names_what_collapses_the_model(tmp_path):
    res = _hand_made()
    # edit 0: NLL +3 and +2 nats: geometric-mean PPL ratio exp(2.5) = 12.18 > 10; edit 1: exp(0.2) = 1.221
    assert res.ppl_ratios(0) == pytest.approx([math.exp(3.0), math.exp(2.0)])
    assert res.ppl_ratio(0) == pytest.approx(12.1825, rel=1e-4) and res.collapses(0)
    assert res.ppl_ratio(1) == pytest.approx(1.2214, rel=1e-4) and not res.collapses(1)
    assert res.verdict() == (
        "1 of 2 edits collapse the model (PPL above 10x the unedited model's, geometric mean over 2 languages): "
        "zeroing channel 7's super weight L1 mlp.down_proj[7, 5] (x12.2). The other edit does not: x4 on channel "
        "7's super weight L1 mlp.down_proj[7, 5] (x1.22). Zeroing channel 7's super weight moves its first-token "
        "value after layer 1 from 2000 to 20 (1% of it) and after the last layer from 2100 to 105 (5% of it).")
    assert res.summary_line().startswith("super weights (channel 7: L1 [7, 5]): 1 of 2 edits collapse the model")
    calm = RegionPerturb(**{**res.__dict__, "nll": [[1.5, 2.5], [1.1, 2.3]]})
    assert calm.verdict().startswith("No edit collapses the model (PPL above 10x the unedited model's, geometric "
                                     "mean over 2 languages): zeroing channel 7's super weight L1 "
                                     "mlp.down_proj[7, 5] (x1.65); x4 on")
    # saved and loaded as it was; a damaged one is refused
    res.save(tmp_path / "p")
    back = RegionPerturb.load(tmp_path / "p")
    assert back.verdict() == res.verdict() and back.candidates == res.candidates and back.bos == res.bos
    bad = RegionPerturb(**{**res.__dict__, "nll": [[4.0, 4.0]]})
    with pytest.raises(LapeError) as e:
        bad.validate()
    _one_line_error(e, "re-run lape regions perturb")


def test_report_section_shows_the_verdict_and_the_edits(tmp_path):
    from lape.regions.report import render_perturb
    from lape.report import ReportContext

    res = _hand_made()
    res.save(tmp_path / "region-perturb")
    html = render_perturb(tmp_path / "region-perturb", ReportContext(run=tmp_path, plots_dir=tmp_path / "plots"))
    assert res.verdict() in html
    assert "zero L1 mlp.down_proj[7, 5]" in html and "x4 L1 mlp.down_proj[7, 5]" in html
    assert (tmp_path / "plots" / "superweights.png").is_file()


# --------------------------------------------------------------------------------------------
# scores and bad inputs


def test_scores_give_each_candidate_its_rank_in_its_tensor():
    model = _spiked("llama")
    corpus = _corpus()
    massive = find_massive_dims(model, corpus, ratio=100.0)
    s = torch.zeros(HIDDEN, 48)
    s[C, J0] = 0.5
    s[0, :3] = 1.0  # three entries score higher
    res = region_perturb(model, corpus, massive, PerturbConfig(batch_size=2, tokens_per_language=8), scores={DOWN: s},
                  progress=False)
    sw = res.candidates[0]
    assert sw.score == 0.5 and sw.score_rank == 3 / (HIDDEN * 48) and sw.norm_score is None


def test_perturb_refuses_bad_inputs():
    model = _spiked("llama")
    corpus = _corpus()
    massive = find_massive_dims(model, corpus, ratio=100.0)
    none = find_massive_dims(model, corpus, ratio=1e6)
    cases = [
        (dict(massive=none), "lower ratio"),
        (dict(config=PerturbConfig(layer=3)), "0 to 2"),
        (dict(config=PerturbConfig(tensor_type="mlp.nope.weight")), "use one of"),
        (dict(config=PerturbConfig(tensor_type="mlp.up_proj.weight")), "does not write into the residual"),
        (dict(ordinary_dim=C), "another ordinary_dim"),
        (dict(ordinary_dim=HIDDEN), "outside"),
        (dict(massive=MassiveDims([1], [1.0] * 8, 1.0, 100.0, {1: 0}, {1: 0})), "find them on this model"),
        (dict(massive=MassiveDims([C], [1.0] * HIDDEN, 1.0, 100.0, {}, {})), "pass layer="),
        (dict(scores={"x": torch.zeros(1)}), "covering the down-projection"),
    ]
    for kw, words in cases:
        args = {"massive": massive, "config": PerturbConfig(), **kw}
        with pytest.raises(LapeError) as e:
            region_perturb(model, corpus, args.pop("massive"), args.pop("config"), progress=False, **args)
        _one_line_error(e, words)
    with pytest.raises(LapeError) as e:
        region_perturb(model, {"aa": []}, massive, progress=False)
    _one_line_error(e, "'aa'")
