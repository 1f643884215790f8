"""What a stage records about the text it ran on: each language's corpus key, the corpus fields of
its config, the positions that count, and the checks every stage makes before the model runs.

Every stage that reads per-language token streams (recording, perplexity, importance, the cards)
describes and checks them here, so that a corpus is identified the same way in every cache key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import torch
from torch import nn

from .. import artifacts
from ..config import StageConfig
from ..errors import LapeError
from ..models import check_positions
from .packing import batches

C = TypeVar("C", bound=StageConfig)
MAX_SEQ_LEN = 1 << 16  # longer sequences than any model here can attend over; refused early


def counted_positions(mask: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` mask of the positions whose activations count: real tokens but the first of
    each sequence (the attention-sink position)."""
    counted = mask.clone()
    counted[:, 0] = 0
    return counted


def corpus_key(stream: Iterable[Any]) -> Any:
    """The cache key of one language's sequences: the stream's own key (manifest, source
    content, split, budget, seq_len, seed, tokenizer), or a digest of the sequences themselves."""
    key = getattr(stream, "key", None)
    if key is not None:
        return key
    ids = [torch.cat([i.reshape(-1), m.reshape(-1)]) for i, m in batches(stream, 64)]
    return artifacts.tensor_digest({"sequences": torch.cat(ids) if ids else torch.zeros(0, dtype=torch.long)})


def check_corpus(corpus: Mapping[str, Iterable[Any]]) -> None:
    """Refuse, before any model pass, a language whose stream yields no sequence (an empty or
    fully filtered source), so that a bad language found late costs no finished work."""
    for lang, stream in corpus.items():
        if next(iter(stream), None) is None:
            raise LapeError(f"language {lang!r} has no text to run: check its source in the manifest "
                            "(or leave the language out)")


def corpus_config(model: nn.Module, corpus: Mapping[str, Iterable[Any]], config: C) -> tuple[C, dict[str, Any]]:
    """``config`` with its corpus fields (split, budget, seq_len, seed, languages) replaced by what
    the streams actually hold, after checking the sequences fit the model and no language is
    empty (the sidecar then describes what was computed, not what a default said), and the
    stage inputs ``{"corpus": {language: corpus key}}`` for the cache key."""
    described = describe_corpus(corpus)
    config = config.replace(
        languages=tuple(corpus), split=described.get("split", config.split),
        tokens_per_language=described.get("budget", config.tokens_per_language),
        seq_len=described.get("seq_len", config.seq_len), seed=described.get("seed", config.seed))
    check_positions(model, config.seq_len)
    check_corpus(corpus)
    return config, {"corpus": {lang: corpus_key(stream) for lang, stream in corpus.items()}}


def describe_corpus(corpus: Mapping[str, Iterable[Any]]) -> dict[str, Any]:
    """What the sidecar says about the streams it was computed from (budget, seq_len, ...)."""
    first = next(iter(corpus.values()))
    return {k: getattr(first, k) for k in ("split", "budget", "seq_len", "seed") if hasattr(first, k)}
