"""Where a model's neurons and parameters live: :class:`NeuronSpace` and :class:`ParamSpace`.

A neuron is ``(layer, index)``: ``index`` is a column of the MLP's activation, i.e. the ``j``
in ``down_proj(act_fn(gate_proj(x)) * up_proj(x))`` (gated MLPs: LLaMA, Mistral, Qwen2,
Gemma 1-3, Phi-3) or ``c_proj(act(c_fc(x)))`` (GPT-2, BLOOM, GPT-NeoX, OPT). Column ``j`` of
the activation is exactly input column ``j`` of the down/output projection, so zeroing one is
zeroing the other (the tests check this for every family).

:class:`NeuronSpace` finds, per decoder layer, the activation module and the down projection:
first from a table of known module names, then by a guess over ``named_modules()``, and the
caller can override with ``pattern=``.

This module registers no hooks (see :mod:`lape.hooks`) and changes no weights (see
:mod:`lape.weights`).
"""


from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import LapeError

# Known (activation, down projection) module names relative to one decoder layer, tried in order.
KNOWN_SITES: list[tuple[str, str]] = [
    ("mlp.act_fn", "mlp.down_proj"),  # LLaMA, Mistral, Qwen2/3, Gemma 1-3
    ("mlp.activation_fn", "mlp.down_proj"),  # Phi-3 (fused gate_up_proj)
    ("mlp.act", "mlp.c_proj"),  # GPT-2, GPT-J, GPT-Neo
    ("mlp.gelu_impl", "mlp.dense_4h_to_h"),  # BLOOM
    ("mlp.act", "mlp.dense_4h_to_h"),  # GPT-NeoX / Pythia
    ("activation_fn", "fc2"),  # OPT (MLP lives on the decoder layer)
    ("mlp.activation_fn", "mlp.fc2"),  # Phi-1/2
    ("mlp.act", "mlp.fc_out"),  # GPT-J
]

_DOWN_NAMES = ("down_proj", "c_proj", "dense_4h_to_h", "fc2", "fc_out", "w2", "wo")


def feature_counts(module: nn.Module, side: str) -> int | None:
    """``in`` or ``out`` width of a linear layer (``nn.Linear`` or GPT-2's ``Conv1D``), else ``None``."""
    if isinstance(module, nn.Linear):
        return module.in_features if side == "in" else module.out_features
    weight = getattr(module, "weight", None)
    if type(module).__name__ == "Conv1D" and weight is not None:  # GPT-2: weight is [in, out]
        return int(weight.shape[0 if side == "in" else 1])
    return None


def _in_features(module: nn.Module) -> int | None:
    return feature_counts(module, "in")


def _out_features(module: nn.Module) -> int | None:
    return feature_counts(module, "out")


def _decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ``nn.ModuleList`` of decoder layers: the longest one whose length is the layer count."""
    cfg = getattr(model, "config", None)
    cfg = getattr(cfg, "text_config", None) or cfg
    n_layers = None
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        n_layers = n_layers or getattr(cfg, key, None)
    candidates = [(name, mod) for name, mod in model.named_modules()
                  if isinstance(mod, nn.ModuleList) and len(mod) > 0]
    if n_layers:
        exact = [c for c in candidates if len(c[1]) == n_layers]
        candidates = exact or candidates
    if not candidates:
        raise LapeError(f"{type(model).__name__} has no list of decoder layers: pass "
                        "pattern='model.layers.{layer}.mlp.act_fn' (your model's activation path)")
    return max(candidates, key=lambda c: (len(c[1]), -c[0].count(".")))


def _get(root: nn.Module, path: str) -> nn.Module | None:
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


def _guess_site(layer: nn.Module) -> tuple[str, str] | None:
    """Guess (activation, down projection) inside one layer: a down projection by name whose
    parent also holds an activation-like module."""
    for name, mod in layer.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf not in _DOWN_NAMES or _in_features(mod) is None:
            continue
        parent = name.rsplit(".", 1)[0] if "." in name else ""
        siblings = _get(layer, parent) if parent else layer
        for sname, smod in siblings.named_children():
            cls = type(smod).__name__.lower()
            if any(k in cls for k in ("act", "gelu", "silu", "relu", "swish")) or "act" in sname:
                prefix = f"{parent}." if parent else ""
                return prefix + sname, name
    return None


@dataclass(frozen=True)
class NeuronSpace:
    """Where each layer's MLP neurons live in a model.

    Attributes:
        model_class: the model's class name.
        layers_path: path of the decoder-layer list, e.g. ``"model.layers"``.
        act_paths: per layer, the module whose output is the MLP activation ``[.., neurons]``.
        down_paths: per layer, the down/output projection whose input columns are the neurons.
        neurons_per_layer: the MLP width.

    Example:
        >>> space = NeuronSpace.of(model)
        >>> space.num_layers, space.neurons_per_layer
        (18, 2048)
    """

    model_class: str
    layers_path: str
    act_paths: tuple[str, ...]
    down_paths: tuple[str, ...]
    neurons_per_layer: int

    @property
    def num_layers(self) -> int:
        return len(self.act_paths)

    @property
    def num_neurons(self) -> int:
        return self.num_layers * self.neurons_per_layer

    @property
    def shape(self) -> tuple[int, int]:
        """``(layers, neurons)``: the shape of every mask and count on this space."""
        return (self.num_layers, self.neurons_per_layer)

    @classmethod
    def of(cls, model: nn.Module, pattern: str | tuple[str, str] | None = None) -> NeuronSpace:
        """Map a model's MLP neurons.

        Args:
            model: a Hugging Face causal LM (or its base model).
            pattern: override the lookup. Either the activation path relative to a decoder layer
                (``"mlp.act_fn"``), a template with ``{layer}`` (``"model.layers.{layer}.mlp.act_fn"``),
                or a pair ``(activation, down_projection)`` of either form.

        Raises:
            LapeError: no decoder layers or no MLP activation found; the message names the
                model class and the ``pattern=`` option.
        """
        cls_name = type(model).__name__
        if pattern is None:
            layers_path, layers = _decoder_layers(model)
            site = next((s for s in KNOWN_SITES if all(_get(layers[0], p) for p in s)), None)
            site = site or _guess_site(layers[0])
            if site is None:
                raise LapeError(f"lape cannot find the MLP activation of {cls_name}: pass pattern="
                                "'model.layers.{layer}.mlp.act_fn' (the path of your model's "
                                "activation module) to NeuronSpace.of or --pattern")
            act_paths = [f"{layers_path}.{i}.{site[0]}" for i in range(len(layers))]
            down_paths = [f"{layers_path}.{i}.{site[1]}" for i in range(len(layers))]
        else:
            act_pat, down_pat = (pattern, None) if isinstance(pattern, str) else pattern
            if "{layer}" in act_pat:
                n = _count_layers(model, act_pat)
                layers_path = act_pat.split(".{layer}")[0]
                act_paths = [act_pat.format(layer=i) for i in range(n)]
            else:
                layers_path, layers = _decoder_layers(model)
                act_paths = [f"{layers_path}.{i}.{act_pat}" for i in range(len(layers))]
            if down_pat is None:
                down_paths = [_sibling_down(model, p, cls_name) for p in act_paths]
            elif "{layer}" in down_pat:
                down_paths = [down_pat.format(layer=i) for i in range(len(act_paths))]
            else:
                down_paths = [f"{layers_path}.{i}.{down_pat}" for i in range(len(act_paths))]
        for p in (*act_paths, *down_paths):
            if _get(model, p) is None:
                raise LapeError(f"{cls_name} has no module {p}: fix pattern= (see "
                                "model.named_modules() for the names)")
        widths = {_in_features(model.get_submodule(p)) for p in down_paths}
        if len(widths) != 1 or None in widths:
            raise LapeError(f"{cls_name}: the down projections {down_paths[0]}... have no single "
                            "input width: pass pattern=(activation, down_projection)")
        return cls(cls_name, layers_path, tuple(act_paths), tuple(down_paths), widths.pop())

    def act_module(self, model: nn.Module, layer: int) -> nn.Module:
        """The activation module of ``layer`` (may be shared between layers in some models)."""
        return model.get_submodule(self.act_paths[layer])

    def down_module(self, model: nn.Module, layer: int) -> nn.Module:
        """The down/output projection of ``layer``."""
        return model.get_submodule(self.down_paths[layer])

    def layer_module(self, model: nn.Module, layer: int) -> nn.Module:
        """Decoder layer ``layer``."""
        return model.get_submodule(f"{self.layers_path}.{layer}")

    def down_columns(self, model: nn.Module, layer: int) -> torch.Tensor:
        """The down projection's weight as ``[hidden, neurons]`` (a view; GPT-2's Conv1D transposed)."""
        down = self.down_module(model, layer)
        w = down.weight
        return w.T if type(down).__name__ == "Conv1D" else w

    def shared_activation_modules(self, model: nn.Module) -> bool:
        """Whether one activation module object serves several layers."""
        ids = [id(self.act_module(model, i)) for i in range(self.num_layers)]
        return len(set(ids)) != len(ids)

    def check_compatible(self, shape: Sequence[int], what: str) -> None:
        """Refuse a ``[layers, neurons]`` shape that does not fit this space."""
        if tuple(shape[-2:]) != self.shape:
            raise LapeError(f"{what} has {shape[-2]} layers x {shape[-1]} neurons but this model has "
                            f"{self.num_layers} x {self.neurons_per_layer}: use neurons made for this model")

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary (``lape info``)."""
        return {"model_class": self.model_class, "num_layers": self.num_layers,
                "neurons_per_layer": self.neurons_per_layer, "layers_path": self.layers_path,
                "activation": self.act_paths[0].replace(f"{self.layers_path}.0.", "{layers}.{l}."),
                "down_projection": self.down_paths[0].replace(f"{self.layers_path}.0.", "{layers}.{l}.")}


def _count_layers(model: nn.Module, template: str) -> int:
    n = 0
    while _get(model, template.format(layer=n)) is not None:
        n += 1
    if n == 0:
        raise LapeError(f"pattern {template!r} matches no module of {type(model).__name__}: check the "
                        "names in model.named_modules()")
    return n


def _sibling_down(model: nn.Module, act_path: str, cls_name: str) -> str:
    parent = act_path.rsplit(".", 1)[0]
    for name in _DOWN_NAMES:
        if _get(model, f"{parent}.{name}") is not None:
            return f"{parent}.{name}"
    raise LapeError(f"{cls_name}: no down projection next to {act_path}: pass "
                    "pattern=(activation, down_projection)")


def describe_model(model: nn.Module, pattern: str | None = None) -> dict[str, Any]:
    """What ``lape info`` shows: id, fingerprint and neuron space of a loaded model."""
    from .fingerprint import fingerprint
    from .models import model_id_of

    space = NeuronSpace.of(model, pattern=pattern)
    fp = fingerprint(model)
    return {"model": model_id_of(model), "architecture": fp["architecture"], "parameters": fp["num_parameters"],
            "layers_x_neurons": f"{space.num_layers} x {space.neurons_per_layer}", "num_layers": space.num_layers,
            "neurons": space.num_neurons, "activation_module": space.act_paths[0],
            "down_projection": space.down_paths[0], "fingerprint": fp}


# --- the parameter space ------------------------------------------------------------------------
# Known up/gate projections (inputs of the neuron) beside a down projection, tried before a guess.
_UP_NAMES = ("gate_proj", "up_proj", "gate_up_proj", "c_fc", "dense_h_to_4h", "fc1", "fc_in",
             "w1", "w3", "wi", "wi_0", "wi_1")


def is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D"


@dataclass(frozen=True)
class ParamInfo:
    """One parameter tensor of a decoder block.

    Attributes:
        name: full dotted name as in ``model.named_parameters()``.
        layer: the decoder block it belongs to.
        type: the name relative to the block, e.g. ``"mlp.down_proj.weight"``; the same for
            every layer, so it groups tensors across layers.
        shape: the tensor's shape.
        is_norm: a 1-D parameter (weight or bias) of a module whose class name contains
            ``"Norm"`` (Zhang et al. freeze everything in a block except these).
    """

    name: str
    layer: int
    type: str
    shape: tuple[int, ...]
    is_norm: bool


@dataclass(frozen=True)
class NeuronSlice:
    """Where the neurons of one layer sit in one parameter tensor.

    Neuron ``i`` owns the entries ``i + k * width`` (``k < copies``) along ``axis``: the down
    projection's input column (``axis=1``; GPT-2's Conv1D stores ``[in, out]``, so ``axis=0``),
    the up/gate projection's output row (``axis=0``; Conv1D ``axis=1``) and its bias entry.
    ``copies=2`` is a fused ``[gate; up]`` projection (Phi-3 ``gate_up_proj``).

    Attributes:
        name: the parameter's full name.
        axis: the dimension indexed by the neuron.
        copies: 1, or 2 for a fused gate/up projection.
    """

    name: str
    axis: int
    copies: int = 1


@dataclass(frozen=True)
class ParamSpace:
    """The weight tensors of a model's decoder blocks, and the map from neurons to their entries.

    Only parameters inside the decoder-layer list count: embeddings, the final norm and the LM
    head are left out, as in Zhang et al. (tied embeddings are most of Gemma 3 270M's
    parameters). Blocks are found through the layer ``ModuleList`` (see :class:`NeuronSpace`),
    not a ``"layers."`` name match, so GPT-2/BLOOM ``transformer.h`` and GPT-NeoX
    ``gpt_neox.layers`` work too.

    Attributes:
        model_class: the model's class name.
        layers_path: path of the decoder-layer list, e.g. ``"model.layers"``.
        params: every decoder-block parameter, in ``named_parameters()`` order.
        neuron_slices: per layer, where its neurons sit (down projection first, then up/gate
            weights and biases).
        neurons_per_layer: the MLP width.

    Example:
        >>> space = ParamSpace.of(model)
        >>> space.tensor_types()[:2]
        ['self_attn.q_proj.weight', 'self_attn.k_proj.weight']
        >>> masks = space.neuron_mask(3, [17, 40])   # {name: bool mask} for edit_weights
    """

    model_class: str
    layers_path: str
    params: tuple[ParamInfo, ...]
    neuron_slices: tuple[tuple[NeuronSlice, ...], ...]
    neurons_per_layer: int

    @classmethod
    def of(cls, model: nn.Module, neurons: NeuronSpace | None = None) -> ParamSpace:
        """Map a model's decoder-block parameters.

        Args:
            model: a Hugging Face causal LM (or its base model).
            neurons: its neuron space, if already built (``NeuronSpace.of(model, pattern=...)``
                for models the lookup misses).

        Raises:
            LapeError: no decoder layers or MLP found (see :meth:`NeuronSpace.of`).
        """
        neurons = neurons or NeuronSpace.of(model)
        params = _block_params(model, neurons.layers_path)
        names = {p.name for p in params}
        slices = tuple(_neuron_slices(model, neurons, layer, names) for layer in range(neurons.num_layers))
        return cls(type(model).__name__, neurons.layers_path, params, slices, neurons.neurons_per_layer)

    @property
    def num_layers(self) -> int:
        return len(self.neuron_slices)

    def names(self, layer: int | None = None, *, norms: bool = True) -> list[str]:
        """Parameter names, of one layer or all; ``norms=False`` leaves norm parameters out."""
        return [p.name for p in self.params
                if (layer is None or p.layer == layer) and (norms or not p.is_norm)]

    def info(self, name: str) -> ParamInfo:
        """The :class:`ParamInfo` of one parameter."""
        found = next((p for p in self.params if p.name == name), None)
        if found is None:
            raise LapeError(f"{name!r} is not a decoder-block parameter of {self.model_class}: "
                            "see ParamSpace.names() for the names")
        return found

    def layer_of(self, name: str) -> int:
        """The decoder block that parameter ``name`` belongs to."""
        return self.info(name).layer

    def tensor_types(self) -> list[str]:
        """The distinct block-relative names (``"mlp.down_proj.weight"``, ...), in block order."""
        return list(dict.fromkeys(p.type for p in self.params))

    def num_parameters(self, *, norms: bool = True) -> int:
        """Number of scalar parameters in the decoder blocks."""
        return sum(torch.Size(p.shape).numel() for p in self.params if norms or not p.is_norm)

    def params_per_neuron(self, layer: int) -> int:
        """How many parameter entries one neuron of ``layer`` owns (down column + up/gate rows)."""
        return sum(_slice_numel(s, self.info(s.name).shape) for s in self._slices(layer))

    def neuron_mask(self, layer: int, indices: int | Sequence[int] | torch.Tensor) -> dict[str, torch.Tensor]:
        """The parameters of some neurons of one layer, as masks for :func:`lape.weights.edit_weights`.

        Args:
            layer: the layer.
            indices: neuron index or indices in ``[0, neurons_per_layer)``.

        Returns:
            ``{parameter name: bool mask of the weight's shape}``: the down projection's input
            columns and the up/gate projections' output rows (and bias entries).

        Example:
            >>> with edit_weights(model, space.neuron_mask(2, [5, 9])):
            ...     logits = model(ids).logits      # same as silencing the two neurons
        """
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        if idx.numel() and not (0 <= int(idx.min()) and int(idx.max()) < self.neurons_per_layer):
            raise LapeError(f"neuron indices {idx.tolist()} are outside [0, {self.neurons_per_layer}) "
                            f"of {self.model_class}")
        masks = {}
        for s in self._slices(layer):
            mask = torch.zeros(self.info(s.name).shape, dtype=torch.bool)
            rows = torch.cat([idx + k * self.neurons_per_layer for k in range(s.copies)])
            masks[s.name] = mask.index_fill_(s.axis, rows, True)
        return masks

    def _slices(self, layer: int) -> tuple[NeuronSlice, ...]:
        if not 0 <= layer < self.num_layers:
            raise LapeError(f"layer {layer} is outside the {self.num_layers} decoder layers of {self.model_class}")
        return self.neuron_slices[layer]


def _block_params(model: nn.Module, layers_path: str) -> tuple[ParamInfo, ...]:
    """Every named parameter below ``layers_path.<i>.``, with its layer and block-relative name."""
    modules = dict(model.named_modules())
    prefix = f"{layers_path}."
    found = []
    for name, param in model.named_parameters():
        if not name.startswith(prefix):
            continue
        layer, _, rel = name[len(prefix):].partition(".")
        if not layer.isdigit():
            continue
        owner = modules[name.rsplit(".", 1)[0]]
        is_norm = param.dim() == 1 and "Norm" in type(owner).__name__
        found.append(ParamInfo(name, int(layer), rel, tuple(param.shape), is_norm))
    return tuple(found)


def _up_modules(parent: nn.Module, down_name: str, width: int) -> list[tuple[str, nn.Module]]:
    """The projections feeding the neurons: siblings of the down projection whose output width is
    the MLP width (or twice it, fused gate/up); known names first, else every such sibling."""
    fits = [(n, m) for n, m in parent.named_children()
            if n != down_name and _out_features(m) in (width, 2 * width)]
    known = [(n, m) for n, m in fits if n in _UP_NAMES]
    return known or fits


def _neuron_slices(model: nn.Module, neurons: NeuronSpace, layer: int, names: set[str]) -> tuple[NeuronSlice, ...]:
    down_path = neurons.down_paths[layer]
    parent_path, _, down_name = down_path.rpartition(".")
    down = model.get_submodule(down_path)
    slices = [NeuronSlice(f"{down_path}.weight", axis=0 if is_conv1d(down) else 1)]
    width = neurons.neurons_per_layer
    for name, mod in _up_modules(model.get_submodule(parent_path), down_name, width):
        copies = _out_features(mod) // width
        slices.append(NeuronSlice(f"{parent_path}.{name}.weight", 1 if is_conv1d(mod) else 0, copies))
        if getattr(mod, "bias", None) is not None:
            slices.append(NeuronSlice(f"{parent_path}.{name}.bias", 0, copies))
    # a tensor outside named_parameters() (shared and listed elsewhere) cannot be edited by name
    return tuple(s for s in slices if s.name in names)


def _slice_numel(s: NeuronSlice, shape: tuple[int, ...]) -> int:
    return torch.Size(shape).numel() // shape[s.axis] * s.copies
