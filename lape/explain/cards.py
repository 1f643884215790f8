"""Neuron cards: what each chosen neuron fires on and what it writes (``lape explain``).

:func:`explain` runs the model once over a token budget per language with hooks on the layers of
the chosen neurons only, and keeps per neuron and language a running top-k of activating
contexts and the firing sums (:mod:`lape.explain.topk`); then reads each neuron's output
direction through the unembedding (:mod:`lape.explain.lens`). The result, :class:`NeuronCards`,
is one artifact (safetensors + sidecar); :mod:`lape.explain.page` turns it into the offline page
``index.html`` and the JSON export ``cards.json``.

Resume, ``torchrun`` sharding and skip-when-cached come from :func:`lape.runningstats.tally`, as
for ``lape record``. By default the contexts come from the **valid** split: text the neuron sets
were not identified on.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from .. import artifacts
from ..config import StageConfig, option
from ..corpora.identity import corpus_config, counted_positions
from ..errors import LapeError
from ..hooks import activation_hooks
from ..models import input_device
from ..runningstats import dist_info, shard, stage_cache, tally
from ..space import NeuronSpace
from .lens import WrittenTokens, check_neurons, written_tokens
from .topk import TOP_NAMES, TopContexts, merge_top


@dataclass(frozen=True)
class ExplainConfig(StageConfig):
    """Settings of :func:`explain`; every field is a CLI option and goes into the sidecar."""

    k: int = option(5, min=1, max=100)  # contexts kept per neuron and language
    before: int = option(8, min=0, max=256)  # context tokens kept before the firing token
    after: int = option(3, min=0, max=256)  # and after it
    top_tokens: int = option(10, min=1, max=200)  # promoted and suppressed tokens per neuron
    tokens_per_language: int | None = option(3000, gt=0)  # token budget per language
    seq_len: int = option(256, min=2, max=1 << 16)  # packed sequence length
    batch_size: int = option(8, min=1, max=4096)  # sequences per forward pass
    seed: int = option(0, min=0)  # document shuffling seed
    split: str = "valid"  # corpus split the contexts come from (held out from identification)
    languages: tuple[str, ...] | None = None  # None: every language of the manifest
    checkpoint_every: int = option(25, min=1, key=False)  # batches between resume checkpoints


@dataclass
class NeuronCards(artifacts.Artifact):
    """Per chosen neuron: top contexts per language, firing figures, written tokens, set membership.

    Attributes:
        neurons: int64 ``[N, 2]`` ``(layer, index)``, sorted.
        languages: the corpus languages, in tensor-axis order.
        contexts: ``values``/``serials`` ``[L, N, k]`` and ``tokens``/``acts`` ``[L, N, k, W]``
            (token id ``-1``: outside the sequence); ``W = before + 1 + after``, the firing token
            at window position ``before``.
        firing: ``fire_counts``/``fire_sums``/``act_sums`` ``[L, N]``, ``token_counts`` ``[L]``.
        written: promoted and suppressed tokens (:class:`~lape.explain.lens.WrittenTokens`).
        memberships: ``{set label: [rows of neurons]}``.
    """

    neurons: torch.Tensor
    languages: list[str]
    contexts: dict[str, torch.Tensor]
    firing: dict[str, torch.Tensor]
    written: WrittenTokens
    memberships: dict[str, list[int]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    KIND: ClassVar[str] = "explain"
    DESCRIPTION: ClassVar[str] = "neuron cards"
    REQUIRED: ClassVar[tuple[str, ...]] = ("languages", "window")
    FIRING: ClassVar[tuple[str, ...]] = ("fire_counts", "fire_sums", "act_sums", "token_counts")
    WRITTEN: ClassVar[tuple[str, ...]] = ("promoted", "promoted_scores", "suppressed", "suppressed_scores")
    TENSORS: ClassVar[tuple[str, ...]] = ("neurons", *TOP_NAMES, *FIRING, *WRITTEN)

    @property
    def before(self) -> int:
        """Context tokens before the firing token (its position in every window)."""
        return int(self.meta["window"][0])

    def row(self, neuron: Sequence[int]) -> int:
        """The row of neuron ``(layer, index)``; a neuron not explained here is a one-line error."""
        layer, index = (int(x) for x in neuron)
        hit = ((self.neurons[:, 0] == layer) & (self.neurons[:, 1] == index)).nonzero()
        if not len(hit):
            raise LapeError(f"neuron ({layer}, {index}) is not among the {len(self.neurons)} explained neurons: "
                            "explain it first (lape explain ... --neuron LAYER:INDEX)")
        return int(hit[0, 0])

    def sets_of(self, row: int) -> list[str]:
        """The set labels neuron ``row`` belongs to."""
        return [label for label, rows in self.memberships.items() if row in rows]

    def firing_probability(self) -> torch.Tensor:
        """float64 ``[L, N]``: share of each language's tokens on which the neuron fires (> 0)."""
        return self.firing["fire_counts"].double() / self.firing["token_counts"].double().clamp(min=1)[:, None]

    def mean_firing_activation(self) -> torch.Tensor:
        """float64 ``[L, N]``: mean activation over the tokens where the neuron fires."""
        return self.firing["fire_sums"] / self.firing["fire_counts"].double().clamp(min=1)

    def overall_top(self, row: int, k: int | None = None) -> tuple[dict[str, torch.Tensor], list[int]]:
        """Neuron ``row``'s top-k contexts over all languages (``[1, k]`` tensors as in
        :func:`~lape.explain.topk.merge_top`) and the language index of each (ties: earlier language)."""
        k = k or int(self.contexts["values"].shape[-1])
        parts, lang_of = [], []
        for li in range(len(self.languages)):
            part = {name: self.contexts[name][li, row:row + 1] for name in TOP_NAMES}
            # serials are per language: offset them so that a tie goes to the earlier language
            part["serials"] = torch.where(part["serials"] >= 0, part["serials"] + li * (1 << 50), part["serials"])
            parts.append(part)
        merged = merge_top(parts, k)
        for s in merged["serials"][0].tolist():
            lang_of.append(int(s) >> 50 if s >= 0 else -1)
        return merged, lang_of

    # artifact --------------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        w = self.written
        return {"neurons": self.neurons, **self.contexts, **self.firing, "promoted": w.promoted,
                "promoted_scores": w.promoted_scores, "suppressed": w.suppressed,
                "suppressed_scores": w.suppressed_scores}

    def payload(self) -> Any:
        return {"memberships": self.memberships}

    def derived_meta(self) -> dict[str, Any]:
        return {"languages": list(self.languages), "neurons": int(len(self.neurons))}

    @classmethod
    def _from_saved(cls, t: dict[str, torch.Tensor], meta: dict[str, Any], payload: Any) -> NeuronCards:
        written = WrittenTokens(t["promoted"], t["promoted_scores"], t["suppressed"], t["suppressed_scores"])
        return cls(t["neurons"], list(meta["languages"]), {n: t[n] for n in TOP_NAMES},
                   {n: t[n] for n in cls.FIRING}, written,
                   {k: list(v) for k, v in (payload or {}).get("memberships", {}).items()}, meta)

    def validate(self) -> None:
        n, langs = len(self.neurons), len(self.languages)
        v = self.contexts["values"]
        if self.neurons.dim() != 2 or self.neurons.shape[1] != 2 or v.dim() != 3 or tuple(v.shape[:2]) != (langs, n) \
                or tuple(self.firing["fire_counts"].shape) != (langs, n) or len(self.written.promoted) != n:
            raise LapeError(f"neuron cards do not fit {n} neurons x {langs} languages: the artifact was edited or "
                            "damaged; re-run lape explain")
        if any(r < 0 or r >= n for rows in self.memberships.values() for r in rows):
            raise LapeError("neuron cards name set members outside their neurons: re-run lape explain")


def neuron_table(sets: Mapping[str, Any] | None = None, extra: Iterable[Sequence[int]] = ()
                 ) -> tuple[torch.Tensor, dict[str, list[int]]]:
    """The neurons to explain and their set memberships.

    Args:
        sets: ``{name: NeuronSets}``; with one entry its labels are used as they are, with several
            they become ``name:label``.
        extra: hand-written ``(layer, index)`` pairs (labelled ``listed``).

    Returns:
        ``(neurons [N, 2] sorted and unique, {label: [rows]})``.
    """
    sets = dict(sets or {})
    members: dict[str, set[tuple[int, int]]] = {}
    for name, s in sets.items():
        for label in s.labels:
            tag = label if len(sets) == 1 else f"{name}:{label}"
            members.setdefault(tag, set()).update(s.neurons(label))
    listed = {(int(a), int(b)) for a, b in extra}
    if listed:
        members.setdefault("listed", set()).update(listed)
    everyone = sorted(set().union(*members.values())) if members else []
    if not everyone:
        raise LapeError("no neurons to explain: the sets are empty and no --neuron was given")
    rows = {n: i for i, n in enumerate(everyone)}
    return (torch.tensor(everyone, dtype=torch.long).reshape(-1, 2),
            {label: sorted(rows[n] for n in found) for label, found in members.items()})


def _indexed_batches(stream: Iterable[Any], rank: int, world: int, batch_size: int
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """This rank's batches ``(ids, mask, sequence indices)``: the sequence index is its place in
    the whole stream, so that serials (and so tie order) are the same in every layout."""
    from ..corpora import batches

    indexed = shard(enumerate(stream), rank, world)
    while chunk := list(itertools.islice(indexed, batch_size)):
        ids, mask = next(batches([seq for _, seq in chunk], len(chunk)))
        yield ids, mask, torch.tensor([i for i, _ in chunk], dtype=torch.long)


def explain(
    model: nn.Module,
    corpus: Mapping[str, Iterable[Any]],
    neurons: torch.Tensor | Sequence[Sequence[int]],
    config: ExplainConfig = ExplainConfig(),
    *,
    memberships: Mapping[str, list[int]] | None = None,
    out: str | Path | None = None,
    space: NeuronSpace | None = None,
    progress: bool = True,
) -> NeuronCards:
    """Neuron cards for ``neurons`` over ``corpus`` (module docstring).

    Args:
        model: a causal LM (:func:`lape.load_model`).
        corpus: ``{language: sequences}`` as :func:`lape.load_corpus` gives (deterministic).
        neurons: ``[N, 2]`` ``(layer, index)`` pairs (:func:`neuron_table` builds them from sets).
        config: contexts kept, window, written tokens (the corpus fields are replaced in the
            sidecar by what the streams hold).
        memberships: ``{set label: [rows of neurons]}`` shown on the cards.
        out: folder for the artifact and check-points; a finished one made from the same inputs
            is returned without recomputation.
        space: the model's neuron space (found automatically).
        progress: show a progress bar.

    Raises:
        LapeError: a neuron outside the model's space (one line naming it), an empty language.
    """
    space = space or NeuronSpace.of(model)
    neurons = check_neurons(space, neurons)
    order = sorted(range(len(neurons)), key=lambda i: tuple(neurons[i].tolist()))
    if order != list(range(len(neurons))) or len({tuple(n) for n in neurons.tolist()}) != len(neurons):
        raise LapeError("neurons to explain must be unique and sorted by (layer, index): build them with "
                        "lape.explain.neuron_table")
    memberships = {k: [int(r) for r in v] for k, v in (memberships or {}).items()}
    config, inputs = corpus_config(model, corpus, config)
    inputs.update(neurons=artifacts.tensor_digest({"neurons": neurons}), memberships=memberships)
    key, done = stage_cache(NeuronCards, model, config, inputs, out)
    if done is not None:
        return done
    languages = list(corpus)
    columns = {layer: neurons[neurons[:, 0] == layer, 1] for layer in neurons[:, 0].unique().tolist()}
    rank, world = dist_info()
    device = input_device(model)
    base = model.base_model  # no vocabulary logits

    def step(stat: TopContexts, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> int:
        ids, mask, sequences = batch
        counted = counted_positions(mask).bool()
        base(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
        stat.add_batch(ids, counted, sequences)
        return int(counted.sum())

    def hooks(stat: TopContexts):
        from contextlib import ExitStack

        stack = ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(activation_hooks(model, space, stat.hook, layers=list(columns)))
        return stack

    results, report = tally(
        languages, lambda lang: TopContexts(columns, config.k, config.before, config.after, device),
        lambda lang: _indexed_batches(corpus[lang], rank, world, config.batch_size), step,
        key=key, checkpoint_dir=Path(out) / "partial" if out is not None else None,
        checkpoint_every=config.checkpoint_every, progress=progress, desc="explain",
        total=lambda lang: getattr(corpus[lang], "budget", None), context=hooks)
    written = written_tokens(model, space, neurons, top=config.top_tokens)
    cards = NeuronCards(
        neurons, languages,
        {name: torch.stack([results[lang][name] for lang in languages]) for name in TOP_NAMES},
        {name: (torch.cat if name == "token_counts" else torch.stack)([results[lang][name] for lang in languages])
         for name in NeuronCards.FIRING},
        written, memberships)
    cards.meta = artifacts.model_sidecar(
        NeuronCards.KIND, model, space, languages=languages,
        token_counts=dict(zip(languages, cards.firing["token_counts"].tolist())), config=config.to_dict(),
        inputs=inputs, cache_key=key, window=[config.before, config.after],
        counted_positions="all but the first of each sequence", seconds=round(report.seconds, 2),
        world_size=world)
    cards.from_cache = False  # type: ignore[attr-defined]
    if out is not None and rank == 0:
        cards.save(out)
    return cards
