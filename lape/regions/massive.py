"""The residual stream of a model: which axis of each decoder-block tensor indexes it
(:func:`residual_axes`), its *massive* channels (:func:`find_massive_dims`: peak ``|hidden state|``
over the decoder layers' outputs above ``ratio x`` the median channel's; Sun et al. 2024) and a
region mask without the entries on some channels (:func:`without_dims`). The residual-axis rules
are described in :mod:`lape.regions.dims`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .. import artifacts
from ..errors import LapeError
from ..models import input_device
from ..runningstats import RunningSums, dist_info, shard, tally
from ..space import ParamSpace, feature_counts, is_conv1d

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


def take_sequences(sequences: Iterable[Any] | Mapping[str, Iterable[Any]], n: int) -> list[Any]:
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

    Runs the base model (no vocabulary logits, no gradients) over up to
    ``max_sequences`` sequences and takes, per hidden channel, the largest ``|h|`` over the real
    (``attention_mask == 1``) positions of the outputs of decoder layers ``0 .. L-1`` (read by
    forward hooks on the layers: the embeddings and the final norm do not count). A channel is
    massive when, at some layer's output, its peak exceeds ``ratio`` times that layer's median
    channel peak (see :class:`MassiveDims` for why per layer).
    Under ``torchrun`` each rank runs its share of the sequences (:func:`lape.runningstats.tally`)
    and the ranks' peaks combine to what one process finds (ties: the earlier sequence).

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
    seqs = take_sequences(sequences, max_sequences)
    if not seqs or sum(int(s.attention_mask.sum()) for s in seqs) == 0:
        raise LapeError("no sequence with a real token to run: give find_massive_dims some text "
                        "(e.g. the valid split of a corpus)")
    space = space or ParamSpace.of(model)
    layers, hidden = space.num_layers, hidden_size(model)
    device = input_device(model)
    rank, world = dist_info()
    indexed = list(enumerate(seqs))  # the global index breaks ties between ranks as one process would

    def rank_batches(group: str) -> Iterator[list[tuple[int, Any]]]:
        mine = list(shard(indexed, rank, world))
        return (mine[k:k + batch_size] for k in range(0, len(mine), batch_size))

    def step(tracker: RunningSums, chunk: list[tuple[int, Any]]) -> int:
        assert isinstance(tracker, PeakTracker)
        ((ids, mask),) = batches([s for _, s in chunk], len(chunk))
        tracker.batch = (ids, mask.bool(), torch.tensor([i for i, _ in chunk]))
        with torch.no_grad():
            model.base_model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
        return int(mask.sum())

    @contextmanager
    def layer_hooks(tracker: RunningSums) -> Iterator[None]:
        assert isinstance(tracker, PeakTracker)
        handles = []
        try:
            for layer, module in enumerate(_layer_modules(model, space)):
                def hook(mod: nn.Module, args: Any, output: Any, _layer: int = layer) -> None:
                    tracker.add(_layer, output[0] if isinstance(output, tuple) else output)
                handles.append(module.register_forward_hook(hook))
            yield
        finally:
            for handle in handles:
                handle.remove()

    key = artifacts.content_hash({"pass": "massive", "sequences": len(seqs), "batch_size": batch_size})
    states, _ = tally(["all"], lambda group: PeakTracker(layers, hidden), rank_batches, step, key=key,
                      progress=False, desc="massive channels", context=layer_hooks)
    return PeakTracker.from_state(states["all"]).result(ratio, len(seqs))


class PeakTracker(RunningSums):
    """Running per-layer, per-channel peaks of ``|h|`` with the position, token and (global)
    sequence index of the peak; ranks combine by taking the larger peak, on ties the earlier
    sequence (and position), which is what one process keeps."""

    def __init__(self, layers: int, hidden: int) -> None:
        self.hidden = hidden
        super().__init__({"peak": torch.zeros(layers, hidden, dtype=torch.float64),
                          "pos": torch.zeros(layers, hidden, dtype=torch.long),
                          "tok": torch.zeros(layers, hidden, dtype=torch.long),
                          "seq": torch.full((layers, hidden), -1, dtype=torch.long)})
        self.batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # ids, mask, sequence indices

    @classmethod
    def from_state(cls, state: Mapping[str, torch.Tensor]) -> PeakTracker:
        tracker = cls(*state["peak"].shape)
        tracker.load_state_dict(state)
        return tracker

    def add(self, layer: int, h: torch.Tensor) -> None:
        """Fold in one decoder layer's output ``h`` ``(B, T, H)`` of the current batch."""
        if h.shape[-1] != self.hidden:
            raise LapeError(f"decoder layer {layer} outputs {h.shape[-1]} channels, not hidden_size={self.hidden}: "
                            "this architecture's layer output is not the residual stream")
        assert self.batch is not None
        ids, mask, seq_index = self.batch
        s = self.sums
        values = h.detach().float().abs().cpu().masked_fill(~mask[..., None], -1.0)  # (B, T, H); padding < 0
        best, where = values.reshape(-1, self.hidden).max(0)  # (H,): the first position on ties
        better = best.double() > s["peak"][layer]
        s["peak"][layer] = torch.where(better, best.double(), s["peak"][layer])
        s["pos"][layer] = torch.where(better, where % values.shape[1], s["pos"][layer])
        s["tok"][layer] = torch.where(better, ids.reshape(-1)[where], s["tok"][layer])
        s["seq"][layer] = torch.where(better, seq_index[where // values.shape[1]], s["seq"][layer])

    def reduce_ranks(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        dist = torch.distributed
        parts = {}
        for name in ("peak", "pos", "tok", "seq"):
            gathered = [torch.empty_like(state[name]) for _ in range(dist.get_world_size())]
            dist.all_gather(gathered, state[name].contiguous())
            parts[name] = torch.stack(gathered)  # (ranks, L, H)
        seq = parts["seq"].masked_fill(parts["seq"] < 0, torch.iinfo(torch.long).max)
        # the largest peak; among equal peaks the earliest sequence, then position
        order = (parts["peak"] == parts["peak"].max(0).values) * 1.0
        rank_key = torch.where(order > 0, seq * (1 << 20) + parts["pos"], torch.iinfo(torch.long).max)
        best = rank_key.argmin(0, keepdim=True)  # (1, L, H)
        return {name: parts[name].gather(0, best)[0] for name in parts}

    def result(self, ratio: float, n_seqs: int) -> MassiveDims:
        s = self.sums
        peak, layer_of = s["peak"].max(0)  # (H,): over layers; the first layer on ties
        layer_median = torch.quantile(s["peak"], 0.5, dim=1)  # (L,)
        scale = layer_median.clamp_min(torch.finfo(torch.float64).tiny)[:, None]
        times_per_layer = s["peak"] / scale  # (L, H): each layer's peak over that layer's median
        times = times_per_layer.max(0).values  # (H,)
        dims = [int(c) for c in torch.argsort(-peak, stable=True) if float(times[c]) > ratio]
        first = {c: int((times_per_layer[:, c] > ratio).nonzero()[0]) for c in dims}
        positions = {c: int(s["pos"][layer_of[c], c]) for c in dims}
        tokens = {c: int(s["tok"][layer_of[c], c]) for c in dims}
        return MassiveDims(dims, peak.tolist(), float(torch.quantile(peak, 0.5)), float(ratio), first, positions,
                           tokens, s["peak"].tolist(), n_seqs, layer_median.tolist(), times.tolist())


# --------------------------------------------------------------------------------------------
# masks without some channels


def check_dims(dims: Sequence[int] | torch.Tensor, hidden: int) -> list[int]:
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
        index = torch.tensor(check_dims(dims, int(m.shape[axis])), dtype=torch.long, device=m.device)
        out[name] = m.clone().index_fill_(axis, index, False)
    return out
