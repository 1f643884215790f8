"""One neuron space, three methods: how LAPE language neurons, key neurons of the language
clusters and the neuron view of the linguistic regions agree, and what switching each off does.

**Overlap.** For a language and two families' sets ``A`` and ``B``: ``|A & B|`` next to its
chance value, the expected overlap of two random sets with the same number of neurons per layer,
``sum_layer |A_layer| |B_layer| / neurons_per_layer``; ``enrichment = observed / chance``. Two
one-sided p-values of an overlap at least as large: ``p_value``, hypergeometric with the whole
neuron space as population (``layers x neurons_per_layer``, :func:`lape.intervals.overlap_p`),
and ``p_value_layers``, with the counts per layer kept as in the chance value
(:func:`lape.intervals.overlap_p_layers`; larger when both sets crowd into the same layers).

**Effect.** Each family's sets are deactivated language by language on the same held-out text
(:func:`lape.evaluate.perplexity.ppl_matrix`): the NLL change of the set's own language next to
the mean change of the other languages; beside each family, a **size-matched random** row: random
neurons with the same count per layer as the family's set for that language (``draws`` seeded
draws, :func:`with_random`), mean NLL changes over the draws and their SD.

**Text.** The perplexity text is disjoint from the cloze questions the key neurons were selected
and evaluated on (:func:`comparison_text`): cloze questions are built from the ``valid`` split, so
the effects are measured on the ``parallel`` split (the UDHR for the built-in corpus, held out from
every recording) where every compared language has one, else on ``valid``; in either case a
document holding the sentence of any cloze question is dropped.

**Region neurons.** A weight region is turned into neurons by its neuron view
(:meth:`lape.masks.ParamRegions.to_neuron_sets`): neurons with at least ``min_share`` of their
own weights (gate and up rows, down column) in the language's monolingual region.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from .. import artifacts
from ..errors import LapeError
from ..intervals import overlap_p, overlap_p_layers
from ..masks import NeuronSets, chance_overlap, mono_language

RANDOM_PREFIX = "random"  # random rows of a perplexity matrix: "random<k>:<language>"
PPL_SPLITS = ("parallel", "valid")  # the comparison's perplexity text: the first every language declares


REGION_MIN_SHARE = 0.05  # a neuron belongs to a region's neuron view when >= 5% of its parameters are in it


def region_neuron_sets(regions: Any, space: Any, min_share: float = REGION_MIN_SHARE) -> NeuronSets:
    """The monolingual regions' neuron view, labelled by language (``mono:fr`` -> ``fr``)."""
    langs = [lab for lab in regions.labels if mono_language(lab)]
    if not langs:
        raise LapeError("the regions hold no monolingual region (mono:LANG): select regions with languages first")
    view = regions.subset(langs).to_neuron_sets(space, min_share)
    return NeuronSets([mono_language(lab) for lab in langs], view.masks,
                      {**view.meta, "min_share": min_share})


def family_overlaps(families: Mapping[str, NeuronSets], languages: Sequence[str]) -> list[dict[str, Any]]:
    """Per language and pair of families holding it: sizes, overlap, chance, enrichment."""
    names = list(families)
    rows = []
    for lang in languages:
        for i, fa in enumerate(names):
            for fb in names[i + 1:]:
                if lang not in families[fa].labels or lang not in families[fb].labels:
                    continue
                a, b = families[fa].mask(lang), families[fb].mask(lang)
                both, chance = int((a & b).sum()), chance_overlap(a, b)
                size_a, size_b = int(a.sum()), int(b.sum())
                rows.append({"language": lang, "a": fa, "b": fb, "size_a": size_a, "size_b": size_b,
                             "overlap": both, "chance": chance,
                             "enrichment": both / chance if chance > 0 else float("nan"),
                             "p_value": overlap_p(both, size_a, size_b, a.numel()),
                             "p_value_layers": overlap_p_layers(both, a.sum(1).tolist(), b.sum(1).tolist(),
                                                                a.shape[1])})
    return rows


def random_label(draw: int, language: str) -> str:
    """The label of a size-matched random set in :func:`with_random` (``random0:fr``)."""
    return f"{RANDOM_PREFIX}{draw}:{language}"


def with_random(sets: NeuronSets, languages: Sequence[str], draws: int, seed: int = 0) -> NeuronSets:
    """``sets`` restricted to ``languages``, plus ``draws`` size-matched random sets per language
    (:func:`random_label`): draw ``k`` holds, in every layer, as many random neurons as the
    language's set has there (:func:`lape.neurons.select.random_like` with seed ``seed + k``)."""
    from ..neurons.select import random_like

    own = sets.subset(languages)
    randoms = [random_like(own, seed=seed + k) for k in range(draws)]
    labels = [*languages, *(random_label(k, lang) for k in range(draws) for lang in languages)]
    masks = torch.cat([own.masks, *(r.masks for r in randoms)])
    return NeuronSets(labels, masks, {**sets.meta, "random_draws": draws, "random_seed": seed})


def cloze_sentences(questions: Iterable[Any]) -> set[str]:
    """The sentences the cloze questions blank a word of (the question's line after its
    instruction, with the right answer put back: an exact substring of the source document)."""
    from .cloze import BLANK

    out = set()
    for q in questions:
        if str(getattr(q, "source", "")).startswith("cloze") and "\n" in q.question:
            out.add(q.question.split("\n", 1)[1].replace(BLANK, q.choices[q.answer]))
    return out


def comparison_text(manifest: Any, tokenizer: Any, languages: Sequence[str], questions: Iterable[Any], *,
                    tokens_per_language: int, seq_len: int) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """The held-out text the effects are measured on, disjoint from ``questions`` (module
    docstring): per language, the documents of the first of :data:`PPL_SPLITS` every language
    declares, without those that hold a cloze question's sentence, packed in order
    (:func:`lape.corpora.pack`) up to ``tokens_per_language`` tokens.

    Returns:
        ``({language: sequences}, {"split", "dropped_documents": {language: n}})``.
    """
    from ..corpora import iter_documents, load_manifest, pack

    m = load_manifest(manifest)
    split = next((s for s in PPL_SPLITS if all(s in m.split_names(lang) for lang in languages)), None)
    if split is None:
        raise LapeError(f"the languages {', '.join(languages)} share no parallel or valid split in manifest "
                        f"{m.path}: add held-out text for the comparison")
    sentences = cloze_sentences(questions)
    text, dropped = {}, {}
    for lang in languages:
        docs = list(iter_documents(m, lang, split))
        kept = [d for d in docs if not any(s in d for s in sentences)]
        dropped[lang] = len(docs) - len(kept)
        if not kept:
            raise LapeError(f"every {split} document of {lang!r} holds a cloze question's sentence: add held-out "
                            "text or build the questions from other text")
        text[lang] = list(pack(kept, tokenizer, seq_len, tokens_per_language))
    return text, {"split": split, "dropped_documents": dropped}


def family_effects(results: Mapping[str, Any],
                   counts: Mapping[str, Mapping[str, list[int]]] | None = None) -> list[dict[str, Any]]:
    """From one perplexity matrix per family: per (family, language) the own and the other
    languages' mean NLL change when the family's set for that language is switched off; where
    the matrix has size-matched random rows (:func:`with_random`), a row ``random like FAMILY``
    right after the family's: the same figures averaged over the draws, with the SD of the own
    change over draws, and on the family's row whether its own change beats every draw.
    ``counts`` (family -> label -> neurons per layer) adds ``neurons_per_layer`` to the rows."""
    nan = float("nan")
    rows = []
    for fam, res in results.items():
        delta = res.delta_nll()
        per_layer = (counts or {}).get(fam, {})

        def effect(r: int, lang: str, delta: list[list[float]] = delta, columns: list[str] = res.languages
                   ) -> tuple[float, float, bool]:
            """Own change, the others' mean, and whether own is the largest of the row."""
            own = delta[r][columns.index(lang)]
            others = [delta[r][c] for c, other in enumerate(columns) if other != lang]
            return own, statistics.fmean(others) if others else nan, bool(others) and own > max(others)

        randoms: dict[str, list[tuple[str, tuple[float, float, bool]]]] = {}
        for r, label in enumerate(res.rows):
            prefix, _, lang = label.partition(":")
            if prefix.startswith(RANDOM_PREFIX) and lang in res.languages:
                randoms.setdefault(lang, []).append((label, effect(r, lang)))
        for r, lang in enumerate(res.rows):
            if lang not in res.languages:
                continue
            own, others, hit = effect(r, lang)
            row = {"family": fam, "language": lang, "own_delta_nll": own, "others_delta_nll": others,
                   "own_hit_most": hit, **({"neurons_per_layer": per_layer[lang]} if lang in per_layer else {})}
            rows.append(row)
            draws = randoms.get(lang)
            if not draws:
                continue
            owns = [e[0] for _, e in draws]
            row["own_above_every_random"] = all(own > v for v in owns)
            rows.append({"family": f"random like {fam}", "random_of": fam, "language": lang,
                         "own_delta_nll": statistics.fmean(owns),
                         "others_delta_nll": statistics.fmean(e[1] for _, e in draws),
                         "own_hit_most": sum(e[2] for _, e in draws) > len(draws) / 2,  # in most draws
                         "draws": len(draws), "own_delta_nll_sd": statistics.stdev(owns) if len(owns) > 1 else nan,
                         **({"neurons_per_layer": per_layer[draws[0][0]]} if draws[0][0] in per_layer else {})})
    return rows


@dataclass
class MethodComparison(artifacts.Artifact):
    """The overlap and effect tables of the three families (tables ``overlap`` and ``effect``)."""

    overlap: list[dict[str, Any]]
    effect: list[dict[str, Any]]
    sizes: dict[str, dict[str, int]]
    meta: dict[str, Any] = field(default_factory=dict)

    KIND: ClassVar[str] = "method_comparison"
    DESCRIPTION: ClassVar[str] = "cross-method comparison"

    def payload(self) -> Any:
        return {"overlap": self.overlap, "effect": self.effect, "sizes": self.sizes}

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        return {"overlap": self.overlap, "effect": self.effect}

    @classmethod
    def _from_saved(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any], payload: Any) -> MethodComparison:
        return cls(list(payload["overlap"]), list(payload["effect"]), dict(payload["sizes"]), meta)


def compare_methods(families: Mapping[str, NeuronSets], languages: Sequence[str],
                    ppl_results: Mapping[str, Any] | None = None, meta: dict[str, Any] | None = None,
                    counts: Mapping[str, Mapping[str, list[int]]] | None = None) -> MethodComparison:
    """Overlaps (always) and effects (when perplexity matrices are given, with their random rows
    and, given ``counts``, the neurons per layer of every deactivated set) of the families."""
    sizes = {f: {lang: int(s.mask(lang).sum()) for lang in languages if lang in s.labels} for f, s in families.items()}
    return MethodComparison(family_overlaps(families, languages), family_effects(ppl_results or {}, counts), sizes,
                            dict(meta or {}))
