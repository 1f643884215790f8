"""Dimension dependence of linguistic regions (Zhang et al., ACL 2024, step 5; methods.md 3(b), 6(b)).

Zhang et al. find that a region piles up on a few hidden dimensions, and that scaling a single
weight on such a dimension (x4) wrecks the model while the same edit on another dimension does
nothing. Later work explains those dimensions as *massive activations* (Sun et al. 2024): a few
residual-stream channels whose values are orders of magnitude above the rest, mostly at the
first token. This module provides the pieces:

* :func:`residual_axes`: for every decoder-block tensor, the axis that indexes the residual
  stream (hidden channel), or ``None``;
* :func:`find_massive_dims`: the channels whose peak ``|hidden state|`` over the outputs of the
  decoder layers is above ``ratio x`` the median channel's peak (:class:`MassiveDims`);
* :func:`without_dims`: a region mask with the entries on some channels left out ("core removal
  with the massive-dimension entries kept");
* :func:`dimension_profile`: where a region's entries sit along the residual axis, per tensor
  type, and how concentrated they are in a few rows and columns (:class:`DimensionProfile`);
* :func:`dimension_figure`: a figure of that profile, massive channels marked;
* :func:`dimension_dependence`: the massive channels and the profile on them as one cached
  artifact (:class:`DimensionResult`, kind ``dims``).

**Residual axis.** A module *writes* into the residual stream when it is a linear layer named
like an output projection (``o_proj``, ``out_proj``, ``dense``, ``c_proj``, ``down_proj``,
``fc2``, ``dense_4h_to_h``, ``wo``, ``fc_out``) whose output width is the hidden size: its weight's
output axis is the residual axis (``nn.Linear`` stores ``[out, in]``: axis 0; GPT-2's ``Conv1D``
stores ``[in, out]``: axis 1), and so is its bias. Any other linear layer whose input width is
the hidden size *reads* the residual stream (q/k/v, gate/up, ``c_attn``, ``query_key_value``,
``fc1``, ...): its input axis (``nn.Linear`` 1, ``Conv1D`` 0); its bias lies on its own output,
not on the residual (``None``). A 1-D hidden-sized parameter of any other module (norm weights
and biases) lies on the residual (axis 0), except per-head ``q_norm``/``k_norm``. The names
only decide square projections (``hidden -> hidden``), where the shape cannot.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from .. import artifacts
from ..config import StageConfig, option
from ..errors import LapeError
from ..masks import ParamRegions
from ..models import fingerprint, input_device
from ..space import ParamSpace, feature_counts, is_conv1d
from .select import region_size

# linear layers that add their output to the residual stream (last name component)
WRITER_NAMES = frozenset({"o_proj", "out_proj", "dense", "c_proj", "down_proj", "fc2", "dense_4h_to_h",
                          "wo", "fc_out"})
# per-head norms inside attention: their weight has head_dim entries, not hidden ones
HEAD_NORM_NAMES = frozenset({"q_norm", "k_norm", "q_layernorm", "k_layernorm"})


def hidden_size(model: nn.Module) -> int:
    """The width of the residual stream (``hidden_size``, GPT-2's ``n_embd``, OPT's ``d_model``)."""
    cfg = getattr(model, "config", None)
    cfg = getattr(cfg, "text_config", None) or cfg
    for key in ("hidden_size", "n_embd", "d_model"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    raise LapeError(f"{type(model).__name__} has no hidden_size in its config: load the model with "
                    "transformers (lape.load_model) so that its config is known")


# --------------------------------------------------------------------------------------------
# residual axes


def _linear_axis(leaf: str, module: nn.Module, attr: str, shape: tuple[int, ...], hidden: int) -> int | None:
    """Residual axis of a linear layer's weight or bias (see the module docstring)."""
    n_in, n_out = feature_counts(module, "in"), feature_counts(module, "out")
    writer = n_out == hidden and (leaf in WRITER_NAMES or n_in != hidden)
    if attr != "weight":
        return 0 if writer and shape == (hidden,) else None
    conv = is_conv1d(module)
    if writer:
        return 1 if conv else 0
    if n_in == hidden:
        return 0 if conv else 1
    return None


def residual_axes(model: nn.Module, space: ParamSpace | None = None) -> dict[str, int | None]:
    """For every decoder-block parameter, the axis that indexes the residual stream, or ``None``.

    Args:
        model: a Hugging Face causal LM.
        space: its :class:`ParamSpace`, if already built.

    Returns:
        ``{parameter name: axis or None}`` in :meth:`ParamSpace.names` order; where an axis is
        given, ``shape[axis] == hidden_size`` and entry ``i`` along it touches hidden channel ``i``.

    Example:
        >>> axes = residual_axes(model)
        >>> axes["model.layers.0.mlp.down_proj.weight"], axes["model.layers.0.mlp.up_proj.weight"]
        (0, 1)
    """
    space = space or ParamSpace.of(model)
    hidden = hidden_size(model)
    modules = dict(model.named_modules())
    axes: dict[str, int | None] = {}
    for p in space.params:
        owner_path, _, attr = p.name.rpartition(".")
        owner, leaf = modules[owner_path], owner_path.rsplit(".", 1)[-1]
        if feature_counts(owner, "in") is not None:
            axis = _linear_axis(leaf, owner, attr, p.shape, hidden)
        else:
            axis = 0 if p.shape == (hidden,) and leaf not in HEAD_NORM_NAMES else None
        if axis is not None and p.shape[axis] != hidden:  # a guard: never name a wrong-sized axis
            axis = None
        axes[p.name] = axis
    return axes


def writes_residual(model: nn.Module, name: str, axes: Mapping[str, int | None]) -> bool:
    """Whether parameter ``name`` is the weight of a linear layer that adds its output to the
    residual stream (a down- or output projection): its residual axis is its output axis
    (``nn.Linear`` ``[out, in]``: 0; GPT-2's ``Conv1D`` ``[in, out]``: 1).

    Args:
        model: the model.
        name: a parameter name as in ``model.named_parameters()``.
        axes: :func:`residual_axes` of the model.

    Example:
        >>> axes = residual_axes(model)
        >>> writes_residual(model, "model.layers.0.mlp.down_proj.weight", axes)
        True
    """
    owner_path, _, attr = name.rpartition(".")
    axis = axes.get(name)
    if attr != "weight" or axis is None:
        return False
    owner = model.get_submodule(owner_path)
    if feature_counts(owner, "in") is None or dict(owner.named_parameters(recurse=False))["weight"].dim() != 2:
        return False
    return axis == (1 if is_conv1d(owner) else 0)


# --------------------------------------------------------------------------------------------
# massive activations


@dataclass
class MassiveDims:
    """Hidden channels with massive activations (Sun et al. 2024), found by :func:`find_massive_dims`.

    A channel is massive when, at the output of some decoder layer, its peak ``|h|`` exceeds
    ``ratio`` times that layer's median channel peak. The comparison is per layer because the
    residual stream grows with depth (Gemma 3 270M: the median channel peak rises from 3.5 after
    layer 0 to about 1,800 after layer 17), so one median over all layers would hide a channel
    that is 850x its layer's median at layer 0.

    Attributes:
        dims: the massive channels, largest peak first.
        peak: per hidden channel, the largest ``|hidden state|`` over the real positions of the
            sequences and the outputs of every decoder layer.
        median: the median of ``peak`` over channels (descriptive).
        ratio: the factor over a layer's median channel peak that makes a channel massive.
        first_layer: per massive channel, the first decoder layer where it exceeds that.
        positions: per massive channel, the position in its sequence (0: first token) of its peak.
        tokens: per massive channel, the token id at that position.
        peak_per_layer: ``[layers][hidden]``: the peak of each layer's output alone.
        sequences: how many sequences were run.
        layer_median: per layer, the median channel peak.
        times: per channel, the largest ``peak_per_layer[l][c] / layer_median[l]`` over layers.
    """

    dims: list[int]
    peak: list[float]
    median: float
    ratio: float
    first_layer: dict[int, int]
    positions: dict[int, int]
    tokens: dict[int, int] = field(default_factory=dict)
    peak_per_layer: list[list[float]] = field(default_factory=list)
    sequences: int = 0
    layer_median: list[float] = field(default_factory=list)
    times: list[float] = field(default_factory=list)

    @property
    def hidden_size(self) -> int:
        return len(self.peak)

    def ordinary_dim(self, layer: int | None = None) -> int:
        """The channel whose peak is the median one (the lower middle for an even count; ties go
        to the lower index): a deterministic "ordinary" channel to compare with.

        Args:
            layer: rank the channels by their peak at this layer's output
                (``peak_per_layer[layer]``) instead of their peak over all layers; ignored when
                the per-layer peaks were not kept.
        """
        peak = self.peak
        if layer is not None and self.peak_per_layer:
            if not 0 <= layer < len(self.peak_per_layer):
                raise LapeError(f"layer {layer} is outside the {len(self.peak_per_layer)} layers the massive dims "
                                f"were found on: use a layer from 0 to {len(self.peak_per_layer) - 1}")
            peak = self.peak_per_layer[layer]
        order = sorted(range(len(peak)), key=lambda c: (peak[c], c))
        return order[(len(order) - 1) // 2]

    def to_dict(self, per_layer: bool = True) -> dict[str, Any]:
        """JSON-ready fields (``per_layer=False`` leaves out ``peak_per_layer``)."""
        d = asdict(self)
        if not per_layer:
            d.pop("peak_per_layer")
        return d

    def brief(self) -> dict[str, Any]:
        """What a sidecar records: the massive channels, their peaks and where they appear
        (without the per-channel peaks of every channel)."""
        return {"dims": list(self.dims), "dims_peak": [self.peak[c] for c in self.dims],
                "dims_times_layer_median": [self.times[c] for c in self.dims] if self.times else [],
                "ratio": self.ratio, "first_layer": dict(self.first_layer),
                "positions": dict(self.positions), "tokens": dict(self.tokens), "sequences": self.sequences}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MassiveDims:
        """Rebuild from :meth:`to_dict` (also after a JSON round trip, which makes keys strings)."""
        def ints(m: Mapping[Any, Any] | None) -> dict[int, int]:
            return {int(k): int(v) for k, v in (m or {}).items()}

        return cls([int(c) for c in d["dims"]], [float(v) for v in d["peak"]], float(d["median"]),
                   float(d["ratio"]), ints(d.get("first_layer")), ints(d.get("positions")), ints(d.get("tokens")),
                   [[float(v) for v in row] for row in d.get("peak_per_layer") or []], int(d.get("sequences", 0)),
                   [float(v) for v in d.get("layer_median") or []], [float(v) for v in d.get("times") or []])

    def summary_line(self) -> str:
        """One line: which channels are massive, where, and how large."""
        if not self.dims:
            return (f"no channel's peak |h| exceeds {self.ratio:g} x its layer's median channel peak "
                    f"over {self.sequences} sequences")
        parts = [f"{c} (peak {self.peak[c]:.3g}, {self.times[c]:.0f}x its layer's median, from layer "
                 f"{self.first_layer[c]}, position {self.positions[c]})" for c in self.dims[:5]]
        more = f" and {len(self.dims) - 5} more" if len(self.dims) > 5 else ""
        return f"{len(self.dims)} massive channel(s): " + ", ".join(parts) + more


def _take(sequences: Iterable[Any] | Mapping[str, Iterable[Any]], n: int) -> list[Any]:
    """Up to ``n`` sequences; from a ``{language: sequences}`` mapping, the languages in turn."""
    if isinstance(sequences, Mapping):
        streams = [iter(s) for s in sequences.values()]
        mixed = (s for group in itertools.zip_longest(*streams) for s in group if s is not None)
        return list(itertools.islice(mixed, n))
    return list(itertools.islice(iter(sequences), n))


def _layer_modules(model: nn.Module, space: ParamSpace) -> list[nn.Module]:
    return [model.get_submodule(f"{space.layers_path}.{i}") for i in range(space.num_layers)]


def find_massive_dims(model: nn.Module, sequences: Iterable[Any] | Mapping[str, Iterable[Any]], *,
                      ratio: float = 100.0, max_sequences: int = 8, batch_size: int = 4,
                      space: ParamSpace | None = None) -> MassiveDims:
    """Hidden channels whose activations are orders of magnitude above the rest.

    Runs the base model (no vocabulary logits) under ``inference_mode`` over up to
    ``max_sequences`` sequences and takes, per hidden channel, the largest ``|h|`` over the real
    (``attention_mask == 1``) positions of the outputs of decoder layers ``0 .. L-1`` (read by
    forward hooks on the layers: the embeddings and the final norm do not count). A channel is
    massive when, at some layer's output, its peak exceeds ``ratio`` times that layer's median
    channel peak (see :class:`MassiveDims` for why per layer).

    Args:
        model: a Hugging Face causal LM.
        sequences: objects with 1-D ``input_ids`` and ``attention_mask`` (a corpus stream), or
            ``{language: sequences}`` (taken from the languages in turn).
        ratio: the factor over a layer's median channel peak (Sun et al. report 100x to 10,000x
            over the median magnitude).
        max_sequences: at most this many sequences are run.
        batch_size: sequences per forward pass.
        space: the model's :class:`ParamSpace`, if already built (for the layer list).

    Returns:
        :class:`MassiveDims`.

    Raises:
        LapeError: a non-positive ratio, ``max_sequences < 1``, or no sequence with a real token.

    Example:
        >>> massive = find_massive_dims(model, corpus["en"], ratio=100)
        >>> massive.dims, massive.first_layer, massive.positions   # channels, where they start, at which token
        >>> print(massive.summary_line())
    """
    from ..corpora import batches

    if not (isinstance(ratio, (int, float)) and math.isfinite(ratio) and ratio > 0):
        raise LapeError(f"ratio={ratio} must be a positive number: a channel is massive above ratio x its layer's median channel peak")
    if max_sequences < 1:
        raise LapeError(f"max_sequences={max_sequences} must be at least 1: the number of sequences to run")
    seqs = _take(sequences, max_sequences)
    if not seqs or sum(int(s.attention_mask.sum()) for s in seqs) == 0:
        raise LapeError("no sequence with a real token to run: give find_massive_dims some text "
                        "(e.g. the valid split of a corpus)")
    space = space or ParamSpace.of(model)
    tracker = _PeakTracker(space.num_layers, hidden_size(model))
    state: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for layer, module in enumerate(_layer_modules(model, space)):
            def hook(mod: nn.Module, args: Any, output: Any, _layer: int = layer) -> None:
                h = output[0] if isinstance(output, tuple) else output
                tracker.add(_layer, h, state["mask"], state["ids"])
            handles.append(module.register_forward_hook(hook))
        device = input_device(model)
        with torch.inference_mode():
            for ids, mask in batches(seqs, batch_size):
                state.update(ids=ids, mask=mask.bool())
                model.base_model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return tracker.result(ratio, len(seqs))


class _PeakTracker:
    """Running per-layer, per-channel peaks of ``|h|`` with the position and token of the peak."""

    def __init__(self, layers: int, hidden: int) -> None:
        self.hidden = hidden
        self.peak = torch.zeros(layers, hidden, dtype=torch.float64)
        self.pos = torch.zeros(layers, hidden, dtype=torch.long)
        self.tok = torch.zeros(layers, hidden, dtype=torch.long)

    def add(self, layer: int, h: torch.Tensor, mask: torch.Tensor, ids: torch.Tensor) -> None:
        if h.shape[-1] != self.hidden:
            raise LapeError(f"decoder layer {layer} outputs {h.shape[-1]} channels, not hidden_size={self.hidden}: "
                            "this architecture's layer output is not the residual stream")
        values = h.detach().float().abs().cpu().masked_fill(~mask[..., None], -1.0)  # (B, T, H); padding < 0
        best, where = values.reshape(-1, self.hidden).max(0)  # (H,): the first position on ties
        better = best.double() > self.peak[layer]
        self.peak[layer] = torch.where(better, best.double(), self.peak[layer])
        t = where % values.shape[1]
        self.pos[layer] = torch.where(better, t, self.pos[layer])
        self.tok[layer] = torch.where(better, ids.reshape(-1)[where], self.tok[layer])

    def result(self, ratio: float, n_seqs: int) -> MassiveDims:
        peak, layer_of = self.peak.max(0)  # (H,): over layers; the first layer on ties
        layer_median = torch.quantile(self.peak, 0.5, dim=1)  # (L,)
        scale = layer_median.clamp_min(torch.finfo(torch.float64).tiny)[:, None]
        times_per_layer = self.peak / scale  # (L, H): each layer's peak over that layer's median
        times = times_per_layer.max(0).values  # (H,)
        dims = [int(c) for c in torch.argsort(-peak, stable=True) if float(times[c]) > ratio]
        first = {c: int((times_per_layer[:, c] > ratio).nonzero()[0]) for c in dims}
        positions = {c: int(self.pos[layer_of[c], c]) for c in dims}
        tokens = {c: int(self.tok[layer_of[c], c]) for c in dims}
        return MassiveDims(dims, peak.tolist(), float(torch.quantile(peak, 0.5)), float(ratio), first, positions,
                           tokens, self.peak.tolist(), n_seqs, layer_median.tolist(), times.tolist())


# --------------------------------------------------------------------------------------------
# masks without some channels


def _check_dims(dims: Sequence[int] | torch.Tensor, hidden: int) -> list[int]:
    out = [int(c) for c in (dims.tolist() if isinstance(dims, torch.Tensor) else dims)]
    bad = [c for c in out if not 0 <= c < hidden]
    if bad:
        raise LapeError(f"hidden channel(s) {bad} are outside [0, {hidden}): pass channels of this model "
                        "(e.g. find_massive_dims(model, ...).dims)")
    return sorted(set(out))


def without_dims(mask: Mapping[str, torch.Tensor], axes: Mapping[str, int | None],
                 dims: Sequence[int]) -> dict[str, torch.Tensor]:
    """A copy of a region mask without the entries on some hidden channels.

    Every entry whose index along its tensor's residual axis is one of ``dims`` is dropped;
    tensors without a residual axis are kept as they are (copied). Use it to remove a region
    while keeping the massive-dimension entries (methods.md 6(b)).

    Args:
        mask: ``{parameter name: bool mask}``, e.g. ``regions.mask("core")``.
        axes: :func:`residual_axes` of the model.
        dims: hidden channels to leave out, e.g. ``massive.dims``.

    Raises:
        LapeError: a tensor not in ``axes``, or a channel outside that tensor's residual axis.

    Example:
        >>> kept = without_dims(regions.mask("core"), residual_axes(model), massive.dims)
        >>> with edit_weights(model, kept):
        ...     ...
    """
    out = {}
    for name, m in mask.items():
        if name not in axes:
            raise LapeError(f"no residual axis for {name}: pass residual_axes(model) of the model the mask is for")
        axis = axes[name]
        if axis is None or not len(dims):
            out[name] = m.clone()
            continue
        index = torch.tensor(_check_dims(dims, int(m.shape[axis])), dtype=torch.long, device=m.device)
        out[name] = m.clone().index_fill_(axis, index, False)
    return out


# --------------------------------------------------------------------------------------------
# where a region sits along the residual axis


@dataclass
class DimensionProfile:
    """Where one region's entries sit along the residual axis, per tensor type (summed over layers).

    Attributes:
        label: the region.
        hidden_size: number of residual channels.
        dims: the channels singled out (e.g. massive ones), sorted.
        axes: per tensor type, its residual axis (``None``: not on the residual stream).
        tensors, entries, numel: per type, tensors covered, region entries, and all entries.
        counts: per type with an axis, region entries on each channel (``[hidden]``).
        numel_per_dim: per type with an axis, all entries on each channel (``[hidden]``).
        top_share: the share of rows/columns called "top" (1%; at least one row or column).
        row_top, col_top: per 2-D type, the share of the region's entries in the top rows
            (columns) of each matrix, ranked by region entries, summed over the type's tensors.
        row_expected, col_expected: the same share if the region were spread evenly (the top
            rows' share of all rows; 1% when 1% of the rows is a whole number). A uniformly
            *random* region scores a little above it, as its top rows are the luckiest ones:
            profile the ``random`` control for that baseline.
    """

    label: str
    hidden_size: int
    dims: list[int]
    axes: dict[str, int | None]
    tensors: dict[str, int]
    entries: dict[str, int]
    numel: dict[str, int]
    counts: dict[str, list[int]]
    numel_per_dim: dict[str, list[int]]
    top_share: float
    row_top: dict[str, float | None]
    row_expected: dict[str, float | None]
    col_top: dict[str, float | None]
    col_expected: dict[str, float | None]

    @property
    def types(self) -> list[str]:
        """Tensor types in block order."""
        return list(self.axes)

    def residual_types(self) -> list[str]:
        """The types with a residual axis (those with :attr:`counts`)."""
        return [t for t in self.types if self.axes[t] is not None]

    def _check_type(self, t: str) -> None:
        if t not in self.counts:
            raise LapeError(f"tensor type {t!r} has no residual-channel counts: use one of "
                            f"{', '.join(self.residual_types())}")

    def dims_share(self, t: str) -> float:
        """Share of the region's entries of type ``t`` that lie on :attr:`dims`."""
        self._check_type(t)
        on = sum(self.counts[t][c] for c in self.dims)
        return on / self.entries[t] if self.entries[t] else math.nan

    def dims_chance(self, t: str) -> float:
        """Share of all entries of type ``t`` that lie on :attr:`dims` (a uniform region's share)."""
        self._check_type(t)
        return sum(self.numel_per_dim[t][c] for c in self.dims) / self.numel[t]

    def enrichment(self, t: str) -> list[float]:
        """Per channel, region entries over what a uniformly spread region would put there (1: chance)."""
        self._check_type(t)
        n, total = self.numel[t], self.entries[t]
        return [(k / (total * m / n)) if total and m else math.nan
                for k, m in zip(self.counts[t], self.numel_per_dim[t])]

    def top_channels(self, t: str, k: int = 5) -> list[int]:
        """The ``k`` channels holding most of the region's entries of type ``t`` (lower index on ties)."""
        self._check_type(t)
        return sorted(range(self.hidden_size), key=lambda c: (-self.counts[t][c], c))[:k]

    def to_rows(self) -> list[dict[str, Any]]:
        """One table row per tensor type."""
        rows = []
        for t in self.types:
            row: dict[str, Any] = {"label": self.label, "type": t, "residual_axis": self.axes[t],
                                   "tensors": self.tensors[t], "entries": self.entries[t], "numel": self.numel[t],
                                   "share": self.entries[t] / self.numel[t]}
            if t in self.counts:
                enr = self.enrichment(t)
                top = self.top_channels(t, 1)[0]
                row.update(dims_share=self.dims_share(t) if self.dims else None,
                           dims_chance=self.dims_chance(t) if self.dims else None,
                           top_channel=top, top_channel_entries=self.counts[t][top],
                           top_channel_enrichment=enr[top])
            row.update(row_top_share=self.row_top[t], row_expected=self.row_expected[t],
                       col_top_share=self.col_top[t], col_expected=self.col_expected[t])
            rows.append(row)
        return rows

    def summary(self) -> dict[str, Any]:
        """Totals over the types with a residual axis: the share on :attr:`dims` against chance,
        the most concentrated types, and the top rows/columns share over every matrix."""
        res = self.residual_types()
        entries = sum(self.entries[t] for t in res)
        on = sum(self.counts[t][c] for t in res for c in self.dims)
        chance = sum(self.numel_per_dim[t][c] for t in res for c in self.dims) / max(sum(self.numel[t] for t in res), 1)
        share = on / entries if entries else math.nan
        mats = [t for t in self.types if self.row_top[t] is not None]

        def weighted(d: dict[str, float | None]) -> float | None:
            total = sum(self.entries[t] for t in mats)
            return sum(d[t] * self.entries[t] for t in mats) / total if total else None  # type: ignore[operator]

        scored = [t for t in res if self.entries[t]] if self.dims else []
        by_dims = sorted(scored, key=lambda t: -(self.dims_share(t) / self.dims_chance(t)))
        return {"label": self.label, "dims": list(self.dims), "entries": entries, "dims_entries": on,
                "dims_share": share, "dims_chance": chance,
                "dims_enrichment": share / chance if chance and entries else None,
                "most_enriched_type": by_dims[0] if by_dims else None,
                "row_top_share": weighted(self.row_top), "row_expected": weighted(self.row_expected),
                "col_top_share": weighted(self.col_top), "col_expected": weighted(self.col_expected),
                "top_share": self.top_share}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DimensionProfile:
        """Rebuild from :meth:`to_dict` (also after a JSON round trip)."""
        def opt(m: Mapping[str, Any]) -> dict[str, float | None]:
            return {t: None if v is None else float(v) for t, v in m.items()}

        return cls(str(d["label"]), int(d["hidden_size"]), [int(c) for c in d["dims"]],
                   {t: None if a is None else int(a) for t, a in d["axes"].items()},
                   {t: int(v) for t, v in d["tensors"].items()}, {t: int(v) for t, v in d["entries"].items()},
                   {t: int(v) for t, v in d["numel"].items()},
                   {t: [int(x) for x in v] for t, v in d["counts"].items()},
                   {t: [int(x) for x in v] for t, v in d["numel_per_dim"].items()}, float(d["top_share"]),
                   opt(d["row_top"]), opt(d["row_expected"]), opt(d["col_top"]), opt(d["col_expected"]))


@dataclass
class _TypeTally:
    tensors: int = 0
    entries: int = 0
    numel: int = 0
    counts: torch.Tensor | None = None
    numel_per_dim: torch.Tensor | None = None
    row_hits: float = 0.0  # region entries in each matrix's top rows, summed
    row_exp: float = 0.0  # region entries x the top rows' share of the rows, summed
    col_hits: float = 0.0
    col_exp: float = 0.0
    matrices: int = 0


def _top_lines(m: torch.Tensor, dim: int, top_share: float) -> tuple[int, float]:
    """Region entries in the top ``top_share`` of lines along ``dim`` (ranked by entries), and
    the share of lines that is."""
    per_line = m.sum(1 - dim)  # dim 0: per row
    k = region_size(top_share, per_line.numel())
    return int(per_line.topk(k).values.sum()), k / per_line.numel()


def dimension_profile(regions: ParamRegions, model: nn.Module, label: str = "core", dims: Sequence[int] = (), *,
                      space: ParamSpace | None = None, top_share: float = 0.01) -> DimensionProfile:
    """Where a region's entries sit along the residual stream, per tensor type.

    Args:
        regions: the regions (:func:`lape.regions.select_regions`, or built by hand).
        model: the model they were made for.
        label: which region.
        dims: hidden channels to single out (e.g. ``massive.dims``): the profile reports the
            share of the region on them against the share of all entries they hold.
        space: the model's :class:`ParamSpace`, if already built.
        top_share: what "top rows/columns" means (1%, as in Zhang et al.'s layout analysis).

    Returns:
        :class:`DimensionProfile`.

    Raises:
        LapeError: an unknown label, regions made for another model, a mask of the wrong shape
            or a channel outside the hidden size.

    Example:
        >>> prof = dimension_profile(regions, model, "core", dims=massive.dims)
        >>> prof.dims_share("mlp.down_proj.weight"), prof.dims_chance("mlp.down_proj.weight")
    """
    if not 0.0 < top_share <= 1.0:
        raise LapeError(f"top_share={top_share} must be in (0, 1]: the share of rows and columns called top")
    space = space or ParamSpace.of(model)
    regions.check_model(model)
    mask = regions.mask(label)
    hidden = hidden_size(model)
    chosen = _check_dims(dims, hidden)
    axes = residual_axes(model, space)
    tallies: dict[str, _TypeTally] = {}
    type_axes: dict[str, int | None] = {}
    for name, m in mask.items():
        info = space.info(name)  # refuses a tensor outside the decoder blocks
        if tuple(m.shape) != info.shape:
            raise LapeError(f"the region mask of {name} is {tuple(m.shape)} but the model's tensor is {info.shape}: "
                            "use regions made for this model")
        if type_axes.setdefault(info.type, axes[name]) != axes[name]:
            raise LapeError(f"tensors of type {info.type} lie on the residual stream along different axes in "
                            "different layers: profile a region holding the tensors of one layout only")
        _tally(tallies.setdefault(info.type, _TypeTally()), m.cpu(), axes[name], hidden, top_share)
    if not tallies:
        raise LapeError(f"region {label!r} covers no tensor: select regions on this model first")
    order = {t: i for i, t in enumerate(space.tensor_types())}
    tallies = dict(sorted(tallies.items(), key=lambda kv: order[kv[0]]))
    type_axes = {t: type_axes[t] for t in tallies}

    def share(hits: float, exp: float, n: int, entries: int) -> tuple[float | None, float | None]:
        if not n:
            return None, None
        return (hits / entries, exp / entries) if entries else (math.nan, math.nan)

    row = {t: share(v.row_hits, v.row_exp, v.matrices, v.entries) for t, v in tallies.items()}
    col = {t: share(v.col_hits, v.col_exp, v.matrices, v.entries) for t, v in tallies.items()}
    return DimensionProfile(
        label, hidden, chosen, type_axes, {t: v.tensors for t, v in tallies.items()},
        {t: v.entries for t, v in tallies.items()}, {t: v.numel for t, v in tallies.items()},
        {t: v.counts.tolist() for t, v in tallies.items() if v.counts is not None},
        {t: v.numel_per_dim.tolist() for t, v in tallies.items() if v.numel_per_dim is not None},
        top_share, {t: r[0] for t, r in row.items()}, {t: r[1] for t, r in row.items()},
        {t: c[0] for t, c in col.items()}, {t: c[1] for t, c in col.items()})


def _tally(acc: _TypeTally, m: torch.Tensor, axis: int | None, hidden: int, top_share: float) -> None:
    """Add one tensor's mask to its type's tally."""
    entries = int(m.sum())
    acc.tensors += 1
    acc.entries += entries
    acc.numel += m.numel()
    if axis is not None:
        other = [d for d in range(m.dim()) if d != axis]
        per_channel = m.sum(other) if other else m.to(torch.int64)
        acc.counts = per_channel if acc.counts is None else acc.counts + per_channel
        per_dim = torch.full((hidden,), m.numel() // hidden, dtype=torch.int64)
        acc.numel_per_dim = per_dim if acc.numel_per_dim is None else acc.numel_per_dim + per_dim
    if m.dim() == 2:
        acc.matrices += 1
        for dim in (0, 1):
            hits, frac = _top_lines(m, dim, top_share)
            if dim == 0:
                acc.row_hits, acc.row_exp = acc.row_hits + hits, acc.row_exp + frac * entries
            else:
                acc.col_hits, acc.col_exp = acc.col_hits + hits, acc.col_exp + frac * entries


# --------------------------------------------------------------------------------------------
# the stage: massive channels and the region's profile on them, saved as one artifact


@dataclass(frozen=True)
class DimsConfig(StageConfig):
    """Settings of :func:`dimension_dependence`."""

    label: str = "core"  # the region to profile
    ratio: float = option(100.0, gt=0.0)  # massive: peak above ratio x the median channel's peak
    max_sequences: int = option(8, min=1)  # sequences run to find the massive channels
    batch_size: int = option(4, min=1, max=4096)  # sequences per forward pass
    top_share: float = option(0.01, gt=0.0, max=1.0)  # "top rows/columns" of the concentration figures
    tokens_per_language: int = option(2048, gt=0)  # corpus budget (for the CLI's streams)
    seq_len: int = option(256, min=2, max=1 << 16)  # packed sequence length
    seed: int = option(0, min=0)  # corpus shuffling
    split: str = "valid"  # held-out split


@dataclass
class DimensionResult(artifacts.Artifact):
    """Massive channels of a model and where a region sits along the residual stream.

    Attributes:
        massive: :class:`MassiveDims`.
        profile: :class:`DimensionProfile` of the region, with ``dims = massive.dims``.
    """

    massive: MassiveDims
    profile: DimensionProfile
    meta: dict[str, Any] = field(default_factory=dict)

    KIND: ClassVar[str] = "dims"
    DESCRIPTION: ClassVar[str] = "dimension dependence"

    def summary_line(self) -> str:
        """One line: the massive channels and the region's share on them against chance."""
        s = self.profile.summary()
        if not self.massive.dims:
            return self.massive.summary_line()
        return (f"{self.massive.summary_line()}; {s['dims_share']:.2%} of the {self.profile.label} region's "
                f"residual-axis entries lie on them (chance {s['dims_chance']:.2%})")

    def payload(self) -> dict[str, Any]:
        return {"massive": self.massive.to_dict(), "profile": self.profile.to_dict(),
                "summary": self.profile.summary()}

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        m = self.massive
        massive_rows = [{"dim": c, "peak": m.peak[c], "times_layer_median": m.times[c] if m.times else None,
                         "first_layer": m.first_layer.get(c), "position": m.positions.get(c), "token": m.tokens.get(c)}
                        for c in m.dims]
        return {"dims_profile": self.profile.to_rows(), "massive_dims": massive_rows}

    @classmethod
    def _from_saved(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any], r: Any) -> DimensionResult:
        return cls(MassiveDims.from_dict(r["massive"]), DimensionProfile.from_dict(r["profile"]), meta)

    def validate(self) -> None:
        if len(self.massive.peak) != self.profile.hidden_size:
            raise LapeError(f"the massive dims cover {len(self.massive.peak)} channels, the profile "
                            f"{self.profile.hidden_size}: the artifact was edited or damaged; re-run lape regions dims")
        if any(x < 0 for v in self.profile.counts.values() for x in v) or any(v < 0 for v in self.massive.peak):
            raise LapeError("the dimension profile holds negative counts or peaks: the artifact was edited or "
                            "damaged; re-run lape regions dims")


def dimension_dependence(model: nn.Module, sequences: Iterable[Any] | Mapping[str, Iterable[Any]],
                         regions: ParamRegions, config: DimsConfig = DimsConfig(), *,
                         out: str | Path | None = None, space: ParamSpace | None = None) -> DimensionResult:
    """Find the massive channels (:func:`find_massive_dims`) and profile a region on them
    (:func:`dimension_profile`), as one artifact of kind ``dims``.

    Args:
        model: the model the regions were made for.
        sequences: text to find the massive channels on (a stream, or ``{language: stream}``).
        regions: the regions; ``config.label`` is profiled.
        config: settings.
        out: a folder to save the result into; a result there made from the same model, the
            same sequences, regions and settings is returned without recomputation.
        space: the model's :class:`ParamSpace`, if already built.

    Returns:
        :class:`DimensionResult`.

    Example:
        >>> res = dimension_dependence(model, corpus, regions, DimsConfig(), out="runs/demo/dims")
        >>> res.summary_line()
    """
    from ..corpora.identity import corpus_key

    space = space or ParamSpace.of(model)
    regions.check_model(model)
    regions.mask(config.label)  # an unknown label fails before any work
    seqs = _take(sequences, config.max_sequences)  # the sequences themselves make the cache key
    inputs = {"sequences": corpus_key(seqs), "regions": regions.identity()}
    key = artifacts.stage_key(DimensionResult.KIND, model_fingerprint=fingerprint(model), config=config.key_dict(),
                              inputs=inputs)

    def compute() -> DimensionResult:
        massive = find_massive_dims(model, seqs, ratio=config.ratio, max_sequences=config.max_sequences,
                                    batch_size=config.batch_size, space=space)
        profile = dimension_profile(regions, model, config.label, massive.dims, space=space,
                                    top_share=config.top_share)
        meta = artifacts.model_sidecar(
            DimensionResult.KIND, model, config=config.to_dict(), inputs=inputs,
            method="dimension dependence (Zhang et al. 2024, step 5): massive channels (peak |h| over decoder-layer "
                   "outputs above ratio x the median channel's) and the region's entries per residual channel")
        return DimensionResult(massive, profile, meta)

    return artifacts.run_stage(DimensionResult, out, key, compute, model=model)


# --------------------------------------------------------------------------------------------
# figure


def dimension_figure(profile: DimensionProfile, massive: MassiveDims | None = None) -> Any:
    """The profile per residual-axis tensor type, massive channels marked (a
    ``matplotlib.figure.Figure``; the report saves it)."""
    import numpy as np

    from ..plots import new_figure

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
