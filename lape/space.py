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


def _in_features(module: nn.Module) -> int | None:
    if isinstance(module, nn.Linear):
        return module.in_features
    weight = getattr(module, "weight", None)
    if type(module).__name__ == "Conv1D" and weight is not None:  # GPT-2: weight is [in, out]
        return int(weight.shape[0])
    return None


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
    from .models import fingerprint, model_id_of

    space = NeuronSpace.of(model, pattern=pattern)
    fp = fingerprint(model)
    return {"model": model_id_of(model), "architecture": fp["architecture"], "parameters": fp["num_parameters"],
            "layers_x_neurons": f"{space.num_layers} x {space.neurons_per_layer}", "num_layers": space.num_layers,
            "neurons": space.num_neurons, "activation_module": space.act_paths[0],
            "down_projection": space.down_paths[0], "fingerprint": fp}
