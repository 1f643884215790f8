"""The README's steering section (issue #16), from the runs of ``scripts/run_steering.sh``.

Imported by ``scripts/readme_results.py`` (the one script that writes the README's results).
Every figure is read from a saved artifact: the calibration's candidates (development prompts),
the development evaluations of the alternatives, the stability halves and the held-out test
evaluation with its controls. Every success rate carries its Wilson 95% interval over the prompts
(:func:`lape.evaluate.steering_result.rate_interval`; a mean over targets: all their outputs pooled).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from readme_results import ROOT

from lape.evaluate.steering_result import format_rate, pooled_interval, rate_interval, row_interval
from lape.plots import pct
from lape.report.markdown import markdown_table


def _ci(ev: Any, rows: Any, key: str = "steered_success") -> str:
    """``93% (84-97%)``: the rate of one row (or of several rows' outputs pooled) with its interval."""
    return format_rate(ev.interval(rows, key))


def _ratio(v: Any) -> str:
    return "–" if v is None or not math.isfinite(v) else f"x{v:.1f}"


def _mean(values: list[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.fmean(values) if values else math.nan


def _by(ev: Any, condition: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in ev.steered(condition):
        out.setdefault(r["target"], []).append(r)
    return out


def _script_removed(ev: Any) -> str:
    """How many steered outputs were identified as their target but fail the script check."""
    rows = ev.steered()
    if not rows or "steered_script_fail" not in rows[0]:
        return "this evaluation predates the check"
    failed = sum(round(r["steered_script_fail"] * ev.prompts(r)) for r in rows)
    return (f"{failed} of the {sum(ev.prompts(r) for r in rows)} steered outputs were identified as their target "
            "but fail this check")


def test_section(run: Path, prefix: str) -> str:
    """The held-out test prompts: per target the calibrated rule's success and fluency next to
    every control."""
    from lape import plots
    from lape.evaluate.steering_result import SteeringEval
    from lape.report import save_figure

    ev = SteeringEval.load(run / "steer-test")
    steered, plain, on, off = (_by(ev, c) for c in ("steered", "plain", "source_on", "source_off"))
    random, free = _by(ev, "random"), _by(ev, "no_ngram_ban")
    rows = []
    for t, (r,) in steered.items():
        rnd = [x["steered_success"] for x in random.get(t, [])]
        rows.append([t, r["rule"], f"**{_ci(ev, r)}**", _ci(ev, r, "steered_success_own_label"),
                     _ci(ev, r, "fluent_success"),
                     _ratio(r["fluency_ratio"]), pct(r["non_letter"]), _ci(ev, r, "unsteered_success"),
                     (_ci(ev, random[t]) + (f" ± {pct(statistics.stdev(rnd))}" if len(rnd) > 1 else ""))
                     if rnd else "–",
                     *(_ci(ev, c[t][0]) if t in c else "–" for c in (on, off, free, plain))])
    summary = {c["condition"]: c for c in ev.condition_summary()}
    s = summary["steered"]
    own_ci = _ci(ev, [r for (r,) in steered.values()], "steered_success_own_label")
    own90 = sum(r.get("steered_success_own_label", 0) >= 0.9 for (r,) in steered.values())
    lines = [
        "#### Held-out test prompts (`builtin:test`, scored once, after the profile was frozen)", "",
        f"{ev.meta.get('prompts')} English prompt openings of twenty genres, written after the first test round "
        "(below) was spent and never scored while anything was chosen; "
        f"{len(rows)} targets, the calibrated steering profile (default: `lape steer` picks it up). "
        f"**{s['at_least_90']} of {s['targets']} targets reach >= 90% success, mean "
        f"{format_rate(row_interval(s, 'mean_success'))}, smallest {format_rate(row_interval(s, 'min_success'))}**"
        " (95% Wilson intervals over the prompts; the mean's pools every target's outputs); the steered outputs "
        "are fluent (as predictable to the unmodified "
        f"model as 90% of real text windows of the language, <= 30% non-letters) in "
        f"{format_rate(row_interval(s, 'mean_fluent_success'))} of cases, median perplexity "
        f"{_ratio(s.get('median_fluency_ratio'))} "
        "that of real text of the target language. A success needs the target language identified by "
        "`py3langid`, where a member of the target's ISO 639-3 macrolanguage counts as the target (Egyptian "
        "`arz` and Moroccan `ary` as Arabic, `wuu`/`yue` as Chinese; decided on the first test round's failures, "
        "before this set was written); at least half of the output's non-blank characters letters of the target's "
        "script (Han for Chinese, kana or Han for Japanese, Hangul for Korean, Arabic script for Arabic, Cyrillic "
        "for Russian, Latin for the others; `py3langid` labels a run of fullwidth commas `wuu`, which the "
        f"macrolanguage rule alone would count as Chinese; {_script_removed(ev)}); and a non-degenerate output. "
        "Counting only the target's own label "
        f"(column *own label*): {own90} of {len(rows)} at >= 90%, mean {own_ci}.", "",
        markdown_table(["target", "rule (profile)", "success", "own label", "fluent success", "PPL / real text", "non-letters",
                "unsteered", "random neurons (all draws; ± SD over draws)", "source on", "source off",
                "no 4-gram ban", "plain settings"], rows), "",
        "Controls: *unsteered* is the same prompts without edits; *random neurons* moves each edit to as many "
        "random neurons of the same layer with the same values (same rule and strength; "
        f"{summary.get('random', {}).get('draws', 1)} draws); *source on/off* is the profile's rule with the "
        "English neurons untouched / switched off; *no 4-gram ban* decodes without `no_repeat_ngram_size`; "
        "*plain settings* is the settings' single rule for every language instead of the profile.", ""]
    mixed = [(t, r) for t, (r,) in steered.items() if r["steered_success"] < 0.9 or set(r["identified"]) - {t}]
    if mixed:  # what the identifier called the steered outputs that were not all the target's own label
        lines += ["What `py3langid` called the steered outputs, for the targets below 90% or with any other "
                  "label (raw labels; success also needs a non-degenerate output): " + "; ".join(
                      f"{t}: " + ", ".join(f"{lab} {n}" for lab, n in r["identified"].items()) for t, r in mixed)
                  + ".", ""]
    ctrl = [[c["condition"], *(format_rate(row_interval(c, k)) for k in ("mean_success", "min_success")),
             c.get("at_least_90", "–"), format_rate(row_interval(c, "mean_fluent_success")),
             _ratio(c.get("median_fluency_ratio"))] for c in ev.condition_summary()]
    lines += [markdown_table(["condition", "mean success", "smallest", "targets >= 90%", "mean fluent success",
                      "median PPL / real text"], ctrl), ""]
    stem = ROOT / "docs" / "figures" / f"{prefix}-steering_bars"
    png = save_figure(plots.steering_bars(ev), stem)[0]
    stem.with_suffix(".svg").unlink(missing_ok=True)
    lines += [f"![steering_bars](docs/figures/{png.name})", ""]
    ex = [e for e in ev.examples][::3][:8]
    lines += ["Examples (first test prompts):", "",
              markdown_table(["target", "prompt", "steered"],
                     [[e["target"], e["prompt"], f"[{e['steered_language']}] "
                       + e["steered"].strip().replace("\n", " ").replace("|", "/")[:80]] for e in ex]), ""]
    return "\n".join(lines)


def spent_test_section(run: Path) -> str:
    """The first test round (``builtin:test1``): scored once at the earlier freeze, then read to
    decide the macrolanguage rule, so development data since; and the final profile on it."""
    from lape.evaluate.steering_result import SteeringEval

    folders = [(run / "steer-test1-round1", "first round: the earlier profile, own label only, scored once"),
               (run / "steer-test1", "the final profile and success rule (development data)")]
    evs = [(SteeringEval.load(f), label) for f, label in folders if f.is_dir()]
    if not evs:
        return ""
    targets = list(dict.fromkeys(r["target"] for ev, _ in evs for r in ev.steered()))
    rows = []
    for ev, label in evs:
        by = {r["target"]: r for r in ev.steered()}
        c = next(c for c in ev.condition_summary() if c["condition"] == "steered")
        rows.append([label, *(_ci(ev, by[t]) if t in by else "–" for t in targets),
                     f"**{format_rate(row_interval(c, 'mean_success'))}**", c["at_least_90"]])
    return "\n".join([
        "#### The spent first test round (`builtin:test1`)", "",
        f"{evs[0][0].meta.get('prompts')} openings written as the first test set. They were scored once with the "
        "profile frozen; reading "
        "their failures (Arabic outputs labelled Egyptian or Moroccan Arabic) decided the macrolanguage rule, "
        "so they are development data from then on, and `builtin:test` above was written afresh. Success per "
        "target, with its Wilson 95% interval" + (" (the first round predates the script check)" if len(evs) > 1 else "")
        + ":", "",
        markdown_table(["profile and rule", *targets, "mean", "targets >= 90%"], rows), ""])


def calibration_section(run: Path) -> str:
    """What was tried on the development prompts: every stage of the calibration, and the rule
    each target kept."""
    from lape.evaluate.steer_profile import SteeringProfile

    profile = SteeringProfile.load(run / "neurons13")
    stages: dict[str, list[dict[str, Any]]] = {}
    for c in profile.candidates:
        stages.setdefault(c["stage"], []).append(c)
    kept = {t: r.describe() for t, r in profile.rules.items()}
    n = int(profile.meta.get("inputs", {}).get("prompts") or 0)

    def dev(rate: Any) -> str:  # one dev rate with its interval over the development prompts
        return format_rate(rate_interval(rate, n))

    def pooled(cands: list[dict[str, Any]], key: str) -> str:  # every candidate's outputs together
        return format_rate(pooled_interval((c[key], n) for c in cands))

    rows = []
    for stage, cands in stages.items():
        wins = sum(c["rule"] == kept[c["target"]] for c in cands)
        rows.append([stage, pooled(cands, "success"), pooled(cands, "fluent_success"),
                     dev(min(c["success"] for c in cands)), _ratio(statistics.median(c["fluency_ratio"] for c in cands)),
                     wins])
    refined = sorted({c["target"] for c in profile.candidates if c["stage"].startswith("refine")})
    polished = sorted({c["target"] for c in profile.candidates if c["stage"].startswith("polish")})
    scores = profile.meta.get("dev_scores", {})
    chosen = [[t, r.describe(), dev(scores.get(t, {}).get("success")), dev(scores.get(t, {}).get("fluent_success"))]
              for t, r in profile.rules.items()]
    return "\n".join([
        "#### Development prompts (`builtin:dev`): what was tried", "",
        f"`lape steer-calibrate` on the {profile.meta.get('inputs', {}).get('prompts')} development prompts: first "
        "every edit rule and strength, then (from each target's best) layer windows that leave the bottom layers "
        "alone, the target's exclusive neurons, and softer or no deactivation of the English neurons. A change is "
        "kept for a target only when it raises the share of outputs that are both a success and fluent. Mean over "
        f"the {len(profile.rules)} targets, with Wilson 95% intervals over all their outputs" + (f" (the `refine` rows: over the targets still below "
                                              f"{profile.meta.get('config', {}).get('refine_below', 0):.0%} after the "
                                              f"search, {', '.join(refined)}, each window tried with their three best "
                                              "first-stage rules" if refined else "")
        + (f"; the `polish` rows: over the targets still below it after that, {', '.join(polished)}, each "
           "strength x window around their best rule" if polished else "") + (")" if refined else "") + ":", "",
        markdown_table(["candidate", "success", "fluent success", "smallest success", "median PPL / real text",
                "targets that kept it"], rows), "",
        "The rule each target kept (its development scores):", "",
        markdown_table(["target", "rule", "dev success", "dev fluent success"], chosen), ""])


def alternatives_section(run: Path) -> str:
    """Development evaluations beside the calibration: the settings' rule without leaving the
    first token alone (the settings' rule itself is the calibration's ``replace x1.5`` candidate)."""
    from lape.evaluate.steering_result import SteeringEval

    rows = []
    for folder, label in (("steer-dev-noskip", "the settings' rule (set firing mean x1.5, English off) with the "
                                               "first token edited too"),
                          ("steer-dev-top3", "three times as many neurons per language (top_rate 3%), the "
                                             "settings' rule")):
        if not (run / folder).is_dir():
            continue
        ev = SteeringEval.load(run / folder)
        for c in ev.condition_summary():
            if c["condition"] == "unsteered":
                continue
            name = label if c["condition"] == "steered" else f"{label}: {c['condition']} control"
            if "strength" in c:
                name += f", strength {c['strength']:g}"
            rows.append([name, *(format_rate(row_interval(c, k)) for k in ("mean_success", "min_success")),
                         c.get("at_least_90", "–"), format_rate(row_interval(c, "mean_fluent_success")),
                         _ratio(c.get("median_fluency_ratio"))])
    if not rows:
        return ""
    return "\n".join(["Other development evaluations (`lape steer-eval --no-profile`; to compare with: the settings' "
                      "rule on the 1% sets with the first token untouched is the calibration's `replace x1.5` row "
                      "above, and `replace x1` at strength 1):", "",
                      markdown_table(["setting", "mean success", "smallest", "targets >= 90%", "mean fluent success",
                              "median PPL / real text"], rows), ""])


def stability_section(run: Path) -> str:
    """Jaccard overlap of the sets from two disjoint halves of the training text."""
    from lape.masks import NeuronSets, set_agreement

    a, b = NeuronSets.load(run / "neurons13-half1"), NeuronSets.load(run / "neurons13-half2")
    full = NeuronSets.load(run / "neurons13")
    halves = set_agreement(a, b)
    vs_full = {r["label"]: r for r in set_agreement(a, full)}
    rows = [[r["label"], r["size_a"], r["size_b"], f"{r['jaccard']:.2f}", f"{r['chance_jaccard']:.4f}",
             f"{vs_full[r['label']]['jaccard']:.2f}"] for r in halves]
    import json

    sidecar = run / "stats-half1" / "stats.json"
    tokens = json.loads(sidecar.read_text()).get("token_counts") or {} if sidecar.is_file() else {}
    return "\n".join([
        "#### Stability of the neuron sets", "",
        "LAPE (13 languages, paper defaults) on two disjoint halves of each language's training text (documents "
        f"1, 3, 5, ... and 2, 4, 6, ...; {statistics.fmean(tokens.values()) if tokens else 6500:,.0f} tokens per "
        "language each, `lape record --part 1/2` and `2/2`), compared with `lape compare`; chance = two random "
        "sets with the same counts per layer:", "",
        markdown_table(["language", "neurons (half 1)", "neurons (half 2)", "Jaccard", "chance", "half 1 vs all text"],
               rows), f"\nMean Jaccard between the halves {statistics.fmean(r['jaccard'] for r in halves):.2f}.", ""])


def steering_section(run: Path, prefix: str = "steer") -> str:
    """The whole steering section: test first (the headline), then how it was chosen."""
    parts = ["### Steering the output language", ""]
    if (run / "steer-test").is_dir():
        parts.append(test_section(run, prefix))
    parts.append(spent_test_section(run))
    if (run / "neurons13" / "steering_profile.json").is_file():
        parts.append(calibration_section(run))
    parts.append(alternatives_section(run))
    if (run / "neurons13-half2").is_dir():
        parts.append(stability_section(run))
    return "\n".join(parts)
