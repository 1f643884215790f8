"""Region removal (perplexity with a region's weights removed), the row and column tests, and
the LAPE bridge (neuron sets against regions), on tiny models and hand-made regions."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import Interrupted, interrupt_after, random_sequences, tiny_model

from lape.errors import LapeError
from lape.evaluate.perplexity import PerplexityConfig, corpus_nll
from lape.masks import NeuronSets, ParamRegions
from lape.regions import RegionConfig, select_regions
from lape.regions.ablate import (
    AblateConfig,
    RegionPerplexity,
    ablate_regions,
    default_rows,
    row_mask,
)
from lape.regions.bridge import bridge_rows
from lape.regions.importance import ParamImportance
from lape.space import ParamSpace

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(family: str = "llama", seed: int = 0) -> torch.nn.Module:
    model = tiny_model(family, seed=seed)
    model.requires_grad_(False)
    return model


def _regions(model, labels=("core", "random", "mono:aa", "mono:bb"), rate=0.05, seed=0) -> ParamRegions:
    """Random masks of ``rate`` of every decoder-block tensor, one per label."""
    g = torch.Generator().manual_seed(seed)
    masks = {}
    for name in ParamSpace.of(model).names():
        shape = dict(model.named_parameters())[name].shape
        masks[name] = torch.rand(len(labels), *shape, generator=g) < rate
    regions = ParamRegions(list(labels), masks)
    from lape.fingerprint import fingerprint

    regions.meta = {"fingerprint": fingerprint(model)}
    return regions


def _corpus():
    return {"aa": random_sequences(3, 8, seed=1, real_last=5), "bb": random_sequences(3, 8, seed=2)}


def _nll_with(model, corpus, mask: dict[str, torch.Tensor], value_of=lambda name: 0.0) -> list[float]:
    """NLL per language with the masked entries overwritten by hand (an independent edit)."""
    params = dict(model.named_parameters())
    saved = {n: params[n].detach().clone() for n in mask}
    try:
        with torch.no_grad():
            for n, m in mask.items():
                params[n][m] = value_of(n)
        return [corpus_nll(model, corpus[lang], PerplexityConfig(batch_size=2))[0] for lang in corpus]
    finally:
        with torch.no_grad():
            for n, w in saved.items():
                params[n].copy_(w)


def test_each_row_equals_a_hand_edit_and_the_weights_come_back_bit_exact():
    model, corpus = _model(), _corpus()
    regions = _regions(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = ablate_regions(model, corpus, regions, AblateConfig(batch_size=2), rows=["core", "mono:aa"],
                         progress=False)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert res.rows == ["core", "mono:aa"] and res.languages == ["aa", "bb"]
    assert res.base_nll == pytest.approx(_nll_with(model, corpus, {}), rel=1e-6)
    for i, row in enumerate(res.rows):
        want = _nll_with(model, corpus, regions.mask(row))
        assert res.nll[i] == pytest.approx(want, rel=1e-6)
        assert all(abs(a - b) > 1e-4 for a, b in zip(want, res.base_nll))  # the edit changed something
    assert res.meta["entries"]["core"] == regions.counts()["core"]
    assert res.ppl_ratio("core") == pytest.approx([math.exp(a - b) for a, b in zip(res.nll[0], res.base_nll)])


def test_remove_sets_gemma_norm_weights_to_minus_one_and_zero_writes_zero():
    model, corpus = _model("gemma3"), _corpus()
    space = ParamSpace.of(model)
    norm = next(p.name for p in space.params if p.is_norm and p.type.startswith("input_layernorm"))
    mask = {norm: torch.zeros(space.info(norm).shape, dtype=torch.bool)}
    mask[norm][:5] = True
    regions = ParamRegions(["core"], {norm: mask[norm][None]})
    removed = ablate_regions(model, corpus, regions, AblateConfig(batch_size=2), progress=False)
    zeroed = ablate_regions(model, corpus, regions, AblateConfig(batch_size=2, op="zero"), progress=False)
    assert removed.nll[0] == pytest.approx(_nll_with(model, corpus, mask, lambda n: -1.0), rel=1e-6)
    assert zeroed.nll[0] == pytest.approx(_nll_with(model, corpus, mask, lambda n: 0.0), rel=1e-6)
    assert removed.nll[0] != pytest.approx(zeroed.nll[0], rel=1e-6)


def _gemma_removal(name: str) -> float:
    return -1.0 if name.endswith("norm.weight") else 0.0  # Gemma's x * (1 + w) norms, named by hand


def test_matrices_rows_are_the_regions_without_norm_entries():
    model, corpus = _model("gemma3"), _corpus()
    regions = _regions(model, labels=("core", "bottom", "random", "mono:aa", "mono:bb"), rate=0.1)
    res = ablate_regions(model, corpus, regions, AblateConfig(batch_size=2), progress=False)
    assert res.rows == ["core", "bottom", "random", "core-matrices", "bottom-matrices", "random-matrices",
                        "mono:aa", "mono:bb"]  # the existing rows stay; the new ones after the controls
    space = ParamSpace.of(model)
    norm_names = [n for n in space.names() if n.endswith("norm.weight")]  # by name, not by ParamInfo
    assert norm_names and all(space.info(n).shape == (space.info(n).shape[0],) for n in norm_names)
    for label in ("core", "bottom", "random"):
        whole = regions.mask(label)
        alone = row_mask(regions, f"{label}-matrices", space)
        assert set(alone) == set(whole)
        for n, m in alone.items():
            if n in norm_names:
                assert not m.any()  # no norm entry (the region has some: norm_entries below)
            else:
                assert torch.equal(m, whole[n])
        i = res.rows.index(f"{label}-matrices")
        assert res.nll[i] == pytest.approx(_nll_with(model, corpus, alone), rel=1e-6)
        assert res.nll[res.rows.index(label)] == pytest.approx(_nll_with(model, corpus, whole, _gemma_removal), rel=1e-6)
        on_norms = sum(int(whole[n].sum()) for n in norm_names)
        assert res.meta["norm_entries"][label] == on_norms > 0 and res.meta["norm_entries"][f"{label}-matrices"] == 0
        assert res.meta["entries"][f"{label}-matrices"] == res.meta["entries"][label] - on_norms
    # the summary pairs each region with its -matrices row: log ratios by hand
    by_row = {c["row"]: c["geomean_ppl_ratio"] for c in res.control_summary()}
    for m in res.matrices_summary():
        whole = [a - b for a, b in zip(res.nll[res.rows.index(m["region"])], res.base_nll)]
        alone = [a - b for a, b in zip(res.nll[res.rows.index(m["region"] + "-matrices")], res.base_nll)]
        assert m["geomean_ppl_ratio"] == pytest.approx(math.exp(sum(whole) / 2)) == by_row[m["region"]]
        assert m["matrices_share"] == pytest.approx(sum(alone) / sum(whole))
    assert [m["region"] for m in res.matrices_summary()] == ["core", "bottom", "random"]
    assert "matrices" in res.tables()
    # asked for by name; a region with only norm entries (or none) gets no default -matrices row
    only = ablate_regions(model, corpus, regions, AblateConfig(batch_size=2), rows=["random-matrices"], progress=False)
    assert only.nll[0] == pytest.approx(res.nll[res.rows.index("random-matrices")], rel=1e-9)
    norm_only = ParamRegions(["core", "random"], {n: m[:2] if n in norm_names else torch.zeros_like(m[:2])
                                                  for n, m in regions.masks.items()})
    assert default_rows(norm_only, space) == ["core", "random"]
    with pytest.raises(LapeError, match="no region for 'nope-matrices'"):
        ablate_regions(model, corpus, regions, rows=["nope-matrices"], progress=False)


def test_an_exception_mid_evaluation_restores_the_weights():
    model, corpus = _model(), _corpus()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(Interrupted), interrupt_after(model.base_model, 5):  # inside the first removed row
        ablate_regions(model, corpus, _regions(model), AblateConfig(batch_size=2), progress=False)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_extra_rows_and_the_cache(tmp_path):
    model, corpus = _model(), _corpus()
    regions = _regions(model)
    core = regions.mask("core")
    half = {n: m & (torch.arange(m.numel()).reshape(m.shape) % 2 == 0) for n, m in core.items()}
    res = ablate_regions(model, corpus, regions, AblateConfig(batch_size=2), rows=["core"],
                         extra={"core-half": half}, out=tmp_path / "r", progress=False)
    assert res.rows == ["core", "core-half"]
    assert res.nll[1] == pytest.approx(_nll_with(model, corpus, half), rel=1e-6)
    again = ablate_regions(model, corpus, regions, AblateConfig(batch_size=2), rows=["core"],
                           extra={"core-half": half}, out=tmp_path / "r", progress=False)
    assert again.from_cache and again.nll == res.nll
    loaded = RegionPerplexity.load(tmp_path / "r", model=model)
    assert loaded.rows == res.rows and loaded.nll == res.nll
    # another extra mask: recomputed
    other = ablate_regions(model, corpus, regions, AblateConfig(batch_size=2), rows=["core"],
                           extra={"core-half": {n: m & ~half[n] for n, m in core.items()}},
                           out=tmp_path / "r", progress=False)
    assert not other.from_cache and other.nll[1][0] != pytest.approx(res.nll[1][0])


def test_row_and_column_tests_on_a_hand_worked_matrix():
    # base NLL 1.0 for aa, bb, cc; monolingual rows and one control
    rows = ["core", "mono:aa", "mono:bb", "mono:cc"]
    nll = [[5.0, 5.0, 5.0],
           [1.5, 1.2, 1.1],   # aa's region: hits aa hardest (row test yes)
           [1.6, 1.3, 1.0],   # bb's region: hits aa hardest (row test no); in column bb, 1.3 > 1.2, 1.0
           [1.0, 1.0, 1.05]]  # cc's region: own +0.05 is the row's largest; column cc: 1.05 < 1.1
    res = RegionPerplexity(rows, ["aa", "bb", "cc"], [1.0, 1.0, 1.0], nll, [[math.nan] * 3] * 4,
                           {"aa": 10, "bb": 10, "cc": 10})
    diag = {d["language"]: d["own_hit_hardest"] for d in res.diagonal_summary("nll")}
    assert diag == {"aa": True, "bb": False, "cc": True}
    cols = {c["language"]: c for c in res.column_summary()}
    assert {k: c["own_hit_hardest"] for k, c in cols.items()} == {"aa": False, "bb": True, "cc": False}
    assert cols["aa"]["largest_other_row"] == "mono:bb" and cols["aa"]["largest_other_delta_nll"] == pytest.approx(0.6)
    controls = res.control_summary()
    assert [c["row"] for c in controls] == ["core"]
    assert controls[0]["geomean_ppl_ratio"] == pytest.approx(math.exp(4.0))
    assert controls[0]["languages_doubled"] == 3
    assert "1 of 3 columns" in res.summary_line() and "2 of 3 rows" in res.summary_line()


def test_selected_regions_ablate_end_to_end():
    """select_regions output feeds ablate_regions; removing the core hurts more than bottom."""
    model, corpus = _model(), _corpus()
    space = ParamSpace.of(model)
    g = torch.Generator().manual_seed(3)
    scores = {n: torch.randn(2, *space.info(n).shape, generator=g) for n in space.names()}
    regions = select_regions(ParamImportance(["aa", "bb"], scores), RegionConfig(top_rate=0.02))
    res = ablate_regions(model, corpus, regions, AblateConfig(batch_size=2), rows=["bottom", "mono:aa"],
                         progress=False)
    assert res.rows == ["bottom", "mono:aa"]


def test_bad_inputs_give_one_line_errors():
    model, corpus = _model(), _corpus()
    regions = _regions(model)
    with pytest.raises(LapeError, match="no region for 'nope'"):
        ablate_regions(model, corpus, regions, rows=["nope"], progress=False)
    empty = ParamRegions(["core"], {n: torch.zeros(1, *m.shape[1:], dtype=torch.bool) for n, m in regions.masks.items()})
    with pytest.raises(LapeError, match="is empty"):
        ablate_regions(model, corpus, empty, progress=False)
    with pytest.raises(LapeError, match="given twice"):
        ablate_regions(model, corpus, regions, rows=["core"], extra={"core": regions.mask("core")}, progress=False)
    other = _model(seed=1)
    with pytest.raises(LapeError) as err:
        ablate_regions(other, corpus, regions, progress=False)
    assert "\n" not in str(err.value)


def test_region_overlap_against_a_brute_force_count():
    model = _model()
    space = ParamSpace.of(model)
    regions = _regions(model, labels=("core", "mono:aa"), rate=0.2, seed=5)
    g = torch.Generator().manual_seed(7)
    sel = torch.rand(2, space.num_layers, space.neurons_per_layer, generator=g) < 0.3
    sets = NeuronSets(["aa", "bb"], sel)
    rows = bridge_rows(sets, regions, space)
    assert len(rows) == 4

    def share(label: str, layer: int, i: int) -> tuple[float, bool]:
        own = space.neuron_mask(layer, [i])
        inside = sum(int((own[n] & regions.mask(label)[n]).sum()) for n in own)
        total = sum(int(m.sum()) for m in own.values())
        return inside / total, inside > 0

    for r in rows:
        k = sets.labels.index(r["set"])
        members = sel[k].nonzero().tolist()
        obs = [share(r["region"], layer, i) for layer, i in members]
        assert r["neurons"] == len(members)
        assert r["param_share"] == pytest.approx(sum(s for s, _ in obs) / len(obs))
        assert r["touched"] == pytest.approx(sum(t for _, t in obs) / len(obs))
        # chance: every layer's mean, weighted by the set's count in that layer
        per_layer = [[share(r["region"], layer, i) for i in range(space.neurons_per_layer)]
                     for layer in range(space.num_layers)]
        n_layer = sel[k].sum(1).tolist()
        chance = sum(n * sum(s for s, _ in per_layer[layer]) / len(per_layer[layer])
                     for layer, n in enumerate(n_layer)) / sum(n_layer)
        assert r["param_share_chance"] == pytest.approx(chance)
        assert r["param_enrichment"] == pytest.approx(r["param_share"] / chance)
    with pytest.raises(LapeError, match="same model"):
        bridge_rows(NeuronSets(["aa"], sel[:1, :, :5]), regions, space)


def test_the_removal_sentences_and_intervals_by_hand():
    """The geometric mean's interval comes from resampling the languages; the keep-massive sentence
    says "most of its effect" exactly when keeping the massive entries removes over half of the
    core's mean log PPL ratio."""
    from lape.intervals import bootstrap

    rows = ["core", "core-keep-massive", "core-matrices"]
    base = [1.0, 1.0, 1.0, 1.0]
    nll = [[9.0, 7.0, 8.0, 6.0], [3.0, 2.0, 4.0, 3.0], [8.0, 7.0, 7.0, 6.0]]
    meta = {"entries": {"core": 1000, "core-keep-massive": 980, "core-matrices": 990},
            "norm_entries": {"core": 10, "core-keep-massive": 10, "core-matrices": 0}}
    res = RegionPerplexity(rows, ["aa", "bb", "cc", "dd"], base, nll, [[math.nan] * 4] * 3,
                           {k: 10 for k in ("aa", "bb", "cc", "dd")}, meta)
    core = res.control_summary()[0]
    logs = [v - 1.0 for v in nll[0]]  # log PPL ratios per language
    want = bootstrap(logs)
    assert core["geomean_ppl_ratio"] == pytest.approx(math.exp(6.5))
    assert (core["geomean_low"], core["geomean_high"]) == pytest.approx((math.exp(want.low), math.exp(want.high)))
    assert core["geomean_low"] < core["geomean_ppl_ratio"] < core["geomean_high"]
    # keep-massive: mean log ratio 2 against 6.5, below half: "most"
    assert res.keep_massive_sentence() == (
        "Keeping the 20 core entries that lie on the massive channels (removing the other 980) leaves a PPL ratio "
        f"of x{math.exp(2.0):.3g} instead of x{math.exp(6.5):.3g}: those 2.0% of the core carry most of its effect.")
    res.nll[1] = [8.0, 6.0, 7.0, 5.0]  # mean log ratio 5.5 > 6.5 / 2: part, not most
    assert res.keep_massive_sentence().endswith("part of its effect, not most of it.")
    assert "core x665 with its 10 norm entries, x403 without (the matrices carry 92% of the log ratio)" \
        in res.matrices_sentence()
    only_core = RegionPerplexity(["core"], ["aa"], [1.0], [[2.0]], [[math.nan]], {"aa": 10}, {"entries": {"core": 5}})
    assert only_core.keep_massive_sentence() == "" and only_core.matrices_sentence() == ""
