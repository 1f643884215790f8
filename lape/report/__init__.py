"""A self-contained HTML report of a run folder, and the figure files next to it.

:func:`write_report` reads what a run folder holds (its subfolders' artifacts, found by the kind
their sidecar names, and ``demo.json`` with the run's settings) and writes ``RUN/report.html``: one
file, images embedded as base64 PNG, inline CSS, no script and no network reference, so it can
be mailed or opened offline. Each artifact present gives one section; an absent folder gives
none. The numbers behind every figure are shown as tables, and every figure is also saved as
PNG and SVG into ``RUN/plots/`` for the README.

Sections come from the registry :data:`SECTIONS`, a list of ``(artifact kind, render function)``;
a later method adds its section by appending, e.g.
``SECTIONS.append(("regions", render_regions))``.

This module loads artifacts, never a model. The small numbers it shows beside the figures
(layer-third shares, group means) are computed here, not in :mod:`lape.plots`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import artifacts, plots
from ..activations import ActivationStats
from ..errors import LapeError
from ..evaluate.perplexity import PerplexityResult
from ..evaluate.steering_result import SteeringEval
from ..masks import NeuronSets
from .html import (
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
    save_figure,
    save_result_figure,
    section_html,
)

__all__ = ["SECTIONS", "ReportContext", "SectionRenderer", "all_sections", "find_artifacts", "layer_shares",
           "neuron_summary", "render_fluency_reference", "render_neurons", "render_ppl", "render_stats",
           "render_steering", "save_figure", "save_neuron_plots", "save_result_figure", "write_report"]

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# numbers shown beside the figures


def layer_shares(counts_per_layer: Sequence[int]) -> tuple[float | None, float | None]:
    """Share of neurons in the bottom and in the top third of the layers (:func:`lape.plots.thirds`).

    Returns:
        ``(bottom, top)`` in ``[0, 1]``; ``(None, None)`` when there are no neurons.

    Example:
        >>> layer_shares([4, 0, 0, 0, 0, 2])
        (0.6666666666666666, 0.3333333333333333)
    """
    counts = [int(c) for c in counts_per_layer]
    total = sum(counts)
    if total == 0:
        return None, None
    bottom, top = plots.thirds(len(counts))
    return sum(counts[i] for i in bottom) / total, sum(counts[i] for i in top) / total


def neuron_summary(sets: NeuronSets) -> list[dict[str, Any]]:
    """Per label: neuron count and the shares in the bottom and top third of the layers, then a
    total row over the union of the sets (a neuron in several sets counts once).

    Returns:
        Rows ``{"set", "neurons", "bottom_third", "top_third"}``; shares are ``None`` for an
        empty set. The last row has ``set == "all (union)"``.

    Example:
        >>> neuron_summary(sets)[-1]
        {'set': 'all (union)', 'neurons': 1432, 'bottom_third': 0.41, 'top_third': 0.38}
    """
    rows = []
    for label, counts in sets.counts_per_layer().items():
        bottom, top = layer_shares(counts)
        rows.append({"set": label, "neurons": sum(counts), "bottom_third": bottom, "top_third": top})
    union = sets.union().sum(1).tolist()  # (layers,)
    bottom, top = layer_shares(union)
    rows.append({"set": "all (union)", "neurons": int(sum(union)), "bottom_third": bottom, "top_third": top})
    return rows


def _group_means(probs: np.ndarray, cols: Sequence[tuple[str, int, int]]) -> list[list[str]]:
    """Mean activation probability of each group of ``cols`` (rows) in each language (columns),
    as table cells with three decimals; ``probs`` is ``[languages, layers, neurons]``."""
    out = []
    for label in dict.fromkeys(c[0] for c in cols):
        idx = [(c[1], c[2]) for c in cols if c[0] == label]
        layer, neuron = np.array(idx).T
        out.append([label, *(f"{v:.3f}" for v in probs[:, layer, neuron].mean(1).tolist())])
    return out


# --------------------------------------------------------------------------------------------
# plots of a neurons folder (``lape plot``)


def save_neuron_plots(neurons_dir: str | Path, stats_dir: str | Path | None = None,
                      out: str | Path | None = None) -> list[Path]:
    """Write the neuron figures of a neurons folder as PNG and SVG.

    Writes ``layer_distribution``, ``overlap_heatmap`` and, when activation statistics are
    found, ``probability_heatmap``.

    Args:
        neurons_dir: a folder written by :meth:`NeuronSets.save`.
        stats_dir: the statistics the sets were made from (default: the sibling folder
            ``stats`` next to ``neurons_dir``, skipped if absent).
        out: the output folder (default: the sibling folder ``plots``).

    Returns:
        The written files.

    Example:
        >>> save_neuron_plots("runs/demo/neurons")
        [PosixPath('runs/demo/plots/layer_distribution.png'), ...]
    """
    neurons_dir = Path(neurons_dir)
    sets = NeuronSets.load(neurons_dir)
    out = Path(out) if out is not None else neurons_dir.parent / "plots"
    if stats_dir is None and artifacts.exists(neurons_dir.parent / "stats", ActivationStats.KIND):
        stats_dir = neurons_dir.parent / "stats"
    stats = ActivationStats.load(stats_dir) if stats_dir is not None else None
    if stats is not None and tuple(stats.shape) != tuple(sets.shape):
        raise LapeError(f"the stats in {stats_dir} ({stats.shape[0]} x {stats.shape[1]}) and the neuron sets in "
                        f"{neurons_dir} ({sets.shape[0]} x {sets.shape[1]}) are on different models: pass the "
                        "stats the sets were made from (--stats)")
    union = neuron_summary(sets)[-1]
    paths = save_figure(plots.layer_distribution(sets, (union["bottom_third"], union["top_third"])),
                        out / "layer_distribution")
    paths += save_figure(plots.overlap_heatmap(sets), out / "overlap_heatmap")
    if stats is not None:
        paths += save_figure(plots.probability_heatmap(sets, stats), out / "probability_heatmap")
    else:
        logger.info("no activation statistics next to %s: probability heatmap skipped", neurons_dir)
    return paths


# --------------------------------------------------------------------------------------------
# sections


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


EVERY_FOLDER = {"steering"}  # kinds shown once per folder (development and test evaluations side by side)

SECTIONS: list[tuple[str, SectionRenderer]] = [
    ("stats", render_stats),
    ("neurons", render_neurons),
    ("ppl", render_ppl),
    ("steering", render_steering),
    ("fluency_reference", render_fluency_reference),
]
"""The report's sections in order: ``(artifact kind, render function)``. A render function gets
the folder holding an artifact of that kind (found by its sidecar, whatever the folder's name)
and the :class:`ReportContext`, and returns a ``<section>``."""


# --------------------------------------------------------------------------------------------
# the page


def _model_meta(found: Mapping[str, list[Path]]) -> dict[str, Any]:
    """The sidecar that names the model: stats first, then the other artifacts."""
    for kind in ("stats", "neurons", "ppl", "steering"):
        for folder in found.get(kind, []):
            meta = artifacts.read_json(folder / f"{kind}.json")
            if isinstance(meta, dict) and (meta.get("fingerprint") or meta.get("model_id")):
                return meta
    return {}


def find_artifacts(run: Path) -> tuple[dict[str, list[Path]], list[str]]:
    """The artifacts in a run folder's subfolders, by the kind their sidecar names (folders
    named after their kind first), and the subfolders that hold none."""
    found: dict[str, list[Path]] = {}
    empty = []
    for folder in sorted(p for p in run.iterdir() if p.is_dir() and not p.name.startswith(".")):
        kind = artifacts.kind_of(folder)
        if kind is None:
            if folder.name != "plots":
                empty.append(folder.name)
            continue
        found.setdefault(kind, []).append(folder)
    for kind, folders in found.items():
        folders.sort(key=lambda f: (f.name != kind, f.name))
    return found, empty


def _methods(found: Mapping[str, list[Path]]) -> str:
    """What the run's results come from, for the subtitle."""
    names = []
    if found.keys() & {"stats", "neurons", "ppl", "steering"} or not found:
        names.append("Language-specific neurons (LAPE, Tang et al., ACL 2024)")
    if found.keys() & {"importance", "regions", "region_ppl", "region_stability", "region_dims", "region_perturb",
                       "region_train", "region_bridge"}:
        names.append("linguistic regions (Zhang et al., ACL 2024)")
    if found.keys() & {"keyneuron_scores", "keyneuron_maps", "keyneuron_eval", "method_comparison"}:
        names.append("key neurons (NA-ICA, Chen et al. 2024)")
    if "explain" in found:
        names.append("neuron cards")
    return ", ".join(names[:-1]) + (" and " if len(names) > 1 else "") + names[-1] if names else ""


def _header(run: Path, present: Sequence[tuple[str, str]], found: Mapping[str, list[Path]],
            skipped: Sequence[str]) -> str:
    from ..version import __version__

    parts = [f"<header><h1>lape report <span class=\"path\">{esc(run.name)}</span></h1>",
             f'<p class="subtitle">{esc(_methods(found))} · '
             f"lape {esc(__version__)} · {esc(time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()))}</p>"]
    if present:
        parts.append('<nav class="toc">' + "".join(f'<a href="#{esc(k)}">{esc(t)}</a>' for k, t in present)
                     + "</nav>")
    parts.append("</header>")
    cards = []
    if skipped:
        parts.append('<p class="note">Not shown: ' + "; ".join(esc(x) for x in skipped) + ".</p>")
    meta = _model_meta(found)
    if meta:
        fp = meta.get("fingerprint") or {}
        n = fp.get("num_parameters")
        model = {"model": meta.get("model_id"), "architecture": fp.get("architecture"),
                 "layers": fp.get("num_layers"), "hidden size": fp.get("hidden_size"),
                 "MLP neurons per layer": fp.get("intermediate_size") or meta.get("neurons_per_layer"),
                 "vocabulary": fp.get("vocab_size"),
                 "parameters": (f"{n / 1e6:,.1f} M" if n >= 1e6 else f"{n:,}") if isinstance(n, (int, float)) else None,
                 "weights checksum": Raw(f"<code>{esc(fp.get('checksum', '–'))}</code>")}
        cards.append(f"<div><h3>Model</h3>{facts_list(model)}</div>")
    demo = run / "demo.json"
    if demo.is_file():
        settings = artifacts.read_json(demo)
        if isinstance(settings, Mapping):
            cards.append(f"<div><h3>Run settings</h3>{kv_table(settings)}</div>")
    if cards:
        parts.append(f'<section class="overview"><div class="grid">{"".join(cards)}</div></section>')
    return "".join(parts)


def write_report(run: str | Path, sections: Sequence[tuple[str, SectionRenderer]] | None = None) -> Path:
    """Write ``RUN/report.html`` (self-contained) and the report's figures into ``RUN/plots/``.

    Args:
        run: a run folder (as written by ``lape demo``) holding any of ``stats/``, ``neurons/``,
            ``ppl/``, ``steering/`` and ``demo.json``.
        sections: the section registry to use (default :func:`all_sections`).

    Returns:
        The path of ``report.html``.

    Raises:
        LapeError: ``run`` is not a folder.

    Example:
        >>> write_report("runs/demo")
        PosixPath('runs/demo/report.html')
    """
    run = Path(run)
    if run.is_file():
        raise LapeError(f"{run} is a file: pass the run folder that holds it (e.g. {run.parent})")
    if not run.is_dir():
        raise LapeError(f"run folder {run} does not exist: pass the folder lape demo wrote (e.g. runs/demo)")
    found, empty = find_artifacts(run)
    ctx = ReportContext(run, run / "plots", found=found)
    default, titles = all_sections()
    registry = list(default if sections is None else sections)
    known = {kind for kind, _ in registry}
    rendered, present = [], []
    rendered_kinds: list[tuple[str, Path]] = []
    skipped = [f"{name}/ (no lape artifact)" for name in empty]
    skipped += [f"{f.name}/ ({kind}: this report has no section for it)" for kind, fs in found.items()
                if kind not in known for f in fs]
    for kind, render in [(k, r) for k, r in registry for _ in found.get(k, [])[:None if k in EVERY_FOLDER else 1]]:
        folders = found.get(kind, [])
        if kind in EVERY_FOLDER:
            folder = folders[sum(k == kind for k, _ in rendered_kinds)]
        else:
            skipped += [f"{f.name}/ (another {kind} artifact; shown: {folders[0].name}/)" for f in folders[1:]]
            folder = folders[0]
        rendered_kinds.append((kind, folder))
        try:
            html_section = render(folder, ctx)
        except (LapeError, KeyError, ValueError, OSError) as exc:
            logger.warning("report: %s/ could not be read (%s)", folder.name, exc)
            html_section = section_html(folder.name, folder.name,
                                    f'<p class="fail">This folder could not be read: {esc(exc)}</p>')
        rendered.append(html_section)
        present.append((folder.name, titles.get(kind, kind)))
    for line in skipped:
        logger.info("report: not shown: %s", line)
    if not rendered:
        rendered.append('<section><p>This run folder holds no results yet (no stats, neurons, perplexity or '
                        "steering artifacts).</p></section>")
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>lape report: {esc(run.name)}</title><style>{_CSS}</style></head>"
            f"<body><main>{_header(run, present, found, skipped)}{''.join(rendered)}</main></body></html>\n")
    path = run / "report.html"
    artifacts.atomic_write_text(path, page)
    logger.info("report -> %s (%d sections, %d figure files in %s)", path, len(rendered),
                len(ctx.written), ctx.plots_dir)
    return path


_SECTION_TITLES = {"stats": "Statistics", "neurons": "Neurons", "ppl": "Perplexity", "steering": "Steering"}

_CSS = """
:root{--fg:#1f2328;--muted:#656d76;--line:#d8dee4;--soft:#f6f8fa;--accent:#0b5cad;--hi:#fff1e0}
*{box-sizing:border-box}
body{margin:0;background:#f3f4f6;color:var(--fg);font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,
"Helvetica Neue",Arial,"Noto Sans","Noto Sans CJK JP","Hiragino Sans","PingFang SC","Microsoft YaHei",sans-serif}
main{max-width:1180px;margin:0 auto;padding:32px 24px 64px}
h1{font-size:28px;margin:0 0 2px;letter-spacing:-.01em}
h2{font-size:20px;margin:0 0 14px;padding-bottom:8px;border-bottom:1px solid var(--line)}
h3{font-size:15px;margin:18px 0 8px}
.path{font:13px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;color:var(--muted);font-weight:400;
margin-left:6px}
.subtitle{color:var(--muted);margin:0 0 12px}
nav.toc{display:flex;flex-wrap:wrap;gap:8px;margin:8px 0 0}
nav.toc a{color:var(--accent);text-decoration:none;border:1px solid var(--line);background:#fff;
border-radius:999px;padding:2px 12px;font-size:13px}
section{background:#fff;border:1px solid var(--line);border-radius:10px;padding:20px 24px;margin:20px 0;
box-shadow:0 1px 2px rgba(0,0,0,.03)}
section.overview h3{margin-top:0}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(460px,1fr));gap:12px 28px;align-items:start}
.figs{display:flex;flex-wrap:wrap;gap:8px 24px;align-items:flex-start}
figure{margin:8px 0 4px}
.figs figure{display:table}
.figs figcaption{display:table-caption;caption-side:bottom}
figure img{display:block;max-width:100%;height:auto;margin:0 auto}
figcaption{font-size:13px;color:var(--muted);margin-top:4px;text-align:center}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:13px;font-variant-numeric:tabular-nums;margin:4px 0 14px}
.cap{font-size:13px;color:var(--muted);margin:8px 0 2px}
.row{display:flex;flex-wrap:wrap;gap:4px 48px;align-items:flex-start}
.row>dl.facts{margin-top:10px}
th,td{border:1px solid #e3e6ea;padding:3px 9px;text-align:right;vertical-align:top}
th{background:var(--soft);font-weight:600}
.l{text-align:left}
tr.total td{font-weight:600;background:#fafafa}
td.diag{background:var(--hi);font-weight:600}
table.kv td:first-child{color:var(--muted);white-space:nowrap}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 18px;margin:0 0 12px;font-size:14px}
dl.facts dt{color:var(--muted)}
dl.facts dd{margin:0}
code{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;word-break:break-all}
.text{white-space:pre-wrap;word-break:break-word;min-width:180px;max-width:380px;margin-top:2px}
.lang{display:inline-block;font:600 11px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;
padding:0 6px;border-radius:4px;background:#e8eef7;color:#24406b}
.ok{color:#1a7f37;font-weight:600}
.fail{color:#c9252d;font-weight:600}
.note{font-size:13px;color:var(--muted)}
details{margin:4px 0 12px}
summary{cursor:pointer;color:var(--accent);font-size:13px}
"""


def all_sections() -> tuple[list[tuple[str, SectionRenderer]], dict[str, str]]:
    """Every method's sections in report order, and their navigation titles: LAPE's
    (:data:`SECTIONS`), then linguistic regions' (:mod:`lape.regions.report`), key neurons'
    (:mod:`lape.keyneurons.report`) and the neuron cards (:mod:`lape.explain.report`), imported here because they build on this module."""
    from ..explain import report as explain_report
    from ..keyneurons import report as keyneurons_report
    from ..regions import report as regions_report

    return ([*SECTIONS, *regions_report.SECTIONS, *keyneurons_report.SECTIONS, *explain_report.SECTIONS],
            {**_SECTION_TITLES, **regions_report.TITLES, **keyneurons_report.TITLES, **explain_report.TITLES})
