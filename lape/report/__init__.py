"""A self-contained HTML report of a run folder, and the figure files next to it.

:func:`write_report` reads what a run folder holds (its subfolders' artifacts, found by the kind
their sidecar names, and ``demo.json`` with the run's settings) and writes ``RUN/report.html``: one
file, images embedded as base64 PNG, inline CSS, no script and no network reference, so it can
be mailed or opened offline. Each artifact present gives one section; an absent folder gives
none. The numbers behind every figure are shown as tables, and every figure is also saved as
PNG and SVG into ``RUN/plots/`` for the README.

Sections come from the method packages (:data:`METHOD_PACKAGES`): each one's ``report`` module
lists its ``SECTIONS`` (``(artifact kind, render function)``) and ``TITLES``; a fourth method adds
its package name there (:func:`all_sections`).

This module loads artifacts, never a model. The small numbers it shows beside the figures
(layer-third shares, group means) are computed here, not in :mod:`lape.plots`.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import artifacts, plots
from ..errors import LapeError
from ..masks import NeuronSets
from ..neurons.stats import ActivationStats
from .html import (
    Raw,
    ReportContext,
    SectionRenderer,
    esc,
    facts_list,
    kv_table,
    save_figure,
    save_result_figure,
    section_html,
)

__all__ = ["METHOD_PACKAGES", "ReportContext", "SectionRenderer", "all_sections", "find_artifacts", "layer_shares",
           "neuron_summary", "save_figure", "save_neuron_plots", "save_result_figure", "write_report"]

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


EVERY_FOLDER = {"steering"}  # kinds shown once per folder (development and test evaluations side by side)

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
    (:mod:`lape.neurons.report`), linguistic regions' (:mod:`lape.regions.report`), key neurons'
    (:mod:`lape.keyneurons.report`) and the neuron cards' (:mod:`lape.explain.report`). Each method
    package registers its sections in its ``report`` module's ``SECTIONS`` and ``TITLES``; they are
    imported here because they build on this module."""
    methods = [importlib.import_module(f"lape.{name}.report") for name in METHOD_PACKAGES]
    return ([section for m in methods for section in m.SECTIONS],
            {title: text for m in methods for title, text in m.TITLES.items()})


METHOD_PACKAGES = ("neurons", "regions", "keyneurons", "explain")  # report order
