"""Key-neuron selection: neuron attribution, inverse cluster attribution, common neurons
(Chen et al. 2024, steps 2-5; methods.md 4(b)).

From the attribution pass (:class:`~lape.keyneurons.attribute.KeyNeuronScores`), over the ``|C|``
questions processed together:

* ``na_q(n) = kept_q(n) / Z_q``: a question's above-threshold scores summed over templates,
  normalised by ``Z_q``. The default (``normaliser="abs"``) is **the sum of the absolute raw
  scores over all neurons**, defined whatever the signs. The paper's ``Z`` (§4.2,
  ``normaliser="all"``) is the signed sum, which by completeness equals ``P(a) - P(baseline)``
  summed over layers: near 0 where completeness fails (zero-baseline IG on Gemma 2/3) and of
  either sign where it holds, so it is an option, not the default. The released code divides by
  the sum over the kept neurons (``normaliser="kept"``). When the chosen ``Z_q <= 0`` the kept sum
  is used for that question, and the sidecar and the report count how often (``normaliser_fallbacks``);
* the question's cluster ``c_q`` is the support of ``kept_q``; ``count(n)`` the number of
  questions whose cluster holds ``n``; ``ica(n) = log(|C| / (count(n) + 1))``;
* **common neurons**: ``count(n) > int(u |C|)``;
* ``naica_q = na_q x ica``; per question the top ``v`` neurons with ``naica > 0``, then the
  common neurons are removed. The released code compares string keys with int lists, so its
  filter never removes anything; lape removes them (``exclude_common=False`` keeps them, the
  paper's "with common neurons" ablation; ``ica=False`` is "without ICA", plain NA).

Each cluster label's key neurons are the union over its questions, saved as
:class:`~lape.masks.NeuronSets` (the same files as LAPE's language neurons, so ``lape ppl``,
the plots and :func:`lape.intervene` take them) with a :class:`KeyNeuronMaps` beside them: the
accumulated ``naica`` per cluster (the paper's layer x neuron heatmap), the common neurons and
the cluster counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from .. import artifacts
from ..config import StageConfig, option
from ..errors import LapeError
from ..masks import NeuronSets
from .attribute import KeyNeuronScores

NORMALISERS = ("abs", "all", "kept")


@dataclass(frozen=True)
class SelectConfig(StageConfig):
    """Settings of :func:`select` (defaults: the paper's)."""

    top_v: int = option(20, min=1, max=1_000_000)  # key neurons kept per question before removing common ones
    common_share: float = option(0.3, gt=0.0, max=1.0)  # u: common when in more than int(u |C|) clusters
    ica: bool = True  # multiply by inverse cluster attribution (False: plain NA, the paper's ablation)
    exclude_common: bool = True  # remove common neurons (False: the paper's "with common neurons")
    normaliser: str = option("abs", choices=NORMALISERS)  # Z: all |raw scores| (defined when completeness
    # fails), all signed raw scores (the paper) or the kept ones (the released code)


@dataclass
class NaIca:
    """The selection's intermediate values over ``Q`` questions and a ``[L, N]`` neuron space.

    Attributes:
        naica: float32 ``[Q, L, N]`` final scores (``na`` when ``ica=False``).
        key: bool ``[Q, L, N]`` each question's key neurons.
        counts: int64 ``[L, N]`` questions whose cluster holds the neuron.
        ica: float32 ``[L, N]``.
        common: bool ``[L, N]``.
        fallbacks: questions whose ``Z`` was not positive (normalised by their kept sum).
    """

    naica: torch.Tensor
    key: torch.Tensor
    counts: torch.Tensor
    ica: torch.Tensor
    common: torch.Tensor
    fallbacks: int


def na_ica(kept: torch.Tensor, total: torch.Tensor, config: SelectConfig = SelectConfig(),
           abs_total: torch.Tensor | None = None) -> NaIca:
    """NA, ICA, common neurons and the top-``v`` key neurons of each question (module docstring).

    Args:
        kept: float ``[Q, L, N]`` above-threshold attribution summed over templates.
        total: float ``[Q]`` the sum of all raw scores of each question (the paper's ``Z``).
        abs_total: float ``[Q]`` the sum of all absolute raw scores (``Z`` of ``normaliser="abs"``).
    """
    if kept.dim() != 3 or total.shape != kept.shape[:1]:
        raise LapeError(f"na_ica needs kept [Q, layers, neurons] and total [Q]; got {tuple(kept.shape)} and "
                        f"{tuple(total.shape)}")
    n_q = kept.shape[0]
    kept = kept.float()
    support = kept > 0
    counts = support.sum(0)
    ica = torch.log(n_q / (counts.float() + 1.0))
    common = counts > int(n_q * config.common_share)
    kept_sum = kept.flatten(1).sum(1)
    if config.normaliser == "abs" and abs_total is None:
        raise LapeError("normaliser 'abs' needs the sum of absolute scores: re-run lape keyneurons attribute "
                        "(scores from an older lape lack it), or select with --normaliser all")
    z = {"all": total.float(), "kept": kept_sum,
         "abs": abs_total.float() if abs_total is not None else kept_sum}[config.normaliser]
    bad = z <= 0
    z = torch.where(bad, kept_sum, z).clamp(min=1e-30)
    na = kept / z[:, None, None]
    naica = na * ica if config.ica else na
    key = torch.zeros_like(support)
    flat = torch.where(support, naica, torch.zeros_like(naica)).flatten(1)
    for q in range(n_q):
        positive = int((flat[q] > 0).sum())
        if positive:
            top = flat[q].topk(min(config.top_v, positive)).indices
            key[q].view(-1)[top] = True
    if config.exclude_common:
        key &= ~common
    return NaIca(naica, key, counts, ica, common, int(bad.sum()) if config.normaliser != "kept" else 0)


@dataclass
class KeyNeuronMaps(artifacts.Artifact):
    """Beside a key-neuron selection: ``accumulated`` float32 ``[clusters, L, N]`` (positive
    ``naica`` summed over each cluster's questions), ``common`` bool ``[L, N]``, ``counts`` int64
    ``[L, N]``, ``per_question`` int64 ``[Q]`` key neurons per question."""

    clusters: list[str]
    accumulated: torch.Tensor
    common: torch.Tensor
    counts: torch.Tensor
    per_question: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    KIND: ClassVar[str] = "keyneuron_maps"
    DESCRIPTION: ClassVar[str] = "key-neuron maps"

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"accumulated": self.accumulated, "common": self.common, "counts": self.counts,
                "per_question": self.per_question}

    uids: list[str] = field(default_factory=list)  # the questions the selection was made from

    def payload(self) -> Any:
        return {"clusters": self.clusters, "uids": self.uids}

    @classmethod
    def _from_saved(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any], payload: Any) -> KeyNeuronMaps:
        return cls(list(payload["clusters"]), tensors["accumulated"], tensors["common"].bool(), tensors["counts"],
                   tensors["per_question"], meta, list(payload.get("uids", [])))


def plain_na_sets(scores: KeyNeuronScores, sets: NeuronSets) -> NeuronSets:
    """The plain-NA baseline of key-neuron sets: the same scores selected without ICA and with
    the common neurons kept (:func:`plain_na_config`), not saved."""
    return select(scores, plain_na_config(sets))[0]


def plain_na_config(sets: NeuronSets) -> SelectConfig:
    """The plain-NA ablation (no ICA, common neurons kept) of the selection that made ``sets``:
    its ``top_v`` and normaliser, so the baseline differs from the sets in the ICA step only."""
    made_by = sets.meta.get("config") or {}
    try:
        base = SelectConfig.from_dict(made_by)
    except LapeError:
        raise LapeError("these neuron sets were not made by key-neuron selection (lape keyneurons select): "
                        "the plain-NA baseline needs its settings; leave out --scores") from None
    return base.replace(ica=False, exclude_common=False)


def select(scores: KeyNeuronScores, config: SelectConfig = SelectConfig(), *, out: str | Path | None = None
           ) -> tuple[NeuronSets, KeyNeuronMaps]:
    """Key neurons per cluster from the attribution (module docstring); saved into ``out`` as
    ``neurons`` (a :class:`NeuronSets`, labels = clusters) and ``keyneuron_maps``."""
    inputs = {"scores": scores.identity()}
    key = artifacts.stage_key(NeuronSets.KIND, model_fingerprint=scores.meta.get("fingerprint"),
                              config={"keyneurons": config.key_dict()}, inputs=inputs)
    if out is not None and artifacts.exists(out, KeyNeuronMaps.KIND):
        sets = artifacts.reuse(NeuronSets, out, key)
        if sets is not None:
            maps = KeyNeuronMaps.load(out)
            maps.from_cache = True  # type: ignore[attr-defined]
            return sets, maps
    clusters = scores.clusters
    kept = torch.cat([scores.get(c, "kept") for c in clusters])
    total = torch.cat([scores.get(c, "total") for c in clusters])
    abs_total = (torch.cat([scores.get(c, "abs_total") for c in clusters])
                 if all(f"{c}/abs_total" in scores.tensors_ for c in clusters) else None)
    owner = torch.cat([torch.full((len(scores.uids[c]),), k) for k, c in enumerate(clusters)])
    res = na_ica(kept, total, config, abs_total)
    masks = torch.stack([res.key[owner == k].any(0) for k in range(len(clusters))])
    positive = torch.where(kept > 0, res.naica.clamp(min=0), torch.zeros_like(res.naica))
    accumulated = torch.stack([positive[owner == k].sum(0) for k in range(len(clusters))])
    per_question = res.key.flatten(1).sum(1)
    mean_per_cluster = {c: round(float(per_question[owner == k].float().mean()), 2) for k, c in enumerate(clusters)}
    fields = {k: scores.meta.get(k) for k in ("model_id", "fingerprint", "num_layers", "neurons_per_layer")}
    meta = artifacts.sidecar(NeuronSets.KIND, languages=clusters, config=config.to_dict(), inputs=inputs,
                             method="key neurons (Chen et al. 2024, NA-ICA)" if config.ica else "key neurons, NA only",
                             key_neurons_per_question=mean_per_cluster, common_neurons=int(res.common.sum()),
                             questions=int(kept.shape[0]), normaliser=config.normaliser,
                             normaliser_fallbacks=res.fallbacks, cache_key=key,
                             attribution=scores.meta.get("method"), completeness=scores.meta.get("completeness"),
                             source_scores=scores.identity(),
                             **{k: v for k, v in fields.items() if v is not None})
    sets = NeuronSets(list(clusters), masks, meta)
    maps = KeyNeuronMaps(list(clusters), accumulated, res.common, res.counts, per_question,
                         {**meta, "format": f"lape.{KeyNeuronMaps.KIND}"}, [u for c in clusters for u in scores.uids[c]])
    if out is not None:
        maps.save(out)
        sets.save(out)
    sets.from_cache = maps.from_cache = False  # type: ignore[attr-defined]
    return sets, maps
