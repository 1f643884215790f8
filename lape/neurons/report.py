"""LAPE's report sections: recorded statistics, the neuron sets, deactivation perplexity, steering
and the fluency reference (:data:`SECTIONS`, collected by :func:`lape.report.all_sections`)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import plots
from ..errors import LapeError
from ..evaluate.perplexity import PerplexityResult
from ..evaluate.steering_result import SteeringEval
from ..masks import NeuronSets
from ..report import neuron_summary
from ..report.html import (
    Raw,
    ReportContext,
    SectionRenderer,
    details,
    esc,
    facts_list,
    fmt_dec,
    html_table,
    kv_table,
    lang_tag,
    section_html,
)
from .stats import ActivationStats

logger = logging.getLogger(__name__)


def _group_means(probs: np.ndarray, cols: Sequence[tuple[str, int, int]]) -> list[list[str]]:
    """Mean activation probability of each group of ``cols`` (rows) in each language (columns),
    as table cells with three decimals; ``probs`` is ``[languages, layers, neurons]``."""
    out = []
    for label in dict.fromkeys(c[0] for c in cols):
        idx = [(c[1], c[2]) for c in cols if c[0] == label]
        layer, neuron = np.array(idx).T
        out.append([label, *(f"{v:.3f}" for v in probs[:, layer, neuron].mean(1).tolist())])
    return out


def render_stats(folder: Path, ctx: ReportContext) -> str:
    """Languages, tokens per language and recording throughput of ``stats/``."""
    stats = ActivationStats.load(folder)
    if stats is None:
        raise LapeError(f"{folder} holds no complete stats artifact: re-run lape record")
    meta = stats.meta
    tokens = stats.token_counts.tolist()
    layers, neurons = stats.shape
    facts = {
        "languages": len(stats.languages),
        "neuron space": f"{layers} layers × {neurons:,} neurons = {layers * neurons:,}",
        "tokens recorded": sum(tokens),
        "recording time (s)": meta.get("seconds"),
        "throughput (tokens/s)": meta.get("tokens_per_second"),
        "processes": meta.get("world_size"),
    }
    fired = (stats.fire_counts > 0).to(float).mean((1, 2)).tolist()  # neurons that fired at all
    rows = [(Raw(lang_tag(lang)), n, plots.pct(f)) for lang, n, f in zip(stats.languages, tokens, fired, strict=True)]
    body = ('<div class="row">' + facts_list(facts)
            + html_table(["language", "tokens", "neurons that fired"], rows, caption="Tokens per language")
            + (kv_table(meta["config"], caption="Recording settings") if meta.get("config") else "")
            + "</div>")
    return section_html(folder.name, "Activation statistics", body)


def render_neurons(folder: Path, ctx: ReportContext) -> str:
    """Summary table, layer distribution, overlaps and probability heatmap of ``neurons/``."""
    sets = NeuronSets.load(folder)
    method = plots.method_label(sets.meta.get("method", "selected"))
    summary = neuron_summary(sets)
    union = summary[-1]
    facts: dict[str, Any] = {"method": method, "sets": len(sets.labels), "neurons (union)": union["neurons"]}
    for k, v in (sets.meta.get("config") or {}).items():
        if k != "method":
            facts[k] = v
    if "normaliser_fallbacks" in sets.meta:  # key-neuron selection: questions whose NA normaliser Z was not positive
        facts["normaliser fallbacks (Z <= 0, kept sum used)"] = (f"{sets.meta['normaliser_fallbacks']} of "
                                                                 f"{sets.meta.get('questions')} questions")
    summary_table = html_table(
        ["set", "neurons", "bottom third", "top third"],
        [(r["set"], r["neurons"], plots.pct(r["bottom_third"]), plots.pct(r["top_third"])) for r in summary],
        row_classes=["" for _ in summary[:-1]] + ["total"],
        caption=f"{method} neurons per set and their share in the bottom and top third of the layers")

    layers = sets.shape[0]
    per_layer = sets.counts_per_layer()
    fig_layers = ctx.figure(plots.layer_distribution(sets, (union["bottom_third"], union["top_third"])),
                            "layer_distribution", f"{method} neurons per layer")
    layer_table = html_table(["set", *map(str, range(layers))], [(lab, *c) for lab, c in per_layer.items()],
                         caption="Neurons per layer")
    ov = sets.overlaps().tolist()
    fig_overlap = ctx.figure(plots.overlap_heatmap(sets), "overlap_heatmap", "Neurons shared by two sets")
    overlap_table = html_table(["set", *sets.labels], [(lab, *row) for lab, row in zip(sets.labels, ov, strict=True)],
                           caption="Shared neurons (diagonal: set size)",
                           cell_classes=lambda i, j: "diag" if j == i + 1 else "")
    body = (f'<div class="row">{facts_list(facts)}{summary_table}</div>'
            + f'<div class="grid">{fig_layers}{fig_overlap}</div>'
            + f'<div class="row">{layer_table}{overlap_table}</div>')

    stats = ctx.stats()
    cols = plots.select_neurons(sets)
    if stats is not None and tuple(stats.shape) != tuple(sets.shape):
        logger.warning("report: %s and the run's stats are on different neuron spaces: no probability "
                       "heatmap", folder)
    elif stats is not None and cols:
        probs = stats.probabilities().numpy()  # (languages, layers, neurons)
        fig_prob = ctx.figure(plots.probability_heatmap(sets, stats), "probability_heatmap",
                              "Activation probability of the selected neurons per recorded language")
        means = html_table(["neurons of set", *stats.languages], _group_means(probs, cols),
                       caption="Mean activation probability of each set's neurons shown",
                       cell_classes=_diag_by_label(stats.languages, cols))
        per_neuron = [(lab, layer, idx, *(f"{v:.3f}" for v in probs[:, layer, idx].tolist()))
                      for lab, layer, idx in cols]
        body += ("<h3>Activation probability per language</h3>" + fig_prob + means
                 + details(f"Per-neuron probabilities ({len(cols)} neurons shown)",
                            html_table(["set", "layer", "neuron", *stats.languages], per_neuron, left=1)))
    return section_html(folder.name, f"{method} neurons", body)


def _diag_by_label(languages: Sequence[str], cols: Sequence[tuple[str, int, int]]) -> Callable[[int, int], str]:
    """Highlight, in the group-mean table, the cell of each set's own language."""
    groups = list(dict.fromkeys(c[0] for c in cols))

    def cls(i: int, j: int) -> str:
        return "diag" if j >= 1 and i < len(groups) and languages[j - 1] == groups[i] else ""

    return cls


def render_ppl(folder: Path, ctx: ReportContext) -> str:
    """PPL-change heatmaps (selected vs random) and their tables from ``ppl/``."""
    result = PerplexityResult.load(folder)
    langs, rows = result.languages, result.rows
    method = plots.method_label((result.meta.get("neurons") or {}).get("method") or "LAPE")
    fig = ctx.figure(plots.ppl_heatmaps(result), "ppl_heatmaps",
                     f"Perplexity change when each set's neurons are deactivated: {method} (left) "
                     "vs random neurons with the same count per layer (right)")
    base = html_table(["language", "tokens", "NLL (nats/token)", "PPL"],
                  [(Raw(lang_tag(lang)), result.tokens.get(lang), fmt_dec(nll, 3), fmt_dec(ppl))
                   for lang, nll, ppl in zip(langs, result.base_nll, result.base_ppl, strict=True)],
                  caption="Unmodified model")

    def matrix(m: list[list[float]], caption: str) -> str:
        return html_table(["deactivated", *langs],
                      [(r, *(fmt_dec(v, signed=True) for v in vals)) for r, vals in zip(rows, m, strict=True)],
                      caption=caption,
                      cell_classes=lambda i, j: "diag" if j >= 1 and langs[j - 1] == rows[i] else "")

    diag = result.diagonal_summary()
    diag_table = html_table(
        ["language", "own Δ PPL", "mean off-diagonal Δ PPL", "random own Δ PPL", "own > off-diagonal"],
        [(d["language"], fmt_dec(d["own_delta_ppl"], signed=True), fmt_dec(d["off_diagonal_mean_delta_ppl"], signed=True),
          fmt_dec(d["random_own_delta_ppl"], signed=True),
          Raw('<span class="ok">yes</span>' if d["own_above_off_diagonal"] else '<span class="fail">no</span>'))
         for d in diag], caption="Diagonal: a language's own PPL change against the others")
    config = result.meta.get("config") or {}
    facts = {"evaluated languages": len(langs), "deactivated sets": len(rows),
             "split": config.get("split"), "tokens per language": config.get("tokens_per_language"),
             "random baseline seed": result.meta.get("random_seed")}
    body = (facts_list(facts) + fig
            + '<p class="note">PPL = exp(mean next-token NLL) on held-out text; Δ = with the row\'s '
              "neurons deactivated minus unmodified. Highlighted: a set's own language.</p>"
            + '<div class="row">' + matrix(result.delta_ppl(), f"Δ PPL, {method} neurons deactivated (rows)")
            + matrix(result.delta_ppl(random=True), "Δ PPL, random neurons deactivated (rows)")
            + "</div>" + '<div class="row">' + base + diag_table + "</div>")
    return section_html(folder.name, "Perplexity under deactivation", body)


def render_steering(folder: Path, ctx: ReportContext) -> str:
    """Steering: per-target table with fluency, the controls, success bars (+ strength sweep)
    and example outputs from ``steering/``."""
    from ..evaluate.steering_result import format_rate, row_interval

    ev = SteeringEval.load(folder)
    steered = ev.steered()
    strengths = list(dict.fromkeys(float(r["strength"]) for r in steered))
    fluency = all("fluent" in r for r in steered) and bool(steered)
    table = html_table(
        ["target", "rule", "steered success", "unsteered success", "steered distinct-2",
         *(["fluent", "PPL / real text"] if fluency else []), "non-letters", "identified languages"],
        [(Raw(lang_tag(r["target"])), r.get("rule") or f"x{r['strength']:g}", format_rate(ev.interval(r)),
          format_rate(ev.interval(r, "unsteered_success")), fmt_dec(r.get("steered_distinct_2")),
          *([plots.pct(r.get("fluent")), fmt_dec(r.get("fluency_ratio"))] if fluency else []),
          plots.pct(r.get("non_letter")), r.get("identified") or {}) for r in steered],
        caption="Per target language (success, with its Wilson 95% interval over the prompts: target language "
                "identified, at least half of the non-blank characters letters of its script, and not degenerate; "
                "fluent: as "
                "predictable to the unmodified model as 90% of real text windows of the language, at most 30% "
                "non-letters; PPL / real text: median output perplexity over real text's median)",
        left={0, 1, 7 if fluency else 5})
    controls = ev.condition_summary()
    control_table = html_table(
        ["condition", "targets", "mean success", "smallest", "targets >= 90%", "mean fluent success",
         "median PPL / real", "spread over draws (SD)"],
        [(c["condition"] + (f" x{c['strength']:g}" if "strength" in c else ""), c["targets"],
          format_rate(row_interval(c, "mean_success")), format_rate(row_interval(c, "min_success")),
          c.get("at_least_90", ""), format_rate(row_interval(c, "mean_fluent_success")), fmt_dec(c.get("median_fluency_ratio")),
          plots.pct(c.get("sd_over_draws"))) for c in controls],
        caption="Steered outputs next to their controls, each rate with its Wilson 95% interval (mean: every "
                "target's outputs pooled; smallest: that target's) (random: the same edits on random neurons with the same "
                "per-layer counts and values; source_on/off: the source's neurons untouched/off; no_ngram_ban: "
                "without the 4-gram ban; plain: the settings' rule instead of the profile)", left={0})
    default = plots.default_strength(ev)
    prefix = "" if folder.name == "steering" else f"{folder.name}-"
    figs = [ctx.figure(plots.steering_bars(ev), f"{prefix}steering_bars",
                       "Success per target language, with the controls")]
    if len(strengths) > 1:
        figs.append(ctx.figure(plots.strength_sweep(ev), f"{prefix}strength_sweep",
                               "Success and distinct-2 against steering strength"))
    config = ev.meta.get("config") or {}
    facts = {"source language": ev.meta.get("source") or "none",
             "prompts": f"{ev.meta.get('prompts')}" + (f" ({ev.meta['prompt_set']})" if ev.meta.get("prompt_set") else ""),
             "rule": "calibrated steering profile" if ev.meta.get("profile") else
             ", ".join(f"{s:g}" for s in strengths) if default is None else f"settings, strength {default:g}",
             "max new tokens": config.get("max_new_tokens"),
             "first token left unedited": config.get("skip_first"), "neurons": (ev.meta.get("neurons") or {}).get("method")}
    examples = []
    for x in ev.examples:
        ok = bool(x.get("success"))
        examples.append((
            Raw(lang_tag(x.get("target"))), x.get("strength"), Raw(f'<div class="text">{esc(x.get("prompt", ""))}</div>'),
            Raw(lang_tag(x.get("unsteered_language")) + f'<div class="text">{esc(x.get("unsteered", ""))}</div>'),
            Raw(lang_tag(x.get("steered_language")) + f'<div class="text">{esc(x.get("steered", ""))}</div>'),
            Raw('<span class="ok">✓</span>' if ok else '<span class="fail">✗</span>')))
    ex_table = html_table(["target", "strength", "prompt", "unsteered", "steered", "success"], examples,
                      caption="Example outputs (language as identified by py3langid)", left=6)
    body = (facts_list(facts) + f'<div class="figs">{"".join(figs)}</div>' + table + control_table
            + ("<h3>Examples</h3>" + ex_table if examples else ""))
    title = "Steering the output language" + (f" ({ev.meta['prompt_set']})" if ev.meta.get("prompt_set") else "")
    return section_html(folder.name, title, body)


def render_fluency_reference(folder: Path, ctx: ReportContext) -> str:
    """The real-text yardstick of the steering fluency figures."""
    from ..evaluate.fluency import FluencyReference

    ref = FluencyReference.load(folder)
    table = html_table(["language", "median PPL", "90th percentile PPL", "windows"],
                   [(Raw(lang_tag(lang)), math.exp(r["median_nll"]), math.exp(r["p90_nll"]), r.get("windows"))
                    for lang, r in ref.languages.items()],
                   caption="Perplexity of real held-out text windows as long as a steered output, under the "
                           "unmodified model: a steered output is fluent when it is at most the 90th percentile "
                           "(and at most 30% non-letters)", left={0})
    return section_html(folder.name, "Fluency reference", table)


SECTIONS: list[tuple[str, SectionRenderer]] = [
    ("stats", render_stats),
    ("neurons", render_neurons),
    ("ppl", render_ppl),
    ("steering", render_steering),
    ("fluency_reference", render_fluency_reference),
]
"""LAPE's report sections in order: ``(artifact kind, render function)``. A render function gets
the folder holding an artifact of that kind (found by its sidecar, whatever the folder's name)
and the :class:`~lape.report.ReportContext`, and returns a ``<section>``."""
TITLES = {"stats": "Statistics", "neurons": "Neurons", "ppl": "Perplexity", "steering": "Steering"}


