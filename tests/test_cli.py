"""The ``lape`` command line, in-process (``lape.cli.main``), on a tiny model folder and manifest.

A tiny random LLaMA (``tiny_models.tiny_model``) is saved as a Hugging Face folder with a
character-level tokenizer next to a two-language ``text`` manifest with a held-out ``valid``
split. ``lape record`` and ``lape identify`` run once per module; every other command runs on
their output. Each command's printed or saved numbers are checked against the library call made
here independently, re-runs must skip finished work without rewriting it, and changed options
must recompute. The last tests walk every numeric option with out-of-range values: each must end
in status 0 or a one-line ``lape: error:`` (status 2), never a traceback.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import subprocess
from pathlib import Path

import pytest
import torch
from tiny_models import ModelWouldLoad as _ModelWouldLoad
from tiny_models import tiny_model_folder

import lape
from lape.cli import build_parser, main
from lape.masks import NeuronSets
from lape.neurons.select import IdentifyConfig
from lape.neurons.stats import ActivationStats, RecordConfig

TOKENS, SEQ_LEN = 600, 64  # recording: 10 sequences per language (9 x 64 + 24 tokens)
PPL = ["--tokens-per-language", "200", "--seq-len", "32", "--batch-size", "4"]
STEER = ["--max-new-tokens", "12", "--min-chars", "5"]
IDENTIFY = ["--top-rate", "0.2", "--filter-rate", "0.8", "--activation-bar-ratio", "0.8"]  # both languages get neurons
IDENTIFY_CONFIG = IdentifyConfig(top_rate=0.2, filter_rate=0.8, activation_bar_ratio=0.8)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.usefixtures("one_thread")


def _held_out(doc: str, share: float = 0.2) -> bool:
    """The documented split rule: a document is held out when its sha256 position is below the share."""
    return int.from_bytes(hashlib.sha256(doc.encode("utf-8")).digest()[:8], "big") / 2.0**64 < share


def cli(*argv: str) -> int:
    """``lape ARGV`` in this process, without progress bars."""
    return main(["-q", *argv])


def _rerun_is_skipped(args: list[str], out: Path, info_logs) -> None:
    """The same command again: logged as skipped, and no file of ``out`` rewritten."""
    before = _files(out)
    info_logs.clear()
    assert cli(*args) == 0
    assert "up to date for these inputs: skipped" in info_logs.text
    assert _files(out) == before
    info_logs.clear()


def _files(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file of a folder with its modification time and bytes (lock files aside)."""
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".")}


# --------------------------------------------------------------------------------------------
# Fixtures: a model folder, a manifest, and the recorded stats and neuron sets


@pytest.fixture(scope="module")
def work(tmp_path_factory, one_thread) -> Path:
    work = tmp_path_factory.mktemp("cli")
    tiny_model_folder(work, docs=(60, 60), valid_share=0.2, license=True)
    (work / "prompts.txt").write_text("abc def\nkalm gib\n\nmeld hag fic\n")
    assert cli("record", "--model", str(work / "model"), "--corpus", str(work / "corpus.yaml"),
               "--out", str(work / "stats"), "--tokens-per-language", str(TOKENS), "--seq-len", str(SEQ_LEN),
               "--batch-size", "4") == 0
    assert cli("identify", str(work / "stats"), "--out", str(work / "neurons"), *IDENTIFY) == 0
    return work


@pytest.fixture(scope="module")
def loaded(work):
    """The model and tokenizer, loaded here for the independent library calls."""
    return lape.load_model(str(work / "model"))


@pytest.fixture
def info_logs(caplog):
    caplog.set_level(logging.INFO, logger="lape")
    return caplog


# --------------------------------------------------------------------------------------------
# Commands


def test_record_counts_equal_the_library_call_and_reruns_skip(work, loaded, info_logs):
    stats = ActivationStats.load(work / "stats")
    assert stats.languages == ["aa", "bb"]
    # 600 tokens in 10 sequences per language, the first position (BOS) of each not counted
    assert stats.token_counts.tolist() == [TOKENS - 10, TOKENS - 10]
    assert stats.meta["config"]["seq_len"] == SEQ_LEN and stats.meta["config"]["batch_size"] == 4
    model, tok = loaded
    streams = lape.load_corpus(work / "corpus.yaml", tok, split="train", tokens_per_language=TOKENS,
                               seq_len=SEQ_LEN)
    direct = lape.record(model, streams, RecordConfig(tokens_per_language=TOKENS, seq_len=SEQ_LEN, batch_size=4),
                         progress=False)
    assert torch.equal(stats.fire_counts, direct.fire_counts)
    assert torch.equal(stats.token_counts, direct.token_counts)
    torch.testing.assert_close(stats.fire_sums, direct.fire_sums)
    assert 0 < int(stats.fire_counts.sum()) < int(stats.token_counts.sum()) * 144

    before = _files(work / "stats")
    assert cli("record", "--model", str(work / "model"), "--corpus", str(work / "corpus.yaml"),
               "--out", str(work / "stats"), "--tokens-per-language", str(TOKENS), "--seq-len", str(SEQ_LEN),
               "--batch-size", "4") == 0
    assert "stats in " + str(work / "stats") + " is up to date for these inputs: skipped" in info_logs.text
    assert _files(work / "stats") == before


def test_identify_writes_the_library_sets_skips_reruns_and_recomputes_on_change(work, info_logs):
    out = work / "identify-test"
    args = ["identify", str(work / "stats"), "--out", str(out), *IDENTIFY]
    assert cli(*args) == 0
    stats = ActivationStats.load(work / "stats")
    direct = lape.identify(stats, IDENTIFY_CONFIG)
    sets = NeuronSets.load(out)
    assert sets.labels == ["aa", "bb"] and torch.equal(sets.masks, direct.masks)
    assert min(sets.counts().values()) > 0
    assert f"lape neurons per language: aa {direct.counts()['aa']}, bb {direct.counts()['bb']}" in info_logs.text
    agnostic = NeuronSets.load(work / "identify-test-agnostic")
    assert torch.equal(agnostic.masks, lape.language_agnostic(stats).masks)

    before = _files(out)
    _rerun_is_skipped(args, out, info_logs)  # the same inputs: nothing recomputed, nothing rewritten
    assert cli(*args, "--top-rate", "0.1") == 0  # another top rate: computed and saved again
    assert f"{out} is up to date" not in info_logs.text  # (the agnostic set does not depend on it)
    again = NeuronSets.load(out)
    fewer = lape.identify(stats, IDENTIFY_CONFIG.replace(top_rate=0.1))
    assert torch.equal(again.masks, fewer.masks) and not torch.equal(again.masks, sets.masks)
    assert _files(out)["neurons.safetensors"] != before["neurons.safetensors"]


def test_ppl_matrix_equals_the_library_call_and_reruns_skip(work, loaded, info_logs):
    from lape.evaluate.perplexity import PerplexityConfig, PerplexityResult, ppl_matrix

    out = work / "ppl"
    args = ["ppl", "--model", str(work / "model"), "--corpus", str(work / "corpus.yaml"),
            "--neurons", str(work / "neurons"), "--out", str(out), *PPL]
    assert cli(*args) == 0
    res = PerplexityResult.load(out)
    model, tok = loaded
    sets = NeuronSets.load(work / "neurons")
    streams = lape.load_corpus(work / "corpus.yaml", tok, split="valid", tokens_per_language=200, seq_len=32)
    direct = ppl_matrix(model, streams, sets, PerplexityConfig(tokens_per_language=200, seq_len=32, batch_size=4),
                        progress=False)
    assert res.rows == res.languages == ["aa", "bb"]
    assert res.tokens == direct.tokens
    for got, want in ((res.base_nll, direct.base_nll), *zip(res.nll, direct.nll), *zip(res.random_nll, direct.random_nll)):
        assert got == pytest.approx(want, rel=1e-6)
    assert all(math.isfinite(v) for row in res.random_nll for v in row)
    assert res.nll[0] != res.base_nll  # deactivation changed something
    assert (out / "delta_ppl.csv").read_text().splitlines()[0] == "deactivated,aa,bb"
    assert "perplexity matrix (2 x 2)" in info_logs.text

    _rerun_is_skipped(args, out, info_logs)
    assert cli(*args, "--random-baseline", "none") == 0
    assert "skipped" not in info_logs.text
    none = PerplexityResult.load(out)
    assert all(math.isnan(v) for row in none.random_nll for v in row)
    for got, want in zip(none.nll, res.nll):  # the same text, the same deactivations
        assert got == pytest.approx(want, rel=1e-9)


def test_steer_prints_the_unsteered_and_the_steered_continuation(work, loaded, capsys):
    from lape.evaluate.steering import SteerConfig, Steerer

    assert cli("steer", "--model", str(work / "model"), "--neurons", str(work / "neurons"), "--stats",
               str(work / "stats"), "--from", "aa", "--to", "bb", *STEER, "abc def") == 0
    printed = capsys.readouterr().out
    model, tok = loaded
    steerer = Steerer(model, tok, NeuronSets.load(work / "neurons"), ActivationStats.load(work / "stats"),
                      SteerConfig(max_new_tokens=12, min_chars=5))
    expected = steerer.steer("abc def", to="bb", source="aa")
    assert printed == expected.format() + "\n"
    lines = printed.splitlines()
    assert lines[0] == "prompt     'abc def'"
    edited = sum(steerer.sets.counts()[lang] for lang in ("aa", "bb"))  # source off, target set
    overlap = int((steerer.sets.mask("aa") & steerer.sets.mask("bb")).sum())
    assert lines[1].startswith("steering   set firing_mean x1.5, source off; ")
    assert f"; {edited - overlap} neurons in " in lines[1]
    assert lines[2].startswith("unsteered  [") and lines[4].startswith("aa->bb     [")
    assert lines[3].strip() == repr(expected.unsteered.text.strip())
    assert lines[5].strip() == repr(expected.steered.text.strip())
    assert expected.steered.tokens != expected.unsteered.tokens  # steering changed the output


def test_steer_eval_equals_the_library_call_and_reruns_skip(work, loaded, info_logs):
    from lape.evaluate.fluency import FluencyReference, fluency_reference
    from lape.evaluate.steering import SteerConfig, Steerer
    from lape.evaluate.steering_result import SteeringEval

    out = work / "steer"
    args = ["steer-eval", "--model", str(work / "model"), "--neurons", str(work / "neurons"), "--stats",
            str(work / "stats"), "--from", "aa", "--to", "bb", "--prompts", str(work / "prompts.txt"),
            "--strengths", "1", "2", "--out", str(out), "--corpus", str(work / "corpus.yaml"),
            "--reference-windows", "6", *STEER]
    assert cli(*args) == 0
    ev = SteeringEval.load(out)
    model, tok = loaded
    steerer = Steerer(model, tok, NeuronSets.load(work / "neurons"), ActivationStats.load(work / "stats"),
                      SteerConfig(max_new_tokens=12, min_chars=5))
    prompts = ["abc def", "kalm gib", "meld hag fic"]
    windows = lape.load_corpus(work / "corpus.yaml", tok, split="valid", tokens_per_language=6 * 13, seq_len=13,
                               languages=["bb"])
    reference = fluency_reference(model, windows)
    assert FluencyReference.load(work / "fluency-reference").languages == reference.languages  # cached beside
    direct = steerer.evaluate(prompts, targets=["bb"], source="aa", strengths=[1.0, 2.0], progress=False,
                              reference=reference)
    assert ev.rows == direct.rows and ev.examples == direct.examples
    assert all(0 <= r["fluent"] <= 1 and r["fluency_ratio"] > 0 for r in ev.rows)
    assert [(r["target"], r["strength"], r["prompts"]) for r in ev.rows] == [("bb", 1.0, 3), ("bb", 2.0, 3)]
    assert [e["prompt"] for e in ev.examples[:3]] == prompts
    assert any(e["steered"] != e["unsteered"] for e in ev.examples)
    for line in direct.summary_lines():
        assert line in info_logs.text
    assert (out / "summary.csv").is_file()

    _rerun_is_skipped(args, out, info_logs)
    assert cli(*args, "--limit", "2") == 0
    assert "steering in" not in info_logs.text  # other prompts: generated again (the reference is reused)
    fewer = SteeringEval.load(out)
    assert [r["prompts"] for r in fewer.rows] == [2, 2]
    assert fewer.meta["prompts"] == 2


def test_plot_writes_png_and_svg_figures(work, info_logs):
    assert cli("plot", str(work / "neurons")) == 0
    names = ["layer_distribution", "overlap_heatmap", "probability_heatmap"]  # stats found next to the sets
    for name in names:
        assert (work / "plots" / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
        svg = (work / "plots" / f"{name}.svg").read_text()
        assert "<svg" in svg and svg.rstrip().endswith("</svg>")
    assert "wrote 6 plots" in info_logs.text
    # sets without stats next to them: no probability heatmap, unless --stats names them
    import shutil

    alone = shutil.copytree(work / "neurons", work / "elsewhere" / "neurons")
    info_logs.clear()
    assert cli("plot", str(alone)) == 0
    assert "probability heatmap skipped" in info_logs.text
    assert sorted(p.name for p in (work / "elsewhere" / "plots").iterdir()) == sorted(
        f"{n}.{ext}" for n in names[:2] for ext in ("png", "svg"))
    assert cli("plot", str(alone), "--stats", str(work / "stats"), "--out", str(work / "other-plots")) == 0
    assert sorted(p.name for p in (work / "other-plots").iterdir()) == sorted(
        f"{n}.{ext}" for n in names for ext in ("png", "svg"))


def test_info_prints_architecture_and_neuron_space(work, loaded, capsys):
    assert cli("info", "--model", str(work / "model")) == 0
    lines = capsys.readouterr().out.splitlines()
    model, _ = loaded
    n_params = sum(p.numel() for p in model.parameters())
    assert lines[1] == "architecture    LlamaForCausalLM"
    assert lines[2] == f"parameters      {n_params:,}"
    assert lines[3] == "layers x neurons 3 x 48 = 144"
    assert lines[4] == "activation      model.layers.0.mlp.act_fn  (layers 0..2)"
    assert lines[5] == "down projection model.layers.0.mlp.down_proj"
    assert lines[6].startswith(f"fingerprint     {lape.fingerprint(model)['checksum']}  (LlamaForCausalLM, hidden 32")
    assert cli("info", "--model", str(work / "model"), "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["layers_x_neurons"], info["num_layers"], info["neurons"]) == ("3 x 48", 3, 144)
    assert info["parameters"] == n_params


def test_data_show_prints_languages_documents_and_tokens(work, capsys):
    assert cli("data", "show", str(work / "corpus.yaml"), "--tokenizer", str(work / "model")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "2 languages: aa bb"
    for lang in ("aa", "bb"):
        docs = (work / "texts" / f"{lang}.txt").read_text().splitlines()
        train = [d for d in docs if not _held_out(d)]
        valid = [d for d in docs if _held_out(d)]
        at = lines.index(lang)
        assert lines[at + 1] == f"  source: generated pseudo-words over {'a-m' if lang == 'aa' else 'n-z'}"
        assert lines[at + 2] == "  license: CC0"
        # one token a character with the char tokenizer
        assert lines[at + 3] == (f"  train    {len(train):>7,} docs {sum(map(len, train)):>10,} tokens  "
                                 f"[text texts/{lang}.txt (lines)]")
        assert lines[at + 4] == (f"  valid    {len(valid):>7,} docs {sum(map(len, valid)):>10,} tokens  "
                                 "[0.2 of train by document hash]")
        assert len(train) + len(valid) == 60 and valid
    assert cli("data", "show", str(work / "corpus.yaml"), "--no-tokens") == 0
    assert "tokens" not in capsys.readouterr().out


def test_identify_rerun_leaves_the_agnostic_sets_alone(work):
    out = work / "identify-agnostic"
    args = ["identify", str(work / "stats"), "--out", str(out), *IDENTIFY]
    assert cli(*args) == 0
    agnostic = work / "identify-agnostic-agnostic"
    before, sets = _files(agnostic), _files(out)
    assert "neurons.safetensors" in before
    assert cli(*args) == 0
    assert _files(out) == sets  # the neuron sets were left alone ...
    assert _files(agnostic) == before  # ... and so were the agnostic ones


# --------------------------------------------------------------------------------------------
# Out-of-range options: status 0 or a one-line error, never a traceback


BIG = str(10**12)  # an int that argparse takes (it refuses "1e12" for an int option)
VALUES = ["0", "-1", "nan", "inf", "1e12", "abc", BIG]
ZERO_OK = {"--seed", "--strength", "--strengths", "--layers", "--no-repeat-ngram-size", "--source-scale",
           "--source-scales", "--random-seeds", "--refine-below", "--regions-train-steps"}  # 0 means something
BIG_REFUSED = {"--seq-len", "--batch-size", "--max-new-tokens", "--no-repeat-ngram-size", "--layers"}
KNOWN: set[tuple[str, str, str]] = set()  # (command, option, value) still accepted although meaningless


def _must_refuse(option: str, value: str) -> bool:
    if value == "0":
        return option not in ZERO_OK
    if value == BIG:  # a huge budget, seed, limit or chunk is fine; a huge sequence or batch is not
        return option in BIG_REFUSED
    return True  # negative, not finite, not a number, or 1e12 (not an int, or beyond every float bound)


def _subparsers(parser) -> dict:
    import argparse

    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action.choices


def _numeric_options(parser) -> list[str]:
    return [next(s for s in a.option_strings if s.startswith("--")) for a in parser._actions
            if a.option_strings and a.type in (int, float)]


def _outcome(argv: list[str], capsys) -> tuple[object, str]:
    """The exit status of ``lape ARGV`` (argparse's SystemExit included) and its stderr; an
    exception that escapes ``main`` is returned as its type and message."""
    try:
        rc: object = main(["-q", *argv])
    except SystemExit as exc:  # argparse's own errors: printed as one line by lape's parser
        rc = exc.code
    except _ModelWouldLoad:
        rc = "accepted"
    except BaseException as exc:  # noqa: BLE001 - a traceback for the user
        rc = f"escaped {type(exc).__name__}: {exc}"
    return rc, capsys.readouterr().err


def _base_commands(work: Path, tmp: Path) -> dict[str, list[str]]:
    model, corpus = str(work / "model"), str(work / "corpus.yaml")
    sets, stats = str(work / "neurons"), str(work / "stats")
    steer = ["--model", model, "--neurons", sets, "--stats", stats, "--from", "aa", "--max-new-tokens", "4",
             "--corpus", corpus, "--reference-windows", "2"]
    return {
        "record": ["record", "--model", model, "--corpus", corpus, "--out", str(tmp / "record"),
                   "--tokens-per-language", "100", "--seq-len", "32"],
        "identify": ["identify", stats, "--out", str(tmp / "identify")],
        "ppl": ["ppl", "--model", model, "--corpus", corpus, "--neurons", sets, "--out", str(tmp / "ppl"), *PPL],
        "steer": ["steer", "abc def", *steer, "--to", "bb"],  # the prompt first: --layers takes 1 or more values
        "steer-eval": ["steer-eval", *steer, "--prompts", str(work / "prompts.txt"), "--out", str(tmp / "steer"),
                       "--limit", "1", "--to", "bb"],
        "steer-calibrate": ["steer-calibrate", *steer, "--prompts", str(work / "prompts.txt"), "--limit", "1",
                            "--to", "bb", "--modes", "replace", "--strengths", "1", "--out", str(tmp / "profile")],
        "demo": ["demo", "--out", str(tmp / "demo"), "--model", model, "--corpus", corpus,
                 "--prompt-set", str(work / "prompts.txt")],
        "plot": ["plot", sets, "--out", str(tmp / "plots")],
        "info": ["info", "--model", model],
        "report": ["report", str(tmp / "report")],
        "data show": ["data", "show", corpus, "--tokenizer", model],
    }


def test_out_of_range_options_are_one_line_errors_never_tracebacks(work, loaded, tmp_path, capsys, monkeypatch):
    """Every numeric option of every command, set to each of VALUES on a valid command line.

    ``record``, ``ppl`` and ``demo`` validate all their options before the model loads: for them
    an accepted value stops there (``lape.models.load_model`` raises). ``identify``, ``steer``
    and ``steer-eval`` (whose ``--strengths`` and ``--layers`` meet the model) run for real on
    the tiny model (loaded once), each accepted value into a fresh output folder."""
    import lape.models

    def no_model(*args, **kwargs):
        raise _ModelWouldLoad

    def tiny(spec, **kwargs):
        assert spec == str(work / "model")
        return loaded

    (tmp_path / "report").mkdir()
    parser = build_parser()
    commands = _subparsers(parser)
    problems, walked = [], {}
    for name, base in _base_commands(work, tmp_path).items():
        monkeypatch.setattr(lape.models, "load_model", no_model if name in ("record", "ppl", "demo") else tiny)
        sub = _subparsers(commands["data"])["show"] if name == "data show" else commands[name]
        rc, err = _outcome(base, capsys)  # the base command line is valid
        assert rc in (0, "accepted"), (name, rc, err)
        walked[name] = options = _numeric_options(sub)
        for option in options:
            for value in VALUES:
                argv = [*base, option, value]
                if "--out" in argv:  # a fresh output folder: nothing cached
                    argv[argv.index("--out") + 1] = str(tmp_path / f"{name}{option}{value}")
                rc, err = _outcome(argv, capsys)
                lines = err.splitlines()
                if "Traceback" in err or rc not in (0, 2, "accepted"):
                    problems.append((name, option, value, f"status {rc}", err[-300:]))
                elif rc == 2 and (len(lines) != 1 or not lines[0].startswith("lape: error: ")):
                    problems.append((name, option, value, "not a one-line error", err))
                elif rc != 2 and _must_refuse(option, value) and (name, option, value) not in KNOWN:
                    problems.append((name, option, value, "accepted", err))
    assert walked["record"] == ["--tokens-per-language", "--seq-len", "--batch-size", "--seed", "--checkpoint-every"]
    assert "--strengths" in walked["steer-eval"] and "--min-tokens" in walked["identify"]
    assert problems == [], "\n".join(map(str, problems))


def _one_line_error(rc: object, err: str) -> str:
    assert rc == 2, err
    assert err.startswith("lape: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_a_strength_sweep_is_bounded_like_the_strength(work, tmp_path, capsys):
    base = _base_commands(work, tmp_path)["steer-eval"]
    rc, err = _outcome([*base, "--strength", "1e12"], capsys)
    assert "it must be at most 100" in _one_line_error(rc, err)
    rc, err = _outcome([*base, "--strengths", "1e12"], capsys)
    _one_line_error(rc, err)


def test_steering_layers_the_model_lacks_are_refused(work, tmp_path, capsys):
    base = _base_commands(work, tmp_path)["steer"]
    rc, err = _outcome([*base, "--layers", "0"], capsys)
    assert rc == 0
    for layer in ("7", BIG):  # the model has layers 0..2 only
        rc, err = _outcome([*base, "--layers", layer], capsys)
        assert layer in _one_line_error(rc, err)


# --------------------------------------------------------------------------------------------
# Unwritable output folders and missing devices: refused before any model loads


@pytest.fixture
def read_only(tmp_path):
    """A folder nobody may write into; as root (chmod is not enough) it is made immutable."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    immutable = False
    if os.access(folder, os.W_OK):  # root ignores the mode bits
        immutable = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
        if not immutable or os.access(folder, os.W_OK):
            folder.chmod(0o755)
            pytest.skip("cannot make a read-only folder here (root without chattr)")
    yield folder
    if immutable:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    folder.chmod(0o755)


@pytest.mark.parametrize("command", ["record", "identify", "ppl", "steer-eval"])
@pytest.mark.parametrize("where", ["read-only folder", "under a file", "missing parent in a read-only folder"])
def test_unwritable_out_is_a_one_line_error_before_the_model_loads(work, tmp_path, read_only, model_loads, capsys,
                                                                    command, where):
    (tmp_path / "a-file").write_text("x")
    out = {"read-only folder": read_only, "under a file": tmp_path / "a-file" / "out",
           "missing parent in a read-only folder": read_only / "missing" / "out"}[where]
    argv = _base_commands(work, tmp_path)[command]
    argv[argv.index("--out") + 1] = str(out)
    rc, err = _outcome(argv, capsys)
    msg = _one_line_error(rc, err)
    assert f"--out {out}" in msg and "choose another --out" in msg
    assert ("is not writable" in msg) if "read-only" in where else ("lies under a file" in msg)
    assert model_loads == []
    assert sorted(p.name for p in read_only.iterdir()) == []


@pytest.mark.parametrize("device, message", [("banana", "device 'banana' is not a device"),
                                             ("cuda", "device cuda is not available")])
@pytest.mark.parametrize("command", ["record", "ppl", "steer", "steer-eval", "info"])
def test_a_device_this_machine_lacks_is_refused(work, tmp_path, capsys, command, device, message):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    argv = _base_commands(work, tmp_path)[command]
    rc, err = _outcome([*argv, "--device", device], capsys)
    assert message in _one_line_error(rc, err)
    if "--out" in argv:
        assert not Path(argv[argv.index("--out") + 1]).exists()  # refused before any work


def test_an_output_folder_that_cannot_be_made_fails_before_the_model_loads(work, capsys, monkeypatch):
    """/proc accepts no new folders although it is writable for root: refused before loading."""
    import lape.models

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(lape.models, "load_model", no_load)
    rc = cli("record", "--model", str(work / "model"), "--corpus", str(work / "corpus.yaml"), "--out", "/proc/lape-x")
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("lape: error: ") and "/proc/lape-x" in err and err.count("\n") == 1


def test_bad_manifests_languages_and_targets_are_refused_before_the_model_loads(work, tmp_path, model_loads, capsys):
    """A bad language found late used to cost the recording of the languages before it; a wrong
    steering target used to cost the unsteered generation first."""
    bad = work / "bad-missing.yaml"  # beside texts/, where its relative paths resolve
    bad.write_text((work / "corpus.yaml").read_text().replace("texts/bb.txt", "texts/missing.txt"))
    model = ["--model", str(work / "model")]
    cases = [
        (["record", *model, "--corpus", str(bad), "--out", str(tmp_path / "r")], "missing.txt"),
        (["record", *model, "--corpus", str(work / "corpus.yaml"), "--out", str(tmp_path / "r"),
          "--languages", "aa", "xx"], "'xx'"),
        (["ppl", *model, "--corpus", str(bad), "--neurons", str(work / "neurons"), "--out", str(tmp_path / "p")],
         "missing.txt"),
        (["steer", *model, "--neurons", str(work / "neurons"), "--stats", str(work / "stats"), "--to", "xx", "hi"],
         "'xx' has no neuron set"),
        (["steer", *model, "--neurons", str(work / "neurons"), "--stats", str(work / "stats"), "--to", "aa",
          "--from", "aa", "hi"], "both 'aa'"),
        (["steer-eval", *model, "--neurons", str(work / "neurons"), "--stats", str(work / "stats"),
          "--prompts", str(tmp_path / "none.txt"), "--out", str(tmp_path / "s")], "none.txt does not exist"),
    ]
    for argv, needle in cases:
        assert cli(*argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("lape: error: ") and needle in err and err.count("\n") == 1, (argv, err)
    assert model_loads == []


def test_out_folder_check_survives_another_rank_doing_the_same(tmp_path, monkeypatch):
    """Under torchrun every rank checks --out at once: a rank whose probe folder was already
    removed (or already filled) by another rank must go on, not fail with FileNotFoundError."""
    from pathlib import Path as P

    from lape.cli import common

    real = P.rmdir

    def raced(self):
        real(self)  # the other rank removed it first ...
        raise FileNotFoundError(str(self))  # ... so this rank's rmdir finds nothing

    monkeypatch.setattr(P, "rmdir", raced)
    out = tmp_path / "a" / "b"
    assert common.out_folder(str(out)) == out
    assert not (tmp_path / "a").exists()  # still nothing left behind
