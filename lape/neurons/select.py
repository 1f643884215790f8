"""Select language-specific neurons from activation statistics (Tang et al., ACL 2024, §2).

LAPE, as in the paper and its `identify.py`:

1. ``p[k, l, j] = fire_counts / token_counts``                        (activation probability)
2. ``p'[k, l, j] = p / sum_k p``  (0 where a neuron never fires)     (normalised over languages)
3. ``H[l, j] = - sum_k p' log p'``  with ``0 log 0 = 0``              (entropy, natural log)
4. ``tau`` = the ``round(filter_rate * K*L*N)``-th smallest of all ``p`` (95th percentile);
   a neuron with no language ``p > tau`` is excluded (``H = +inf``), so dead neurons are not picked.
5. keep the ``round(top_rate * L*N)`` neurons of lowest ``H``, globally over layers;
6. a kept neuron belongs to every language ``k`` with ``p[k] > tau_bar`` (the
   ``activation_bar_ratio`` percentile, 0.95 like ``filter_rate``), so one neuron can serve several.

Baselines: ``lave`` (the same entropy over mean positive activation values ``E[max(act, 0)]``
instead of probabilities), ``lap`` (per language, the neurons with the highest activation
probability), ``random`` (per language, as many neurons per layer as LAPE gave it, seeded).
:func:`language_agnostic` gives the other side: neurons that fire often in every language.

All functions are pure: ``ActivationStats`` in, :class:`NeuronSets` out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import artifacts
from ..config import StageConfig, option
from ..errors import LapeError
from ..masks import NeuronSets, random_like_mask
from .stats import ActivationStats

logger = logging.getLogger(__name__)
METHODS = ("lape", "lave", "lap", "random")


@dataclass(frozen=True)
class IdentifyConfig(StageConfig):
    """Settings of :func:`identify`; defaults are the paper's (`identify.py`)."""

    method: str = option("lape", choices=METHODS)  # lape | lave | lap | random
    top_rate: float = option(0.01, gt=0.0, max=0.999)  # share of all neurons kept by lowest entropy (paper: 1%)
    filter_rate: float = option(0.95, gt=0.0, max=0.999)  # percentile of all probabilities a neuron must pass in some language
    activation_bar_ratio: float = option(0.95, gt=0.0, max=0.999)  # percentile a kept neuron must pass to join a language
    seed: int = option(0, min=0)  # for the random baseline
    min_tokens: int = option(100, min=1)  # fewer counted tokens make a language's probabilities meaningless


def kth_quantile(values: torch.Tensor, rate: float) -> float:
    """The ``round(rate * numel)``-th smallest value (1-based, as ``torch.kthvalue`` in the paper)."""
    flat = values.reshape(-1)
    k = min(max(round(rate * flat.numel()), 1), flat.numel())
    return float(flat.kthvalue(k).values)


def normalized_entropy_input(values: torch.Tensor) -> torch.Tensor:
    """``values / sum over languages`` (axis 0), with 0 where the sum is 0."""
    total = values.sum(0, keepdim=True)
    return torch.where(total > 0, values / total.clamp(min=torch.finfo(values.dtype).tiny), 0.0)


def lape_entropy(values: torch.Tensor) -> torch.Tensor:
    """Entropy over languages of a non-negative ``[languages, layers, neurons]`` tensor.

    Returns:
        float64 ``[layers, neurons]``: ``-sum_k p'_k log p'_k`` with ``p' = values / sum_k values``
        and ``0 log 0 = 0`` (a neuron that never fires has entropy 0; :func:`select_by_entropy`
        excludes it with the pre-filter).
    """
    p = normalized_entropy_input(values.to(torch.float64))
    return -torch.where(p > 0, p * p.log(), 0.0).sum(0)


def select_by_entropy(values: torch.Tensor, top_rate: float = 0.01, filter_rate: float = 0.95,
                      activation_bar_ratio: float = 0.95) -> tuple[torch.Tensor, dict[str, float]]:
    """LAPE steps 2-6 on ``values`` ``[languages, layers, neurons]`` (probabilities for LAPE).

    Returns:
        ``(masks, thresholds)``: bool ``[languages, layers, neurons]`` and the thresholds used.
    """
    values = values.to(torch.float64)
    k, layers, neurons = values.shape
    entropy = lape_entropy(values)
    tau_filter = kth_quantile(values, filter_rate)
    tau_bar = kth_quantile(values, activation_bar_ratio)
    entropy = torch.where((values > tau_filter).any(0), entropy, torch.inf)
    n_keep = round(top_rate * layers * neurons)
    # stable order: ties in entropy go to the lower (layer, index), as a sort would
    order = torch.sort(entropy.reshape(-1), stable=True).indices[:n_keep]
    selected = torch.zeros(layers * neurons, dtype=torch.bool)
    selected[order] = True
    selected = selected.view(layers, neurons)
    masks = selected.unsqueeze(0) & (values > tau_bar)
    return masks, {"tau_filter": tau_filter, "tau_bar": tau_bar, "selected": int(n_keep),
                   "selected_without_language": int((selected & ~masks.any(0)).sum())}


def _top_per_language(values: torch.Tensor, counts: list[int]) -> torch.Tensor:
    masks = torch.zeros(values.shape, dtype=torch.bool)
    for i, n in enumerate(counts):
        idx = torch.sort(values[i].reshape(-1), descending=True, stable=True).indices[:n]
        masks[i].view(-1)[idx] = True
    return masks


def random_like(sets: NeuronSets, seed: int = 0) -> NeuronSets:
    """A random control: per label, as many neurons in each layer as ``sets`` has, seeded."""
    meta = {**sets.meta, "method": "random", "seed": seed, "random_of": sets.meta.get("method")}
    return NeuronSets(list(sets.labels), random_like_mask(sets.masks, torch.Generator().manual_seed(seed)), meta)


FEW_TOKENS = 2000  # below this a language's probabilities are noisy: identify warns


def check_token_counts(stats: ActivationStats, min_tokens: int = 100) -> list[str]:
    """Refuse languages with too few counted tokens; return warnings for doubtful ones."""
    if len(stats.languages) < 2:
        raise LapeError("language-specific neurons need at least two languages: record more languages")
    warnings = []
    for lang, n in zip(stats.languages, stats.token_counts.tolist()):
        if n < min_tokens:
            raise LapeError(f"language {lang!r} has only {n} recorded tokens (at least {min_tokens} are needed "
                            "for firing probabilities): re-record it with more text, or leave it out with --languages")
        elif n < FEW_TOKENS:
            warnings.append(f"{lang} has only {n} recorded tokens: its firing probabilities are noisy "
                            f"(record at least {FEW_TOKENS})")
    for w in warnings:
        logger.warning(w)
    return warnings


def identify(stats: ActivationStats, config: IdentifyConfig = IdentifyConfig(), *,
             out: str | Path | None = None) -> NeuronSets:
    """Select language-specific neurons.

    Args:
        stats: per-language statistics from :func:`lape.record`.
        config: method and thresholds (paper defaults).
        out: a folder to save the sets into; sets already there made from the same stats and
            settings are returned without recomputation. Beside it, ``OUT-agnostic`` receives the
            language-agnostic neurons of the same stats (:func:`language_agnostic`).

    Returns:
        :class:`NeuronSets` labelled by ``stats.languages``; ``meta`` holds the thresholds, the
        source stats' identity and model fingerprint, and any warnings.

    Example:
        >>> sets = identify(stats)                       # LAPE, top 1%
        >>> sets.counts()["fr"]
    """
    warnings = check_token_counts(stats, config.min_tokens)
    inputs = {"stats": stats.identity(), "languages": list(stats.languages)}
    key = artifacts.stage_key(NeuronSets.KIND, model_fingerprint=stats.meta.get("fingerprint"),
                              config=config.key_dict(), inputs=inputs)

    def compute() -> NeuronSets:
        probs = stats.probabilities()
        args = (config.top_rate, config.filter_rate, config.activation_bar_ratio)
        lape_masks, thresholds = select_by_entropy(probs, *args)
        if config.method == "lape":
            masks = lape_masks
        elif config.method == "lave":
            masks, thresholds = select_by_entropy(stats.mean_positive_activation(), *args)
        elif config.method == "lap":
            masks = _top_per_language(probs, lape_masks.sum((1, 2)).tolist())
        else:
            masks = random_like_mask(lape_masks, torch.Generator().manual_seed(config.seed))
        meta = artifacts.sidecar(
            NeuronSets.KIND, model_id=stats.meta.get("model_id"), model_fingerprint=stats.meta.get("fingerprint"),
            num_layers=stats.shape[0], neurons_per_layer=stats.shape[1], languages=list(stats.languages),
            token_counts=dict(zip(stats.languages, stats.token_counts.tolist())), config=config.to_dict(),
            inputs=inputs, method=config.method, thresholds=thresholds, warnings=warnings)
        return NeuronSets(list(stats.languages), masks, meta)

    sets = artifacts.run_stage(NeuronSets, out, key, compute)
    if out is not None:
        language_agnostic(stats, out=agnostic_folder(out))
    return sets


def agnostic_folder(neurons: str | Path) -> Path:
    """Where :func:`identify` puts the language-agnostic set beside the sets in ``neurons``."""
    neurons = Path(neurons)
    return neurons.with_name(neurons.name + "-agnostic")


def language_agnostic(stats: ActivationStats, min_probability: float | None = None,
                      activation_bar_ratio: float = 0.95, *, out: str | Path | None = None) -> NeuronSets:
    """Neurons that fire with high probability in *every* language (label ``"all"``).

    Args:
        min_probability: the bar every language must pass; default the ``activation_bar_ratio``
            percentile of all probabilities (the same bar LAPE uses for membership).
        out: a folder to save the set into; a set there made from the same stats and bar is
            returned without recomputation.
    """
    settings = {"min_probability": min_probability, "activation_bar_ratio": activation_bar_ratio}
    inputs = {"stats": stats.identity()}
    key = artifacts.stage_key(NeuronSets.KIND, model_fingerprint=stats.meta.get("fingerprint"),
                              config={"method": "agnostic", **settings}, inputs=inputs)

    def compute() -> NeuronSets:
        probs = stats.probabilities()
        bar = kth_quantile(probs, activation_bar_ratio) if min_probability is None else min_probability
        mask = (probs > bar).all(0)
        meta = artifacts.sidecar(
            NeuronSets.KIND, model_id=stats.meta.get("model_id"), model_fingerprint=stats.meta.get("fingerprint"),
            num_layers=stats.shape[0], neurons_per_layer=stats.shape[1], languages=list(stats.languages),
            config=settings, inputs=inputs, method="agnostic", threshold=bar)
        return NeuronSets(["all"], mask.unsqueeze(0), meta)

    return artifacts.run_stage(NeuronSets, out, key, compute)
