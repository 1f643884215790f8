"""Figures of the linguistic-regions results (:mod:`lape.regions`): the region along the residual
stream, the super-weight test and further pre-training with a region frozen. Each function takes
a result and returns a ``matplotlib.figure.Figure``; the report and the CLI save it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import LapeError
from ..regions.perturb import ratio_text
from . import label_colors, new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..regions.dims import DimensionProfile
    from ..regions.forgetting import RegionTrain
    from ..regions.massive import MassiveDims
    from ..regions.perturb import RegionPerturb


def dimension_figure(profile: DimensionProfile, massive: MassiveDims | None = None) -> Any:
    """The profile per residual-axis tensor type, massive channels marked (a
    ``matplotlib.figure.Figure``; the report saves it)."""
    types = profile.residual_types()
    if not types:
        raise LapeError(f"region {profile.label!r} covers no tensor on the residual stream: nothing to plot")
    marked = list(massive.dims) if massive is not None else list(profile.dims)
    n_panels = len(types) + (massive is not None)
    cols = 1 if n_panels < 4 else 2
    rows = -(-n_panels // cols)
    fig = new_figure(6.5 * cols, 1.4 + 1.6 * rows)
    axs = fig.subplots(rows, cols, sharex=True, squeeze=False).T.reshape(-1)  # down the first column first
    for ax in axs[n_panels:]:
        ax.set_visible(False)
    axs = axs[:n_panels]
    x = np.arange(profile.hidden_size)
    for ax, t in zip(axs, types):
        enr = np.asarray(profile.enrichment(t), dtype=float)
        ax.plot(x, enr, lw=0.8, color="#1f77b4")
        ax.axhline(1.0, color="#888888", lw=0.6, ls="--")
        _mark(ax, marked)
        ax.set_ylabel("x chance", fontsize=8)
        ax.set_title(f"{t} ({profile.tensors[t]} tensors, {profile.entries[t]} region entries)", fontsize=8)
        ax.spines[["top", "right"]].set_visible(False)
    if massive is not None:
        ax = axs[-1]
        times = massive.times or [p / massive.median if massive.median else 0.0 for p in massive.peak]
        ax.semilogy(x, np.maximum(np.asarray(times, dtype=float), 1e-12), lw=0.8, color="#444444")
        ax.axhline(massive.ratio, color="#d62728", lw=0.6, ls="--")
        _mark(ax, marked)
        ax.set_ylabel("x layer median", fontsize=8)
        ax.set_title(f"activation peak per channel over its layer's median channel peak (massive above "
                     f"{massive.ratio:g}x)", fontsize=8)
        ax.spines[["top", "right"]].set_visible(False)
    for ax in axs[-cols:] if cols == 1 else (axs[rows - 1], axs[-1]):
        ax.set_xlabel("hidden channel")
    fig.suptitle(f"region {profile.label!r} along the residual stream (massive channels in red)", fontsize=10)
    return fig


def _mark(ax: Any, dims: Sequence[int]) -> None:
    for c in dims:
        ax.axvline(c, color="#d62728", lw=0.8, alpha=0.6)


def superweight_figure(result: RegionPerturb) -> Any:
    """Per massive channel, ``|h_c|`` of the first token after each layer (log scale): unedited
    and under each edit of that channel (a ``matplotlib.figure.Figure``, not saved)."""
    cands = result.candidates
    fig = new_figure(6.5, 0.6 + 2.4 * len(cands))
    axs = fig.subplots(len(cands), 1, squeeze=False)[:, 0]
    x = np.arange(len(result.base_bos))
    colors = {"weight": "#d62728", "norm": "#1f77b4"}
    for ax, sw in zip(axs, cands):
        def curve(values: list[float]) -> Any:
            return np.maximum(np.abs(np.asarray(values, dtype=float)), 1e-6)

        k = result.channels.index(sw.dim)
        ax.semilogy(x, curve([s[k] for s in result.base_bos]), color="black", lw=1.8, label="unedited")
        for i, e in enumerate(result.edits):
            if e.dim != sw.dim:
                continue
            style = ("-" if e.kind == "zero" else "--")
            ax.semilogy(x, curve([s[k] for s in result.bos[i]]), ls=style, lw=1.0 if not e.control else 0.7,
                        color="#999999" if e.control else colors[e.target],
                        label=f"{e.label(result.factor)} (x{ratio_text(result.ppl_ratio(i))} PPL)")
        ax.axvline(sw.layer, color="#888888", lw=0.6, ls=":")
        ax.set_title(f"channel {sw.dim}: first-token |h| after each layer (super weight in layer {sw.layer})",
                     fontsize=8)
        ax.set_ylabel("|h|", fontsize=8)
        ax.legend(fontsize=6, loc="best")
        ax.spines[["top", "right"]].set_visible(False)
    axs[-1].set_xlabel("layer")
    return fig


def forgetting_figure(result: RegionTrain) -> Figure:
    """NLL change per language and setting (bars: the seed mean, whiskers: its 95% interval; the
    trained language shaded) beside the training loss per step (one line per setting, seed mean).

    Example:
        >>> fig = forgetting_figure(RegionTrain.load("runs/demo/forgetting"))
    """
    settings, languages = result.settings, result.languages
    colors = label_colors(len(settings))
    fig = new_figure(max(6.4, 3.6 + 0.5 * len(languages) * max(1, len(settings)) / 2), 3.3)
    bars_ax, loss_ax = fig.subplots(1, 2, width_ratios=[max(2, len(languages)), 2])
    x = np.arange(len(languages))
    width = 0.8 / len(settings)
    if result.train_language in languages:
        j = languages.index(result.train_language)
        bars_ax.axvspan(j - 0.45, j + 0.45, color="#fff2cc", zorder=0, lw=0)
    for k, (setting, row) in enumerate(zip(settings, result.delta_nll())):
        ivs = [result.change(setting, lang) for lang in languages]
        values = np.asarray(row, dtype=float)
        err = np.array([[max(0.0, v - iv.low), max(0.0, iv.high - v)] for v, iv in zip(values, ivs)]).T
        bars_ax.bar(x + (k - (len(settings) - 1) / 2) * width, values, width, yerr=np.nan_to_num(err),
                    color=colors[k], label=setting, zorder=2, error_kw={"lw": 0.8, "capsize": 1.5, "zorder": 3})
    bars_ax.axhline(0.0, color="#555555", lw=0.8)
    bars_ax.set_xticks(x, [f"{lang}\n(trained)" if lang == result.train_language else lang for lang in languages],
                       fontsize=8)
    for tick in bars_ax.get_xticklabels():
        if tick.get_text().endswith("(trained)"):
            tick.set_fontweight("bold")
    bars_ax.set_ylabel("NLL change (nats/token)")
    bars_ax.grid(axis="y", color="#dddddd", lw=0.6, zorder=1)
    bars_ax.spines[["top", "right"]].set_visible(False)
    n_seeds = len(result.seeds)
    bars_ax.set_title(f"NLL after minus before ({n_seeds} seed{'' if n_seeds == 1 else 's'}, 95% intervals)",
                      fontsize=9)
    for k, (setting, row) in enumerate(zip(settings, result.losses)):
        loss_ax.plot(np.arange(len(row)), np.asarray(row, dtype=float), lw=1.4, color=colors[k], label=setting)
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel(f"training loss on {result.train_language}")
    loss_ax.grid(color="#dddddd", lw=0.6)
    loss_ax.spines[["top", "right"]].set_visible(False)
    loss_ax.set_title("training loss (seed mean)", fontsize=9)
    fig.legend(handles=list(loss_ax.lines), title="frozen", frameon=False, fontsize=8, title_fontsize=8,
               loc="outside right upper")
    fig.suptitle(f"Further pre-training on {result.train_language}: forgetting per frozen setting", fontsize=10)
    return fig
