"""Super weights (Yu et al. 2024): for each massive residual channel, the down-projection entry
that writes it at the first token (``j* = argmax_j |a_j W[c, j]|`` over the hooked input ``a``
of the layer where the channel appears) and the output-norm scale that sets it; found with one
probe of the first token alone (:func:`super_weights`). :mod:`lape.regions.perturb` edits them.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .. import artifacts
from ..errors import LapeError
from ..models import input_device
from ..space import NeuronSpace, ParamSpace
from ..weights import removal_value
from .massive import MassiveDims, hidden_size, residual_axes, writes_residual

logger = logging.getLogger(__name__)
TARGETS = ("weight", "norm")  # a down-projection entry, or a norm's scale entry
KINDS = ("zero", "scale")  # set to 0, or multiply by the factor


# --------------------------------------------------------------------------------------------
# the probe: the first token alone, position 0


def scores_key(scores: Any) -> str:
    """The content key of an importance (its artifact identity) or of a ``{name: tensor}`` mapping."""
    if hasattr(scores, "identity"):
        return artifacts.content_hash(scores.identity())
    return artifacts.tensor_digest({k: v for k, v in scores.items() if isinstance(v, torch.Tensor)})


def probe_token(corpus: Mapping[str, Iterable[Any]], per_language: int = 4) -> int:
    """The first token of the text: the most common first token of the first ``per_language``
    sequences of each language (BOS for a packed corpus; the first seen wins ties)."""
    firsts = []
    for stream in corpus.values():
        for k, seq in enumerate(stream):
            if k >= per_language:
                break
            ids = seq.input_ids.reshape(-1)
            if ids.numel():
                firsts.append(int(ids[0]))
    if not firsts:
        raise LapeError("no sequence to take the first token from: give perturb some text (e.g. the valid split)")
    counts = Counter(firsts)
    return max(counts, key=lambda t: (counts[t], -firsts.index(t)))


@contextmanager
def _position0(modules: Mapping[str, nn.Module]) -> Iterator[dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Record ``(input, output)`` at batch row 0, position 0 of every forward of each module
    (float64, CPU; the input is ``None`` where it is not a ``[B, T, ...]`` tensor); the hooks are
    removed on exit, also after an exception."""
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = []

    def first(t: Any) -> torch.Tensor | None:
        t = t[0] if isinstance(t, tuple) else t
        return t.detach()[0, 0].double().cpu() if isinstance(t, torch.Tensor) and t.dim() >= 2 else None

    try:
        for key, module in modules.items():
            def hook(mod: nn.Module, args: tuple, kwargs: dict, output: Any, _key: str = key) -> None:
                x = args[0] if args else kwargs.get("hidden_states", kwargs.get("input"))
                seen[_key] = (first(x), first(output))  # type: ignore[assignment]
            handles.append(module.register_forward_hook(hook, with_kwargs=True))
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def probe_first_token(model: nn.Module, space: ParamSpace, token: int, watch: Mapping[str, nn.Module] | None = None
           ) -> tuple[torch.Tensor, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """One forward of ``token`` alone: the residual stream after every decoder layer at position 0
    (``[layers, hidden]``, float64) and ``(input, output)`` at position 0 of each watched module."""
    layers = {f"layer:{i}": model.get_submodule(f"{space.layers_path}.{i}") for i in range(space.num_layers)}
    with _position0({**layers, **(watch or {})}) as seen, torch.inference_mode():
        model.base_model(input_ids=torch.tensor([[token]], device=input_device(model)), use_cache=False)
    states = torch.stack([seen[f"layer:{i}"][1] for i in range(space.num_layers)])  # (L, H)
    return states, {k: v for k, v in seen.items() if not k.startswith("layer:")}


# --------------------------------------------------------------------------------------------
# super-weight candidates


@dataclass
class SuperWeight:
    """The super-weight candidate of one massive channel, its control, and the norm that sets it.

    Attributes:
        dim: the massive channel ``c``.
        layer: the layer ``l`` whose down-projection was hooked.
        tensor: the down-projection weight's name (``tensor_type`` relative to its block);
            ``index`` the entry ``(c, j*)`` in it (``(j*, c)`` for GPT-2's ``Conv1D``); ``j`` is ``j*``.
        activation: ``a_{j*}``, the down-projection's input at the probe.
        weight: ``W[c, j*]``.
        contribution: ``a_{j*} W[c, j*]``.
        output: ``sum_j a_j W[c, j]``, the down-projection's output on ``c`` at the probe.
        control_dim, control_index, control_j, control_activation, control_weight,
            control_contribution, control_output: the same for the control channel ``o``.
        norm: the output norm's weight that sets ``c`` (``None``: no norm between the writer and
            the residual add; ``norm_type`` relative to its block); ``norm_offset`` ``k`` (1 for
            ``x * (1 + w)``); ``norm_scale`` ``s_c = w_c + k``; ``control_norm_scale`` ``s_o``.
        branches: per writer of layer ``l`` (block-relative type): ``{"norm": its output norm's
            type or None, "value": what the branch adds to ``c`` at the probe}``.
        position: where channel ``c`` peaks in the text (0: the first token, the probe).
        score, score_rank: the entry's importance ``sum_l |S_l|`` and the share of its tensor's
            entries scored higher (``None`` without an importance); ``norm_score``,
            ``norm_score_rank`` the same for the norm entry (``None`` where the importance has no
            norm weights).
    """

    dim: int
    layer: int
    tensor: str
    tensor_type: str
    index: list[int]
    j: int
    activation: float
    weight: float
    contribution: float
    output: float
    control_dim: int
    control_index: list[int]
    control_j: int
    control_activation: float
    control_weight: float
    control_contribution: float
    control_output: float
    norm: str | None = None
    norm_type: str | None = None
    norm_offset: float = 0.0
    norm_scale: float | None = None
    control_norm_scale: float | None = None
    branches: dict[str, dict[str, Any]] = field(default_factory=dict)
    position: int = 0
    score: float | None = None
    score_rank: float | None = None
    norm_score: float | None = None
    norm_score_rank: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SuperWeight:
        d = dict(d)
        d["index"] = [int(i) for i in d["index"]]
        d["control_index"] = [int(i) for i in d["control_index"]]
        return cls(**d)


def _layer_watch(model: nn.Module, space: ParamSpace, layer: int, axes: Mapping[str, int | None]
                 ) -> dict[str, nn.Module]:
    """The modules of one layer to watch at the probe: its writers (``writer:NAME``) and its
    hidden-sized norms (``norm:NAME``), keyed by their weight's name."""
    watch = {}
    hidden = hidden_size(model)
    for p in space.params:
        if p.layer != layer or not p.name.endswith(".weight"):
            continue
        module = model.get_submodule(p.name.rpartition(".")[0])
        if writes_residual(model, p.name, axes):
            watch[f"writer:{p.name}"] = module
        elif p.shape == (hidden,) and axes.get(p.name) == 0 and "Norm" in type(module).__name__:
            watch[f"norm:{p.name}"] = module
    return watch


def _output_norms(seen: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, str | None]:
    """Per writer, the norm whose input at the probe is the writer's output (``None``: none)."""
    norms = {k[5:]: v for k, v in seen.items() if k.startswith("norm:")}
    out: dict[str, str | None] = {}
    for key, (_, written) in seen.items():
        if key.startswith("writer:"):
            out[key[7:]] = next((n for n, (x, _) in norms.items() if x is not None and x.shape == written.shape
                                 and torch.allclose(x, written, rtol=1e-6, atol=0.0)), None)
    return out


def _argmax_term(weight: torch.Tensor, axis: int, a: torch.Tensor, channel: int) -> tuple[int, torch.Tensor]:
    """``j = argmax_j |a_j W[channel, j]|`` (the first on ties) and the terms ``a_j W[channel, j]``."""
    line = weight.detach().select(axis, channel).double().cpu()  # (I,): what input j adds to the channel
    if line.shape != a.shape:
        raise LapeError(f"the hooked input has {a.numel()} entries but the weight's row on channel {channel} has "
                        f"{line.numel()}: tensor_type must be a down-projection whose input is its MLP's activation")
    terms = a * line
    return int(terms.abs().argmax()), terms


def check_massive(massive: MassiveDims, hidden: int) -> list[int]:
    if massive.hidden_size != hidden:
        raise LapeError(f"the massive dims are over {massive.hidden_size} channels but the model has {hidden}: "
                        "find them on this model (find_massive_dims)")
    if not massive.dims:
        raise LapeError(f"no massive channel (none above {massive.ratio:g} x its layer's median channel peak): run "
                        "find_massive_dims with a lower ratio=")
    return list(massive.dims)


def _param_of(space: ParamSpace, layer: int, tensor_type: str | None, model: nn.Module) -> str:
    """The full name of ``tensor_type`` in ``layer`` (``None``: the MLP's down-projection weight,
    as :class:`lape.space.NeuronSpace` finds it)."""
    if not 0 <= layer < space.num_layers:
        raise LapeError(f"layer {layer} is outside the {space.num_layers} decoder layers of {space.model_class}: "
                        f"use a layer from 0 to {space.num_layers - 1}")
    if tensor_type is None:
        return f"{NeuronSpace.of(model).down_paths[layer]}.weight"
    found = [p.name for p in space.params if p.layer == layer and p.type == tensor_type]
    if not found:
        raise LapeError(f"{space.model_class} has no tensor type {tensor_type!r} in layer {layer}: use one of "
                        f"{', '.join(space.tensor_types())}")
    return found[0]


def super_weights(model: nn.Module, massive: MassiveDims, token: int, *, layer: int | None = None,
                  tensor_type: str | None = None, ordinary_dim: int | None = None,
                  max_dims: int | None = None, space: ParamSpace | None = None) -> list[SuperWeight]:
    """The super-weight candidate of every massive channel, with its control and norm entry.

    Per massive channel ``c``: hook the input ``a`` of layer ``l``'s down-projection at the probe
    (``token`` alone, position 0) and take ``j* = argmax_j |a_j W[c, j]|``; the control is the
    median channel ``o`` of layer ``l`` with ``j_o = argmax_j |a_j W[o, j]|``; the norm is the
    output norm (if any) of the branch that writes the larger ``|value|`` on ``c`` in layer ``l``
    (see the module docstring).

    Args:
        model: the model ``massive`` was found on.
        massive: from :func:`lape.regions.dims.find_massive_dims`.
        token: the probe token (:func:`probe_token`: BOS).
        layer: hook this layer for every channel (default: each channel's first massive layer).
        tensor_type: the down-projection's weight relative to its block (default: the MLP's
            down-projection, found by :class:`lape.space.NeuronSpace`).
        ordinary_dim: the control channel for every candidate (default: the median channel of
            each candidate's layer, :meth:`MassiveDims.ordinary_dim`).
        max_dims: only the ``max_dims`` largest massive channels (default: all).
        space: the model's :class:`ParamSpace`, if already built.

    Returns:
        One :class:`SuperWeight` per massive channel, in ``massive.dims`` order.

    Raises:
        LapeError: no massive channel, massive dims of another model, a layer or tensor type
            the model does not have, a tensor that does not write the residual stream, or a
            control channel outside the model or equal to the massive one.

    Example:
        >>> sw = super_weights(model, massive, tok.bos_token_id)
        >>> [(s.layer, s.dim, s.j) for s in sw]     # e.g. [(3, 163, 1414), (0, 400, 1405)]
    """
    space = space or ParamSpace.of(model)
    hidden = hidden_size(model)
    dims = check_massive(massive, hidden)[:max_dims]
    axes = residual_axes(model, space)
    plan: dict[int, int] = {}
    for c in dims:
        where = layer if layer is not None else massive.first_layer.get(c)
        if where is None:
            raise LapeError(f"the massive dims do not say where channel {c} first appears: pass layer=")
        plan[c] = where
    watch: dict[str, nn.Module] = {}
    for where in sorted(set(plan.values())):
        name = _param_of(space, where, tensor_type, model)
        if not writes_residual(model, name, axes):
            raise LapeError(f"{space.info(name).type} does not write into the residual stream: use the down-projection "
                            "(mlp.down_proj.weight, mlp.c_proj.weight, ...)")
        watch.update(_layer_watch(model, space, where, axes))
    if ordinary_dim is not None and not 0 <= int(ordinary_dim) < hidden:
        raise LapeError(f"ordinary_dim={ordinary_dim} is outside [0, {hidden}): pass a channel of this model")
    _, seen = probe_first_token(model, space, token, watch)
    params = dict(model.named_parameters())
    out = []
    for c in dims:
        where = plan[c]
        o = int(ordinary_dim) if ordinary_dim is not None else massive.ordinary_dim(where)
        if o == c:
            raise LapeError(f"the control channel {o} is the massive one: pass another ordinary_dim")
        name = _param_of(space, where, tensor_type, model)
        w, axis = params[name], axes[name]
        a = seen[f"writer:{name}"][0]  # (I,): the down-projection's input at the probe
        j, terms = _argmax_term(w, axis, a, c)
        jo, terms_o = _argmax_term(w, axis, a, o)
        # what each branch of layer l adds to c at the probe: its output norm's output, else the writer's
        branches = {}
        for writer, norm in _output_norms({k: v for k, v in seen.items()
                                           if space.layer_of(k.split(":", 1)[1]) == where}).items():
            value = seen[f"norm:{norm}"][1][c] if norm else seen[f"writer:{writer}"][1][c]
            branches[writer] = (norm, float(value))
        top = max(branches, key=lambda k: abs(branches[k][1])) if branches else None
        norm = branches[top][0] if top is not None else None  # the norm of the branch that writes c most
        offset = -removal_value(model, norm) if norm else 0.0
        row, row_o = w.detach().select(axis, c), w.detach().select(axis, o)
        sw = SuperWeight(
            dim=c, layer=where, tensor=name, tensor_type=space.info(name).type, index=entry_index(axis, c, j), j=j,
            activation=float(a[j]), weight=float(row[j]), contribution=float(terms[j]), output=float(terms.sum()),
            control_dim=o, control_index=entry_index(axis, o, jo), control_j=jo, control_activation=float(a[jo]),
            control_weight=float(row_o[jo]), control_contribution=float(terms_o[jo]), control_output=float(terms_o.sum()),
            norm=norm, norm_type=space.info(norm).type if norm else None, norm_offset=offset,
            norm_scale=float(params[norm].detach()[c]) + offset if norm else None,
            control_norm_scale=float(params[norm].detach()[o]) + offset if norm else None,
            branches={space.info(k).type: {"norm": space.info(n).type if n else None, "value": v}
                      for k, (n, v) in branches.items()},
            position=int(massive.positions.get(c, 0)))
        if sw.position != 0:
            logger.info("channel %d peaks at position %d, not at the first token: its candidate is still taken at "
                        "the first token", c, sw.position)
        out.append(sw)
    return out


def entry_index(axis: int, channel: int, j: int) -> list[int]:
    return [channel, j] if axis == 0 else [j, channel]
