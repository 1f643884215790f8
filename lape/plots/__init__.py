"""Figures of lape results: functions from result objects to matplotlib ``Figure``s.

Every function takes a result object (:class:`~lape.masks.NeuronSets`,
:class:`~lape.neurons.stats.ActivationStats`, :class:`~lape.evaluate.perplexity.PerplexityResult`,
:class:`~lape.evaluate.steering_result.SteeringEval`) and returns a new :class:`matplotlib.figure.Figure`.
Nothing here computes a statistic beyond layout (which neurons fit on the axis, which strength is
the default) or writes a file: :mod:`lape.report` saves figures and holds the numbers behind them.

Figures are built on ``matplotlib.figure.Figure`` directly, never through ``pyplot``: no global
figure registry, no interactive backend, nothing to close, safe in threads and in tests. A
figure renders with ``fig.savefig(buf, format="png")`` (Agg) like any other.

Example:
    >>> from lape import NeuronSets
    >>> from lape.plots import layer_distribution
    >>> fig = layer_distribution(NeuronSets.load("runs/demo/neurons"))
    >>> fig.savefig("layers.png")
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import LapeError
from ..masks import mono_language

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    from ..evaluate.perplexity import PerplexityResult
    from ..evaluate.steering_result import SteeringEval
    from ..masks import NeuronSets
    from ..neurons.stats import ActivationStats
    from ..regions.ablate import RegionPerplexity

logger = logging.getLogger(__name__)

PPL_METRICS = ("delta_ppl", "delta_nll", "nll")  # what ppl_heatmaps can draw
_METRIC_TITLES = {"delta_ppl": "PPL change", "delta_nll": "NLL change (nats/token)", "nll": "NLL (nats/token)"}
_MISSING = "#d9d9d9"  # cells without a value (no random baseline)


def new_figure(width: float, height: float) -> Figure:
    """A new figure that belongs to no pyplot state (rendered by Agg when saved)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def thirds(num_layers: int) -> tuple[range, range]:
    """The bottom and top third of ``num_layers`` layers, as layer ranges.

    Each third has ``max(1, num_layers // 3)`` layers, so 18 layers split 6/6/6 and 26 layers
    8/10/8; with fewer than three layers the thirds overlap. :func:`lape.report.neuron_summary`
    and :func:`layer_distribution`'s shading use this one definition.

    Example:
        >>> thirds(18)
        (range(0, 6), range(12, 18))
    """
    k = max(1, num_layers // 3)
    return range(0, min(k, num_layers)), range(max(num_layers - k, 0), num_layers)


def method_label(method: Any) -> str:
    """A method name for titles: ``"lape"`` -> ``"LAPE"`` (also LAVE, LAP); others as they are.

    Example:
        >>> method_label("lape"), method_label("random")
        ('LAPE', 'random')
    """
    return str(method).upper() if str(method).lower() in ("lape", "lave", "lap") else str(method)


# --------------------------------------------------------------------------------------------
# Neuron sets


def layer_distribution(sets: NeuronSets, shares: tuple[float | None, float | None] | None = None) -> Figure:
    """Language-specific neurons per layer: one line per label (x: layer, y: neuron count).

    The bottom and top thirds of the layers (:func:`thirds`) are shaded; Tang et al. find most
    language-specific neurons there.

    Args:
        sets: the neuron sets (``masks`` ``[labels, layers, neurons]``).
        shares: ``(bottom, top)``: the share of the sets' union in the bottom and top third, for
            the title (from :func:`lape.report.layer_shares`); ``None`` leaves them out.

    Returns:
        A figure with one axes; ``axes[0].lines[i]`` is label ``i``'s counts per layer.

    Example:
        >>> fig = layer_distribution(sets, shares=(0.41, 0.37))
        >>> fig.axes[0].lines[0].get_ydata()   # neurons of sets.labels[0] per layer
    """
    num_layers = sets.shape[0]
    fig = new_figure(5.8, 3.6)
    ax = fig.add_subplot()
    bottom, top = thirds(num_layers)
    for span, name in ((bottom, "bottom third"), (top, "top third")):
        ax.axvspan(span.start - 0.5, span.stop - 0.5, color="#eeeeee", zorder=0, lw=0)
        ax.text((span.start + span.stop - 1) / 2, 1.0, name, transform=ax.get_xaxis_transform(),
                ha="center", va="bottom", fontsize=7, color="#777777")
    layers = np.arange(num_layers)
    cmap = label_colors(len(sets.labels))
    for k, (label, counts) in enumerate(sets.counts_per_layer().items()):
        ax.plot(layers, np.asarray(counts), marker="o", ms=3, lw=1.5, label=label, color=cmap[k])
    ax.set_xlabel("layer")
    ax.set_ylabel("neurons")
    ax.set_xlim(-0.5, num_layers - 0.5)
    ax.set_ylim(bottom=0)
    ax.xaxis.set_major_locator(_int_locator())
    ax.yaxis.set_major_locator(_int_locator())
    ax.grid(axis="y", color="#dddddd", lw=0.6)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(title="set", fontsize=8, title_fontsize=8, ncols=max(1, math.ceil(len(sets.labels) / 8)),
              frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    title = f"{method_label(sets.meta.get('method', 'selected'))} neurons per layer"
    if shares is not None:
        title += f"\nbottom third {pct(shares[0])}, top third {pct(shares[1])} of all"
    ax.set_title(title, fontsize=10)
    return fig


def overlap_heatmap(sets: NeuronSets) -> Figure:
    """Neurons shared by each pair of labels (:meth:`NeuronSets.overlaps`), cells annotated.

    The diagonal is each set's size.

    Example:
        >>> fig = overlap_heatmap(sets)
    """
    from matplotlib.colors import Normalize

    ov = sets.overlaps().numpy()  # (labels, labels)
    n = len(sets.labels)
    size = 1.6 + 0.42 * n
    fig = new_figure(size + 1.0, size)
    ax = fig.add_subplot()
    norm = Normalize(0, max(int(ov.max()), 1))
    im = ax.imshow(ov, cmap="Blues", norm=norm)
    _annotate(ax, ov.astype(float), im, [[f"{v:d}" for v in row] for row in ov.tolist()], n)
    _ticks(ax, sets.labels, sets.labels)
    ax.set_xlabel("set")
    ax.set_ylabel("set")
    ax.set_title(f"Shared {method_label(sets.meta.get('method', 'selected'))} neurons", fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8, label="neurons")
    return fig


def select_neurons(sets: NeuronSets, max_neurons: int = 400) -> list[tuple[str, int, int]]:
    """The neurons :func:`probability_heatmap` shows, in order: ``(label, layer, index)``.

    Each neuron of the sets' union appears once, under the first label that holds it; labels
    keep their order, neurons within a label are sorted by ``(layer, index)``. With more than
    ``max_neurons``, evenly spaced ones are kept (every group keeps its share).

    Example:
        >>> select_neurons(sets, max_neurons=3)
        [('en', 0, 4), ('fr', 2, 1), ('ja', 17, 9)]
    """
    if max_neurons < 1:
        raise LapeError(f"max_neurons must be at least 1, got {max_neurons}")
    seen = np.zeros(sets.shape, dtype=bool)
    chosen: list[tuple[str, int, int]] = []
    for label, mask in zip(sets.labels, sets.masks.numpy(), strict=True):
        own = mask & ~seen
        seen |= mask
        chosen += [(label, int(a), int(b)) for a, b in np.argwhere(own)]
    if len(chosen) > max_neurons:
        keep = np.unique(np.linspace(0, len(chosen) - 1, max_neurons).round().astype(int))
        chosen = [chosen[i] for i in keep]
    return chosen


def probability_heatmap(sets: NeuronSets, stats: ActivationStats, max_neurons: int = 400) -> Figure:
    """Activation probability of the selected neurons in every recorded language.

    Columns are neurons, grouped by the label they belong to (:func:`select_neurons`); rows are
    ``stats.languages``; colour is ``stats.probabilities()[lang, layer, neuron]`` (the share of a
    language's tokens on which the neuron fires). A language-specific neuron is a column that is
    bright in its own language's row only.

    Args:
        sets: neuron sets on the same ``[layers, neurons]`` space as ``stats``.
        stats: the activation statistics the sets were selected from.
        max_neurons: at most this many columns (evenly subsampled).

    Raises:
        LapeError: sets and stats on different neuron spaces.

    Example:
        >>> fig = probability_heatmap(sets, stats, max_neurons=200)
    """
    from matplotlib.colors import Normalize

    if tuple(sets.shape) != tuple(stats.shape):
        raise LapeError(f"the neuron sets are on {sets.shape[0]} x {sets.shape[1]} neurons but the stats "
                        f"on {stats.shape[0]} x {stats.shape[1]}: pass the stats the sets were made from")
    cols = select_neurons(sets, max_neurons)
    probs = stats.probabilities().numpy()  # (languages, layers, neurons)
    layer_idx = np.array([c[1] for c in cols], dtype=int)
    neuron_idx = np.array([c[2] for c in cols], dtype=int)
    # an empty selection still gets an axis (one blank column) and says so in its label
    data = probs[:, layer_idx, neuron_idx] if cols else np.full((len(stats.languages), 1), np.nan)
    n_lang = len(stats.languages)
    fig = new_figure(10.0, 1.5 + 0.32 * n_lang)
    ax = fig.add_subplot()
    im = ax.imshow(data, aspect="auto", cmap="magma", norm=Normalize(0.0, 1.0), interpolation="nearest")
    ax.set_yticks(range(n_lang), stats.languages, fontsize=8)
    ax.set_ylabel("recorded language")
    # one tick per group, at its centre; thin lines between groups
    groups: list[tuple[str, int, int]] = []  # (label, first column, end column)
    for i, (label, _, _) in enumerate(cols):
        if groups and groups[-1][0] == label:
            groups[-1] = (label, groups[-1][1], i + 1)
        else:
            groups.append((label, i, i + 1))
    ax.set_xticks([(a + b - 1) / 2 for _, a, b in groups], [g[0] for g in groups], fontsize=8)
    for _, a, _ in groups[1:]:
        ax.axvline(a - 0.5, color="white", lw=0.8)
    total = int(sets.union().sum())
    shown = f"{len(cols)} of {total}" if len(cols) < total else f"all {total}" if total else "none"
    ax.set_xlabel(f"neurons grouped by set ({shown} shown)")
    ax.set_title(f"Activation probability of the {method_label(sets.meta.get('method', 'selected'))} neurons",
                 fontsize=10)
    fig.colorbar(im, ax=ax, pad=0.01, label="P(fires)")
    return fig


# --------------------------------------------------------------------------------------------
# Perplexity


def _ppl_matrix(result: PerplexityResult, random: bool, metric: str) -> np.ndarray:
    if metric not in PPL_METRICS:
        raise LapeError(f"unknown perplexity metric {metric!r}: use one of {', '.join(PPL_METRICS)}")
    if metric == "delta_ppl":
        m = result.delta_ppl(random)
    elif metric == "delta_nll":
        m = result.delta_nll(random)
    else:
        m = result.random_nll if random else result.nll
    return np.array(m, dtype=float).reshape(len(result.rows), len(result.languages))


def _ppl_norm(mats: Sequence[np.ndarray], metric: str) -> tuple[Normalize, str]:
    """One colour scale for all matrices: diverging around 0 for changes (symmetric-log when the
    values span more than two decades, as a diagonal of +500 next to +2 does), sequential for NLL."""
    from matplotlib.colors import Normalize, SymLogNorm

    vals = np.concatenate([m[np.isfinite(m)].ravel() for m in mats]) if mats else np.zeros(0)
    if metric == "nll":
        lo, hi = (float(vals.min()), float(vals.max())) if vals.size else (0.0, 1.0)
        return Normalize(lo, hi if hi > lo else lo + 1), "viridis"
    absmax = float(np.abs(vals).max()) if vals.size else 0.0
    absmax = absmax if absmax > 0 else 1.0
    nonzero = np.abs(vals[vals != 0])
    if nonzero.size and absmax / float(nonzero.min()) > 100:
        return SymLogNorm(linthresh=absmax / 100, vmin=-absmax, vmax=absmax, base=10), "RdBu_r"
    return Normalize(-absmax, absmax), "RdBu_r"


def _ppl_axes(ax: Axes, result: PerplexityResult, m: np.ndarray, norm: Normalize, cmap: str,
              metric: str, title: str) -> Any:
    import matplotlib

    cm = matplotlib.colormaps[cmap].with_extremes(bad=_MISSING)
    im = ax.imshow(np.ma.masked_invalid(m), cmap=cm, norm=norm)
    signed = metric != "nll"
    texts = [[_num(v, signed) for v in row] for row in m.tolist()]
    _annotate(ax, m, im, texts, max(m.shape))
    _ticks(ax, result.languages, result.rows)
    ax.set_xlabel("evaluated language")
    ax.set_ylabel("deactivated neurons")
    ax.set_title(title, fontsize=10)
    return im


def _ppl_title(result: PerplexityResult, random: bool, metric: str) -> str:
    method = method_label((result.meta.get("neurons") or {}).get("method") or "LAPE")
    what = "random neurons (same count per layer)" if random else f"{method} neurons"
    return f"{_METRIC_TITLES[metric]}: {what} deactivated"


def ppl_heatmaps(result: PerplexityResult, metric: str = "delta_ppl") -> Figure:
    """The selected-neuron matrix beside its random baseline, on one shared colour scale.

    Example:
        >>> fig = ppl_heatmaps(result)
        >>> [ax.get_title() for ax in fig.axes[:2]]
    """
    mats = [_ppl_matrix(result, r, metric) for r in (False, True)]
    norm, cmap = _ppl_norm(mats, metric)
    w = 1.2 + 0.5 * len(result.languages)
    fig = new_figure(2 * w + 1.2, 1.5 + 0.42 * len(result.rows))
    axes = fig.subplots(1, 2, sharey=True)
    im = None
    for ax, m, r in zip(axes, mats, (False, True), strict=True):
        title = _ppl_title(result, r, metric).split(": ", 1)[1].replace(" (", "\n(")
        im = _ppl_axes(ax, result, m, norm, cmap, metric, title)
    axes[1].set_ylabel("")
    fig.suptitle(_METRIC_TITLES[metric], fontsize=11)
    _colorbar(fig, im, list(axes), _METRIC_TITLES[metric])
    return fig


def region_removal(result: RegionPerplexity) -> Figure:
    """Region removal: NLL change per evaluated language, the controls (core, random, bottom,
    and extra rows such as core with massive dimensions kept) beside the monolingual matrix,
    each panel on its own colour scale (core removal is orders of magnitude above the rest).

    Example:
        >>> fig = region_removal(lape.load("runs/demo/regions-ppl"))
    """
    import matplotlib

    m = _ppl_matrix(result, False, "delta_nll")
    groups = [("controls", [i for i, r in enumerate(result.rows) if not mono_language(r)]),
              ("monolingual regions", [i for i, r in enumerate(result.rows) if mono_language(r)])]
    groups = [(name, idx) for name, idx in groups if idx]
    w = 1.6 + 0.55 * len(result.languages)
    fig = new_figure(len(groups) * w + 1.0, 1.6 + 0.45 * max(len(idx) for _, idx in groups))
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    for ax, (name, idx) in zip(axes, groups, strict=True):
        sub = m[idx]
        norm, cmap = _ppl_norm([sub], "delta_nll")
        im = ax.imshow(np.ma.masked_invalid(sub), cmap=matplotlib.colormaps[cmap].with_extremes(bad=_MISSING),
                       norm=norm)
        _annotate(ax, sub, im, [[_num(v, True) for v in row] for row in sub.tolist()], max(sub.shape))
        _ticks(ax, result.languages, [result.rows[i] for i in idx])
        ax.set_xlabel("evaluated language")
        ax.set_ylabel("removed region")
        ax.set_title(f"{name}: NLL change (nats/token)", fontsize=10)
        _colorbar(fig, im, ax, "NLL change")
    return fig


# --------------------------------------------------------------------------------------------
# Steering


def default_strength(ev: SteeringEval) -> float | None:
    """The strength whose rows :func:`steering_bars` shows: the configured one if evaluated,
    else the first evaluated one (``None`` without rows).

    Example:
        >>> default_strength(ev)
        1.0
    """
    strengths = [r["strength"] for r in ev.steered()]
    configured = (ev.meta.get("config") or {}).get("strength")
    if configured is not None and any(math.isclose(s, configured) for s in strengths):
        return float(configured)
    return float(strengths[0]) if strengths else None


def steering_bars(ev: SteeringEval, strength: float | None = None) -> Figure:
    """Per target language: success of the unsteered outputs, of the random control (mean over
    its draws, when evaluated) and of the steered outputs, and the steered outputs' fluent
    success (when fluency was measured), in %.

    Args:
        ev: from :meth:`lape.evaluate.steering.Steerer.evaluate`.
        strength: which strength's rows to show (default: :func:`default_strength`).

    Example:
        >>> fig = steering_bars(SteeringEval.load("runs/demo/steering"))
    """
    profile = bool(ev.meta.get("profile"))
    strength = None if profile else default_strength(ev) if strength is None else strength
    rows = [r for r in ev.steered() if strength is None or math.isclose(r["strength"], strength)]
    rows = list({r["target"]: r for r in rows}.values())  # one row per target
    targets = [str(r["target"]) for r in rows]
    random = {t: [r["steered_success"] for r in ev.steered("random") if r["target"] == t and
                  (strength is None or math.isclose(r["strength"], strength))] for t in targets}
    series = [("unsteered", [r["unsteered_success"] for r in rows], "#bbbbbb")]
    if all(random.values()):
        series.append(("random neurons", [float(np.mean(random[t])) for t in targets], "#92c5de"))
    series.append(("steered", [r["steered_success"] for r in rows], "#d6604d"))
    if all("fluent_success" in r for r in rows) and rows:
        series.append(("steered and fluent", [r["fluent_success"] for r in rows], "#67001f"))
    x = np.arange(len(rows))
    fig = new_figure(max(3.4, 1.4 + 0.2 * len(series) * len(rows)), 3.3)
    ax = fig.add_subplot()
    width = 0.8 / len(series)
    for k, (name, values, color) in enumerate(series):
        vals = np.array([100 * float(v) for v in values])
        bars = ax.bar(x + (k - (len(series) - 1) / 2) * width, vals, width, label=name, color=color)
        ax.bar_label(bars, labels=[f"{v:.0f}" for v in vals], fontsize=6 if len(series) > 2 else 7, padding=1)
    ax.set_xticks(x, targets)
    ax.set_xlabel("target language")
    ax.set_ylabel("success (%)")
    ax.set_ylim(0, 108)
    ax.spines[["top", "right"]].set_visible(False)
    fig.legend(frameon=False, fontsize=8, loc="outside right upper")
    source = ev.meta.get("source") or "none"
    s = ", calibrated profile" if profile else f", strength {strength:g}" if strength is not None else ""
    ax.set_title(f"Steering from {source}{s}", fontsize=10)
    return fig


def strength_sweep(ev: SteeringEval) -> Figure:
    """Steered success and distinct-2 against strength, one line per target language.

    Only informative when several strengths were evaluated; with one, each line is a point.

    Example:
        >>> fig = strength_sweep(ev)   # ev from evaluate(..., strengths=[0.5, 1, 2, 4])
    """
    steered = ev.steered()
    targets = list(dict.fromkeys(str(r["target"]) for r in steered))
    strengths = sorted({float(r["strength"]) for r in steered})
    colors = label_colors(len(targets))
    fig = new_figure(5.2, 2.9)
    axes = fig.subplots(1, 2, sharex=True)
    panels = (("steered_success", "steered success (%)", 100.0), ("steered_distinct_2", "distinct-2", 1.0))
    for ax, (key, ylabel, scale) in zip(axes, panels, strict=True):
        for k, target in enumerate(targets):
            rows = sorted((r for r in steered if str(r["target"]) == target), key=lambda r: r["strength"])
            ax.plot([r["strength"] for r in rows], [scale * float(r[key]) for r in rows], marker="o",
                    ms=3, lw=1.5, color=colors[k], label=target)
        ax.set_xlabel("strength")
        if strengths and strengths[0] > 0 and strengths[-1] / strengths[0] >= 4:
            ax.set_xscale("log", base=2)  # 0.5, 1, 2, 4 evenly spaced
            ax.minorticks_off()
        if 0 < len(strengths) <= 8:
            ax.set_xticks(strengths, [f"{s:g}" for s in strengths])
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 1.05 * scale)
        ax.grid(color="#dddddd", lw=0.6)
        ax.spines[["top", "right"]].set_visible(False)
    axes[1].axhline(0.5, color="#999999", lw=0.8, ls="--")  # the degeneracy bar of a success
    fig.legend(handles=list(axes[0].lines), title="target", frameon=False, fontsize=8, title_fontsize=8,
               loc="outside right upper")
    fig.suptitle("Steering strength sweep", fontsize=10)
    return fig


# --------------------------------------------------------------------------------------------
# layout helpers


def accumulated_heatmap(labels: Sequence[str], accumulated: Any, bins: int = 64) -> Figure:
    """Key neurons' accumulated scores (``[labels, layers, neurons]``) as one layer x neuron-bin
    heatmap per label (neurons summed in ``bins`` equal bins; the paper's Fig. 2 view)."""
    import torch

    n, layers, width = accumulated.shape
    bins = max(1, min(bins, width))
    edges = torch.linspace(0, width, bins + 1).round().long().tolist()
    binned = torch.stack([accumulated[:, :, a:b].sum(-1) for a, b in zip(edges[:-1], edges[1:])], dim=-1)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig = new_figure(4.2 * cols, 2.6 * rows)
    for k, label in enumerate(labels):
        ax = fig.add_subplot(rows, cols, k + 1)
        im = ax.imshow(binned[k].numpy(), aspect="auto", origin="lower", cmap="magma",
                       extent=(0, width, -0.5, layers - 0.5), interpolation="nearest")
        ax.set_title(str(label), fontsize=9)
        ax.set_xlabel("neuron index", fontsize=8)
        ax.set_ylabel("layer", fontsize=8)
        ax.tick_params(labelsize=7)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    fig.suptitle("accumulated key-neuron scores (NA-ICA) per cluster", fontsize=10)
    return fig


def method_effects(effect: Sequence[dict[str, Any]]) -> Figure:
    """Per language, each method's own-language NLL change (solid) next to the other languages'
    mean (hatched) when the method's set for that language is switched off."""
    languages = list(dict.fromkeys(r["language"] for r in effect))
    methods = list(dict.fromkeys(r["family"] for r in effect))
    cell = {(r["family"], r["language"]): r for r in effect}
    fig = new_figure(max(4.5, 1.3 * len(languages) + 2), 3.2)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(len(methods), 1)
    colors = label_colors(len(methods))
    for k, m in enumerate(methods):
        xs = [i + (k - (len(methods) - 1) / 2) * width for i in range(len(languages))]
        own = [cell[(m, lang)]["own_delta_nll"] if (m, lang) in cell else float("nan") for lang in languages]
        others = [cell[(m, lang)]["others_delta_nll"] if (m, lang) in cell else float("nan") for lang in languages]
        ax.bar(xs, own, width * 0.9, color=colors[k], label=f"{m}: own language")
        ax.bar(xs, others, width * 0.45, color="white", edgecolor=colors[k], hatch="///", label=f"{m}: others (mean)")
    ax.set_xticks(range(len(languages)), languages)
    ax.set_ylabel("NLL change (nats/token)")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("switching off one method's set for a language", fontsize=10)
    return fig


def label_colors(n: int) -> list[Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _colorbar(fig: Figure, im: Any, ax: Any, label: str) -> None:
    """A colour bar; a symmetric-log one gets ticks at 0 and +-powers of ten only (the default
    ticks crowd around 0)."""
    from matplotlib.colors import SymLogNorm

    cbar = fig.colorbar(im, ax=ax, shrink=0.8, label=label)
    norm = im.norm
    if isinstance(norm, SymLogNorm):
        lo = math.ceil(math.log10(norm.linthresh))
        hi = math.floor(math.log10(norm.vmax))
        powers = [10.0**k for k in range(lo, hi + 1)]
        ticks = [-p for p in reversed(powers)] + [0.0] + powers
        cbar.set_ticks(ticks, labels=[f"{t:+g}" if t else "0" for t in ticks])


def _int_locator() -> Any:
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _ticks(ax: Axes, xlabels: Sequence[str], ylabels: Sequence[str]) -> None:
    ax.set_xticks(range(len(xlabels)), [str(s) for s in xlabels], fontsize=8)
    ax.set_yticks(range(len(ylabels)), [str(s) for s in ylabels], fontsize=8)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)


def _annotate(ax: Axes, values: np.ndarray, im: Any, texts: list[list[str]], n: int) -> None:
    """Write ``texts`` into the cells, white on dark cells, black on light ones."""
    size = max(4.5, min(8.0, 70.0 / max(n, 1)))
    for i, row in enumerate(texts):
        for j, text in enumerate(row):
            v = values[i, j]
            if np.isfinite(v):
                r, g, b, _ = im.cmap(im.norm(v))
                color = "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black"
            else:
                color = "#666666"
            ax.text(j, i, text, ha="center", va="center", fontsize=size, color=color)


def _num(v: float, signed: bool) -> str:
    """Compact cell text: ``+1234`` -> ``+1.2k``, ``0.031`` -> ``+0.03``; NaN -> ``–``."""
    if not math.isfinite(v):
        return "–"
    sign = "+" if signed else ""
    a = abs(v)
    if a >= 1e4:
        return f"{v / 1e3:{sign}.0f}k"
    if a >= 100:
        return f"{v:{sign}.0f}"
    if a >= 10:
        return f"{v:{sign}.1f}"
    return f"{v:{sign}.2f}"


def pct(v: float | None, digits: int = 0) -> str:
    """A share as a percentage (``0.25`` -> ``25%``; ``digits`` decimals); a dash when missing.
    The one percent formatter of figures, reports and the README."""
    return "–" if v is None or not math.isfinite(v) else f"{100 * v:.{digits}f}%"
