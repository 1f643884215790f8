"""The baselines key neurons are evaluated against, beside random sets with the same count per
layer (:func:`lape.masks.random_like_mask`): random neurons also matched on mean |activation| at
the last position (:func:`activation_matched_like`) and the paper's Activation baseline, the
neurons of highest mean activation (:func:`top_activation_like`).
"""

from __future__ import annotations

import torch


def activation_bins(abs_mean: torch.Tensor, bins: int) -> torch.Tensor:
    """Per layer, the rank bin ``floor(rank * bins / N)`` of every neuron's mean |activation|
    (``[L, N]`` -> int64 ``[L, N]``, 0 = smallest; equal values ranked by neuron index)."""
    n = abs_mean.shape[1]
    order = torch.sort(abs_mean.float(), dim=1, stable=True).indices  # [L, N] neuron of each rank
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(n).expand_as(order).contiguous())
    return ranks * bins // n


def activation_matched_like(mask: torch.Tensor, abs_mean: torch.Tensor, bins: int,
                            generator: torch.Generator) -> torch.Tensor:
    """A bool ``[L, N]`` mask with, per layer and per rank bin of mean |activation|
    (:func:`activation_bins`), as many neurons as ``mask`` has there, drawn at random without
    replacement from that bin (a bin always holds its own key neurons, so the draw exists)."""
    which = activation_bins(abs_mean, bins)
    out = torch.zeros_like(mask)
    for layer in range(mask.shape[0]):
        if not bool(mask[layer].any()):
            continue
        for b in which[layer, mask[layer]].unique().tolist():
            members = (which[layer] == b).nonzero().flatten()
            k = int((mask[layer] & (which[layer] == b)).sum())
            out[layer, members[torch.randperm(len(members), generator=generator)[:k]]] = True
    return out


def top_activation_like(mask: torch.Tensor, mean_act: torch.Tensor) -> torch.Tensor:
    """The paper's Activation baseline: per layer the ``k_l`` neurons of highest ``mean_act``
    (``[L, N]``, signed), ``k_l`` = ``mask``'s count in layer ``l``; ties to the lower index."""
    out = torch.zeros_like(mask)
    for layer in range(mask.shape[0]):
        k = int(mask[layer].sum())
        if k:
            order = torch.sort(mean_act[layer].float(), descending=True, stable=True).indices
            out[layer, order[:k]] = True
    return out
