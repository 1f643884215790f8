"""The one way lape attaches code to neuron activations.

:func:`activation_hooks` registers, for the chosen layers, a forward hook on the MLP activation
module that calls ``fn(layer, activation)``; ``activation`` is the module output with shape
``(..., neurons)`` and whatever ``fn`` returns (a tensor, or ``None`` to keep it) replaces it.
Hooks are global state that outlive the code that added them, so lape registers them only
inside this context manager and removes every one in ``finally``, also after an exception.

Some models share one activation module object between layers; a forward hook on it cannot
tell the layers apart. Then a forward pre-hook on each decoder layer records which layer is
running, and the activation hook reads it. Layers run one after another even when spread over
several devices (``device_map``), so this is exact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .space import NeuronSpace

ActivationFn = Callable[[int, torch.Tensor], "torch.Tensor | None"]


@contextmanager
def activation_hooks(model: nn.Module, space: NeuronSpace, fn: ActivationFn,
                     layers: Iterable[int] | None = None) -> Iterator[None]:
    """Call ``fn(layer, activation)`` on every forward of the chosen layers' MLP activation.

    Args:
        model: the model ``space`` was built on (or the same model wrapped; paths must resolve).
        space: its neuron space.
        fn: ``fn(layer, act) -> act' | None``; ``act`` is ``(..., neurons)``.
        layers: restrict to these layers (default all).

    Example:
        >>> seen = []
        >>> with activation_hooks(model, space, lambda l, a: seen.append(l)):
        ...     model(input_ids)
    """
    chosen = sorted(set(range(space.num_layers) if layers is None else layers))
    handles: list[torch.utils.hooks.RemovableHandle] = []
    try:
        if space.shared_activation_modules(model):
            current = {"layer": -1}
            wanted = set(chosen)

            def enter(layer: int) -> Callable:
                def pre(module: nn.Module, args: tuple) -> None:
                    current["layer"] = layer
                return pre

            for layer in range(space.num_layers):
                handles.append(space.layer_module(model, layer).register_forward_pre_hook(enter(layer)))

            def shared(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
                layer = current["layer"]
                return fn(layer, output) if layer in wanted else None

            for module in {id(m): m for m in (space.act_module(model, i) for i in chosen)}.values():
                handles.append(module.register_forward_hook(shared))
        else:
            for layer in chosen:
                def hook(module: nn.Module, args: tuple, output: torch.Tensor,
                         _layer: int = layer) -> torch.Tensor | None:
                    return fn(_layer, output)

                handles.append(space.act_module(model, layer).register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()
