"""Key-neuron evaluation with power (issue 25): the activation baselines, intervals over questions,
the pooled PCR, the judging sentences and how PCR is printed.

The activation statistics, the Activation baseline and the activation-matched random sets of a
``lape keyneurons eval`` run on a tiny LLaMA folder are checked against independent computations
(full forwards with a hook, ``torch.topk``, rank bins counted by hand); the pooled PCR and the
judging sentences against results constructed by hand.
"""

from __future__ import annotations

import logging
import math
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from test_keyneurons import _last_acts, _write_questions, ext_tokenizer
from tiny_models import tiny_model

from lape.cli import main
from lape.intervals import Interval
from lape.keyneurons.attribute import KeyNeuronScores, prompt_ids, question_prompts
from lape.keyneurons.baselines import activation_matched_like
from lape.keyneurons.evaluate import OPS, KeyNeuronEval, _summaries, fmt_interval, judge, pcr_text
from lape.keyneurons.questions import load_questions, question_templates, split_questions
from lape.keyneurons.select import SelectConfig, select
from lape.masks import NeuronSets
from lape.space import NeuronSpace

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models gain nothing from more threads

ROOT = Path(__file__).resolve().parents[1]


def _bins_by_hand(values: torch.Tensor, bins: int) -> list[int]:
    """Rank bin of each value of one layer: (number of smaller values) * bins // N (distinct values)."""
    v = values.tolist()
    assert len(set(v)) == len(v), "the check needs distinct values"
    return [sum(x < y for x in v) * bins // len(v) for y in v]


def _check_matched(key: torch.Tensor, drawn: torch.Tensor, abs_mean: torch.Tensor, bins: int) -> None:
    """Same count per layer, and the same number of neurons in every rank bin of every layer."""
    assert drawn.dtype == torch.bool and drawn.shape == key.shape
    assert drawn.sum(1).tolist() == key.sum(1).tolist()
    for layer in range(key.shape[0]):
        which = _bins_by_hand(abs_mean[layer], bins)
        want = Counter(which[i] for i in key[layer].nonzero().flatten().tolist())
        got = Counter(which[i] for i in drawn[layer].nonzero().flatten().tolist())
        assert got == want, (layer, got, want)


# --------------------------------------------------------------------------------------------
# The activation-matched draw on its own


def test_activation_matched_draws_keep_the_count_and_the_bin_per_layer():
    g = torch.Generator().manual_seed(0)
    abs_mean = torch.rand(3, 40, generator=g) * 5
    mask = torch.zeros(3, 40, dtype=torch.bool)
    top = abs_mean[0].argsort(descending=True)
    mask[0, top[:3]] = True  # three of the four largest-bin neurons (40 / 10 = 4 per bin)
    mask[0, top[-1]] = True  # and the smallest
    mask[2, [5, 6, 7, 8, 9, 10]] = True
    draws = [activation_matched_like(mask, abs_mean, 10, torch.Generator().manual_seed(s)) for s in range(4)]
    for d in draws:
        _check_matched(mask, d, abs_mean, 10)
        # the three large key neurons' partners are among layer 0's four largest
        assert set(d[0].nonzero().flatten().tolist()) - {int(top[-1])} <= set(top[:4].tolist()) | set(top[-4:].tolist())
    assert any(not torch.equal(d, mask) for d in draws) and not all(torch.equal(d, draws[0]) for d in draws)
    again = activation_matched_like(mask, abs_mean, 10, torch.Generator().manual_seed(0))
    assert torch.equal(again, draws[0])  # seeded
    # one bin: any neuron of the layer; as many bins as neurons: the key neurons themselves
    assert torch.equal(activation_matched_like(mask, abs_mean, 40, torch.Generator().manual_seed(1)), mask)
    _check_matched(mask, activation_matched_like(mask, abs_mean, 1, torch.Generator().manual_seed(1)), abs_mean, 1)


# --------------------------------------------------------------------------------------------
# ``lape keyneurons eval`` on a tiny model folder


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A README-shaped run folder: ``kn-domains-scores`` (attribute, CLI), ``kn-domains`` (select)
    and ``kn-domains-eval`` (eval, CLI: one random draw, 200 resamples); the log in ``eval.log``."""
    work = tmp_path_factory.mktemp("kneval")
    tiny_model("llama").save_pretrained(work / "model")
    ext_tokenizer().save_pretrained(work / "model")
    _write_questions(work)
    q = ["--model", str(work / "model"), "--questions", str(work / "questions.yaml")]
    assert main(["-q", "keyneurons", "attribute", *q, "--steps", "2", "--templates", "1",
                 "--out", str(work / "kn-domains-scores")]) == 0
    select(KeyNeuronScores.load(work / "kn-domains-scores"), SelectConfig(top_v=5), out=work / "kn-domains")
    handler, lape_log = logging.FileHandler(work / "eval.log"), logging.getLogger("lape")
    level = lape_log.level
    lape_log.addHandler(handler)
    lape_log.setLevel(logging.INFO)
    try:
        assert main(["keyneurons", "eval", str(work / "kn-domains"), *q, "--scores", str(work / "kn-domains-scores"),
                     "--templates", "1", "--random-seeds", "1", "--resamples", "200", "--batch-size", "7",
                     "--out", str(work / "kn-domains-eval")]) == 0
    finally:
        lape_log.removeHandler(handler)
        lape_log.setLevel(level)
        handler.close()
    return work


def _selection_prompts(run: Path) -> list:
    selection, _ = split_questions(load_questions(run / "questions.yaml"), 0.5)
    templates = question_templates(run / "questions.yaml")
    return [(q.cluster, p) for q in selection for p in question_prompts(q, templates, 1, 0)]


def test_activation_statistics_and_the_activation_baseline(run):
    """The recorded means are the selection prompts' own (full forwards, here), and the
    Activation baseline is, per cluster and layer, ``topk`` of the recorded mean activation with
    the key neurons' count."""
    ev = KeyNeuronEval.load(run / "kn-domains-eval")
    sets = NeuronSets.load(run / "kn-domains")
    assert ev.meta["activation_source"] == "selection questions"
    model, tok = tiny_model("llama"), ext_tokenizer()
    space = NeuronSpace.of(model)
    prompts = _selection_prompts(run)
    assert ev.meta["activation_prompts"] == len(prompts) == 5
    acts = {c: [] for c in ev.clusters}
    for c, p in prompts:
        acts[c].append(_last_acts(model, space, prompt_ids(tok, p.text)))
    t = ev.tensors_
    for k, c in enumerate(ev.clusters):
        torch.testing.assert_close(t["act_mean"][k], torch.stack(acts[c]).mean(0), rtol=1e-4, atol=1e-5)
    every = torch.stack([a for v in acts.values() for a in v])
    torch.testing.assert_close(t["act_abs_mean"], every.abs().mean(0), rtol=1e-4, atol=1e-5)
    for k, c in enumerate(ev.clusters):
        key = sets.mask(c)
        assert int(key.sum()) > 0
        for layer in range(space.num_layers):
            n = int(key[layer].sum())
            want = set(torch.topk(t["act_mean"][k, layer], n).indices.tolist()) if n else set()
            assert set(t["activation_masks"][k, layer].nonzero().flatten().tolist()) == want, (c, layer)
        assert not torch.equal(t["activation_masks"][k], key)  # a different set than the key neurons
        # the activation-matched draw: same count per layer, same rank bins of the recorded |activation|
        _check_matched(key, t["random_act_masks"][0, k], t["act_abs_mean"], ev.meta["config"]["activation_bins"])
    # every baseline was edited: rows of both families for every cluster and op
    fams = {(r["family"], r["op"]) for r in ev.rows}
    assert {(f, op) for f in ("activation", "random-act") for op in OPS} <= fams


def test_printed_pcr_with_one_draw_has_an_interval_and_no_sd(run):
    """Issue 27: "PCR 11.10 (sd 0.00)" with one random draw read as a precise figure."""
    log = (run / "eval.log").read_text()
    pcr_lines = [line for line in log.splitlines() if " PCR " in line and "  pooled " in line]
    assert len(pcr_lines) == 10  # 5 families x 2 ops
    for line in pcr_lines:
        assert "sd" not in line.lower(), line
        assert line.split(" PCR ")[1].split()[1].startswith("["), line  # "2.61 [1.90, 3.40]"
    assert "95% intervals over questions" in log and "cluster prediction" in log
    assert sum("the key neurons" in line for line in log.splitlines()) == 5  # 2 ops x 2 PCRs + prediction
    # the same figures in the report
    from lape.keyneurons.report import render_keyneuron_eval
    from lape.report import ReportContext

    html = render_keyneuron_eval(run / "kn-domains-eval", ReportContext(run, run / "report-figures"))
    ev = KeyNeuronEval.load(run / "kn-domains-eval")
    for row in ev.family_summary():
        assert pcr_text(row) in html and "SD" not in pcr_text(row)
    assert all(v["sentence"].replace("'", "&#x27;") in html or v["sentence"] in html for v in ev.verdicts())
    # with several draws the SD is printed beside the interval
    row = {"pcr": {"value": 2.61, "low": 1.9, "high": 3.4}, "pcr_sd": 1.52, "draws": 3}
    assert pcr_text(row) == "2.61 [1.90, 3.40], SD 1.52 over 3 draws"
    assert pcr_text({**row, "draws": 1, "pcr_sd": 0.0}) == "2.61 [1.90, 3.40]"


def test_readme_section_shows_the_intervals(run):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from readme_keyneurons import keyneurons_section
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    text = keyneurons_section(run)
    ev = KeyNeuronEval.load(run / "kn-domains-eval")
    table = [line for line in text.splitlines() if line.startswith("| domains |")]
    assert len(table) == 1 + 10 + len(ev.summary["prediction"])  # facts, 5 families x 2 ops, prediction
    for row in ev.family_summary():
        assert any(pcr_text(row) in line for line in table)
        assert any(fmt_interval(row["pooled_pcr"]) in line for line in table)
    assert all(v["sentence"] in text for v in ev.verdicts())
    assert "sd" not in " ".join(table).lower()


# --------------------------------------------------------------------------------------------
# Figures on results constructed by hand


def _constructed(probs_by_row: dict[tuple[str, int | None, str, str], list[float]], clusters: list[str],
                 per_cluster: int, base: float = 0.5) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """One prompt per question, ``per_cluster`` questions per cluster in order; every edit row's
    right-letter probabilities given, the unmodified ones ``base``."""
    rows = [{"family": f, "seed": s, "cluster": c, "op": op} for (f, s, c, op) in probs_by_row]
    P = per_cluster * len(clusters)
    t = {"base_prob": torch.full((P,), base), "base_correct": torch.zeros(P),
         "probs": torch.tensor(list(probs_by_row.values())).T.contiguous(), "correct": torch.zeros(P, len(rows)),
         "prompt_cluster": torch.arange(len(clusters)).repeat_interleave(per_cluster), "prompt_question": torch.arange(P)}
    # two clusters with as many questions each: a cluster's control sample is every question of the other
    t["unrelated_questions"] = torch.stack([t["prompt_cluster"] != c for c in range(len(clusters))])
    return rows, t


def test_pooled_pcr_and_log_probability_difference_by_hand():
    """Clusters A (q0, q1) and B (q2, q3), one prompt each, P0 = 0.5; with two questions per
    cluster each cluster's unrelated sample is both questions of the other.

    A's set (boost): changes +20, +40 | +0, +10 (q0 q1 related | q2 q3 unrelated);
    B's set (boost): changes +80, +20 | +10, +20 (q2 q3 related | q0 q1 unrelated).
    Mean of ratios: (30 / 5 + 50 / 15) / 2 = 4.667; pooled: mean(20, 40, 80, 20) / mean(0, 10, 10, 20)
    = 40 / 10 = 4.0.
    """
    probs = {("naica", None, "A", "boost"): [0.6, 0.7, 0.5, 0.55], ("naica", None, "A", "suppress"): [0.5] * 4,
             ("naica", None, "B", "boost"): [0.55, 0.6, 0.9, 0.6], ("naica", None, "B", "suppress"): [0.5] * 4}
    rows, t = _constructed(probs, ["A", "B"], 2)
    s = _summaries(["A", "B"], rows, t, 0, [], resamples=200)
    fam = {(r["family"], r["op"]): r for r in s["families"]}[("naica", "boost")]
    assert fam["pcr"]["value"] == pytest.approx((30 / 5 + 50 / 15) / 2, rel=1e-5)
    assert fam["pooled_pcr"]["value"] == pytest.approx(4.0, rel=1e-5)
    assert fam["related_change"]["value"] == pytest.approx(40.0, rel=1e-5)
    assert fam["unrelated_change"]["value"] == pytest.approx(10.0, rel=1e-5)
    rel = ((math.log(1.2) + math.log(1.4)) / 2 + (math.log(1.8) + math.log(1.2)) / 2) / 2
    unrel = ((math.log(1.0) + math.log(1.1)) / 2 + (math.log(1.1) + math.log(1.2)) / 2) / 2
    assert fam["related_dlogp"]["value"] == pytest.approx(rel, rel=1e-5)
    assert fam["unrelated_dlogp"]["value"] == pytest.approx(unrel, rel=1e-5)
    assert fam["dlogp_gap"]["value"] == pytest.approx(rel - unrel, rel=1e-5)
    for m in ("pcr", "pooled_pcr", "related_change", "related_dlogp"):
        assert fam[m]["low"] <= fam[m]["high"], m
    # resampling questions: a resample holding only q0 and q2 gives related (20 + 80) / 2 = 50, so the
    # interval of the related change reaches beyond the four values' mean
    assert fam["related_change"]["low"] < 40.0 < fam["related_change"]["high"]


def _noisy(n: int, seed: int, rel: float, unrel: float) -> tuple[list[float], list[float]]:
    g = np.random.default_rng(seed)
    return list(0.5 * (1 + (rel + g.normal(0, 2, n)) / 100)), list(0.5 * (1 + (unrel + g.normal(0, 0.5, n)) / 100))


def _two_families(random_rel: float, random_unrel: float) -> dict:
    """Key neurons: +50% related, +5% unrelated (PCR ~10); one random draw with the given changes;
    clusters A and B with 12 questions each."""
    probs = {}
    for f, seed, (r, u) in (("naica", None, (50.0, 5.0)), ("random", 0, (random_rel, random_unrel))):
        for k, c in enumerate("AB"):
            for op in OPS:
                rel, unrel = _noisy(12, k + 10 * (seed or 0) + (op == "boost"), r, u)
                probs[(f, seed, c, op)] = rel + unrel if c == "A" else unrel + rel
    rows, t = _constructed(probs, ["A", "B"], 12)
    return _summaries(["A", "B"], rows, t, 0, [], resamples=300)


def test_the_judging_sentence_follows_the_intervals():
    sep = judge("the boost PCR", Interval(9, 6, 12), {"random (seed 0)": Interval(2, 1, 3), "na": Interval(4, 3, 5)})
    assert sep["as_in_paper"] and sep["sentence"].startswith("As in the paper")
    assert "na 4.00 [3.00, 5.00]" in sep["sentence"]  # the highest baseline named
    over = judge("the boost PCR", Interval(9, 6, 12), {"random (seed 0)": Interval(2, 1, 3), "na": Interval(7, 5, 9)})
    assert not over["as_in_paper"] and over["overlaps"] == ["na"] and "as in the paper" not in over["sentence"].lower()
    assert over["sentence"].startswith("Not separated") and "overlaps na 7.00 [5.00, 9.00]" in over["sentence"]
    below = judge("the boost PCR", Interval(9, 6, 12), {"activation": Interval(20, 15, 25)})
    assert not below["as_in_paper"] and below["below"] == ["activation"] and "lies below activation" in below["sentence"]
    nan = judge("the boost PCR", Interval(9, float("nan"), float("nan")), {"na": Interval(1, 0.5, 2)})
    assert not nan["as_in_paper"]
    assert not judge("x", Interval(1, 0.5, 2), {})["as_in_paper"]
    # computed by the library from the evaluation: separated vs the same effect as a random set
    far, same = _two_families(5.0, 5.0), _two_families(50.0, 5.0)
    for summary, want in ((far, True), (same, False)):
        pcr = [v for v in summary["verdicts"] if v["metric"] == "pcr"]
        assert [v["op"] for v in pcr] == list(OPS)
        for v in pcr:
            assert v["as_in_paper"] is want, v["sentence"]
            assert v["sentence"].startswith("As in the paper" if want else "Not separated")
            assert ("random (seed 0)" in v["sentence"]) and (v["overlaps"] == ([] if want else ["random (seed 0)"]))
    key = {r["op"]: r for r in far["sets"] if r["family"] == "naica"}
    assert 7 < key["boost"]["pcr"]["low"] <= key["boost"]["pcr"]["value"] <= key["boost"]["pcr"]["high"] < 13
