"""Integrated gradients on neuron activations at a prompt's last position (Chen et al., NA step).

For a prompt ``x`` whose last position predicts the answer, and target token ``t``, the
attribution of neuron ``(l, i)`` is the integrated gradient from a zero baseline, right Riemann
sum over ``m`` steps (the paper's ``alpha_k = k / m``, ``k = 1..m``; the released code uses
``linspace(0, 1, m)``, which includes 0 and 1)::

    Attr(l, i) = a_li / m * sum_k  dP_t(alpha_k a_l) / d a_li

where ``a_l`` is layer ``l``'s activation vector at the last position (lape's neuron space: the
input of the down projection, column by column), ``P_t`` the softmax probability of ``t`` at the
last position, and only layer ``l``'s last-position activations are scaled (every other layer and
position runs unmodified). The paper attributes the up projection ``f``; the MLP output is linear
in ``f`` and in the activation alike, so the two give the same score per neuron (methods.md 6(c)).

**Baselines.** From a baseline ``b_l`` the path is ``b_l + alpha (a_l - b_l)`` and
``Attr(l, i) = (a_li - b_li) / m * sum_k dP_t(b_l + alpha_k (a_l - b_l)) / d a_li``. Summed over
a layer's neurons the scores approach ``P_t(a_l) - P_t(b_l)`` as ``m`` grows (completeness); the
difference (the Riemann error) is returned per layer when asked.

**Where the zero baseline fails.** When a block normalises its MLP output before the residual add
(Gemma 2/3, OLMo 2: :func:`normalises_mlp_output` probes it), ``P_t(alpha a_l)`` is the same for
every ``alpha > 0`` (degree-0 homogeneity), so ``grad(alpha a) = grad(a) / alpha`` and the
zero-baseline scores are exactly ``H_m x grad x activation`` (``H_m`` the m-th harmonic number):
attribution patching, summing to ~0 while ``P(a) - P(0)`` is not 0. A baseline that is not a
multiple of ``a_l`` (the layer's mean activation over reference text, :mod:`.attribute`) restores
completeness; :func:`ablation_effects` gives the exact single-neuron effects a ranking can be
checked against.

**The batched path.** Only the last position of one layer changes and attention is causal, so
the keys and values of the prefix are the same for every step of every layer: the prefix runs
once with a KV cache, and every (layer, step) pair becomes one row of a batch of one-token
continuations, ``batch_size`` rows per forward and backward pass; vocabulary logits exist for the
answer position only. The released code instead re-runs the whole prompt for every batch of
steps of every layer and computes logits at every position (``benchmarks/bench_keyneurons.py``
compares the two).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..autograd import gradients_for
from ..errors import LapeError
from ..head import logits_from_hidden
from ..hooks import activation_hooks
from ..intervene import Edit, intervene
from ..models import input_device
from ..space import NeuronSpace


@dataclass
class PromptAttribution:
    """The attribution of one prompt.

    Attributes:
        scores: float32 ``[layers, neurons]`` integrated gradients (rows of unattributed layers 0).
        target: the token id whose probability was attributed.
        prob: ``P(target)`` of the unmodified model.
        prob_base: float32 ``[layers]``, ``P(target)`` with layer ``l``'s last-position activations
            set to the baseline (zero by default; NaN for layers not attributed or when not computed).
        probs: float32 ``[len(watch)]``: the unmodified probabilities of the ``watch`` ids.
    """

    scores: torch.Tensor
    target: int
    prob: float
    prob_base: torch.Tensor
    probs: torch.Tensor

    def convergence_delta(self) -> torch.Tensor:
        """Per layer: ``sum_i Attr(l, i) - (P(a) - P(b at l))``; the Riemann error (``[layers]``)."""
        return self.scores.sum(dim=1) - (self.prob - self.prob_base)


def _cache_kw(model: nn.Module) -> str:
    """The keyword the base model takes its KV cache by: ``cache`` (transformers >= 5.2x) or
    ``past_key_values`` (older; still accepted, with a deprecation warning, by newer ones)."""
    return "cache" if "cache" in inspect.signature(model.base_model.forward).parameters else "past_key_values"


def prefix_cache(model: nn.Module, ids: torch.Tensor):
    """The KV cache of ``ids[:-1]`` (``None`` for a one-token prompt)."""
    if ids.numel() < 2:
        return None
    with torch.no_grad():
        out = model.base_model(input_ids=ids[None, :-1], use_cache=True)
    return out["cache"] if "cache" in out else out["past_key_values"]


def _rows_of(cache, rows: int):
    """A fresh copy of the prefix cache repeated for ``rows`` continuations (a forward pass
    appends to the cache it is given, so each pass needs its own)."""
    if cache is None:
        return None
    fresh = copy.deepcopy(cache)
    if rows > 1:
        fresh.batch_repeat_interleave(rows)
    return fresh


def last_position(model: nn.Module, space: NeuronSpace, ids: torch.Tensor, cache, rows: int,
                  edits: Sequence[Edit] = ()) -> torch.Tensor:
    """Float32 vocabulary logits ``[rows, vocab]`` of ``rows`` copies of the prompt's last token
    run on the prefix ``cache``, with ``edits`` (values broadcast against ``[rows, 1, neurons]``)
    applied at that position only (the prefix is never edited)."""
    return logits_from_hidden(model, _last_hidden(model, space, ids, cache, rows, edits)).float()


def _last_hidden(model: nn.Module, space: NeuronSpace, ids: torch.Tensor, cache, rows: int,
                 edits: Sequence[Edit] = ()) -> torch.Tensor:
    """The final hidden state ``[rows, hidden]`` behind :func:`last_position` (no head: the
    head's one-time check runs a forward pass of its own, which hooks must not see)."""
    last = ids[-1:].view(1, 1).expand(rows, 1)
    kwargs = {_cache_kw(model): _rows_of(cache, rows)} if cache is not None else {}
    with intervene(model, edits=edits, positions="last", space=space, check_model=False):
        return model.base_model(input_ids=last, use_cache=cache is not None, **kwargs).last_hidden_state[:, -1]


def last_activations(model: nn.Module, space: NeuronSpace, ids: torch.Tensor, cache
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The unmodified last position: activations ``[layers, neurons]`` (model dtype) and float32
    vocabulary logits ``[vocab]``."""
    acts: dict[int, torch.Tensor] = {}

    def grab(layer: int, act: torch.Tensor) -> None:
        acts[layer] = act.detach().reshape(-1, act.shape[-1])[-1].clone()  # [1, 1, n] (OPT: [1, n])

    with torch.no_grad():
        with activation_hooks(model, space, grab):
            hidden = _last_hidden(model, space, ids, cache, 1)
        logits = logits_from_hidden(model, hidden).float()[0]
    return torch.stack([acts[layer] for layer in range(space.num_layers)]), logits


def alphas(steps: int) -> torch.Tensor:
    """The paper's step scales ``k / m`` for ``k = 1..m`` (right Riemann sum)."""
    return torch.arange(1, steps + 1, dtype=torch.float32) / steps


def attribute_prompt(model: nn.Module, space: NeuronSpace, ids: torch.Tensor,
                     target: int | Callable[[torch.Tensor], int], *, steps: int = 16,
                     layers: Sequence[int] | None = None, batch_size: int = 96,
                     baseline: torch.Tensor | None = None, completeness: bool = True,
                     watch: Sequence[int] = ()) -> PromptAttribution:
    """Integrated gradients of ``P(target)`` at the last position of ``ids`` (module docstring).

    Args:
        model: a causal LM; ``space`` its neuron space.
        ids: the prompt's token ids, 1-D.
        target: a token id, or a function of the unmodified probability vector returning one
            (e.g. the spelling of the answer letter the model itself predicts).
        steps: ``m``, the number of Riemann steps.
        layers: layers to attribute (default all).
        batch_size: one-token continuations (layer x step rows) per forward and backward pass.
        baseline: ``[layers, neurons]`` baseline activations ``b`` (default zero, the paper's).
            The path is ``b + alpha (a - b)`` and the score ``(a - b) / m x sum_k grad``.
        completeness: also run each layer's baseline, for :meth:`PromptAttribution.convergence_delta`.
        watch: token ids whose unmodified probabilities are returned.
    """
    if ids.dim() != 1 or ids.numel() < 1:
        raise LapeError(f"attribute_prompt needs a 1-D tensor of token ids, got shape {tuple(ids.shape)}")
    if steps < 1 or batch_size < 1:
        raise LapeError(f"steps ({steps}) and batch_size ({batch_size}) must be at least 1")
    if baseline is not None and tuple(baseline.shape) != space.shape:
        raise LapeError(f"the IG baseline has shape {tuple(baseline.shape)}, the model's neuron space "
                        f"{space.shape}: give one activation per layer and neuron")
    layers = list(range(space.num_layers) if layers is None else layers)
    ids = ids.to(input_device(model))
    with gradients_for(model, ()):
        cache = prefix_cache(model, ids)
        base, logits = last_activations(model, space, ids, cache)
        start = (torch.zeros_like(base, dtype=torch.float32) if baseline is None
                 else baseline.to(base.device, torch.float32))
        diff = base.float() - start
        probs = logits.softmax(-1)
        tgt = int(target(probs) if callable(target) else target)
        if not 0 <= tgt < probs.numel():
            raise LapeError(f"target token id {tgt} is outside the vocabulary (0..{probs.numel() - 1})")
        everyone = torch.arange(space.neurons_per_layer, device=base.device)
        nan = torch.tensor(float("nan"), dtype=base.dtype, device=base.device)
        rows = [(layer, float(a)) for layer in layers for a in alphas(steps)]
        rows += [(layer, 0.0) for layer in layers] if completeness else []
        grad_sum = torch.zeros(space.num_layers, space.neurons_per_layer, dtype=torch.float32)
        prob_base = torch.full((space.num_layers,), float("nan"))
        for s in range(0, len(rows), batch_size):
            chunk = rows[s:s + batch_size]
            layer_of = torch.tensor([layer for layer, _ in chunk], device=base.device)
            scale = torch.tensor([a for _, a in chunk], device=base.device, dtype=torch.float32)
            x = (start[layer_of] + scale[:, None] * diff[layer_of]).to(base.dtype).requires_grad_(True)
            # each row sets its own layer's activations to its point on the path (NaN: unchanged)
            edits = [Edit(layer, everyone, "set", torch.where((layer_of == layer)[:, None], x, nan)[:, None])
                     for layer in sorted({layer for layer, _ in chunk})]
            out = last_position(model, space, ids, cache, len(chunk), edits)
            p = (out[:, tgt] - torch.logsumexp(out, dim=-1)).exp()  # [rows]
            (grad,) = torch.autograd.grad(p.sum(), x)
            grad = grad.float().cpu()
            for r, (layer, a) in enumerate(chunk):
                if a > 0:
                    grad_sum[layer] += grad[r]
                else:
                    prob_base[layer] = float(p[r].detach())
    scores = diff.cpu() * grad_sum / steps
    scores[[layer for layer in range(space.num_layers) if layer not in set(layers)]] = 0.0
    return PromptAttribution(scores, tgt, float(probs[tgt]), prob_base,
                             probs[list(watch)].cpu() if len(watch) else torch.zeros(0))


def ablation_effects(model: nn.Module, space: NeuronSpace, ids: torch.Tensor, target: int,
                     neurons: Sequence[tuple[int, int]], *, baseline: torch.Tensor | None = None,
                     batch_size: int = 96) -> torch.Tensor:
    """Exact single-neuron effects: ``P(target) - P(target | neuron set to its baseline)`` at the
    last position, one neuron at a time (float32 ``[len(neurons)]``).

    This is what an attribution score estimates to first order; it checks a ranking (the prefix
    runs once with a KV cache, every neuron is one row of a one-token batch).
    """
    ids = ids.to(input_device(model))
    out = torch.zeros(len(neurons), dtype=torch.float32)
    if not neurons:
        return out
    with torch.no_grad():
        cache = prefix_cache(model, ids)
        p0 = last_position(model, space, ids, cache, 1)[0].float().softmax(-1)[target]
        for s in range(0, len(neurons), batch_size):
            chunk = list(neurons[s:s + batch_size])
            values = {lay: torch.full((len(chunk), 1, space.neurons_per_layer), float("nan")) for lay, _ in chunk}
            for r, (lay, i) in enumerate(chunk):  # row r sets one neuron to its baseline (NaN: unchanged)
                values[lay][r, 0, i] = 0.0 if baseline is None else float(baseline[lay, i])
            edits = [Edit(lay, torch.arange(space.neurons_per_layer), "set", v) for lay, v in sorted(values.items())]
            logits = last_position(model, space, ids, cache, len(chunk), edits)
            out[s:s + len(chunk)] = (p0 - logits.softmax(-1)[:, target]).cpu()
    return out


def normalises_mlp_output(model: nn.Module, space: NeuronSpace, factor: float = 2.0, tol: float = 1e-3) -> bool:
    """Whether every layer's MLP contribution is invariant to scaling its activations (a norm after
    the MLP, as Gemma 2/3 and OLMo 2 have): then ``P(alpha a)`` is flat in ``alpha > 0`` and
    zero-baseline integrated gradients sum to about 0 (methods.md 7).

    Probed, not looked up: one short forward pass with every layer's activations multiplied by
    ``factor``; the final hidden state is unchanged (relative difference below ``tol``) exactly when
    each block normalises its MLP output.
    """
    device = input_device(model)
    vocab = int(getattr(model.config, "vocab_size", 0) or model.get_input_embeddings().num_embeddings)
    ids = (torch.arange(8, device=device) * 7919 % max(vocab - 3, 1) + 3)[None]
    with torch.no_grad():
        plain = model.base_model(input_ids=ids).last_hidden_state.float()
        everyone = torch.arange(space.neurons_per_layer)
        with intervene(model, edits=[Edit(layer, everyone, "mul", factor) for layer in range(space.num_layers)],
                       space=space, check_model=False):
            scaled = model.base_model(input_ids=ids).last_hidden_state.float()
    rel = float((scaled - plain).norm() / plain.norm().clamp(min=1e-30))
    return rel < tol
