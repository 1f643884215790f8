"""Packing documents into fixed-length token sequences, and the per-language streams.

:func:`pack` turns documents into sequences of ``seq_len`` tokens: each starts with BOS,
documents are separated by EOS, only the last one is padded (attention mask 0).
:func:`load_corpus` returns one re-iterable, deterministic :class:`LanguageStream` per language
with a token budget; each stream carries its own cache key (:attr:`LanguageStream.key`).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import LapeError
from .manifest import Manifest, load_manifest
from .sources import chunks, iter_documents, sources_key

logger = logging.getLogger(__name__)


@dataclass
class Sequence:
    """One packed sequence.

    Attributes:
        input_ids: ``[T]`` int64 token ids (``T = seq_len``).
        attention_mask: ``[T]`` int64, 1 for a real token (BOS, text, separator), 0 for padding.
    """

    input_ids: torch.LongTensor
    attention_mask: torch.LongTensor


def _special_ids(tokenizer: Any) -> tuple[int | None, int, int]:
    bos = getattr(tokenizer, "bos_token_id", None)
    eos = getattr(tokenizer, "eos_token_id", None)
    sep = eos if eos is not None else bos
    if sep is None:
        raise LapeError(f"tokenizer {type(tokenizer).__name__} has neither an EOS nor a BOS token "
                        "to separate documents: set tokenizer.eos_token")
    pad = getattr(tokenizer, "pad_token_id", None)
    return bos, sep, pad if pad is not None else 0


def _token_lists(documents: Iterable[str], tokenizer: Any, batch: int = 32) -> Iterator[list[int]]:
    """Token ids of each document, without special tokens (tokenized a batch at a time)."""
    for docs in chunks(documents, batch):
        yield from tokenizer(docs, add_special_tokens=False)["input_ids"]


def pack(documents: Iterable[str], tokenizer: Any, seq_len: int,
         max_tokens: int | None = None) -> Iterator[Sequence]:
    """Pack documents into sequences of ``seq_len`` tokens.

    Each document is tokenized without special tokens. Every sequence starts with
    ``tokenizer.bos_token_id`` when the tokenizer has one; a document that does not start a new
    sequence follows a separator (``eos_token_id``, or BOS if there is no EOS). Sequences are
    filled to ``seq_len``; a document that does not fit continues in the next sequence. Packing
    stops once ``max_tokens`` real tokens (BOS and separators included) have been emitted, or
    when the documents run out. Only the last sequence may be shorter: it is right-padded with
    ``pad_token_id`` (or 0) and carries attention mask 0 there. No sequence is empty.

    Args:
        documents: texts, e.g. from :func:`iter_documents`.
        tokenizer: a Hugging Face tokenizer (``tokenizer(list_of_texts,
            add_special_tokens=False)["input_ids"]``).
        seq_len: tokens per sequence (>= 2 with a BOS token).
        max_tokens: the budget of real tokens; ``None`` for all documents.

    Yields:
        :class:`Sequence` objects, ``input_ids`` and ``attention_mask`` of shape ``[seq_len]``.

    Example:
        >>> seqs = list(pack(["Bonjour.", "Salut."], tok, seq_len=8))
        >>> int(seqs[0].input_ids[0]) == tok.bos_token_id
        True
    """
    yield from _pack(documents, tokenizer, seq_len, max_tokens, {})


def _pack(documents: Iterable[str], tokenizer: Any, seq_len: int, max_tokens: int | None,
          state: dict[str, Any]) -> Iterator[Sequence]:
    """:func:`pack`; sets ``state["exhausted"]`` when the documents ran out before the budget."""
    bos, sep, pad = _special_ids(tokenizer)
    if seq_len < (2 if bos is not None else 1):
        raise LapeError(f"seq_len {seq_len} is too short: use at least 2 (BOS plus one token)")
    state["exhausted"] = False
    budget = max_tokens if max_tokens is not None else float("inf")
    if budget <= 0:
        return
    buf: list[int] = []  # the sequence being filled
    has_text = False  # whether buf holds text of a document (so the next one needs a separator)
    total = 0  # real tokens emitted, buf included

    def emit(ids: list[int]) -> Sequence:
        n = len(ids)
        input_ids = torch.full((seq_len,), pad, dtype=torch.long)
        input_ids[:n] = torch.tensor(ids, dtype=torch.long)
        mask = torch.zeros(seq_len, dtype=torch.long)
        mask[:n] = 1
        return Sequence(input_ids=input_ids, attention_mask=mask)

    for ids in _token_lists(documents, tokenizer):
        if not ids:
            continue
        tokens = [sep, *ids] if has_text else list(ids)
        i = 0
        while i < len(tokens):
            if not buf and bos is not None:
                if budget - total < 2:  # no room for BOS plus a token
                    return
                buf.append(bos)
                total += 1
            take = tokens[i:i + int(min(seq_len - len(buf), budget - total))]
            buf.extend(take)
            total += len(take)
            i += len(take)
            has_text = True
            if len(buf) == seq_len or total >= budget:
                yield emit(buf)
                buf, has_text = [], False
                if total >= budget:
                    return
    state["exhausted"] = True
    if buf:
        yield emit(buf)


def _shuffled(documents: Iterable[str], rng: random.Random, buffer_size: int) -> Iterator[str]:
    """A buffered shuffle: memory is bounded by ``buffer_size`` documents, not the corpus."""
    buf: list[str] = []
    for doc in documents:
        if len(buf) < buffer_size:
            buf.append(doc)
            continue
        j = rng.randrange(buffer_size)
        yield buf[j]
        buf[j] = doc
    rng.shuffle(buf)
    yield from buf


def _every_nth(documents: Iterable[str], k: int, n: int) -> Iterator[str]:
    """Documents ``k, k + n, k + 2n, ...``."""
    for i, doc in enumerate(documents):
        if i % n == k:
            yield doc


class LanguageStream:
    """The packed sequences of one language and split: re-iterable and deterministic.

    Each iteration reads the documents again, shuffles them with a buffered shuffle seeded by
    ``(seed, lang)``, and packs them under the token budget, so two iterations (or two streams
    with the same seed) yield the same sequences.

    Attributes:
        lang: the language code.
        split: the split name.
        budget: real tokens per iteration (``None``: all documents).
        tokens: real tokens yielded by the last complete iteration (0 before).

    Example:
        >>> stream = load_corpus("builtin", tok, tokens_per_language=4096)["fr"]
        >>> sum(int(s.attention_mask.sum()) for s in stream) == stream.tokens
        True
    """

    def __init__(self, manifest: Manifest, lang: str, split: str, tokenizer: Any,
                 budget: int | None, seq_len: int, seed: int, shuffle_buffer: int = 10_000,
                 part: tuple[int, int] | None = None) -> None:
        self.manifest = manifest
        self.lang = lang
        self.split = split
        self.budget = budget
        self.tokenizer = tokenizer
        self.seq_len = seq_len
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.part = part
        self.tokens = 0

    def __iter__(self) -> Iterator[Sequence]:
        # a string seed is hashed with sha512 by `random`: stable across runs and processes
        rng = random.Random(f"lape.corpora:{self.seed}:{self.lang}:{self.split}")
        docs = iter_documents(self.manifest, self.lang, self.split)
        if self.part is not None:  # documents k, k + n, k + 2n, ... of the split, before shuffling
            docs = _every_nth(docs, *self.part)
        docs = _shuffled(docs, rng, self.shuffle_buffer)
        state: dict[str, Any] = {}
        n = 0
        for seq in _pack(docs, self.tokenizer, self.seq_len, self.budget, state):
            n += int(seq.attention_mask.sum())
            yield seq
        self.tokens = n
        if self.budget is not None and n < self.budget and state.get("exhausted"):
            logger.warning("%s (%s): got %d tokens, below the budget of %d: the corpus is too "
                           "small, add text or lower the budget", self.lang, self.split, n,
                           self.budget)

    @property
    def key(self) -> dict[str, Any]:
        """What this stream yields, as a cache key: the manifest, the content of every source
        the split reads (:func:`sources_key`), language, split, budget, seq_len, seed and the
        tokenizer. Any change to the text behind the manifest changes it."""
        tok = self.tokenizer
        key = {"lang": self.lang, "split": self.split, "budget": self.budget, "seq_len": self.seq_len,
               "seed": self.seed, "sources": sources_key(self.manifest, self.lang, self.split),
               "tokenizer": {"class": type(tok).__name__, "name": getattr(tok, "name_or_path", None),
                             "vocab": len(tok) if hasattr(tok, "__len__") else None,
                             "bos": getattr(tok, "bos_token_id", None),
                             "eos": getattr(tok, "eos_token_id", None)}}
        if self.part is not None:
            key["part"] = list(self.part)
        return key

    def __repr__(self) -> str:
        return (f"LanguageStream(lang={self.lang!r}, split={self.split!r}, budget={self.budget}, "
                f"seq_len={self.seq_len}, seed={self.seed})")


def load_corpus(manifest: Manifest | str | Path, tokenizer: Any, split: str = "train",
                tokens_per_language: int | None = 100_000, seq_len: int = 512, seed: int = 0,
                languages: list[str] | None = None, part: tuple[int, int] | None = None) -> dict[str, LanguageStream]:
    """One :class:`LanguageStream` per language.

    Args:
        manifest: a :class:`Manifest`, a YAML file or ``"builtin"``.
        tokenizer: a Hugging Face tokenizer.
        split: the split to read (``train`` for recording, ``valid`` for perplexity).
        tokens_per_language: real tokens per language (BOS and separators included); ``None``
            for everything.
        seq_len: tokens per sequence.
        seed: the shuffle seed.
        languages: codes to load, in this order; ``None`` for all of the manifest's.
        part: ``(k, n)``: only documents ``k, k + n, k + 2n, ...`` of each split (in source
            order), e.g. ``(0, 2)`` and ``(1, 2)`` for two disjoint halves (stability checks).

    Returns:
        ``{code: LanguageStream}``; nothing is read until a stream is iterated.

    Raises:
        LapeError: an unknown language code or a split a language does not declare.

    Example:
        >>> streams = load_corpus("builtin", tok, tokens_per_language=8192, seq_len=256,
        ...                       languages=["en", "fr"])
        >>> input_ids, mask = next(batches(streams["fr"], 4))   # [4, 256] each
    """
    m = load_manifest(manifest)
    codes = m.with_split(split, languages)
    if tokens_per_language is not None and tokens_per_language <= 0:
        raise LapeError(f"tokens_per_language must be positive, got {tokens_per_language}")
    if part is not None and not (len(part) == 2 and 0 <= part[0] < part[1]):
        raise LapeError(f"part {part} is not (k, n) with 0 <= k < n: e.g. (0, 2) for the first of two halves")
    return {code: LanguageStream(m, code, split, tokenizer, tokens_per_language, seq_len, seed, part=part)
            for code in codes}


def batches(stream: Iterable[Sequence], batch_size: int
            ) -> Iterator[tuple[torch.LongTensor, torch.LongTensor]]:
    """Group sequences into batches ``(input_ids [B, T], attention_mask [B, T])``.

    The last batch may hold fewer than ``batch_size`` sequences. Sequences of different lengths
    are right-padded with 0 (mask 0) to the longest.

    Example:
        >>> for input_ids, mask in batches(stream, 8):
        ...     pass   # input_ids.shape == (8, seq_len)
    """
    if batch_size < 1:
        raise LapeError(f"batch_size must be at least 1, got {batch_size}")
    buf: list[Sequence] = []
    for seq in stream:
        buf.append(seq)
        if len(buf) == batch_size:
            yield _stack(buf)
            buf = []
    if buf:
        yield _stack(buf)


def _stack(seqs: list[Sequence]) -> tuple[torch.LongTensor, torch.LongTensor]:
    length = max(len(s.input_ids) for s in seqs)
    ids = torch.zeros(len(seqs), length, dtype=torch.long)
    mask = torch.zeros(len(seqs), length, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s.input_ids)] = s.input_ids
        mask[i, :len(s.attention_mask)] = s.attention_mask
    return ids, mask
