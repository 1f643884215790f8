"""Record per-language neuron statistics (LAPE step 1, Tang et al. 2024, `activation.py`).

For every language ``k``, layer ``l`` and neuron ``j`` :func:`record` counts, over the real
(unpadded) tokens of that language's packed ``train`` sequences:

* ``fire_counts[k, l, j] = sum_t 1[act_t > 0]``  (the LAPE count, ``over_zero``),
* ``act_sums[k, l, j]   = sum_t act_t``           (mean activation),
* ``fire_sums[k, l, j]  = sum_t max(act_t, 0)``   (mean firing value, for LAVE and steering),
* ``token_counts[k]``                             (the ``n`` of LAPE).

Counters stay on the model's device and are moved once per language. The LM head never runs
(the base model is called directly), so no vocabulary logits are computed. Memory is
O(languages x layers x neurons) whatever the corpus size; raw activations are never stored.

Resume: each language's running state is check-pointed into ``OUT/partial/`` (safetensors and
its key) every ``checkpoint_every`` batches and when the language ends. A re-run with the same
inputs skips finished languages and continues an unfinished one from its last checkpoint; the
final counts are identical to an uninterrupted run (same batches, same order of additions).

Under ``torchrun`` each language's sequences are sharded over the ranks (sequence ``i`` goes to
rank ``i % world_size``) and the counters are all-reduced, giving the same files as one process.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import artifacts
from .errors import LapeError
from .hooks import activation_hooks
from .models import fingerprint, model_id_of
from .neurons import NeuronSpace

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecordConfig:
    """Settings of :func:`record`; every field is a CLI option and goes into the sidecar."""

    tokens_per_language: int = 12_000  # budget of real tokens per language; Tang et al. use up to
    # 100M (7B, GPU); every built-in language has >= 13.9k training tokens
    seq_len: int = 512  # packed sequence length; long enough for context, short for CPU attention
    batch_size: int = 8  # sequences per forward pass; 8 x 512 saturates 2 CPU cores
    seed: int = 0  # document shuffling seed
    split: str = "train"  # corpus split to record on
    languages: tuple[str, ...] | None = None  # None: every language of the manifest
    checkpoint_every: int = 25  # batches between resume checkpoints

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["languages"] = list(self.languages) if self.languages else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RecordConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise LapeError(f"unknown record setting(s) {sorted(unknown)}: allowed are {sorted(known)}")
        d = dict(d)
        if d.get("languages") is not None:
            d["languages"] = tuple(d["languages"])
        return cls(**d)

    def key_dict(self) -> dict[str, Any]:
        """The settings that change the counts (not the checkpoint interval)."""
        d = self.to_dict()
        d.pop("checkpoint_every")
        d.pop("languages")
        return d


@dataclass
class ActivationStats:
    """Per-language activation statistics on the neuron space.

    Attributes:
        languages: language codes in tensor-axis order.
        fire_counts: int64 ``[languages, layers, neurons]``, tokens with activation > 0.
        token_counts: int64 ``[languages]``, real tokens seen.
        act_sums: float64 ``[languages, layers, neurons]``, sum of activations.
        fire_sums: float64 ``[languages, layers, neurons]``, sum of positive activations.
        meta: the sidecar (model id, fingerprint, config, manifest hash, ...).

    Example:
        >>> stats = ActivationStats.load("runs/demo/stats")
        >>> stats.probabilities().shape   # [languages, layers, neurons]
    """

    languages: list[str]
    fire_counts: torch.Tensor
    token_counts: torch.Tensor
    act_sums: torch.Tensor
    fire_sums: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    KIND = "stats"

    @property
    def shape(self) -> tuple[int, int]:
        """``(layers, neurons)``."""
        return (int(self.fire_counts.shape[1]), int(self.fire_counts.shape[2]))

    def _tokens(self) -> torch.Tensor:
        return self.token_counts.to(torch.float64).clamp(min=1).view(-1, 1, 1)

    def probabilities(self) -> torch.Tensor:
        """float64 ``[languages, layers, neurons]``: ``fire_counts / token_counts``."""
        return self.fire_counts.to(torch.float64) / self._tokens()

    def mean_activation(self) -> torch.Tensor:
        """float64 ``[languages, layers, neurons]``: mean activation over all tokens."""
        return self.act_sums / self._tokens()

    def mean_positive_activation(self) -> torch.Tensor:
        """float64 ``[languages, layers, neurons]``: ``E[max(act, 0)]`` over all tokens."""
        return self.fire_sums / self._tokens()

    def mean_firing_activation(self) -> torch.Tensor:
        """float64 ``[languages, layers, neurons]``: mean activation over the tokens where it fired."""
        return self.fire_sums / self.fire_counts.to(torch.float64).clamp(min=1)

    def index(self, lang: str) -> int:
        if lang not in self.languages:
            raise LapeError(f"language {lang!r} is not in these stats (they have "
                            f"{', '.join(self.languages)}): record it first")
        return self.languages.index(lang)

    def subset(self, languages: Iterable[str]) -> ActivationStats:
        """Statistics of some languages only."""
        idx = [self.index(lang) for lang in languages]
        return ActivationStats([self.languages[i] for i in idx], self.fire_counts[idx],
                               self.token_counts[idx], self.act_sums[idx], self.fire_sums[idx],
                               dict(self.meta))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"fire_counts": self.fire_counts, "token_counts": self.token_counts,
                "act_sums": self.act_sums, "fire_sums": self.fire_sums}

    def save(self, path: str | Path) -> Path:
        """Write ``path/stats.safetensors`` and ``path/stats.json``."""
        return artifacts.save(path, self.KIND, self.state_dict(), self.meta)

    @classmethod
    def load(cls, path: str | Path, model: nn.Module | None = None) -> ActivationStats:
        """Read stats written by :func:`record`; given a model, check they were made on it."""
        t, meta = artifacts.load(path, cls.KIND, model=model)
        return cls(list(meta["languages"]), t["fire_counts"], t["token_counts"], t["act_sums"],
                   t["fire_sums"], meta)


class _Accumulator:
    """Running per-layer counters for one language, kept on the model's device."""

    def __init__(self, shape: tuple[int, int], device: torch.device) -> None:
        layers, neurons = shape
        self.fire = torch.zeros(layers, neurons, dtype=torch.int64, device=device)
        self.sums = torch.zeros(layers, neurons, dtype=torch.float64, device=device)
        self.pos = torch.zeros(layers, neurons, dtype=torch.float64, device=device)
        self.tokens = torch.zeros((), dtype=torch.int64, device=device)
        self.rows: torch.Tensor | None = None  # indices of real tokens in the flattened batch

    def add(self, layer: int, act: torch.Tensor) -> None:
        a = act.reshape(-1, act.shape[-1])  # (B*T, N)
        if self.rows is not None:  # drop padding
            a = a.index_select(0, self.rows.to(a.device, non_blocking=True))
        dev = self.fire.device
        pos = a.clamp(min=0)
        self.sums[layer] += a.sum(0, dtype=torch.float32).to(dev, torch.float64)
        self.pos[layer] += pos.sum(0, dtype=torch.float32).to(dev, torch.float64)
        # count act > 0 as a float sum of sign(max(act, 0)): 4x faster on CPU than summing a bool
        # tensor, and exact (a batch has far fewer than 2^24 rows)
        self.fire[layer] += pos.sign_().sum(0, dtype=torch.float32).to(dev, torch.int64)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"fire_counts": self.fire, "act_sums": self.sums, "fire_sums": self.pos,
                "token_counts": self.tokens.view(1)}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.fire.copy_(state["fire_counts"])
        self.sums.copy_(state["act_sums"])
        self.pos.copy_(state["fire_sums"])
        self.tokens.copy_(state["token_counts"].view(()))


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _input_device(model: nn.Module) -> torch.device:
    return model.get_input_embeddings().weight.device


def record(
    model: nn.Module,
    corpus: Mapping[str, Iterable[Any]],
    config: RecordConfig = RecordConfig(),
    *,
    out: str | Path | None = None,
    space: NeuronSpace | None = None,
    inputs: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> ActivationStats:
    """Count, per language, how often each neuron fires (and its activation sums).

    Args:
        model: a causal LM (from :func:`lape.load_model`).
        corpus: ``{language: iterable of sequences}``, each sequence with ``input_ids`` and
            ``attention_mask`` (LongTensor ``[T]``), as given by :func:`lape.load_corpus`.
            Iterables must be deterministic so that a resumed run sees the same sequences.
        config: recording settings (batch size; the corpus was built from the other fields).
        out: a folder to write ``stats`` into and check-point in; a complete artifact with the
            same inputs is returned without recomputation.
        space: the model's neuron space (found automatically).
        inputs: provenance for the sidecar (e.g. ``{"manifest": ..., "manifest_hash": ...}``).
        progress: show a progress bar.

    Returns:
        :class:`ActivationStats` over ``list(corpus)`` languages.

    Raises:
        LapeError: a language without any tokens.
    """
    from tqdm.auto import tqdm

    space = space or NeuronSpace.of(model)
    fp = fingerprint(model)
    languages = list(corpus)
    if not languages:
        raise LapeError("no languages to record: give the corpus at least one language")
    key_base = {"fingerprint": fp, "config": config.key_dict(), "inputs": dict(inputs or {})}
    out = Path(out) if out is not None else None
    rank, world = _dist()
    device = _input_device(model)
    done = None
    if out is not None and artifacts.exists(out, ActivationStats.KIND):
        done = ActivationStats.load(out)
        if done.meta.get("cache_key") != artifacts.content_hash({**key_base, "languages": languages}):
            done = None
    if world > 1:  # rank 0 decides for all: ranks that disagreed would wait forever in all_reduce
        done = _from_rank0(done, len(languages), space.shape, device)
    if done is not None:
        logger.info("stats in %s are complete for these inputs: skipped", out)
        return done
    base = model.base_model  # skips the LM head: no vocabulary logits while recording
    results: dict[str, dict[str, torch.Tensor]] = {}
    t0 = time.perf_counter()
    total_tokens = 0
    for lang in languages:
        lang_key = artifacts.content_hash({**key_base, "language": lang})
        part_name = lang if world == 1 else f"{lang}.rank{rank}"
        partial = out / "partial" / part_name if out is not None else None
        acc = _Accumulator(space.shape, device)
        start_batch, finished = 0, False
        if partial is not None and artifacts.exists(partial, "partial"):
            state, pmeta = artifacts.load(partial, "partial")
            if pmeta.get("key") == lang_key and pmeta.get("world") == world:
                acc.load_state_dict({k: v.to(device) for k, v in state.items()})
                start_batch, finished = pmeta["batches"], pmeta["finished"]
                logger.info("%s: resuming after %d batches%s", lang, start_batch,
                            " (finished)" if finished else "")
        if not finished:
            bar = tqdm(desc=f"record {lang}", unit="tok", disable=not progress or rank != 0,
                       total=getattr(corpus[lang], "budget", None), leave=False)
            bar.update(int(acc.tokens) * world)
            n_batches = start_batch
            with torch.inference_mode(), activation_hooks(model, space, acc.add):
                for b, (ids, mask) in enumerate(_batched(corpus[lang], config.batch_size, rank, world)):
                    if b < start_batch:
                        continue
                    n = int(mask.sum())  # masks are built on the host: no device sync here
                    padded = n != mask.numel()
                    acc.rows = mask.reshape(-1).nonzero().squeeze(1).to(device) if padded else None
                    base(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
                    acc.tokens += n
                    n_batches = b + 1
                    bar.update(n * world)
                    if partial is not None and n_batches % config.checkpoint_every == 0:
                        _checkpoint(partial, acc, lang_key, n_batches, world, finished=False)
            bar.close()
            if partial is not None:
                _checkpoint(partial, acc, lang_key, n_batches, world, finished=True)
        state = {k: v.detach().clone() for k, v in acc.state_dict().items()}
        if world > 1:
            for v in state.values():
                torch.distributed.all_reduce(v)
        state = {k: v.cpu() for k, v in state.items()}
        if int(state["token_counts"]) == 0:
            raise LapeError(f"language {lang!r} gave no tokens: check its {config.split} split in the manifest")
        total_tokens += int(state["token_counts"])
        results[lang] = state
    seconds = time.perf_counter() - t0
    stats = ActivationStats(
        languages,
        torch.stack([results[lang]["fire_counts"] for lang in languages]),
        torch.cat([results[lang]["token_counts"] for lang in languages]),
        torch.stack([results[lang]["act_sums"] for lang in languages]),
        torch.stack([results[lang]["fire_sums"] for lang in languages]),
    )
    stats.meta = artifacts.sidecar(
        ActivationStats.KIND, model_id=model_id_of(model), model_fingerprint=fp,
        num_layers=space.num_layers, neurons_per_layer=space.neurons_per_layer,
        languages=languages, token_counts=dict(zip(languages, stats.token_counts.tolist())),
        config=config.to_dict(), inputs=dict(inputs or {}),
        cache_key=artifacts.content_hash({**key_base, "languages": languages}),
        neuron_space=space.describe(), seconds=round(seconds, 2),
        tokens_per_second=round(total_tokens / max(seconds, 1e-9), 1), world_size=world,
    )
    if out is not None and rank == 0:
        stats.save(out)
    logger.info("recorded %d languages, %d tokens in %.1f s (%.0f tokens/s)", len(languages),
                total_tokens, seconds, total_tokens / max(seconds, 1e-9))
    return stats


def _from_rank0(done: ActivationStats | None, n_languages: int, shape: tuple[int, int],
                device: torch.device) -> ActivationStats | None:
    """Rank 0's finished stats (or ``None``) on every rank, sent by broadcast: a rank whose
    ``out`` folder differs (no shared file system) gets them from rank 0."""
    dist = torch.distributed
    rank = dist.get_rank()
    flag = torch.tensor([int(done is not None)], device=device)
    dist.broadcast(flag, src=0)
    if not int(flag):
        return None
    meta = json.dumps(done.meta if rank == 0 else {}).encode("utf-8")
    length = torch.tensor([len(meta)], device=device)
    dist.broadcast(length, src=0)
    blob = torch.zeros(int(length), dtype=torch.uint8, device=device)
    if rank == 0:
        blob.copy_(torch.frombuffer(bytearray(meta), dtype=torch.uint8))
    dist.broadcast(blob, src=0)
    k, (layers, neurons) = n_languages, shape
    meta = json.loads(bytes(blob.cpu().tolist()).decode("utf-8"))
    tensors = {"fire_counts": ((k, layers, neurons), torch.int64), "token_counts": ((k,), torch.int64),
               "act_sums": ((k, layers, neurons), torch.float64), "fire_sums": ((k, layers, neurons), torch.float64)}
    got = {}
    for name, (size, dtype) in tensors.items():
        t = getattr(done, name).to(device, dtype) if rank == 0 else torch.zeros(size, dtype=dtype, device=device)
        dist.broadcast(t, src=0)
        got[name] = t.cpu()
    return ActivationStats(list(meta["languages"]), got["fire_counts"], got["token_counts"], got["act_sums"],
                           got["fire_sums"], meta)


def _checkpoint(partial: Path, acc: _Accumulator, key: str, batches: int, world: int, finished: bool) -> None:
    artifacts.save(partial, "partial", acc.state_dict(),
                   {"format": "lape.partial", "format_version": artifacts.FORMAT_VERSION,
                    "key": key, "batches": batches, "world": world, "finished": finished})


def _batched(sequences: Iterable[Any], batch_size: int, rank: int, world: int):
    """``(input_ids [B, T], attention_mask [B, T])`` batches; rank ``r`` of ``world`` keeps
    sequences ``i`` with ``i % world == r``."""
    from .corpora import batches

    return batches((s for i, s in enumerate(sequences) if i % world == rank), batch_size)
