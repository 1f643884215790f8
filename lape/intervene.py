"""Change neuron activations: the one intervention mechanism of lape.

:func:`intervene` is a context manager over the neuron space. Inside it every forward pass of
the model, plain or inside ``model.generate()`` (the prompt and every generated token), sees
the chosen activations edited:

* ``deactivate=["fr"]``: French neurons set to 0 (Tang et al.: ``index_fill_(.., 0)`` on the
  activation, before the product with ``up_proj``);
* ``activate={"ja": None}``: Japanese neurons set to a value from the recorded statistics
  (``value="firing_mean"``: their mean activation on Japanese tokens where they fired; or
  ``"mean"``: over all Japanese tokens), times ``strength``; a number instead of ``None`` sets
  that fixed value;
* ``scale={"bio": 2.0}``: neurons multiplied by a factor (key-neuron boost/suppress, or a soft
  deactivation with a factor in (0, 1));
* ``add=["ja"]``: the Japanese neurons' *difference of means* (their mean activation on Japanese
  tokens minus the mean over the other languages' means) times ``strength`` added to whatever
  they compute (additive steering, Gurgurov et al. 2025), instead of overwriting it;
* ``edits=[Edit(...)]``: raw edits, e.g. integrated gradients' scaled path
  ``act * alpha`` with ``alpha`` of shape ``[batch, 1, 1]``.

Neurons come from a :class:`NeuronSets` (LAPE, a baseline, a region's neuron view) or a
hand-written ``{label: [(layer, index), ...]}``. Interventions nest; the inner one applies
after the outer one. Every hook is removed on exit, also after an exception.

``skip_first=True`` leaves each sequence's first real token (after left padding) untouched: the
attention sink, whose huge activations most heads attend to (ReCoVeR never edits position 0).
``positions="last"`` edits only the last position of each forward pass (the answer position of
a prompt; integrated gradients and key-neuron boost/suppress on one-token continuations).
"""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from .errors import LapeError
from .hooks import activation_hooks
from .masks import Neuron, NeuronSets
from .neurons.stats import ActivationStats
from .space import NeuronSpace

Op = Literal["set", "mul", "add"]
Positions = Literal["all", "last"]
VALUE_RULES = ("firing_mean", "mean")


@dataclass
class Edit:
    """One edit of one layer's activations.

    Attributes:
        layer: the layer.
        index: LongTensor ``[n]`` of neuron indices.
        op: ``"set"`` (replace), ``"mul"`` (multiply) or ``"add"``.
        value: a float, or a tensor broadcastable to ``(..., n)`` (e.g. ``[n]`` per neuron, or
            ``[batch, 1, 1]`` for one factor per sequence). A NaN in a ``"set"`` tensor keeps
            that activation unchanged (per-sequence edits, see :func:`batch_edits`).
    """

    layer: int
    index: torch.Tensor
    op: Op
    value: float | torch.Tensor

    def apply(self, act: torch.Tensor) -> torch.Tensor:
        idx = self.index.to(act.device)
        value = self.value.to(act.device, act.dtype) if isinstance(self.value, torch.Tensor) else self.value
        if self.op == "set" and not isinstance(value, torch.Tensor):
            return act.index_fill(-1, idx, value)
        sel = act.index_select(-1, idx)
        if self.op == "set":
            new = torch.where(torch.isnan(value), sel, value)
        else:
            new = sel * value if self.op == "mul" else sel + value
        return act.index_copy(-1, idx, new.to(act.dtype))


def _resolve(neurons: NeuronSets | Mapping[str, Iterable[Neuron]] | None, shape: tuple[int, int]) -> NeuronSets:
    if neurons is None:
        return NeuronSets([], torch.zeros(0, *shape, dtype=torch.bool))
    if isinstance(neurons, NeuronSets):
        return neurons
    return NeuronSets.from_neurons(neurons, shape)


def activation_values(stats: ActivationStats, lang: str, rule: str = "firing_mean") -> torch.Tensor:
    """float32 ``[layers, neurons]``: the value each neuron is set to when ``lang`` is activated."""
    if rule not in VALUE_RULES:
        raise LapeError(f"unknown activation value rule {rule!r}: use one of {', '.join(VALUE_RULES)} or a number")
    k = stats.index(lang)
    table = stats.mean_firing_activation() if rule == "firing_mean" else stats.mean_activation()
    return table[k].to(torch.float32)


def difference_of_means(stats: ActivationStats, lang: str, others: Iterable[str] | None = None) -> torch.Tensor:
    """float32 ``[layers, neurons]``: each neuron's mean activation on ``lang`` minus the mean of
    its mean activations on ``others`` (default: every other recorded language): the direction
    additive steering adds (``add=``)."""
    others = [o for o in (stats.languages if others is None else others) if o != lang]
    if not others:
        raise LapeError(f"additive steering towards {lang!r} needs the stats of at least one other language "
                        "to take the difference from: record two or more languages")
    means = stats.mean_activation().to(torch.float32)
    return means[stats.index(lang)] - means[[stats.index(o) for o in others]].mean(0)


def check_layers(layers: Iterable[int], num_layers: int) -> None:
    """Refuse edits restricted to layers the model does not have (they would silently edit nothing)."""
    outside = sorted(x for x in layers if not 0 <= x < num_layers)
    if outside:
        raise LapeError(f"layers {outside} are outside the neuron space (layers 0..{num_layers - 1}): "
                        "restrict edits to existing layers (--layers)")


def build_edits(
    sets: NeuronSets,
    *,
    deactivate: Iterable[str] = (),
    activate: Mapping[str, float | None] | Iterable[str] | None = None,
    scale: Mapping[str, float] | None = None,
    add: Iterable[str] = (),
    stats: ActivationStats | None = None,
    value: str = "firing_mean",
    strength: float = 1.0,
    layers: Iterable[int] | None = None,
    exclusive: bool = False,
) -> list[Edit]:
    """Turn labelled neuron sets and a request into per-layer :class:`Edit`\\ s (see :func:`intervene`).

    Order within a layer: deactivate, activate, scale, add (e.g. a soft deactivation of the
    source, then the target's difference of means added). With ``exclusive=True`` the
    activated and added labels keep only neurons that no other label of ``sets`` has (to
    separate close languages such as zh and ja, which share many units)."""
    layer_filter = None if layers is None else set(layers)
    check_layers(layer_filter or (), sets.shape[0])
    edits: list[Edit] = []

    def own(lang: str) -> torch.Tensor:
        mask = sets.mask(lang)
        if exclusive:
            others = [x for x in sets.labels if x != lang]
            if others:
                mask = mask & ~torch.stack([sets.mask(x) for x in others]).any(0)
        return mask

    def per_layer(mask: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        for layer in range(mask.shape[0]):
            if layer_filter is not None and layer not in layer_filter:
                continue
            idx = mask[layer].nonzero().squeeze(1)
            if idx.numel():
                yield layer, idx

    for lang in deactivate:
        for layer, idx in per_layer(sets.mask(lang)):
            edits.append(Edit(layer, idx, "set", 0.0))
    if activate is not None:
        activate = {lang: None for lang in activate} if not isinstance(activate, Mapping) else activate
        for lang, fixed in activate.items():
            mask = own(lang)
            if fixed is None:
                if stats is None:
                    raise LapeError(f"activating {lang!r} neurons needs recorded stats (stats=, --stats) "
                                    "for their values, or a fixed value")
                _check_stats(stats, sets)
                values = activation_values(stats, lang, value) * strength
                for layer, idx in per_layer(mask):
                    edits.append(Edit(layer, idx, "set", values[layer, idx]))
            else:
                for layer, idx in per_layer(mask):
                    edits.append(Edit(layer, idx, "set", float(fixed) * strength))
    for lang, factor in (scale or {}).items():
        for layer, idx in per_layer(sets.mask(lang)):
            edits.append(Edit(layer, idx, "mul", float(factor)))
    for lang in add:
        if stats is None:
            raise LapeError(f"adding {lang!r} neurons' direction needs recorded stats (stats=, --stats)")
        _check_stats(stats, sets)
        others = [x for x in sets.labels if x in stats.languages and x != lang] or None
        values = difference_of_means(stats, lang, others) * strength
        for layer, idx in per_layer(own(lang)):
            edits.append(Edit(layer, idx, "add", values[layer, idx]))
    return edits


def _check_stats(stats: ActivationStats, sets: NeuronSets) -> None:
    if stats.shape != sets.shape:
        raise LapeError(f"the stats ({stats.shape[0]} x {stats.shape[1]}) do not match the neuron "
                        f"sets ({sets.shape[0]} x {sets.shape[1]}): use stats and neurons of one model")


def relocate(edits: Iterable[Edit], width: int, generator: torch.Generator) -> list[Edit]:
    """The same edits on random neurons: each edit moves to as many distinct neurons, drawn
    uniformly in its own layer, with its values unchanged (the random control of steering:
    the same per-layer counts, values, rule and strength on neurons chosen by chance)."""
    moved = []
    for e in edits:
        index = torch.randperm(width, generator=generator)[:e.index.numel()]  # value i goes to index[i]
        moved.append(Edit(e.layer, index, e.op, e.value))
    return moved


def batch_edits(
    sets: NeuronSets,
    requests: Sequence[Mapping[str, Any]],
    *,
    stats: ActivationStats | None = None,
    value: str = "firing_mean",
    strength: float = 1.0,
    layers: Iterable[int] | None = None,
) -> list[Edit]:
    """Edits that treat every sequence of a batch differently: ``requests[b]`` holds the
    :func:`build_edits` arguments (``deactivate``, ``activate``, ``scale``, ``add``,
    ``strength``, ``layers``) of sequence ``b``, and optionally ``relocate_seed`` (the same
    edits moved to random neurons, :func:`relocate`); an empty request leaves that sequence
    unchanged.

    Lets one ``generate()`` call steer each prompt towards its own language (and strength), which
    costs little more than steering one: a decoding step is bound by reading the LM head. The
    result goes to ``intervene(model, edits=...)`` for a batch of exactly ``len(requests)``.
    """
    batch, (num_layers, width) = len(requests), sets.shape
    keep = torch.full((batch, num_layers, width), math.nan)
    factor = torch.ones(batch, num_layers, width)
    offset = torch.zeros(batch, num_layers, width)
    for b, request in enumerate(requests):
        request = {"strength": strength, "layers": layers, "value": value, **request}
        seed = request.pop("relocate_seed", None)
        built = build_edits(sets, stats=stats, **request)
        if seed is not None:
            built = relocate(built, width, torch.Generator().manual_seed(int(seed)))
        for e in built:
            v = e.value if isinstance(e.value, torch.Tensor) else float(e.value)
            if e.op == "set":
                keep[b, e.layer, e.index] = v
            elif e.op == "mul":
                factor[b, e.layer, e.index] *= v
            else:
                offset[b, e.layer, e.index] += v
    edits: list[Edit] = []
    for layer in range(num_layers):
        idx = (~torch.isnan(keep[:, layer])).any(0).nonzero().squeeze(1)
        if idx.numel():
            edits.append(Edit(layer, idx, "set", keep[:, layer, idx].unsqueeze(1)))
        idx = (factor[:, layer] != 1).any(0).nonzero().squeeze(1)
        if idx.numel():
            edits.append(Edit(layer, idx, "mul", factor[:, layer, idx].unsqueeze(1)))
        idx = (offset[:, layer] != 0).any(0).nonzero().squeeze(1)
        if idx.numel():
            edits.append(Edit(layer, idx, "add", offset[:, layer, idx].unsqueeze(1)))
    return edits


@contextmanager
def intervene(
    model: nn.Module,
    neurons: NeuronSets | Mapping[str, Iterable[Neuron]] | None = None,
    deactivate: Iterable[str] = (),
    activate: Mapping[str, float | None] | Iterable[str] | None = None,
    scale: Mapping[str, float] | None = None,
    *,
    add: Iterable[str] = (),
    stats: ActivationStats | None = None,
    value: str = "firing_mean",
    strength: float = 1.0,
    layers: Iterable[int] | None = None,
    edits: Iterable[Edit] = (),
    skip_first: bool = False,
    positions: Positions = "all",
    space: NeuronSpace | None = None,
    check_model: bool = True,
) -> Iterator[list[Edit]]:
    """Edit neuron activations for the duration of a ``with`` block.

    Args:
        model: the model.
        neurons: labelled sets (a :class:`NeuronSets` or ``{label: [(layer, index), ...]}``).
        deactivate: labels whose neurons are set to 0.
        activate: labels whose neurons are set to their recorded value (``{label: None}``, or an
            iterable of labels) or to a fixed value (``{label: 1.5}``).
        scale: ``{label: factor}``: multiply those neurons (0 suppresses, 2 boosts).
        add: labels whose difference of means (:func:`difference_of_means`, against the other
            labels that have stats) times ``strength`` is added to their activations.
        stats: recorded statistics, needed to activate with recorded values.
        value: ``"firing_mean"`` (mean over tokens where the neuron fired) or ``"mean"``.
        strength: multiplies every activation value.
        layers: restrict edits to these layers.
        edits: extra raw edits, applied after the labelled ones.
        skip_first: leave each sequence's first real token (the attention sink) unedited.
        positions: ``"all"`` positions, or only the ``"last"`` of each forward pass (edit values
            then broadcast against ``[batch, 1, n]``).
        space: the neuron space (found automatically).
        check_model: refuse neuron sets made on a model with another fingerprint.

    Yields:
        The list of edits in force.

    Example:
        >>> with intervene(model, sets, deactivate=["en"], activate=["fr"], stats=stats):
        ...     out = model.generate(ids, max_new_tokens=30)
    """
    space = space or NeuronSpace.of(model)
    sets = _resolve(neurons, space.shape)
    if check_model and sets.labels:
        sets.check_model(model, space)
    if stats is not None and check_model:
        stats.check_model(model)
    all_edits = build_edits(sets, deactivate=deactivate, activate=activate, scale=scale, add=add, stats=stats,
                            value=value, strength=strength, layers=layers) + list(edits)
    by_layer: dict[int, list[Edit]] = defaultdict(list)
    for e in all_edits:
        if not 0 <= e.layer < space.num_layers:
            raise LapeError(f"edit for layer {e.layer} but the model has {space.num_layers} layers")
        by_layer[e.layer].append(e)

    if positions not in ("all", "last"):
        raise LapeError(f"positions must be 'all' or 'last', not {positions!r}")
    sink: dict[str, Any] = {}

    def fn(layer: int, act: torch.Tensor) -> torch.Tensor:
        if positions == "last":  # [batch, T, n]; some models (OPT) run their MLP on [batch * T, n]
            shaped = act if act.dim() == 3 else act.reshape(sink["batch"], -1, act.shape[-1])
            tail = shaped[:, -1:]
            for e in by_layer[layer]:
                tail = e.apply(tail)
            edited = torch.cat([shaped[:, :-1], tail.to(act.dtype)], dim=1).reshape(act.shape)
        else:
            edited = act
            for e in by_layer[layer]:
                edited = e.apply(edited)
        if skip_first and act.dim() == 3:
            rows, cols = _sink_positions(sink, act.shape[0], act.shape[1], act.device)
            if rows.numel():
                edited = edited.clone()
                edited[rows, cols] = act[rows, cols]
        return edited

    with contextlib.ExitStack() as stack:
        if skip_first and by_layer:
            base = getattr(model, "base_model", model)
            def call(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
                # read now: the cache grows while the layers run
                sink.update(mask=kwargs.get("attention_mask"), past=_cached_length(kwargs))

            handle = base.register_forward_pre_hook(call, with_kwargs=True)
            stack.callback(handle.remove)
        if positions == "last" and by_layer:
            def batch_size(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
                hidden = args[0] if args else kwargs.get("hidden_states")  # [batch, T, hidden] in every block
                sink["batch"] = hidden.shape[0]

            handle = space.layer_module(model, 0).register_forward_pre_hook(batch_size, with_kwargs=True)
            stack.callback(handle.remove)
        stack.enter_context(activation_hooks(model, space, fn, layers=sorted(by_layer)))
        yield all_edits


def _sink_positions(call: Mapping[str, Any], batch: int, length: int,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, columns)`` of each sequence's first real token inside the current chunk of
    ``length`` positions, from the model call's ``attention_mask`` (left padding) or, without
    one, the length its key/value cache had when the call began (decoding steps continue a
    cache and contain no first token)."""
    mask = call.get("mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape[0] == batch:
        start = mask.shape[1] - length  # the mask covers the cached positions and this chunk
        first = mask.to(torch.int64).argmax(1) - start
    else:  # no padding (generate drops an all-ones mask): the chunk starts after the cached tokens
        first = torch.full((batch,), -int(call.get("past", 0)), dtype=torch.int64)
    inside = (first >= 0) & (first < length)
    rows = inside.nonzero().squeeze(1)
    return rows.to(device), first[inside].to(device)


def _cached_length(kwargs: Mapping[str, Any]) -> int:
    """How many positions the call's key/value cache already holds (0 without a cache)."""
    position = kwargs.get("cache_position")
    if isinstance(position, torch.Tensor) and position.numel():
        return int(position.reshape(-1)[0])
    for name in ("past_key_values", "cache"):
        cache = kwargs.get(name)
        if cache is not None and hasattr(cache, "get_seq_length"):
            return int(cache.get_seq_length())
    return 0
