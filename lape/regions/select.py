"""Linguistic regions from per-language importance (Zhang et al., ACL 2024, steps 2-3;
`extract_accumulated_core_linguistic_region.py`, `extract_accumulated_monolingual_region.py`).

Every selection is **per tensor**: ``k = max(1, floor(top_rate * numel))`` entries of each
decoder-block tensor (the reference takes ``int(0.01 * numel)``; the ``max(1, .)`` only matters
for tensors under ``1 / top_rate`` entries, which would otherwise get none). With ``S_l`` the
signed importance of language ``l`` (:mod:`lape.regions.importance`):

* ``core``: the ``k`` largest entries of ``A = sum_l |S_l|``, absolute values summed over
  languages as in the reference code (not ``|sum_l S_l|``: opposite signs in two languages do
  not cancel). It is the top of the summed importance, not an intersection of language sets;
* ``bottom``: the ``k`` smallest entries of the same ``A`` (a control, mostly near-zero scores);
* ``random``: ``k`` entries drawn uniformly without replacement, from a generator seeded by
  ``(seed, tensor name)``, so a tensor's draw does not depend on which other tensors are selected;
* ``mono:xx``: ``Top_k(|S_xx|)`` minus the union of ``Top_k(|S_o|)`` over every other selected
  language ``o`` (its top entries that are in no other language's top set).

Ties are broken by the lower flat index (row-major), as a stable sort would, so a selection is
reproducible whatever the platform; ``torch.topk`` breaks them arbitrarily.

The sidecar records region sizes per tensor type and layer (``meta["sizes"]``) and the tensor
sizes (``meta["numel"]``); ``sizes.csv`` beside it lists the same per tensor.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import artifacts
from ..config import StageConfig, option
from ..errors import LapeError
from ..masks import ParamRegions, mono_label
from .importance import ParamImportance

logger = logging.getLogger(__name__)
CONTROLS = ("core", "bottom", "random")


@dataclass(frozen=True)
class RegionConfig(StageConfig):
    """Settings of :func:`select_regions`; defaults are the paper's released scripts."""

    top_rate: float = option(0.01, gt=0.0, max=0.5)  # share of each tensor per region (paper: 1%);
    # above a half, core and bottom would share entries
    seed: int = option(0, min=0)  # for the random region (paper: 1234 with random.sample)
    norms: bool = True  # select inside the blocks' norm weights too (the paper's selection does;
    # its freezing leaves them out)
    languages: tuple[str, ...] | None = None  # languages summed for core and given a mono region;
    # None: all of the importance's (the paper uses six)


def region_size(top_rate: float, numel: int) -> int:
    """``max(1, floor(top_rate * numel))``, the floor guarded against ``0.29 * 100 = 28.99...``."""
    return min(numel, max(1, math.floor(top_rate * numel + 1e-9)))


def extreme_mask(values: torch.Tensor, k: int, largest: bool = True) -> torch.Tensor:
    """Bool mask of the ``k`` largest (or smallest) entries of a 1-D tensor, ties going to the
    lower index (the first ``k`` of a stable sort), in O(numel) with ``kthvalue``."""
    n = values.numel()
    if not 0 < k <= n:
        raise LapeError(f"cannot select {k} of {n} entries: k must be in [1, {n}]")
    v = values.kthvalue(n - k + 1 if largest else k).values
    mask = values > v if largest else values < v
    need = k - int(mask.sum())
    mask[(values == v).nonzero().squeeze(1)[:need]] = True
    return mask


def _seed_for(seed: int, name: str) -> int:
    return int(hashlib.sha256(f"lape.regions:{seed}:{name}".encode()).hexdigest()[:15], 16)


def random_mask(numel: int, k: int, seed: int, name: str) -> torch.Tensor:
    """Bool mask of ``k`` of ``numel`` entries drawn uniformly without replacement, seeded by
    ``(seed, name)``."""
    g = torch.Generator().manual_seed(_seed_for(seed, name))
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[torch.randperm(numel, generator=g)[:k]] = True
    return mask


def tensor_regions(scores: torch.Tensor, top_rate: float, seed: int, name: str) -> torch.Tensor:
    """The regions of one tensor: bool ``[3 + languages, *shape]`` in the order core, bottom,
    random, then one monolingual region per language (axis 0 of ``scores``).

    Args:
        scores: signed importance ``[languages, *shape]``.
    """
    n_lang, numel = scores.shape[0], scores[0].numel()
    k = region_size(top_rate, numel)
    total = torch.zeros(numel, dtype=torch.float64)  # A = sum_l |S_l|, added in language order
    tops = torch.zeros(n_lang, numel, dtype=torch.bool)
    for i in range(n_lang):  # one language's |S| at a time: memory of one tensor, not L
        a = scores[i].reshape(-1).abs()
        total += a
        tops[i] = extreme_mask(a, k)
    hits = tops.sum(0)  # in how many languages' top sets each entry is
    mono = tops & (hits == 1)  # in its own top set and in no other
    rows = [extreme_mask(total, k), extreme_mask(total, k, largest=False), random_mask(numel, k, seed, name)]
    return torch.cat([torch.stack(rows), mono]).reshape(3 + n_lang, *scores.shape[1:])


def select_regions(imp: ParamImportance, config: RegionConfig = RegionConfig(), *,
                   out: str | Path | None = None) -> ParamRegions:
    """Core, bottom, random and monolingual regions of every tensor of an importance.

    Args:
        imp: per-language signed importance (:func:`lape.regions.param_importance`, or built by hand).
        config: region size, seed, norms, languages.
        out: a folder to write ``regions`` into; a complete artifact made from the same
            importance and settings is returned without recomputation.

    Returns:
        :class:`ParamRegions` with labels ``core``, ``bottom``, ``random``, ``mono:xx`` per
        language, and masks ``{tensor name: bool [labels, *shape]}``.

    Raises:
        LapeError: a language not in the importance, or no tensor left to select in.

    Example:
        >>> regions = select_regions(imp, RegionConfig(top_rate=0.01))
        >>> with lape.weights.edit_weights(model, regions.mask("core")):
        ...     ...   # the core region set to zero
    """
    languages = list(config.languages) if config.languages is not None else list(imp.languages)
    if not languages:
        raise LapeError("languages=() names no language: leave it None for every language of the importance")
    idx = [imp.index(lang) for lang in languages]  # refuses an unknown language
    names = [n for n in imp.scores if config.norms or not imp.param_info(n)["is_norm"]]
    if not names:
        raise LapeError("no tensor to select in: the importance holds only norm weights; use norms=True")
    config = config.replace(languages=tuple(languages))
    fp = imp.meta.get("fingerprint") or {}
    inputs = {"importance": imp.identity()}
    key = artifacts.stage_key(ParamRegions.KIND, model_fingerprint=fp, config=config.key_dict(), inputs=inputs)

    def compute() -> ParamRegions:
        params = imp.meta.get("params") or {}
        if any(p.get("is_norm") and "norm_scale" not in p for p in params.values()):
            logger.warning("this importance scores norm weights as theta * G (made before lape's removal-matched "
                           "estimate): for x * (1 + w) norms (Gemma) that is not the removal's effect; re-run the "
                           "importance step")
        batches = {lang: (imp.meta.get("batches") or {}).get(lang) for lang in languages}
        if None not in batches.values() and max(batches.values()) > 1.1 * min(batches.values()):
            logger.warning("languages were scored on different numbers of batches (%s): scores are sums over "
                           "batches, so core leans towards the larger ones; give every language the same budget",
                           batches)
        labels = [*CONTROLS, *(mono_label(lang) for lang in languages)]
        masks = {n: tensor_regions(imp.scores[n][idx], config.top_rate, config.seed, n) for n in names}
        regions = ParamRegions(labels, masks)
        regions.meta = artifacts.sidecar(
            ParamRegions.KIND, model_id=imp.meta.get("model_id"), model_fingerprint=fp,
            num_layers=imp.meta.get("num_layers"), neurons_per_layer=imp.meta.get("neurons_per_layer"),
            languages=languages, token_counts={lang: (imp.meta.get("token_counts") or {}).get(lang) for lang in languages},
            config=config.to_dict(), inputs=inputs,
            method="linguistic regions (Zhang et al. 2024): per-tensor top/bottom/random of sum_l |theta * G_l|, "
                   "monolingual = own top minus the other languages' tops",
            score="sum over languages of |S_l|", region_size="max(1, floor(top_rate * numel)) per tensor",
            ties="lower flat index first", **_sizes(imp, regions))
        return regions

    regions = artifacts.run_stage(ParamRegions, out, key, compute)
    if out is not None and not regions.from_cache:  # type: ignore[attr-defined]
        artifacts.write_table(Path(out) / "sizes", size_rows(imp, regions))
    return regions


def _sizes(imp: ParamImportance, regions: ParamRegions) -> dict[str, Any]:
    """``sizes[label][type][layer]`` (members) and ``numel[type][layer]`` for the sidecar."""
    sizes: dict[str, dict[str, dict[str, int]]] = {lab: {} for lab in regions.labels}
    numel: dict[str, dict[str, int]] = {}
    for row in size_rows(imp, regions):
        layer = str(row["layer"])
        numel.setdefault(row["type"], {})[layer] = row["numel"]
        sizes[row["label"]].setdefault(row["type"], {})[layer] = row["count"]
    return {"sizes": sizes, "numel": numel}


def size_rows(imp: ParamImportance, regions: ParamRegions) -> list[dict[str, Any]]:
    """One row per (label, tensor): layer, type, tensor size, members and share."""
    rows = []
    for k, label in enumerate(regions.labels):
        for name, m in regions.masks.items():
            info = imp.param_info(name)
            count, size = int(m[k].sum()), m[k].numel()
            rows.append({"label": label, "tensor": name, "layer": info["layer"], "type": info["type"],
                         "numel": size, "count": count, "share": count / size})
    return rows
