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

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from .errors import LapeError
from .neurons import NeuronSets
from .record import ActivationStats

METHODS = ("lape", "lave", "lap", "random")


@dataclass(frozen=True)
class IdentifyConfig:
    """Settings of :func:`identify`; defaults are the paper's (`identify.py`)."""

    method: str = "lape"  # lape | lave | lap | random
    top_rate: float = 0.01  # share of all neurons kept by lowest entropy (paper: 1%)
    filter_rate: float = 0.95  # percentile of all probabilities a neuron must pass in some language
    activation_bar_ratio: float = 0.95  # percentile a kept neuron must pass to join a language
    seed: int = 0  # for the random baseline

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise LapeError(f"unknown identification method {self.method!r}: use one of {', '.join(METHODS)}")
        for name in ("top_rate", "filter_rate", "activation_bar_ratio"):
            v = getattr(self, name)
            if not 0.0 < v < 1.0:
                raise LapeError(f"{name} must be between 0 and 1 (exclusive), got {v}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IdentifyConfig:
        known = {f.name for f in fields(cls)}
        if set(d) - known:
            raise LapeError(f"unknown identify setting(s) {sorted(set(d) - known)}: allowed are {sorted(known)}")
        return cls(**d)


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


def _random_like(masks: torch.Tensor, seed: int) -> torch.Tensor:
    """Per label and layer, as many random neurons as ``masks`` has there."""
    gen = torch.Generator().manual_seed(seed)
    out = torch.zeros_like(masks)
    for i in range(masks.shape[0]):
        for layer in range(masks.shape[1]):
            n = int(masks[i, layer].sum())
            if n:
                out[i, layer, torch.randperm(masks.shape[2], generator=gen)[:n]] = True
    return out


def random_like(sets: NeuronSets, seed: int = 0) -> NeuronSets:
    """A random control: per label, as many neurons in each layer as ``sets`` has, seeded."""
    meta = {**sets.meta, "method": "random", "seed": seed, "random_of": sets.meta.get("method")}
    return NeuronSets(list(sets.labels), _random_like(sets.masks, seed), meta)


def identify(stats: ActivationStats, config: IdentifyConfig = IdentifyConfig()) -> NeuronSets:
    """Select language-specific neurons.

    Args:
        stats: per-language statistics from :func:`lape.record`.
        config: method and thresholds (paper defaults).

    Returns:
        :class:`NeuronSets` labelled by ``stats.languages``; ``meta`` holds the thresholds and
        the source stats' model fingerprint.

    Example:
        >>> sets = identify(stats)                       # LAPE, top 1%
        >>> sets.counts()["fr"]
    """
    if len(stats.languages) < 2:
        raise LapeError("language-specific neurons need at least two languages: record more languages")
    empty = [lang for lang, n in zip(stats.languages, stats.token_counts.tolist()) if n == 0]
    if empty:
        raise LapeError(f"language(s) {', '.join(empty)} have no recorded tokens: re-record with text for them")
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
        masks = _random_like(lape_masks, config.seed)
    meta = {
        "method": config.method, "config": config.to_dict(), "thresholds": thresholds,
        "model_id": stats.meta.get("model_id"), "fingerprint": stats.meta.get("fingerprint", {}),
        "source_stats": {"cache_key": stats.meta.get("cache_key"),
                         "token_counts": dict(zip(stats.languages, stats.token_counts.tolist()))},
        "languages": list(stats.languages),
    }
    return NeuronSets(list(stats.languages), masks, meta)


def language_agnostic(stats: ActivationStats, min_probability: float | None = None,
                      activation_bar_ratio: float = 0.95) -> NeuronSets:
    """Neurons that fire with high probability in *every* language (label ``"all"``).

    Args:
        min_probability: the bar every language must pass; default the ``activation_bar_ratio``
            percentile of all probabilities (the same bar LAPE uses for membership).
    """
    probs = stats.probabilities()
    bar = kth_quantile(probs, activation_bar_ratio) if min_probability is None else min_probability
    mask = (probs > bar).all(0)
    meta = {"method": "agnostic", "threshold": bar, "model_id": stats.meta.get("model_id"),
            "fingerprint": stats.meta.get("fingerprint", {})}
    return NeuronSets(["all"], mask.unsqueeze(0), meta)
