"""What a neuron writes: its down-projection column read through the final norm and unembedding.

A neuron's output is its activation times one column of the down projection (then, in Gemma 2/3,
the post-MLP norm). Reading that direction through the final norm and the output embedding, as
the logit lens reads hidden states, gives the tokens whose logits it raises (*promoted*) and
lowers (*suppressed*) when it fires positively (Geva et al. 2022, "Transformer feed-forward
layers build predictions by promoting concepts in the vocabulary space").

**Caveat:** this ignores every layer after the neuron's own; a neuron whose output later layers
read and transform can promote nothing visible here and still matter.

Norms are position-wise and (up to the per-vector scale) linear. Of each norm only its linear
part is applied, ``norm(x) - norm(0)`` (a LayerNorm's bias is not the neuron's), so every
direction is scaled to unit RMS before the gain: the scores compare tokens within a neuron;
across neurons only their order is meaningful. Final-logit soft-capping is monotonic and left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import LapeError
from ..space import NeuronSpace

FINAL_NORMS = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "norm_f", "decoder.final_layer_norm")
POST_MLP_NORMS = ("post_feedforward_layernorm", "post_mlp_layernorm", "post_ffn_layernorm")


def _module_at(root: nn.Module, path: str) -> nn.Module | None:
    try:
        found = root.get_submodule(path)
    except AttributeError:
        return None
    return found if isinstance(found, nn.Module) else None


def final_norm(model: nn.Module) -> nn.Module | None:
    """The base model's final norm (``norm``, ``ln_f``, ``final_layer_norm``, ...), or ``None``
    for a model without one (OPT-350m's post-norm layout)."""
    base = model.base_model
    for path in FINAL_NORMS:
        found = _module_at(base, path)
        if found is not None and not isinstance(found, nn.ModuleList):
            return found
    return None


def post_mlp_norm(model: nn.Module, space: NeuronSpace, layer: int) -> nn.Module | None:
    """The norm applied to ``layer``'s MLP output before it joins the residual (Gemma 2/3), or ``None``."""
    block = space.layer_module(model, layer)
    for name in POST_MLP_NORMS:
        found = getattr(block, name, None)
        if isinstance(found, nn.Module):
            return found
    return None


def linear_part(norm: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    """``norm(x) - norm(0)`` row-wise in float32 (``x`` itself without a norm)."""
    if norm is None:
        return x
    p = next(norm.parameters(), None)
    dtype = p.dtype if p is not None else x.dtype
    with torch.no_grad():
        y = norm(x.to(dtype)).float()
        return y - norm(torch.zeros_like(x[:1], dtype=dtype)).float()


def check_neurons(space: NeuronSpace, neurons: torch.Tensor) -> torch.Tensor:
    """``neurons`` as a LongTensor ``[N, 2]`` of ``(layer, index)``; a neuron outside the model's
    space gets a one-line error naming it and the space's bounds."""
    neurons = torch.as_tensor(neurons, dtype=torch.long).reshape(-1, 2)
    for layer, index in neurons.tolist():
        if not (0 <= layer < space.num_layers and 0 <= index < space.neurons_per_layer):
            raise LapeError(f"neuron ({layer}, {index}) is outside this model's neuron space "
                            f"(layers 0-{space.num_layers - 1}, neurons 0-{space.neurons_per_layer - 1}): "
                            "use neurons made for this model")
    return neurons


def output_directions(model: nn.Module, space: NeuronSpace, neurons: torch.Tensor) -> torch.Tensor:
    """Residual-stream directions ``[N, hidden]`` the neurons write: the down-projection column,
    through the layer's post-MLP norm (linear part) where the model has one."""
    neurons = check_neurons(space, neurons)
    rows = torch.empty(len(neurons), _hidden(model))
    for layer in neurons[:, 0].unique().tolist():
        at = (neurons[:, 0] == layer).nonzero().squeeze(1)
        cols = space.down_columns(model, layer).detach()[:, neurons[at, 1]].T.float()  # [n, hidden]
        rows[at] = linear_part(post_mlp_norm(model, space, layer), cols)
    return rows


def _hidden(model: nn.Module) -> int:
    return int(model.get_output_embeddings().weight.shape[1])


@dataclass
class WrittenTokens:
    """Per neuron, the ``top`` token ids whose logits its output direction raises and lowers most,
    with their lens scores (logit per unit-RMS direction, see the module docstring)."""

    promoted: torch.Tensor  # [N, top] token ids, best first
    promoted_scores: torch.Tensor  # [N, top]
    suppressed: torch.Tensor  # [N, top] token ids, most lowered first
    suppressed_scores: torch.Tensor  # [N, top]


def written_tokens(model: nn.Module, space: NeuronSpace, neurons: torch.Tensor | Sequence[Sequence[int]],
                   top: int = 10, chunk: int = 64) -> WrittenTokens:
    """The logit-lens view of each neuron's output direction (module docstring).

    Args:
        model: the causal LM.
        space: its neuron space.
        neurons: ``[N, 2]`` ``(layer, index)`` pairs.
        top: tokens kept per neuron and side.
        chunk: neurons per product with the unembedding (``vocab x chunk`` floats at a time).
    """
    directions = linear_part(final_norm(model), output_directions(model, space, torch.as_tensor(neurons)))
    unembed = model.get_output_embeddings().weight.detach()
    top = min(top, unembed.shape[0])
    out: dict[str, list[torch.Tensor]] = {"pi": [], "ps": [], "si": [], "ss": []}
    with torch.no_grad():
        for start in range(0, len(directions), chunk):
            d = directions[start:start + chunk].to(unembed.device, unembed.dtype)
            scores = (unembed @ d.T).float().T  # [chunk, vocab]
            hi, lo = scores.topk(top, dim=1), scores.topk(top, dim=1, largest=False)
            out["pi"].append(hi.indices.cpu())
            out["ps"].append(hi.values.cpu())
            out["si"].append(lo.indices.cpu())
            out["ss"].append(lo.values.cpu())
    if not len(directions):
        empty_i, empty_f = torch.zeros(0, top, dtype=torch.long), torch.zeros(0, top)
        return WrittenTokens(empty_i, empty_f, empty_i, empty_f)
    return WrittenTokens(torch.cat(out["pi"]), torch.cat(out["ps"]), torch.cat(out["si"]), torch.cat(out["ss"]))
