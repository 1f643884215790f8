"""``lape regions importance|select|ablate|dims|perturb|train|bridge``, in-process, on the tiny model.

A tiny random LLaMA folder and a two-language manifest with a held-out ``valid`` split
(``tiny_models.tiny_model_folder``); ``lape record`` + ``lape identify`` give the LAPE neuron
sets that ``bridge`` compares with. Every command runs once per module (``runs``) and its saved
numbers are checked against the library call made here independently. Re-runs must skip and
rewrite nothing, changed options must recompute, bad inputs must be one-line ``lape: error:``
messages, and the last test walks every numeric option of every subcommand with the
out-of-range ``VALUES`` of ``test_cli``: status 0 or a one-line error, never a traceback.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from test_cli import (
    BIG,
    PNG_MAGIC,
    VALUES,
    _files,
    _ModelWouldLoad,
    _numeric_options,
    _outcome,
    _subparsers,
    cli,
)
from tiny_models import char_tokenizer, tiny_model, tiny_model_folder

import lape
from lape.cli import build_parser
from lape.masks import NeuronSets, ParamRegions

pytestmark = pytest.mark.usefixtures("one_thread")

RECORD = ["--tokens-per-language", "600", "--seq-len", "64", "--batch-size", "4"]
IDENTIFY = ["--top-rate", "0.2", "--filter-rate", "0.8", "--activation-bar-ratio", "0.8"]  # both languages get neurons
IMPORTANCE = ["--tokens-per-language", "300", "--seq-len", "32", "--batch-size", "4"]  # train split
EVAL = ["--tokens-per-language", "200", "--seq-len", "32", "--batch-size", "4"]  # valid split (~280 tokens each)
TRAIN = ["--train-language", "aa", "--steps", "2", "--batch-size", "2", "--seq-len", "32",
         "--eval-tokens-per-language", "100"]
LANGUAGES = ["aa", "bb"]
LABELS = ["core", "bottom", "random", "mono:aa", "mono:bb"]
FIGURES = {"ablate": "removal", "dims": "dimensions", "train": "forgetting"}
def _logged(*argv: str) -> str:
    """Run ``lape ARGV`` (status 0 required) and return what it logged at INFO (for module fixtures,
    where caplog is not available)."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger, handler = logging.getLogger("lape"), Collect(logging.INFO)
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        assert cli(*argv) == 0, argv
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return "\n".join(lines)


def _rerun(args: list[str], out: Path, info_logs) -> set[str]:
    """The same command again: it must log that it skipped; returns the files of ``out`` it rewrote."""
    before = _files(out)
    info_logs.clear()
    assert cli(*args) == 0
    assert f"in {out} is up to date for these inputs: skipped" in info_logs.text
    after = _files(out)
    assert set(after) == set(before), "files appeared or vanished"
    info_logs.clear()
    return {name for name in before if after[name] != before[name]}


def _one_line_error(rc: object, err: str) -> str:
    assert rc == 2, (rc, err)
    assert err.startswith("lape: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _same_weights(model, snapshot: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(p, snapshot[n]) for n, p in model.named_parameters())


def _folder_digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


# --------------------------------------------------------------------------------------------
# Fixtures: a model folder, a manifest, the LAPE neuron sets, and one run of every command


@pytest.fixture(scope="module")
def work(tmp_path_factory, one_thread) -> Path:
    work = tmp_path_factory.mktemp("cli-regions")
    tiny_model_folder(work, valid_share=0.2)
    model, corpus = str(work / "model"), str(work / "corpus.yaml")
    assert cli("record", "--model", model, "--corpus", corpus, "--out", str(work / "stats"), *RECORD) == 0
    assert cli("identify", str(work / "stats"), "--out", str(work / "neurons"), *IDENTIFY) == 0
    assert min(NeuronSets.load(work / "neurons").counts().values()) > 0
    return work


@pytest.fixture(scope="module")
def other(work) -> Path:
    """Another tiny LLaMA of the same shape (another seed): artifacts of the first must be refused."""
    folder = work / "other-model"
    tiny_model("llama", seed=1).save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model_digest(work) -> dict[str, str]:
    """The model folder's files before any ``lape regions`` command ran."""
    return _folder_digest(work / "model")


@pytest.fixture(scope="module")
def loaded(work):
    """The model and tokenizer, loaded here for the independent library calls."""
    return lape.load_model(str(work / "model"))


def _valid(work: Path, tok, tokens: int = 200) -> dict:
    return lape.load_corpus(work / "corpus.yaml", tok, split="valid", tokens_per_language=tokens, seq_len=32,
                            seed=0, languages=LANGUAGES)


def _one_dim_ratio(model, streams) -> float:
    """A ratio between the two channels that stand out most from their layer's median channel peak
    (``MassiveDims.times``): exactly one massive channel."""
    from lape.regions.massive import find_massive_dims

    found = find_massive_dims(model, streams)
    first, second = sorted(found.times, reverse=True)[:2]
    assert first > second > 1.0
    return (first + second) / 2


@dataclass
class Run:
    args: list[str]
    out: Path
    log: str


@pytest.fixture(scope="module")
def runs(work, loaded, model_digest) -> dict[str, Run]:
    """Every ``lape regions`` command run once on the tiny model: importance -> select -> ablate,
    dims, perturb, train and bridge on those regions, and split-half stability."""
    model_args = ["--model", str(work / "model")]
    corpus = ["--corpus", str(work / "corpus.yaml")]
    regions = str(work / "regions")
    ratio = _one_dim_ratio(loaded[0], _valid(work, loaded[1]))
    commands = {
        "importance": ["importance", *model_args, *corpus, *IMPORTANCE],
        "select": ["select", str(work / "importance"), "--top-rate", "0.05"],
        "ablate": ["ablate", regions, *model_args, *corpus, *EVAL],
        "dims": ["dims", regions, *model_args, *corpus, *EVAL],
        "perturb": ["perturb", *model_args, *corpus, *EVAL, "--ratio", repr(ratio)],
        "train": ["train", *model_args, *corpus, "--regions", regions, *TRAIN, "--freeze", "none", "core"],
        "bridge": ["bridge", regions, "--neurons", str(work / "neurons"), *model_args],
        "stability": ["stability", *model_args, *corpus, *IMPORTANCE, "--top-rate", "0.05"],
    }
    outs = {"importance": "importance", "select": "regions"}
    result = {}
    for name, argv in commands.items():
        out = work / outs.get(name, name)
        args = ["regions", *argv, "--out", str(out)]
        result[name] = Run(args, out, _logged(*args))
    return result


@pytest.fixture
def info_logs(caplog):
    caplog.set_level(logging.INFO, logger="lape")
    return caplog


# --------------------------------------------------------------------------------------------
# Each command's saved numbers equal the library call


def test_importance_equals_the_library_call(work, loaded, runs):
    from lape.regions import ImportanceConfig, ParamImportance, param_importance

    imp = ParamImportance.load(runs["importance"].out)
    model, tok = loaded
    streams = lape.load_corpus(work / "corpus.yaml", tok, split="train", tokens_per_language=300, seq_len=32, seed=0)
    direct = param_importance(model, streams, ImportanceConfig(tokens_per_language=300, seq_len=32, batch_size=4),
                        progress=False)
    assert imp.languages == direct.languages == LANGUAGES
    assert list(imp.scores) == list(direct.scores) and len(imp.scores) == 3 * 9  # 7 matrices + 2 norms a layer
    for name, s in imp.scores.items():
        torch.testing.assert_close(s, direct.scores[name], rtol=1e-6, atol=0.0)
    assert any(bool(s.ne(0).any()) for s in imp.scores.values())
    assert imp.meta["token_counts"] == direct.meta["token_counts"] and imp.meta["batches"] == direct.meta["batches"]
    assert imp.meta["config"]["batch_size"] == 4 and imp.meta["config"]["seq_len"] == 32
    tokens = sum(direct.meta["token_counts"].values())
    assert (f"importance of {len(direct.scores)} tensors over aa, bb ({tokens:,} predicted tokens) -> "
            f"{runs['importance'].out}") in runs["importance"].log


def test_select_equals_select_regions_on_the_saved_importance(runs):
    from lape.regions import ParamImportance, RegionConfig, select_regions

    regions = ParamRegions.load(runs["select"].out)
    direct = select_regions(ParamImportance.load(runs["importance"].out), RegionConfig(top_rate=0.05))
    assert regions.labels == direct.labels == LABELS
    assert list(regions.masks) == list(direct.masks)
    for name, m in regions.masks.items():
        assert torch.equal(m, direct.masks[name]), name
    counts = regions.counts()
    assert counts == direct.counts() and min(counts.values()) > 0
    assert "regions (entries): " + ", ".join(f"{k} {v:,}" for k, v in counts.items()) in runs["select"].log
    assert (runs["select"].out / "sizes.csv").is_file()


def test_ablate_nlls_equal_ablate_regions_and_the_figure_is_written(work, loaded, runs):
    from lape.regions.ablate import AblateConfig, RegionPerplexity, ablate_regions

    res = RegionPerplexity.load(runs["ablate"].out)
    model, tok = loaded
    regions = ParamRegions.load(runs["select"].out)
    direct = ablate_regions(model, _valid(work, tok), regions,
                            AblateConfig(tokens_per_language=200, seq_len=32, batch_size=4), progress=False)
    assert res.rows == direct.rows == [*LABELS[:3], "core-matrices", "bottom-matrices", "random-matrices", *LABELS[3:]] and res.languages == LANGUAGES
    assert res.tokens == direct.tokens and min(res.tokens.values()) > 100
    assert res.base_nll == pytest.approx(direct.base_nll, rel=1e-6)
    for got, want in zip(res.nll, direct.nll, strict=True):
        assert got == pytest.approx(want, rel=1e-6)
    assert res.nll[0] != pytest.approx(res.base_nll, rel=1e-4)  # removing the core region changed something
    assert (runs["ablate"].out / "removal.png").read_bytes()[:8] == PNG_MAGIC
    assert (runs["ablate"].out / "removal.svg").read_text().rstrip().endswith("</svg>")
    assert f"{res.summary_line()} -> {runs['ablate'].out}" in runs["ablate"].log
    assert (runs["ablate"].out / "ppl_ratio.csv").read_text().splitlines()[0] == "removed,aa,bb"


def test_ablate_rows_and_keep_massive(work, loaded, runs, tmp_path):
    """``--rows`` picks the removed regions; ``--keep-massive`` adds the core region without its
    massive-dimension entries when there is a massive dimension (at the default ratio 100)."""
    from lape.regions.ablate import RegionPerplexity
    from lape.regions.massive import find_massive_dims

    out = tmp_path / "ablate-rows"
    log = _logged(*runs["ablate"].args[:-1], str(out), "--rows", "random", "core", "--keep-massive")
    res = RegionPerplexity.load(out)
    model, tok = loaded
    massive = find_massive_dims(model, _valid(work, tok))
    if massive.dims:
        assert res.rows == ["random", "core", "core-keep-massive"]
    else:
        assert res.rows == ["random", "core"]
        assert massive.summary_line() in log  # says that no channel is massive, so no extra row
    whole = RegionPerplexity.load(runs["ablate"].out)
    for row in ("random", "core"):  # the same text and removal as the full run
        assert res.nll[res.rows.index(row)] == pytest.approx(whole.nll[whole.rows.index(row)], rel=1e-9)


def test_bridge_rows_equal_region_overlap(work, loaded, runs):
    from lape.regions.bridge import RegionBridge, bridge_rows
    from lape.space import ParamSpace

    saved = RegionBridge.load(runs["bridge"].out)
    model, _ = loaded
    direct = bridge_rows(NeuronSets.load(work / "neurons"), ParamRegions.load(runs["select"].out),
                            ParamSpace.of(model))
    assert [(r["set"], r["region"]) for r in saved.rows] == [(s, r) for s in LANGUAGES for r in LABELS]
    assert len(saved.rows) == len(direct)
    for got, want in zip(saved.rows, direct, strict=True):
        assert set(got) == set(want)
        for k, v in want.items():
            assert got[k] == (pytest.approx(v, rel=1e-12, nan_ok=True) if isinstance(v, float) else v), k
    assert (runs["bridge"].out / "bridge.csv").read_text().splitlines()[0].startswith("set,region,neurons")
    for r in direct:
        line = (f"{r['set']:<6} in {r['region']:<10} params {100 * r['param_share']:6.2f}% "
                f"(chance {100 * r['param_share_chance']:6.2f}%, x{r['param_enrichment']:.2f})")
        assert line in runs["bridge"].log


def test_dims_at_the_default_ratio_equals_dimension_dependence(work, loaded, runs):
    from lape.regions.dims import DimsConfig, RegionDims, region_dims

    res = RegionDims.load(runs["dims"].out)
    model, tok = loaded
    direct = region_dims(model, _valid(work, tok), ParamRegions.load(runs["select"].out),
                                  DimsConfig(tokens_per_language=200, seq_len=32, batch_size=4))
    assert res.massive.ratio == 100.0 and res.massive.sequences == 8
    assert res.massive.dims == direct.massive.dims  # none or some: the tiny random model decides
    assert json.dumps(res.massive.to_dict(), sort_keys=True) == json.dumps(direct.massive.to_dict(), sort_keys=True)
    assert json.dumps(res.profile.to_dict(), sort_keys=True) == json.dumps(direct.profile.to_dict(), sort_keys=True)
    assert res.profile.label == "core" and sum(res.profile.entries.values()) == ParamRegions.load(
        runs["select"].out).counts()["core"]
    line = res.summary_line()
    assert ("no channel's peak" in line) == (not res.massive.dims)
    assert f"{line} -> {runs['dims'].out}" in runs["dims"].log
    assert (runs["dims"].out / "dimensions.png").read_bytes()[:8] == PNG_MAGIC


def test_perturb_at_a_low_ratio_equals_the_library_call(work, loaded, runs):
    from lape.regions.massive import find_massive_dims
    from lape.regions.perturb import PerturbConfig, RegionPerturb, region_perturb

    res = RegionPerturb.load(runs["perturb"].out)
    model, tok = loaded
    streams = _valid(work, tok)
    ratio = float(runs["perturb"].args[runs["perturb"].args.index("--ratio") + 1])
    massive = find_massive_dims(model, streams, ratio=ratio)
    assert len(massive.dims) == 1  # the ratio lies between the two largest peaks
    direct = region_perturb(model, streams, massive, PerturbConfig(tokens_per_language=200, seq_len=32, batch_size=4),
                     progress=False)
    assert res.languages == LANGUAGES and res.factor == 4.0 and res.tokens == direct.tokens
    assert res.candidates == direct.candidates and res.edits == direct.edits
    (sw,) = res.candidates
    assert sw.dim == massive.dims[0] and sw.layer == massive.first_layer[sw.dim]
    assert sw.control_dim == massive.ordinary_dim(sw.layer) != massive.dims[0]
    assert res.base_nll == pytest.approx(direct.base_nll, rel=1e-6)
    for got, want in zip(res.nll, direct.nll):
        assert got == pytest.approx(want, rel=1e-6)
    assert res.nll[0] != pytest.approx(res.base_nll, rel=1e-6)  # zeroing the super weight changed something
    assert f"{res.summary_line()} -> {runs['perturb'].out}" in runs["perturb"].log
    assert res.verdict() in runs["perturb"].log
    assert (runs["perturb"].out / "superweights.png").read_bytes()[:8] == PNG_MAGIC


def test_perturb_with_a_huge_ratio_is_a_one_line_error_naming_the_ratio(runs, tmp_path, capsys):
    argv = [*runs["perturb"].args[:-1], str(tmp_path / "p"), "--ratio", "1e6"]
    rc, err = _outcome(argv, capsys)
    msg = _one_line_error(rc, err)
    assert "--ratio" in msg and "1e+06x its layer's median" in msg
    assert not (tmp_path / "p").exists()


def test_perturb_layer_option_perturbs_that_layer(runs, tmp_path):
    from lape.regions.perturb import RegionPerturb

    argv = runs["perturb"].args
    assert cli(*argv[:-1], str(tmp_path / "p"), "--layer", "0") == 0
    res = RegionPerturb.load(tmp_path / "p")
    assert [c.layer for c in res.candidates] == [0] and {e.layer for e in res.edits} == {0}
    assert res.candidates[0].tensor == "model.layers.0.mlp.down_proj.weight"


def test_train_before_nll_is_the_unmodified_model_and_the_weights_are_unchanged(work, loaded, model_digest, runs):
    from lape.evaluate.perplexity import PerplexityConfig, corpus_nll
    from lape.regions.forgetting import RegionTrain
    from lape.regions.train import TrainConfig, region_train

    res = RegionTrain.load(runs["train"].out)
    model, tok = loaded
    valid = _valid(work, tok, tokens=100)
    assert res.settings == ["none", "core"] and res.languages == LANGUAGES and res.train_language == "aa"
    before = [corpus_nll(model, valid[lang], PerplexityConfig(batch_size=2))[0] for lang in LANGUAGES]
    assert res.before_nll == pytest.approx(before, rel=1e-6)
    train = lape.load_corpus(work / "corpus.yaml", tok, split="train", tokens_per_language=2 * 2 * 32, seq_len=32,
                             seed=0, languages=["aa"])
    direct = region_train(model, train, valid, ParamRegions.load(runs["select"].out),
                                   TrainConfig(train_language="aa", freeze=("none", "core"), steps=2, batch_size=2,
                                               seq_len=32, eval_tokens_per_language=100), progress=False)
    for got, want in zip([*res.after_nll, *res.losses], [*direct.after_nll, *direct.losses], strict=True):
        assert got == pytest.approx(want, rel=1e-5)
    assert res.frozen_params[0] == 0 < res.frozen_params[1]
    assert res.after_nll[0][0] != pytest.approx(res.before_nll[0], rel=1e-7)  # two steps moved the trained language
    assert (runs["train"].out / "forgetting.png").read_bytes()[:8] == PNG_MAGIC
    assert f"{res.summary_line()} -> {runs['train'].out}" in runs["train"].log
    assert _folder_digest(work / "model") == model_digest  # the folder the CLI loaded from is untouched


def test_train_leaves_the_loaded_model_bit_identical(work, loaded, runs, tmp_path, monkeypatch):
    import lape.models

    model, _ = loaded
    snapshot = _weights(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    monkeypatch.setattr(lape.models, "load_model", lambda *a, **k: loaded)
    assert cli(*runs["train"].args[:-1], str(tmp_path / "t")) == 0
    assert _same_weights(model, snapshot)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters()) and not model.training


def test_train_refuses_a_missing_language_and_freeze_without_regions(work, tmp_path, model_loads, capsys):
    base = ["regions", "train", "--model", str(work / "model"), "--corpus", str(work / "corpus.yaml"),
            "--out", str(tmp_path / "t"), "--steps", "2", "--batch-size", "2", "--seq-len", "32"]
    rc, err = _outcome([*base, "--freeze", "none"], capsys)
    assert "needs --train-language" in _one_line_error(rc, err)
    rc, err = _outcome([*base, "--train-language", "aa", "--freeze", "core"], capsys)
    assert "--freeze core needs --regions" in _one_line_error(rc, err)
    rc, err = _outcome([*base, "--train-language", "aa"], capsys)  # the default freezes core and random
    assert "--freeze none core random magnitude needs --regions" in _one_line_error(rc, err)
    assert model_loads == [] and not (tmp_path / "t").exists()


# --------------------------------------------------------------------------------------------
# Re-runs skip; changed options recompute


@pytest.mark.parametrize("command", ["importance", "select", "ablate", "dims", "perturb", "train", "bridge"])
def test_reruns_skip_and_rewrite_no_result_file(runs, info_logs, command):
    run = runs[command]
    rewritten = _rerun(run.args, run.out, info_logs)
    figure = FIGURES.get(command)
    assert rewritten == set(), (figure, rewritten)


def test_importance_recomputes_when_an_option_changes(work, loaded, runs, tmp_path, info_logs):
    from lape.regions import ImportanceConfig, ParamImportance, param_importance

    out = tmp_path / "importance"
    shutil.copytree(runs["importance"].out, out)
    args = [*runs["importance"].args[:-1], str(out)]
    assert _rerun(args, out, info_logs) == set()  # a copy of a finished artifact is finished too
    assert cli(*args, "--seed", "1") == 0
    assert "skipped" not in info_logs.text
    again = ParamImportance.load(out)
    model, tok = loaded
    streams = lape.load_corpus(work / "corpus.yaml", tok, split="train", tokens_per_language=300, seq_len=32, seed=1)
    direct = param_importance(model, streams, ImportanceConfig(tokens_per_language=300, seq_len=32, batch_size=4, seed=1),
                        progress=False)
    first = ParamImportance.load(runs["importance"].out)
    name = next(iter(direct.scores))
    torch.testing.assert_close(again.scores[name], direct.scores[name], rtol=1e-6, atol=0.0)
    assert not torch.equal(again.scores[name], first.scores[name])


def test_select_recomputes_when_the_top_rate_changes(runs, tmp_path, info_logs):
    from lape.regions import ParamImportance, RegionConfig, select_regions

    out = tmp_path / "regions"
    args = [*runs["select"].args[:-1], str(out)]
    assert cli(*args) == 0
    first = ParamRegions.load(out)
    assert _rerun(args, out, info_logs) == set()
    assert cli(*args, "--top-rate", "0.1") == 0
    assert "skipped" not in info_logs.text
    again = ParamRegions.load(out)
    direct = select_regions(ParamImportance.load(runs["importance"].out), RegionConfig(top_rate=0.1))
    assert all(torch.equal(m, direct.masks[n]) for n, m in again.masks.items())
    assert again.counts()["core"] > first.counts()["core"]


def test_ablate_and_bridge_recompute_when_the_rows_change(runs, tmp_path, info_logs):
    from lape.regions.ablate import RegionPerplexity
    from lape.regions.bridge import RegionBridge

    for command, option, new, read in (("ablate", "--rows", ["core"], lambda out: RegionPerplexity.load(out).rows),
                                       ("bridge", "--region-labels", ["core"],
                                        lambda out: sorted({r["region"] for r in RegionBridge.load(out).rows}))):
        out = tmp_path / command
        shutil.copytree(runs[command].out, out)
        args = [*runs[command].args[:-1], str(out)]
        info_logs.clear()
        assert cli(*args) == 0 and "skipped" in info_logs.text
        info_logs.clear()
        assert cli(*args, option, *new) == 0
        assert "skipped" not in info_logs.text
        assert read(out) == new


def test_perturb_recomputes_when_the_factor_changes(runs, tmp_path, info_logs):
    from lape.regions.perturb import RegionPerturb

    out = tmp_path / "perturb"
    shutil.copytree(runs["perturb"].out, out)
    args = [*runs["perturb"].args[:-1], str(out)]
    assert _rerun(args, out, info_logs) == set()
    assert cli(*args, "--factor", "2") == 0
    assert "skipped" not in info_logs.text
    res, first = RegionPerturb.load(out), RegionPerturb.load(runs["perturb"].out)
    assert res.factor == 2.0 and res.edits[1].kind == "scale"
    assert res.edits[1].after == pytest.approx(2.0 * res.edits[1].before)  # the scale edit uses the new factor
    assert res.base_nll == pytest.approx(first.base_nll, rel=1e-9) and res.nll[1] != first.nll[1]
    assert res.nll[0] == pytest.approx(first.nll[0], rel=1e-9)  # zeroing does not depend on the factor
    assert cli(*args, "--factor", "0") == 2  # x0 would repeat the zeroing edit: refused


# --------------------------------------------------------------------------------------------
# Bad inputs: one-line errors, before the model loads where they can be


def _error_cases(work: Path, tmp: Path) -> dict[str, tuple[list[str], str]]:
    model, corpus = ["--model", str(work / "model")], ["--corpus", str(work / "corpus.yaml")]
    regions, imp, missing = str(work / "regions"), str(work / "importance"), str(tmp / "missing")
    out = ["--out", str(tmp / "out")]
    return {
        "ablate unknown row": (["ablate", regions, *model, *corpus, *out, "--rows", "core", "nope"],
                               "no region for 'nope'"),
        "ablate unknown language": (["ablate", regions, *model, *corpus, *out, "--languages", "xx"], "'xx'"),
        "ablate missing regions": (["ablate", missing, *model, *corpus, *out], "missing does not exist"),
        "importance unknown language": (["importance", *model, *corpus, *out, "--languages", "aa", "xx"], "'xx'"),
        "importance missing manifest": (["importance", *model, "--corpus", str(tmp / "none.yaml"), *out],
                                        "none.yaml"),
        "select missing importance": (["select", missing, *out], "missing does not exist"),
        "select unknown language": (["select", imp, *out, "--languages", "xx"], "'xx' is not in this importance"),
        "select regions as importance": (["select", regions, *out], "holds no complete importance artifact"),
        "dims unknown label": (["dims", regions, *model, *corpus, *out, "--label", "nope"], "no region for 'nope'"),
        "dims unknown language": (["dims", regions, *model, *corpus, *out, "--languages", "xx"], "'xx'"),
        "perturb missing importance": (["perturb", *model, *corpus, *out, "--importance", missing],
                                       "missing does not exist"),
        "perturb unknown language": (["perturb", *model, *corpus, *out, "--languages", "xx"], "'xx'"),
        "train unknown language": (["train", *model, *corpus, *out, "--train-language", "xx", "--freeze", "none"],
                                   "'xx'"),
        "train missing regions": (["train", *model, *corpus, *out, "--train-language", "aa", "--regions", missing],
                                  "missing does not exist"),
        "bridge missing neurons": (["bridge", regions, *model, "--neurons", missing], "missing does not exist"),
        "bridge regions as neurons": (["bridge", regions, *model, "--neurons", regions],
                                      "holds no complete neurons artifact"),
    }


@pytest.mark.parametrize("case", list(_error_cases(Path("w"), Path("t"))))
def test_bad_inputs_are_one_line_errors_before_the_model_loads(work, runs, tmp_path, model_loads, capsys, case):
    argv, needle = _error_cases(work, tmp_path)[case]
    rc, err = _outcome(["regions", *argv], capsys)
    assert needle in _one_line_error(rc, err)
    assert model_loads == []
    assert not (tmp_path / "out").exists()


def test_artifacts_of_another_model_are_refused(work, runs, other, tmp_path, capsys):
    """Regions, importance and neuron sets made on the first model, used with the second."""
    model, corpus = ["--model", str(other)], ["--corpus", str(work / "corpus.yaml")]
    regions, out = str(work / "regions"), ["--out", str(tmp_path / "out")]
    cases = [
        ["ablate", regions, *model, *corpus, *out, *EVAL],
        ["dims", regions, *model, *corpus, *out, *EVAL],
        ["perturb", *model, *corpus, *out, *EVAL, "--importance", str(work / "importance")],
        ["train", *model, *corpus, *out, *TRAIN, "--regions", regions, "--freeze", "core"],
        ["bridge", regions, *model, "--neurons", str(work / "neurons"), *out],
    ]
    for argv in cases:
        rc, err = _outcome(["regions", *argv], capsys)
        msg = _one_line_error(rc, err)
        assert "not this model" in msg and "re-run it on this model" in msg, (argv, msg)
    assert not (tmp_path / "out").exists()
    # the same commands on the model the artifacts were made with are accepted: the refusal is the model's
    assert cli("regions", "bridge", regions, "--model", str(work / "model"), "--neurons", str(work / "neurons")) == 0


# --------------------------------------------------------------------------------------------
# Out-of-range options: status 0 or a one-line error, never a traceback


ZERO_OK = {"--seed", "--layer", "--ordinary-dim", "--warmup-steps", "--weight-decay", "--grad-clip", "--factor", "--seeds"}
NEGATIVE_OK = {"--factor"}  # x-1 flips the entry's sign
HUGE_OK = {"--factor", "--grad-clip", "--ratio", "--collapse-ratio"}  # a huge clip never clips; a huge ratio
# finds no massive channel; a huge collapse ratio calls nothing a collapse
BIG_REFUSED = {"--seq-len", "--batch-size", "--steps", "--layer", "--ordinary-dim", "--top-rate", "--top-share",
               "--lr", "--weight-decay", "--betas"}


def _must_refuse(option: str, value: str) -> bool:
    if value == "0":
        return option not in ZERO_OK
    if value == "-1":
        return option not in NEGATIVE_OK
    if value == BIG:
        return option in BIG_REFUSED
    if value == "1e12":
        return option not in HUGE_OK
    return True  # not finite, or not a number


def test_out_of_range_options_are_one_line_errors_never_tracebacks(work, loaded, runs, tmp_path, capsys,
                                                                      monkeypatch):
    """Every numeric option of every ``lape regions`` subcommand, set to each of VALUES.

    ``importance``, ``ablate`` and ``dims`` validate all their options before the model loads:
    an accepted value stops there (``lape.models.load_model`` raises). ``select``, ``perturb``
    (whose ``--ratio``, ``--ordinary-dim`` and ``--layer`` meet the model) and ``train`` run for
    real on the tiny model, loaded once, each accepted value into a fresh output folder."""
    import lape.models

    def no_model(*args, **kwargs):
        raise _ModelWouldLoad

    def tiny(spec, **kwargs):
        assert spec == str(work / "model")
        return loaded

    snapshot = _weights(loaded[0])
    commands = _subparsers(_subparsers(build_parser())["regions"])
    assert sorted(commands) == sorted(runs)
    problems, walked = [], {}
    for name, run in runs.items():
        monkeypatch.setattr(lape.models, "load_model",
                            no_model if name in ("importance", "ablate", "dims", "stability") else tiny)
        base = [*run.args[:-1], str(tmp_path / name), *(["--freeze", "none"] if name == "train" else [])]
        rc, err = _outcome(base, capsys)  # the base command line is valid
        assert rc in (0, "accepted"), (name, rc, err)
        walked[name] = options = _numeric_options(commands[name])
        for option in options:
            for value in VALUES:
                argv = [*base, option, value]
                argv[argv.index("--out") + 1] = str(tmp_path / f"{name}{option}{value}")
                rc, err = _outcome(argv, capsys)
                lines = err.splitlines()
                if "Traceback" in err or rc not in (0, 2, "accepted"):
                    problems.append((name, option, value, f"status {rc}", err[-300:]))
                elif rc == 2 and (len(lines) != 1 or not lines[0].startswith("lape: error: ")):
                    problems.append((name, option, value, "not a one-line error", err))
                elif rc != 2 and _must_refuse(option, value):
                    problems.append((name, option, value, "accepted", err))
    assert walked["importance"] == ["--tokens-per-language", "--seq-len", "--batch-size", "--seed", "--chunk-size",
                                    "--checkpoint-every"]
    assert walked["select"] == ["--top-rate", "--seed"] and walked["bridge"] == []
    assert {"--ratio", "--ordinary-dim", "--layer", "--factor"} <= set(walked["perturb"])
    assert {"--ratio", "--top-share", "--max-sequences"} <= set(walked["dims"])
    assert {"--steps", "--lr", "--betas", "--grad-clip", "--warmup-steps"} <= set(walked["train"])
    assert problems == [], "\n".join(map(str, problems))
    assert _same_weights(loaded[0], snapshot)  # perturb and train put every weight back
