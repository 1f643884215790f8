"""Record per-language neuron statistics (LAPE step 1, Tang et al. 2024, `activation.py`).

For every language ``k``, layer ``l`` and neuron ``j`` :func:`record` counts, over the real
(unpadded) tokens of that language's packed ``train`` sequences:

* ``fire_counts[k, l, j] = sum_t 1[act_t > 0]``  (the LAPE count, ``over_zero``),
* ``act_sums[k, l, j]   = sum_t act_t``           (mean activation),
* ``fire_sums[k, l, j]  = sum_t max(act_t, 0)``   (mean firing value, for LAVE and steering),
* ``token_counts[k]``                             (the ``n`` of LAPE).

**The first position of every packed sequence is left out.** It holds BOS, whose hidden state
is the same in every language (the attention sink): counting it would add the same activations
to every language and dilute every firing probability alike. The paper's packed blocks cut a
long token stream, so their first positions are ordinary text; lape's sequences start with BOS,
and leaving that position out gives the same statistics of text tokens.

Counters stay on the model's device and are moved once per language. The LM head never runs
(the base model is called directly), so no vocabulary logits are computed. Memory is
O(languages x layers x neurons) whatever the corpus size; raw activations are never stored.
Resume, torchrun sharding and skip-when-cached come from :func:`lape.runningstats.tally`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from .. import artifacts
from ..config import StageConfig, option
from ..corpora.identity import MAX_SEQ_LEN, corpus_config, counted_positions
from ..errors import LapeError
from ..hooks import activation_hooks
from ..models import input_device
from ..runningstats import RunningSums, dist_info, shard, stage_cache, tally
from ..space import NeuronSpace

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecordConfig(StageConfig):
    """Settings of :func:`record`; every field is a CLI option and goes into the sidecar.

    The corpus fields (``tokens_per_language``, ``seq_len``, ``seed``, ``split``, ``languages``)
    build the corpus in the CLI; :func:`record` replaces them in its sidecar by what the
    streams it was given actually hold.
    """

    tokens_per_language: int | None = option(12_000, gt=0)  # budget of tokens per language;
    # Tang et al. use up to 100M (7B, GPU); every built-in language has >= 13.9k training tokens
    seq_len: int = option(512, min=2, max=MAX_SEQ_LEN)  # packed sequence length; long enough for
    # context, short enough for CPU attention
    batch_size: int = option(8, min=1, max=4096)  # sequences per forward pass; 8 x 512 saturates 2 CPU cores
    seed: int = option(0, min=0)  # document shuffling seed
    split: str = "train"  # corpus split to record on
    languages: tuple[str, ...] | None = None  # None: every language of the manifest
    checkpoint_every: int = option(25, min=1, key=False)  # batches between resume checkpoints


@dataclass
class ActivationStats(artifacts.Artifact):
    """Per-language activation statistics on the neuron space.

    Attributes:
        languages: language codes in tensor-axis order.
        fire_counts: int64 ``[languages, layers, neurons]``, tokens with activation > 0.
        token_counts: int64 ``[languages]``, tokens counted (the first position of each
            sequence is not counted, see the module docstring).
        act_sums: float64 ``[languages, layers, neurons]``, sum of activations.
        fire_sums: float64 ``[languages, layers, neurons]``, sum of positive activations.
        meta: the sidecar (model id, fingerprint, config, corpus keys, ...).

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

    KIND: ClassVar[str] = "stats"
    DESCRIPTION: ClassVar[str] = "activation stats"
    REQUIRED: ClassVar[tuple[str, ...]] = ("languages",)
    TENSORS: ClassVar[tuple[str, ...]] = ("fire_counts", "token_counts", "act_sums", "fire_sums")

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

    # artifact ------------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        return {"fire_counts": self.fire_counts, "token_counts": self.token_counts,
                "act_sums": self.act_sums, "fire_sums": self.fire_sums}

    @classmethod
    def _from_saved(cls, t: dict[str, torch.Tensor], meta: dict[str, Any], payload: Any) -> ActivationStats:
        return cls(list(meta["languages"]), t["fire_counts"], t["token_counts"], t["act_sums"], t["fire_sums"], meta)

    def validate(self) -> None:
        k = len(self.languages)
        fc, tc = self.fire_counts, self.token_counts
        if fc.dim() != 3 or fc.shape[0] != k or tuple(tc.shape) != (k,) or self.act_sums.shape != fc.shape \
                or self.fire_sums.shape != fc.shape:
            raise LapeError(f"stats tensors do not fit {k} languages x layers x neurons (fire_counts "
                            f"{tuple(fc.shape)}, token_counts {tuple(tc.shape)}): the artifact was edited or "
                            "damaged; re-run lape record")
        if fc.dtype != torch.int64 or tc.dtype != torch.int64:
            raise LapeError("stats counts must be int64: the artifact was edited or damaged; re-run lape record")
        if bool((tc < 0).any()) or bool((fc < 0).any()) or bool((fc > tc.view(-1, 1, 1)).any()):
            raise LapeError("stats hold counts below 0 or above the token count: the artifact was edited or "
                            "damaged; re-run lape record")
        if not bool(torch.isfinite(self.act_sums).all()) or not bool(torch.isfinite(self.fire_sums).all()) \
                or bool((self.fire_sums < 0).any()):
            raise LapeError("stats hold non-finite or negative firing sums: the artifact was edited or damaged; "
                            "re-run lape record")


class FiringCounts(RunningSums):
    """Running per-layer counters of one language, kept on the model's device.

    ``rows`` (set before each forward) are the indices of the counted positions in the
    flattened batch, or ``None`` when every position but the first of each sequence counts.
    """

    def __init__(self, shape: tuple[int, int], device: torch.device) -> None:
        layers, neurons = shape
        super().__init__({
            "fire_counts": torch.zeros(layers, neurons, dtype=torch.int64, device=device),
            "act_sums": torch.zeros(layers, neurons, dtype=torch.float64, device=device),
            "fire_sums": torch.zeros(layers, neurons, dtype=torch.float64, device=device),
            "token_counts": torch.zeros(1, dtype=torch.int64, device=device),
        })
        self.rows: torch.Tensor | None = None

    def add(self, layer: int, act: torch.Tensor) -> None:
        """Add one layer's activations ``(B, T, N)`` of the current batch."""
        if self.rows is None:  # no padding: every position but the first (BOS) of each sequence
            a, dims = act[:, 1:], (0, 1)  # act is (B, T, N)
        else:
            a = act.reshape(-1, act.shape[-1]).index_select(0, self.rows.to(act.device, non_blocking=True))
            dims = (0,)
        s = self.sums
        act_sum, fire_sum, fire_count = firing_sums(a, dims)
        dev = s["fire_counts"].device
        s["act_sums"][layer] += act_sum.to(dev)
        s["fire_sums"][layer] += fire_sum.to(dev)
        s["fire_counts"][layer] += fire_count.to(dev)


def firing_sums(a: torch.Tensor, dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What LAPE counts, over the axes ``dims`` of activations ``a``: the sum of the activations,
    the sum of their positive parts (float64) and how many fire, i.e. are above 0 (int64).

    The one definition of firing, shared by :class:`FiringCounts` (every neuron) and the neuron
    cards' :class:`lape.explain.topk.TopContexts` (chosen neurons). Sums run in float32 per call.
    """
    pos = a.clamp(min=0)
    act_sum = a.sum(dims, dtype=torch.float32).double()
    fire_sum = pos.sum(dims, dtype=torch.float32).double()
    # count act > 0 as a float sum of sign(max(act, 0)): 4x faster on CPU than summing a bool
    # tensor, and exact (a call has far fewer than 2^24 rows)
    fire_count = pos.sign_().sum(dims, dtype=torch.float32).to(torch.int64)
    return act_sum, fire_sum, fire_count


def record(
    model: nn.Module,
    corpus: Mapping[str, Iterable[Any]],
    config: RecordConfig = RecordConfig(),
    *,
    out: str | Path | None = None,
    space: NeuronSpace | None = None,
    progress: bool = True,
) -> ActivationStats:
    """Count, per language, how often each neuron fires (and its activation sums).

    Args:
        model: a causal LM (from :func:`lape.load_model`).
        corpus: ``{language: iterable of sequences}``, each sequence with ``input_ids`` and
            ``attention_mask`` (LongTensor ``[T]``), as given by :func:`lape.load_corpus`.
            Iterables must be deterministic so that a resumed run sees the same sequences.
        config: recording settings (batch size, checkpoint interval; the corpus fields are
            replaced in the sidecar by what the streams hold).
        out: a folder to write ``stats`` into and check-point in; a complete artifact made from
            the same inputs (model, corpus content and settings) is returned without recomputation.
        space: the model's neuron space (found automatically).
        progress: show a progress bar.

    Returns:
        :class:`ActivationStats` over ``list(corpus)`` languages.

    Raises:
        LapeError: no languages, or a language without any counted tokens.
    """
    space = space or NeuronSpace.of(model)
    languages = list(corpus)
    if not languages:
        raise LapeError("no languages to record: give the corpus at least one language")
    config, inputs = corpus_config(model, corpus, config)
    key, done = stage_cache(ActivationStats, model, config, inputs, out)
    if done is not None:
        return done
    rank, world = dist_info()
    device = input_device(model)
    base = model.base_model  # skips the LM head: no vocabulary logits while recording

    def step(stat: FiringCounts, batch: tuple[torch.Tensor, torch.Tensor]) -> int:
        ids, mask = batch
        counted = counted_positions(mask)
        n = int(counted.sum())  # masks are built on the host: no device sync here
        full = bool(mask.all())
        stat.rows = None if full else counted.reshape(-1).nonzero().squeeze(1).to(device)
        base(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
        stat.sums["token_counts"] += n
        return n

    def hooks(stat: FiringCounts):
        from contextlib import ExitStack

        stack = ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(activation_hooks(model, space, stat.add))
        return stack

    from ..corpora import batches

    results, report = tally(
        languages, lambda lang: FiringCounts(space.shape, device),
        lambda lang: batches(shard(corpus[lang], rank, world), config.batch_size), step,
        key=key, checkpoint_dir=Path(out) / "partial" if out is not None else None,
        checkpoint_every=config.checkpoint_every, progress=progress, desc="record",
        total=lambda lang: getattr(corpus[lang], "budget", None), context=hooks)
    for lang in languages:
        if int(results[lang]["token_counts"]) == 0:
            raise LapeError(f"language {lang!r} gave no tokens to count: check its {config.split} split "
                            "in the manifest (or raise --tokens-per-language)")
    stats = ActivationStats(
        languages,
        torch.stack([results[lang]["fire_counts"] for lang in languages]),
        torch.cat([results[lang]["token_counts"] for lang in languages]),
        torch.stack([results[lang]["act_sums"] for lang in languages]),
        torch.stack([results[lang]["fire_sums"] for lang in languages]),
    )
    stats.meta = artifacts.model_sidecar(
        ActivationStats.KIND, model, space, languages=languages, token_counts=dict(zip(languages, stats.token_counts.tolist())),
        config=config.to_dict(), inputs=inputs, cache_key=key, counted_positions="all but the first of each sequence",
        neuron_space=space.describe(), seconds=round(report.seconds, 2),
        tokens_per_second=round(report.per_second * world, 1), world_size=world,
        resumed_languages=report.resumed_groups,
    )
    stats.from_cache = False  # type: ignore[attr-defined]
    if out is not None and rank == 0:
        stats.save(out)
    logger.info("recorded %d languages, %d tokens in this run in %.1f s (%.0f tokens/s)", len(languages),
                report.units * world, report.seconds, report.per_second * world)
    return stats
