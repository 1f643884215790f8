"""One neuron space, three methods: how LAPE language neurons, key neurons of the language
clusters and the neuron view of the linguistic regions agree, and what switching each off does.

**Overlap.** For a language and two families' sets ``A`` and ``B``: ``|A & B|`` next to its
chance value, the expected overlap of two random sets with the same number of neurons per layer,
``sum_layer |A_layer| |B_layer| / neurons_per_layer``; ``enrichment = observed / chance``.

**Effect.** Each family's sets are deactivated language by language on the same held-out text
(:func:`lape.evaluate.perplexity.ppl_matrix`): the NLL change of the set's own language next to
the mean change of the other languages.

**Region neurons.** A weight region is turned into neurons by its neuron view
(:meth:`lape.masks.ParamRegions.to_neuron_sets`): neurons with at least ``min_share`` of their
own weights (gate and up rows, down column) in the language's monolingual region.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from .. import artifacts
from ..errors import LapeError
from ..masks import NeuronSets

MONO_PREFIX = "mono:"


def region_neuron_sets(regions: Any, space: Any, min_share: float) -> NeuronSets:
    """The monolingual regions' neuron view, labelled by language (``mono:fr`` -> ``fr``)."""
    langs = [lab for lab in regions.labels if lab.startswith(MONO_PREFIX)]
    if not langs:
        raise LapeError("the regions hold no monolingual region (mono:LANG): select regions with languages first")
    view = regions.subset(langs).to_neuron_sets(space, min_share)
    return NeuronSets([lab[len(MONO_PREFIX):] for lab in langs], view.masks,
                      {**view.meta, "min_share": min_share})


def chance_overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """Expected ``|A & B|`` of random sets with the per-layer counts of masks ``a`` and ``b`` ``[L, N]``."""
    width = a.shape[1]
    return float((a.sum(1).double() * b.sum(1).double()).sum() / width)


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
                rows.append({"language": lang, "a": fa, "b": fb, "size_a": int(a.sum()), "size_b": int(b.sum()),
                             "overlap": both, "chance": chance,
                             "enrichment": both / chance if chance > 0 else float("nan")})
    return rows


def family_effects(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """From one perplexity matrix per family: per (family, language) the own and the other
    languages' mean NLL change when the family's set for that language is switched off."""
    rows = []
    for fam, res in results.items():
        delta = res.delta_nll()
        for r, lang in enumerate(res.rows):
            if lang not in res.languages:
                continue
            own = delta[r][res.languages.index(lang)]
            others = [delta[r][c] for c, other in enumerate(res.languages) if other != lang]
            rows.append({"family": fam, "language": lang, "own_delta_nll": own,
                         "others_delta_nll": sum(others) / len(others) if others else float("nan"),
                         "own_hit_most": bool(others) and own > max(others)})
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
                    ppl_results: Mapping[str, Any] | None = None, meta: dict[str, Any] | None = None
                    ) -> MethodComparison:
    """Overlaps (always) and effects (when perplexity matrices are given) of the families."""
    sizes = {f: {lang: int(s.mask(lang).sum()) for lang in languages if lang in s.labels} for f, s in families.items()}
    return MethodComparison(family_overlaps(families, languages), family_effects(ppl_results or {}), sizes,
                            dict(meta or {}))
