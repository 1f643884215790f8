"""The model's output head applied to final hidden states, one chunk at a time.

Perplexity (and, later, attribution targets) need vocabulary logits only at some positions;
Gemma 3's vocabulary has 262k entries, so full logits of a batch would take gigabytes.
:func:`logits_from_hidden` rebuilds the logits from the base model's last hidden state: the
output embedding, then Gemma 2/3's final-logit soft-capping where the config asks for it.

A model whose head does anything else (Cohere's ``logit_scale``, Granite's
``logits_scaling``, ...) would silently get wrong values, so :func:`check_head` compares the
rebuilt logits with ``model(...).logits`` on a short input once per model and refuses with a
one-line error when they differ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import LapeError
from .models import input_device


def logits_from_hidden(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The model's vocabulary logits for final hidden states ``(..., hidden)``.

    The first call on a model checks the rebuilt head against ``model(...).logits``
    (:func:`check_head`), so no caller can forget it.
    """
    check_head(model)
    return _head(model, hidden)


def _head(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(getattr(model.config, "text_config", None) or model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def check_head(model: nn.Module, tokens: int = 6) -> None:
    """Refuse a model whose logits are not the output embedding (plus Gemma's soft-cap) of the
    base model's last hidden state. Runs once per model object (a few tokens' forward pass)."""
    if getattr(model, "_lape_head_checked", False):
        return
    vocab = model.get_output_embeddings().weight.shape[0]
    ids = (torch.arange(tokens) * 7919 % max(vocab - 3, 1) + 3).view(1, -1).to(input_device(model))
    with torch.inference_mode():
        full = model(input_ids=ids, use_cache=False).logits.float()
        hidden = model.base_model(input_ids=ids, use_cache=False).last_hidden_state
        mine = _head(model, hidden).float()
    scale = full.abs().max().clamp(min=1e-6)
    if full.shape != mine.shape or float((full - mine).abs().max() / scale) > 1e-3:
        raise LapeError(f"{type(model).__name__} computes its logits in a way lape does not rebuild (e.g. a "
                        "logit scale): chunked perplexity would be wrong, so this model is not supported for "
                        "perplexity; open an issue naming the model class")
    model._lape_head_checked = True


def next_token_targets(hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The positions that predict a token: position ``t`` predicts token ``t + 1``, and a target
    counts when both positions are real tokens. From ``[B, T, H]`` hidden states and ``[B, T]`` ids
    and mask: ``(h [n, H], targets [n], rows [n])`` in row-major order (``rows``: the batch row)."""
    valid = (attention_mask[:, 1:] * attention_mask[:, :-1]).bool()  # (B, T-1)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)[:, None].expand_as(valid)[valid]
    return hidden[:, :-1][valid], input_ids[:, 1:][valid], rows


def token_nll(model: nn.Module, h: torch.Tensor, targets: torch.Tensor, chunk_size: int = 512) -> torch.Tensor:
    """Next-token NLL (nats, float64, ``[n]``) of final hidden states ``h`` ``[n, H]`` against
    ``targets`` ``[n]``, ``chunk_size`` positions' vocabulary logits at a time (Gemma 3's 262k
    vocabulary: 1 GiB of float32 logits per 1,000 positions). The one NLL kernel of lape
    (perplexity, fluency, further pre-training's held-out NLL)."""
    out = torch.empty(h.shape[0], dtype=torch.float64, device=h.device)
    for s in range(0, h.shape[0], chunk_size):
        logits = logits_from_hidden(model, h[s:s + chunk_size]).float()  # (chunk, V)
        out[s:s + chunk_size] = F.cross_entropy(logits, targets[s:s + chunk_size], reduction="none").double()
    return out
