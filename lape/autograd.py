"""The one gradient mode lape computes attributions in: chosen parameters (or none) requiring
grad, the model in eval mode, autograd on; everything restored on exit."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def gradients_for(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, nn.Parameter]]:
    """``requires_grad`` on the parameters ``names`` only (none: gradients are taken with respect to
    activations, so nothing is stored for weights), the model in eval mode (no dropout) and
    autograd on, all restored on exit, also after an exception; yields ``{name: parameter}``.

    Example:
        >>> with gradients_for(model, ["model.layers.0.mlp.down_proj.weight"]) as params:
        ...     loss.backward()
    """
    named = dict(model.named_parameters())
    chosen = set(names)
    flags = {n: p.requires_grad for n, p in named.items()}
    training = model.training
    try:
        for n, p in named.items():
            p.requires_grad_(n in chosen)
        model.eval()
        with torch.enable_grad():
            yield {n: named[n] for n in names}
    finally:
        for n, p in named.items():
            p.requires_grad_(flags[n])
        model.train(training)
