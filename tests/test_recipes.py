"""Decisions that live in the library steps (the CLI only parses and calls them): the held-out
prompts refused for calibration, identify's language-agnostic side output, the key-neuron
evaluation's guard against questions it was selected on, the regions' keep-massive row and the
figures a cached re-run does not redraw."""

from __future__ import annotations

import os

import pytest
import torch
from test_entropy import HAND, _stats
from tiny_models import tiny_model

from lape.errors import LapeError
from lape.keyneurons.prompts import Question
from lape.keyneurons.questions import held_out_inputs
from lape.masks import NeuronSets, ParamRegions
from lape.neurons.select import agnostic_folder, identify, language_agnostic
from lape.prompts import development_prompts, load_prompts
from lape.regions.ablate import keep_massive_rows
from lape.regions.massive import MassiveDims, residual_axes
from lape.report import save_result_figure


def test_calibration_prompts_never_include_the_held_out_test_set():
    with pytest.raises(LapeError) as e:
        development_prompts("builtin:test")
    assert "\n" not in str(e.value) and "calibrate on builtin:dev" in str(e.value)
    assert development_prompts("builtin:dev", limit=3) == load_prompts("builtin:dev")[:3]


def test_identify_writes_the_agnostic_set_beside_the_sets(tmp_path):
    stats = _stats(HAND)
    sets = identify(stats, out=tmp_path / "neurons")
    agnostic = NeuronSets.load(agnostic_folder(tmp_path / "neurons"))
    assert agnostic_folder(tmp_path / "neurons") == tmp_path / "neurons-agnostic"
    assert torch.equal(agnostic.masks, language_agnostic(stats).masks)
    assert sets.labels == ["a", "b"] and agnostic.labels == ["all"]


def _question(uid: str, cluster: str) -> Question:
    return Question(uid, "Q?", ("x", "y"), 0, cluster, "en")


def test_evaluation_refuses_questions_the_key_neurons_were_selected_on():
    sets = NeuronSets(["bio", "law"], torch.zeros(2, 2, 4, dtype=torch.bool))
    selection = [_question("s1", "bio"), _question("s2", "law"), _question("s3", "law")]
    evaluation = [_question("e1", "bio"), _question("e2", "law")]
    with pytest.raises(LapeError, match=r"1 evaluation question\(s\) \(e.g. 'e2'\) were used to select"):
        held_out_inputs(sets, evaluation, selection, used_uids=["s1", "e2"])
    # the baselines use the selection questions the sets were really made from ...
    assert [q.uid for q in held_out_inputs(sets, evaluation, selection, ["s1", "s3"])] == ["s1", "s3"]
    assert held_out_inputs(sets, evaluation, selection, None) == selection
    # ... and none when a cluster's selection questions are unknown here
    assert held_out_inputs(sets, evaluation, selection, ["s1"]) is None


def test_keep_massive_row_drops_exactly_the_core_entries_on_massive_channels():
    model = tiny_model("llama")
    axes = residual_axes(model)
    names = [n for n, p in model.named_parameters() if n.startswith("model.layers.")]
    g = torch.Generator().manual_seed(0)
    masks = {n: torch.rand((2, *dict(model.named_parameters())[n].shape), generator=g) < 0.3 for n in names}
    regions = ParamRegions(["core", "random"], masks)
    hidden = model.config.hidden_size
    massive = MassiveDims([3, 7], [1.0] * hidden, 1.0, 100.0, {3: 0, 7: 1}, {3: 0, 7: 0})
    (row, kept), = keep_massive_rows(model, regions, massive).items()
    assert row == "core-keep-massive"
    for n in names:
        want = masks[n][0].clone()
        if axes.get(n) is not None:  # by hand: every entry whose residual-axis index is 3 or 7
            idx = [slice(None)] * want.dim()
            for c in (3, 7):
                idx[axes[n]] = c
                want[tuple(idx)] = False
        assert torch.equal(kept[n], want), n
    assert any(axes.get(n) is not None for n in names)
    assert keep_massive_rows(model, regions, MassiveDims([], [1.0] * hidden, 1.0, 100.0, {}, {})) == {}
    assert keep_massive_rows(model, ParamRegions(["random"], {n: m[1:] for n, m in masks.items()}), massive) == {}


class _Result:
    def __init__(self, from_cache: bool) -> None:
        self.from_cache = from_cache


def test_a_cached_result_does_not_redraw_its_figure(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = []

    def make(result):
        drawn.append(result)
        fig, ax = plt.subplots(figsize=(1, 1))
        ax.plot([0, 1])
        return fig

    save_result_figure(_Result(False), tmp_path, "fig", make)
    png = tmp_path / "fig.png"
    stamp = png.stat().st_mtime_ns
    os.utime(png, ns=(stamp - 10**9, stamp - 10**9))
    save_result_figure(_Result(True), tmp_path, "fig", make)  # cached and both files there: nothing drawn
    assert len(drawn) == 1 and png.stat().st_mtime_ns == stamp - 10**9
    (tmp_path / "fig.svg").unlink()
    save_result_figure(_Result(True), tmp_path, "fig", make)  # a file missing: drawn again
    assert len(drawn) == 2 and (tmp_path / "fig.svg").is_file()
    save_result_figure(_Result(False), None, "fig", make)  # no folder: nothing
    assert len(drawn) == 2


def test_every_regions_setting_is_reachable_from_lape_demo():
    """Each field of RegionsRunConfig is set from a DemoConfig field (``--regions-*`` on the
    command line), so no setting of the regions experiment is unreachable from ``lape demo``."""
    import dataclasses

    from lape.pipeline import DemoConfig, regions_config
    from lape.regions.run import RegionsRunConfig

    changed = {}
    for f in dataclasses.fields(DemoConfig):
        if f.name.startswith("regions_"):
            default = getattr(DemoConfig(), f.name)
            changed[f.name] = {int: 3, float: 0.25, str: "xx"}.get(type(default), ("xx",)) if default is not None \
                else (3 if "dims" in f.name else ("xx",) if "languages" in f.name else "xx")
    cfg = regions_config(DemoConfig(**changed, seq_len=64, seed=7))
    base = RegionsRunConfig()
    moved = {f.name for f in dataclasses.fields(RegionsRunConfig) if getattr(cfg, f.name) != getattr(base, f.name)}
    assert moved == {f.name for f in dataclasses.fields(RegionsRunConfig)}  # every field followed the demo's


def test_lape_demo_runs_the_lape_steps_with_its_own_settings():
    """lape demo's LAPE stages are lape.neurons.run.run_lape with the demo's same-named fields."""
    import dataclasses

    from lape.neurons.run import LapeRunConfig
    from lape.pipeline import DemoConfig, lape_run_config

    demo = DemoConfig(languages=("fr", "ja"), tokens_per_language=77, ppl_random_draws=3, steer_prompts=2,
                      prompt_set="builtin:test1", seq_len=64, seed=5)
    cfg = lape_run_config(demo)
    for f in dataclasses.fields(LapeRunConfig):
        assert getattr(cfg, f.name) == getattr(demo, f.name), f.name
    assert cfg.tokens_per_language == 77 and cfg.prompt_set == "builtin:test1"
