"""``lape demo`` on the built-in model with a tiny budget: an interrupted run resumes at the
stage it stopped in; every artifact and a self-contained report embedding every plot; a second
run recomputes nothing; the CLI runs it.

One real run is shared by the module (``demo_run``): it is interrupted (Ctrl-C) in the perplexity
stage and run again to the end, so each stage is computed once. Tests that run the demo again
work on a copy of its folder.
"""

from __future__ import annotations

import base64
import importlib
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import lape
import lape.evaluate.perplexity
import lape.evaluate.steering
import lape.models
import lape.neurons.select
import lape.regions.bridge
import lape.regions.select
from lape import artifacts, cli
from lape.evaluate.fluency import FluencyReference
from lape.evaluate.perplexity import PerplexityResult
from lape.evaluate.steering_result import SteeringEval
from lape.explain import NeuronCards
from lape.masks import NeuronSets
from lape.neurons.stats import ActivationStats
from lape.pipeline import DemoConfig, run_demo

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

# the module, not the function: lape/__init__ re-exports the function record(), which shadows the
# submodule as the attribute lape.record (so `import lape.record as m` gives the function too)
record_module = importlib.import_module("lape.neurons.stats")

REGION_STAGES = ["importance", "regions", "region-dims", "region-ppl", "region-perturb", "region-bridge"]
STAGES = ["record", "identify", "ppl", "steering", *REGION_STAGES, "explain"]
CONFIG = DemoConfig(languages=("en", "fr", "ja"), tokens_per_language=1024, ppl_tokens_per_language=128,
                    steer_prompts=2, seq_len=128, regions_languages=("fr", "ja"), regions_tokens_per_language=128,
                    regions_eval_tokens=128, regions_perturb_dims=1, keyneurons=False,  # key neurons: tests/test_keyneurons.py
                    explain_tokens_per_language=256)
CLI_ARGS = ["--languages", "en", "fr", "ja", "--tokens-per-language", "1024", "--ppl-tokens-per-language", "128",
            "--steer-prompts", "2", "--seq-len", "128", "--regions-languages", "fr", "ja",
            "--regions-tokens-per-language", "128", "--regions-eval-tokens", "128", "--regions-perturb-dims", "1",
            "--no-keyneurons",
            "--explain-tokens-per-language", "256"]
REPORT_FIGURES = {"layer_distribution", "overlap_heatmap", "probability_heatmap", "ppl_heatmaps", "steering_bars",
                  "region_removal", "region_dimensions", "superweights"}
ARTIFACT_DIRS = ["stats", "neurons", "neurons-agnostic", "ppl", "steering", *REGION_STAGES, "explain"]
ARTIFACT_KINDS = {"record": ("stats", "stats"), "identify": ("neurons", "neurons"), "ppl": ("ppl", "ppl"),
                  "steering": ("steering", "steering"), "importance": ("importance", "importance"),
                  "regions": ("regions", "regions"), "region-dims": ("region-dims", "region_dims"),
                  "region-ppl": ("region-ppl", "region_ppl"), "region-perturb": ("region-perturb", "region_perturb"),
                  "region-bridge": ("region-bridge", "region_bridge"), "explain": ("explain", "explain")}


@pytest.fixture(scope="module", autouse=True)
def shared_model(builtin):
    """Every run_demo of this module gets the session's built-in model instead of loading it
    again (~7 s a load); the pipeline leaves no hook behind, so runs cannot see each other."""
    load_model = lape.models.load_model

    def load_shared(spec, *args, **kwargs):
        return builtin if spec == "builtin" else load_model(spec, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lape.models, "load_model", load_shared)
        yield builtin


@dataclass
class DemoRun:
    run: Path  # the complete run folder
    interrupted_in: list[str]  # the stage functions that saw the KeyboardInterrupt
    after_interrupt: list[str]  # the run folder's entries (and stage markers) after the interrupt
    summary: dict  # what the resumed run_demo returned
    record_calls: int  # recording passes in the resumed run


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> DemoRun:
    """A run stopped by Ctrl-C in the perplexity stage, then run again to the end."""
    run = tmp_path_factory.mktemp("demo") / "run"
    interrupted_in: list[str] = []

    def interrupt(*args, **kwargs):
        interrupted_in.append("ppl_matrix")
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lape.evaluate.perplexity, "ppl_matrix", interrupt)
        with pytest.raises(KeyboardInterrupt):
            run_demo(CONFIG, out=run, progress=False)
    after = sorted(p.name for p in run.iterdir())

    tally = record_module.tally  # the recording pass itself (record() is called and answers from its cache)
    record_calls: list[int] = []

    def counted_tally(*args, **kwargs):
        record_calls.append(1)
        return tally(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(record_module, "tally", counted_tally)
        summary = run_demo(CONFIG, out=run, progress=False)
    return DemoRun(run, interrupted_in, after, summary, len(record_calls))


def copy_run(demo_run: DemoRun, tmp_path: Path) -> Path:
    return Path(shutil.copytree(demo_run.run, tmp_path / "run"))


def files(run: Path) -> dict[str, bytes]:
    """Every artifact file of a run (not the report, its figures or the timings)."""
    return {str(p.relative_to(run)): p.read_bytes() for d in ARTIFACT_DIRS for p in sorted((run / d).rglob("*"))
            if p.is_file()}


@pytest.fixture
def no_recompute(monkeypatch) -> Iterator[list[str]]:
    """Make recording, identification, perplexity, steering and any model forward pass fail the
    test; returns the list of what was attempted."""
    calls: list[str] = []

    def forbid(name: str):
        def fail(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} was called on an up-to-date run")
        return fail

    # the stages are called and must answer from their caches: forbid the work inside them
    monkeypatch.setattr(record_module, "tally", forbid("record"))
    monkeypatch.setattr(lape.neurons.select, "select_by_entropy", forbid("identify"))
    monkeypatch.setattr(lape.evaluate.perplexity, "corpus_nll", forbid("ppl_matrix"))
    monkeypatch.setattr(lape.evaluate.steering.Steerer, "_evaluate", forbid("Steerer.evaluate"))
    monkeypatch.setattr(lape.regions.select, "tensor_regions", forbid("select_regions"))
    monkeypatch.setattr(lape.regions.bridge, "bridge_rows", forbid("bridge_rows"))

    def watch(module, args):
        # every forward pass of any model (recording's base model, perplexity, generate) embeds its
        # input: a global hook sees it wherever the model was loaded or imported from
        if isinstance(module, torch.nn.Embedding):
            calls.append("forward")

    handle = torch.nn.modules.module.register_module_forward_pre_hook(watch)
    try:
        yield calls
    finally:
        handle.remove()


def test_the_watch_sees_a_forward_pass_of_any_model(no_recompute):
    """The up-to-date checks below rely on this: a model loaded anywhere (not through lape's
    loader) and run is reported."""
    from tiny_models import random_ids, tiny_model

    with torch.no_grad():
        tiny_model("llama")(random_ids(1, 5, seed=0))
    assert no_recompute == ["forward"]
    no_recompute.clear()


def test_interrupted_run_resumes(demo_run):
    assert demo_run.interrupted_in == ["ppl_matrix"]
    # record and identify had finished; the perplexity stage left nothing behind; no report yet
    assert demo_run.after_interrupt == sorted(["demo.json", "neurons", "neurons-agnostic", "plots", "stats"])
    summary = demo_run.summary
    assert summary["skipped"] == ["record", "identify"]
    assert summary["ran"] == ["ppl", "steering", *REGION_STAGES, "explain"]
    assert demo_run.record_calls == 0


def test_run_writes_every_artifact(demo_run):
    run, summary = demo_run.run, demo_run.summary
    assert Path(summary["report"]) == run / "report.html"
    for stage in STAGES:  # every stage's sidecar holds the key it is skipped by
        folder, kind = ARTIFACT_KINDS[stage]
        assert len(artifacts.read_json(run / folder / f"{kind}.json")["cache_key"]) == 16
    assert artifacts.read_json(run / "demo.json")["languages"] == ["en", "fr", "ja"]

    stats = ActivationStats.load(run / "stats")
    # 1024 tokens in 8 sequences of 128; the first position of each is not counted
    assert stats.languages == ["en", "fr", "ja"] and stats.token_counts.tolist() == [1024 - 8] * 3
    assert stats.meta["config"]["seq_len"] == 128
    sets = NeuronSets.load(run / "neurons")
    assert sets.labels == ["en", "fr", "ja"] and sets.shape == stats.shape == (18, 2048)
    assert sum(sets.counts().values()) > 0
    assert NeuronSets.load(run / "neurons-agnostic").labels == ["all"]
    ppl = PerplexityResult.load(run / "ppl")
    assert ppl.rows == ppl.languages == ["en", "fr", "ja"]
    assert ppl.tokens == {"en": 127, "fr": 127, "ja": 127}  # 128 tokens, one sequence: 127 predicted
    ev = SteeringEval.load(run / "steering")
    assert [r["target"] for r in ev.steered()] == ["fr", "ja"] and ev.meta["prompts"] == 2 and ev.meta["source"] == "en"
    assert [r["target"] for r in ev.steered("random")] == ["fr", "ja"]  # the random control beside them
    assert all(0 <= r["fluent"] <= 1 for r in ev.steered())  # fluency against real fr / ja text
    assert set(FluencyReference.load(run / "fluency-reference").languages) == {"fr", "ja"}
    for table in ("summary", "examples"):
        assert (run / "steering" / f"{table}.csv").is_file()
    assert {p.stem for p in (run / "plots").glob("*.png")} == REPORT_FIGURES
    assert {p.stem for p in (run / "plots").glob("*.svg")} == REPORT_FIGURES
    cards = NeuronCards.load(run / "explain")  # every LAPE neuron and its random control has a card
    explained = {tuple(n) for n in cards.neurons.tolist()}
    assert explained == set(sets.neurons("en")) | set(sets.neurons("fr")) | set(sets.neurons("ja")) | {
        tuple(cards.neurons[r].tolist()) for label, rows in cards.memberships.items() if label.startswith("random:")
        for r in rows}
    assert cards.languages == ["en", "fr", "ja"] and cards.meta["config"]["split"] == "valid"
    assert (run / "explain" / "index.html").is_file() and (run / "explain" / "cards.json").is_file()


def test_report_embeds_every_plot(demo_run):
    run = demo_run.run
    page = (run / "report.html").read_text(encoding="utf-8")
    embedded = sorted(base64.b64decode(s) for s in re.findall(r'<img src="data:image/png;base64,([^"]+)"', page))
    pngs = sorted(p.read_bytes() for p in (run / "plots").glob("*.png"))
    assert len(embedded) == len(REPORT_FIGURES)
    assert embedded == pngs  # every figure file is in the page, byte for byte, and nothing else
    for section in ("stats", "neurons", "ppl", "steering", "explain"):
        assert f'<section id="{section}">' in page
    assert "could not be read" not in page
    # self-contained: no script, no external image or stylesheet
    assert "<script" not in page and not re.search(r'(src|href)="(https?:)?//', page)


def test_second_run_recomputes_nothing(demo_run, tmp_path, no_recompute):
    run = copy_run(demo_run, tmp_path)
    before = files(run)
    summary = run_demo(CONFIG, out=run, progress=False)
    assert summary["ran"] == [] and summary["skipped"] == STAGES
    assert no_recompute == []
    assert files(run) == before  # artifacts untouched
    assert (run / "report.html").is_file()


def test_cli_demo(demo_run, tmp_path, no_recompute):
    run = copy_run(demo_run, tmp_path)
    assert cli.main(["-q", "demo", "--out", str(run), *CLI_ARGS]) == 0
    # the options build the same DemoConfig as CONFIG: same cache keys, nothing to recompute
    timings = artifacts.read_json(run / "demo-timings.json")
    assert timings["ran"] == [] and timings["skipped"] == STAGES
    assert no_recompute == []


def test_cli_demo_interrupted(tmp_path, monkeypatch, capsys):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(lape.models, "load_model", interrupt)
    assert cli.main(["-q", "demo", "--out", str(tmp_path / "run"), *CLI_ARGS]) == 130
    assert "re-run the same command to resume" in capsys.readouterr().err


def test_demo_without_english_steers_by_activation_only(tmp_path, monkeypatch):
    # the built-in prompts are English; with no English set there is nothing to switch off, so the
    # demo should steer by activating the target's neurons only (as `lape steer --interactive` does)
    def ppl_stub(model, corpus, sets, config, **kwargs):  # the perplexity stage is not under test here
        langs = list(corpus)
        return PerplexityResult(langs, langs, [3.0] * len(langs), [[3.5] * len(langs)] * len(langs),
                                [[3.1] * len(langs)] * len(langs), dict.fromkeys(langs, 127),
                                {"neurons": {"method": "lape"}})

    monkeypatch.setattr(lape.evaluate.perplexity, "ppl_matrix", ppl_stub)
    config = DemoConfig(languages=("fr", "ja"), tokens_per_language=256, ppl_tokens_per_language=128,
                        steer_prompts=1, seq_len=128, regions=False, keyneurons=False, explain=False)
    summary = run_demo(config, out=tmp_path / "run", progress=False)
    assert summary["ran"] == STAGES[:4]
    ev = SteeringEval.load(tmp_path / "run" / "steering")
    assert ev.meta["source"] is None and [r["target"] for r in ev.steered()] == ["fr", "ja"]


def test_regions_stage_writes_its_artifacts_and_report_sections(demo_run):
    """The regions stage on the built-in model: importance over the chosen languages, regions whose
    core removal hurts more than random, massive channels (Gemma 3 has them), and the report."""
    from lape.regions import ParamImportance

    run = demo_run.run
    imp = artifacts.read_json(run / "importance" / "importance.json")
    assert imp["languages"] == ["fr", "ja"] and set(imp["token_counts"]) == {"fr", "ja"}
    removal = lape.load(run / "region-ppl")
    assert removal.languages == ["fr", "ja", "en"]  # the importance languages, then English
    ratio = {c["row"]: c["geomean_ppl_ratio"] for c in removal.control_summary()}
    assert ratio["core"] > 10 * ratio["random"] and ratio["core"] > 10 * ratio["bottom"]
    dims = lape.load(run / "region-dims")
    assert dims.massive.dims, dims.massive.summary_line()
    assert "core-keep-massive" in removal.rows
    perturbed = lape.load(run / "region-perturb")
    # the largest massive channel (the test's budget; the demo's default tests every one)
    assert [c.dim for c in perturbed.candidates] == dims.massive.dims[:1]
    assert {e.kind for e in perturbed.edits if not e.control} == {"zero", "scale"}
    bridge = lape.load(run / "region-bridge")
    assert {r["set"] for r in bridge.rows} == {"en", "fr", "ja"}
    page = (run / "report.html").read_text(encoding="utf-8")
    for section in ("importance", "regions", "region-ppl", "region-dims", "region-perturb", "region-bridge"):
        assert f'<section id="{section}">' in page, section
    assert ParamImportance.load(run / "importance").languages == ["fr", "ja"]
