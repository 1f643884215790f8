"""Split-half stability of the linguistic regions: are the core and monolingual regions a property
of the model, or of the particular text their importance was accumulated on?

Each language's text is split into two disjoint halves (documents ``0, 2, 4, ...`` and
``1, 3, 5, ...``: :func:`load_halves`); importance (:func:`lape.regions.param_importance`) and regions
(:func:`lape.regions.select_regions`) are computed on each half with the same settings, and the
two halves' regions are compared label by label with the Jaccard similarity

    J = |A & B| / |A | B|

pooled over the tensors of one type (``mlp.down_proj.weight`` over every layer) and over all
tensors (type ``"all"``), i.e. the entry sets are joined before the ratio is taken.

**Chance.** Against it stands the expected Jaccard of two independent uniform draws with the
same sizes, per tensor ``a`` and ``b`` of its ``n`` entries. Their overlap ``X`` is
hypergeometric, ``P(X = x) = C(a, x) C(n - a, b - x) / C(n, b)``, and ``|A | B| = a + b - X``,
so ``E[J] = sum_x P(X = x) * x / (a + b - x)``. Pooled over tensors, the overlaps add
(independent draws per tensor, as the random region draws them), ``S = sum_t X_t``, and
``E[J] = sum_s P(S = s) * s / (A + B - s)`` with ``P(S)`` the convolution of the tensors'
hypergeometric laws (:func:`lape.intervals.overlap_law`). Both are computed exactly (tails below
1e-30 of a law's peak, which move no printed digit, are dropped). For two ``k``-of-``n`` draws the ratio of the expectations,
``E|A & B| / E|A | B| = k / (2n - k)``, is the familiar approximation; it is close to ``E[J]``
when ``k^2 / n`` is large and undershoots it for tiny tensors (``n = 4, k = 2``: 1/3 against
the exact 7/18). ``above_chance = (J - E[J]) / (1 - E[J])`` puts 0 at chance and 1 at identity.

The result is a :class:`RegionStability` (one row per label and tensor type).

Example:
    >>> halves = load_halves("builtin", tok, tokens_per_language=8192, seq_len=256, languages=["es", "ru"])
    >>> res = split_half_stability(model, halves, out="runs/demo/region-stability")
    >>> res.summary_line()
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from .. import artifacts
from ..corpora.identity import corpus_key
from ..errors import LapeError
from ..intervals import overlap_law
from ..masks import ParamRegions, mono_language
from .importance import ImportanceConfig, ParamImportance, param_importance
from .select import RegionConfig, select_regions

logger = logging.getLogger(__name__)
ALL = "all"  # the type of the row pooled over every tensor
_TAIL = 1e-30  # probabilities below this share of a law's peak are dropped


# --------------------------------------------------------------------------------------------
# chance


def chance_jaccard(parts: Iterable[tuple[int, int, int]]) -> float:
    """Expected Jaccard of two independent uniform draws, pooled over tensors.

    Args:
        parts: per tensor ``(n, a, b)``: its entries and the two sets' sizes in it.

    Returns:
        ``E[S / (A + B - S)]`` with ``S`` the summed overlaps, exactly (see the module
        docstring); NaN when both sets are empty everywhere.

    Example:
        >>> chance_jaccard([(4, 2, 2)])   # 4/6 * 1/3 + 1/6 * 1 = 7/18
        0.3888888888888889
    """
    parts = list(parts)
    total = sum(a + b for _, a, b in parts)
    try:
        start, law = overlap_law(parts, tail=_TAIL)
    except ValueError as err:
        raise LapeError(f"{err}: the sizes must fit their tensors") from None
    if total == 0:
        return math.nan
    s = np.arange(start, start + len(law), dtype=np.float64)
    return float((law * s / (total - s)).sum() / law.sum())  # s <= min(A, B), so the union is > 0


# --------------------------------------------------------------------------------------------
# comparing two regions


def region_agreement(a: ParamRegions, b: ParamRegions, labels: Sequence[str] | None = None,
                     types: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Per label and tensor type, how far two selections of the same regions agree.

    Args:
        a, b: regions of one model (e.g. from two halves of the text), over the same tensors.
        labels: labels to compare (default: ``core`` and every ``mono:`` label the two share).
        types: ``{tensor name: type}`` to pool by (e.g. ``mlp.down_proj.weight``); every tensor
            is also pooled into the type ``"all"``. Default: only ``"all"``.

    Returns:
        Rows ``{"label", "type", "tensors", "numel", "size_a", "size_b", "intersection",
        "union", "jaccard", "chance", "above_chance"}``: ``jaccard`` = intersection / union
        pooled over the type's tensors (NaN when both are empty), ``chance`` the exact expected
        Jaccard of random sets of the same sizes per tensor (:func:`chance_jaccard`).

    Raises:
        LapeError: regions over other tensors or shapes, or a label missing from either.

    Example:
        >>> rows = region_agreement(regions_half1, regions_half2, types={n: imp.param_info(n)["type"] for n in imp.scores})
    """
    if list(a.masks) != list(b.masks):
        raise LapeError("the two regions cover different tensors: select both from importances of the same "
                        "tensors (same model, same norms setting)")
    for name, m in a.masks.items():
        if m.shape[1:] != b.masks[name].shape[1:]:
            raise LapeError(f"{name} has shape {tuple(m.shape[1:])} in one regions and "
                            f"{tuple(b.masks[name].shape[1:])} in the other: compare regions of one model")
    if labels is None:
        labels = [lab for lab in a.labels if lab in b.labels and (lab == "core" or mono_language(lab))]
    labels = list(labels)
    missing = [lab for lab in labels if lab not in a.labels or lab not in b.labels]
    if missing or not labels:
        raise LapeError(f"label {missing[0] if missing else None!r} is not in both regions (they have "
                        f"{', '.join(a.labels)} and {', '.join(b.labels)}): compare labels both have")
    group_of = {name: [ALL] + ([types[name]] if types and name in types else []) for name in a.masks}
    order = [ALL, *dict.fromkeys(t for name in a.masks for t in group_of[name][1:])]
    rows = []
    for label in labels:
        ia, ib = a.labels.index(label), b.labels.index(label)
        acc: dict[str, dict[str, Any]] = {t: {"tensors": 0, "numel": 0, "size_a": 0, "size_b": 0,
                                              "intersection": 0, "union": 0, "parts": []} for t in order}
        for name, ma in a.masks.items():
            x, y = ma[ia], b.masks[name][ib]
            na, nb, inter = int(x.sum()), int(y.sum()), int((x & y).sum())
            for t in group_of[name]:
                g = acc[t]
                g["tensors"] += 1
                g["numel"] += x.numel()
                g["size_a"] += na
                g["size_b"] += nb
                g["intersection"] += inter
                g["union"] += na + nb - inter
                g["parts"].append((x.numel(), na, nb))
        for t in order:
            g = acc[t]
            parts = g.pop("parts")
            jac = g["intersection"] / g["union"] if g["union"] else math.nan
            chance = chance_jaccard(parts)
            above = (jac - chance) / (1 - chance) if chance < 1 else math.nan
            rows.append({"label": label, "type": t, **g, "jaccard": jac, "chance": chance, "above_chance": above})
    return rows


# --------------------------------------------------------------------------------------------
# the result


@dataclass
class RegionStability(artifacts.Artifact):
    """Split-half agreement of regions: the rows of :func:`region_agreement` with a sidecar
    naming both halves' importance and regions (``stability.csv`` beside it).

    Example:
        >>> res = RegionStability.load("runs/demo/region-stability")
        >>> [r["jaccard"] for r in res.overall()]
    """

    rows: list[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)

    KIND: ClassVar[str] = "region_stability"
    DESCRIPTION: ClassVar[str] = "split-half region stability"

    def overall(self) -> list[dict[str, Any]]:
        """The rows pooled over every tensor (type ``"all"``), one per label."""
        return [r for r in self.rows if r["type"] == ALL]

    def summary_line(self) -> str:
        parts = [f"{r['label']} {r['jaccard']:.3f} (chance {r['chance']:.4f})" for r in self.overall()]
        return "split-half Jaccard of the regions (all tensors): " + (", ".join(parts) or "no rows")

    def payload(self) -> Any:
        return self.rows

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        return {"stability": self.rows}

    @classmethod
    def _from_saved(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any], payload: Any) -> RegionStability:
        return cls([{k: (math.nan if v is None and k in ("jaccard", "chance", "above_chance") else v)
                     for k, v in r.items()} for r in payload or []], meta)

    def validate(self) -> None:
        for r in self.rows:
            j, c = r.get("jaccard"), r.get("chance")
            if any(v is not None and not math.isnan(v) and not 0 <= v <= 1 for v in (j, c)):
                raise LapeError("a Jaccard similarity lies outside [0, 1]: the artifact was edited or damaged; "
                                "re-run lape regions stability")


# --------------------------------------------------------------------------------------------
# the experiment


def load_halves(manifest: Any, tokenizer: Any, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two disjoint halves of each language's text: :func:`lape.load_corpus` with documents
    ``0, 2, 4, ...`` and ``1, 3, 5, ...`` of each split (``part=(0, 2)`` and ``(1, 2)``); the
    other arguments are :func:`lape.load_corpus`'s."""
    from ..corpora import load_corpus

    if "part" in kwargs:
        raise LapeError("load_halves sets part= itself: leave it out")
    return load_corpus(manifest, tokenizer, part=(0, 2), **kwargs), load_corpus(manifest, tokenizer, part=(1, 2), **kwargs)


def split_half_stability(
    model: torch.nn.Module,
    halves: Sequence[Mapping[str, Iterable[Any]]],
    importance_config: ImportanceConfig = ImportanceConfig(),
    region_config: RegionConfig = RegionConfig(),
    *,
    labels: Sequence[str] | None = None,
    out: str | Path | None = None,
    progress: bool = True,
) -> RegionStability:
    """Importance and regions on each of two disjoint halves of the text, and how far they agree.

    Args:
        model: a causal LM (unchanged).
        halves: two corpora ``{language: sequences}`` over the same languages and disjoint text
            (:func:`load_halves`).
        importance_config, region_config: the settings of both halves' importance and regions.
        labels: region labels to compare (default: ``core`` and every monolingual region).
        out: a folder for the result; each half's importance and regions go into
            ``out/half-1/importance``, ``out/half-1/regions``, ``out/half-2/...``, and every step
            made from the same inputs is returned from there without recomputation.
        progress: progress bars.

    Returns:
        :class:`RegionStability`, rows per label and tensor type (:func:`region_agreement`).

    Raises:
        LapeError: not two halves, halves over other languages, or the same text twice.

    Example:
        >>> res = split_half_stability(model, load_halves(manifest, tok, tokens_per_language=8192))
    """
    if len(halves) != 2:
        raise LapeError(f"split-half stability needs two halves of the text, got {len(halves)}: see load_halves")
    first, second = halves
    if list(first) != list(second):
        raise LapeError(f"the halves hold other languages ({', '.join(first)} and {', '.join(second)}): "
                        "load both halves with the same languages")
    same = [lang for lang in first if corpus_key(first[lang]) == corpus_key(second[lang])]
    if same:
        raise LapeError(f"the two halves of {same[0]!r} are the same text: give disjoint halves "
                        "(load_halves, or load_corpus with part=(0, 2) and (1, 2))")
    folder = Path(out) if out is not None else None
    imps: list[ParamImportance] = []
    regions: list[ParamRegions] = []
    for i, half in enumerate(halves, start=1):
        sub = folder / f"half-{i}" if folder is not None else None
        imp = param_importance(model, half, importance_config, out=sub / "importance" if sub else None, progress=progress)
        imps.append(imp)
        regions.append(select_regions(imp, region_config, out=sub / "regions" if sub else None))
    a, b = regions
    inputs = {"regions": [r.identity() for r in regions], "labels": list(labels) if labels is not None else None}
    fp = imps[0].meta.get("fingerprint") or {}
    key = artifacts.stage_key(RegionStability.KIND, model_fingerprint=fp, config={}, inputs=inputs)

    def compute() -> RegionStability:
        types = {name: imps[0].param_info(name)["type"] for name in a.masks}
        rows = region_agreement(a, b, labels, types)
        meta = artifacts.sidecar(
            RegionStability.KIND, model_id=imps[0].meta.get("model_id"), model_fingerprint=fp,
            num_layers=imps[0].meta.get("num_layers"), neurons_per_layer=imps[0].meta.get("neurons_per_layer"),
            languages=list(a.meta.get("languages") or imps[0].languages),
            token_counts={f"half-{i}:{lang}": n for i, imp in enumerate(imps, start=1)
                          for lang, n in (imp.meta.get("token_counts") or {}).items()},
            config={"importance": importance_config.to_dict(), "regions": region_config.to_dict()}, inputs=inputs,
            halves=[{"importance": imp.meta.get("config"), "corpus": (imp.meta.get("inputs") or {}).get("corpus")}
                    for imp in imps],
            method="split-half stability: importance and regions on two disjoint halves of each language's text, "
                   "Jaccard |A & B| / |A | B| pooled per tensor type",
            chance="exact expected Jaccard of independent uniform draws of the same sizes per tensor "
                   "(hypergeometric overlaps, convolved over tensors)")
        return RegionStability(rows, meta)

    result = artifacts.run_stage(RegionStability, out, key, compute)
    logger.info("[regions] %s", result.summary_line())
    return result
