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
* the figure of that profile: :func:`lape.plots.regions.dimension_figure`;
* :func:`region_dims`: the massive channels and the profile on them as one cached
  artifact (:class:`RegionDims`, kind ``region_dims``).

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
from ..fingerprint import fingerprint
from ..masks import ParamRegions
from ..space import ParamSpace
from .massive import (
    MassiveDims,
    check_dims,
    find_massive_dims,
    hidden_size,
    residual_axes,
    take_sequences,
)
from .select import region_size

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
    chosen = check_dims(dims, hidden)
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
    """Settings of :func:`region_dims`."""

    label: str = "core"  # the region to profile
    ratio: float = option(100.0, gt=0.0, max=1e6)  # massive: peak above ratio x the median channel's peak
    max_sequences: int = option(8, min=1)  # sequences run to find the massive channels
    batch_size: int = option(4, min=1, max=4096)  # sequences per forward pass
    top_share: float = option(0.01, gt=0.0, max=1.0)  # "top rows/columns" of the concentration figures
    tokens_per_language: int = option(2048, gt=0)  # corpus budget (for the CLI's streams)
    seq_len: int = option(256, min=2, max=1 << 16)  # packed sequence length
    seed: int = option(0, min=0)  # corpus shuffling
    split: str = "valid"  # held-out split


@dataclass
class RegionDims(artifacts.Artifact):
    """Massive channels of a model and where a region sits along the residual stream.

    Attributes:
        massive: :class:`MassiveDims`.
        profile: :class:`DimensionProfile` of the region, with ``dims = massive.dims``.
    """

    massive: MassiveDims
    profile: DimensionProfile
    meta: dict[str, Any] = field(default_factory=dict)

    KIND: ClassVar[str] = "region_dims"
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
    def _from_saved(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any], r: Any) -> RegionDims:
        return cls(MassiveDims.from_dict(r["massive"]), DimensionProfile.from_dict(r["profile"]), meta)

    def validate(self) -> None:
        if len(self.massive.peak) != self.profile.hidden_size:
            raise LapeError(f"the massive dims cover {len(self.massive.peak)} channels, the profile "
                            f"{self.profile.hidden_size}: the artifact was edited or damaged; re-run lape regions dims")
        if any(x < 0 for v in self.profile.counts.values() for x in v) or any(v < 0 for v in self.massive.peak):
            raise LapeError("the dimension profile holds negative counts or peaks: the artifact was edited or "
                            "damaged; re-run lape regions dims")


def region_dims(model: nn.Module, sequences: Iterable[Any] | Mapping[str, Iterable[Any]],
                         regions: ParamRegions, config: DimsConfig = DimsConfig(), *,
                         out: str | Path | None = None, space: ParamSpace | None = None) -> RegionDims:
    """Find the massive channels (:func:`find_massive_dims`) and profile a region on them
    (:func:`dimension_profile`), as one artifact of kind ``region_dims``.

    Args:
        model: the model the regions were made for.
        sequences: text to find the massive channels on (a stream, or ``{language: stream}``).
        regions: the regions; ``config.label`` is profiled.
        config: settings.
        out: a folder to save the result into; a result there made from the same model, the
            same sequences, regions and settings is returned without recomputation.
        space: the model's :class:`ParamSpace`, if already built.

    Returns:
        :class:`RegionDims`.

    Example:
        >>> res = region_dims(model, corpus, regions, DimsConfig(), out="runs/demo/dims")
        >>> res.summary_line()
    """
    from ..corpora.identity import corpus_key

    space = space or ParamSpace.of(model)
    regions.check_model(model)
    regions.mask(config.label)  # an unknown label fails before any work
    seqs = take_sequences(sequences, config.max_sequences)  # the sequences themselves make the cache key
    inputs = {"sequences": corpus_key(seqs), "regions": regions.identity()}
    key = artifacts.stage_key(RegionDims.KIND, model_fingerprint=fingerprint(model), config=config.key_dict(),
                              inputs=inputs)

    def compute() -> RegionDims:
        massive = find_massive_dims(model, seqs, ratio=config.ratio, max_sequences=config.max_sequences,
                                    batch_size=config.batch_size, space=space)
        profile = dimension_profile(regions, model, config.label, massive.dims, space=space,
                                    top_share=config.top_share)
        meta = artifacts.model_sidecar(
            RegionDims.KIND, model, config=config.to_dict(), inputs=inputs,
            method="dimension dependence (Zhang et al. 2024, step 5): massive channels (peak |h| over decoder-layer "
                   "outputs above ratio x the median channel's) and the region's entries per residual channel")
        return RegionDims(massive, profile, meta)

    return artifacts.run_stage(RegionDims, out, key, compute, model=model)
