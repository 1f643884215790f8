"""Removing linguistic regions: per-language perplexity with a region's weights removed
(Zhang et al., ACL 2024, step 4; the paper's evaluation script is not released).

For every row (a region label of a :class:`~lape.masks.ParamRegions`, or an extra named mask
such as the core region with its massive-dimension entries kept) the region's entries are
removed with :func:`lape.weights.edit_weights`, every language of the held-out corpus is
evaluated, and the weights are put back bit-exactly (also after an exception or Ctrl-C).

**Removal** is ``op="remove"`` by default: entries set to 0, except the weights of norms that
compute ``x * (1 + w)`` (Gemma 1-3 RMSNorm), which are set to -1 so that their scale becomes 0
as for every other architecture (zeroing ``w`` would leave the scale at 1 and remove nothing).
``op="zero"`` writes 0 everywhere, the released code's literal ``param[mask] = 0``.

The result is a :class:`RegionPerplexity`, a perplexity matrix whose rows are regions:

* the controls ``core`` / ``random`` / ``bottom`` against every language
  (:meth:`RegionPerplexity.control_summary`: PPL ratio to the unmodified model);
* ``core-matrices`` / ``bottom-matrices`` / ``random-matrices``: the same regions without their
  norm entries (the weights of the blocks' norms, :attr:`lape.space.ParamInfo.is_norm`), added by
  default wherever a region holds both norm and other entries. A norm scale multiplies a whole
  channel (Gemma 3 270M's reach 100-741), so a 1% region's few norm entries can carry most of
  its removal's effect; the pair says how much (:meth:`RegionPerplexity.matrices_summary`).
  Linear-layer biases (GPT-2, BLOOM) are not norm entries and stay in the ``-matrices`` rows;
* the monolingual regions ``mono:xx`` as a language x language matrix with the row test
  (is a region's own language hit hardest in its row?) and the column test (is each language
  hurt most by its own region, among the monolingual rows?), from the shared
  :class:`~lape.evaluate.perplexity.PerplexityResult`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from .. import artifacts
from ..config import StageConfig, option
from ..corpora.identity import check_corpus, corpus_key
from ..errors import LapeError
from ..evaluate.perplexity import LanguageNLL, PerplexityConfig, PerplexityResult
from ..fingerprint import fingerprint
from ..intervals import geomean_interval
from ..masks import ParamRegions, mono_language
from ..models import check_positions
from ..space import ParamSpace
from ..weights import edit_weights
from .massive import MassiveDims, residual_axes, without_dims

logger = logging.getLogger(__name__)
MATRICES = "-matrices"  # row suffix: the region without its norm entries
MATRIX_ROWS = ("core", "bottom", "random")  # regions that get a -matrices row by default


@dataclass(frozen=True)
class AblateConfig(StageConfig):
    """Settings of :func:`ablate_regions`."""

    tokens_per_language: int = option(2048, gt=0)  # held-out tokens per language
    seq_len: int = option(256, min=2, max=1 << 16)  # packed sequence length
    batch_size: int = option(4, min=1, max=4096)  # sequences per forward pass
    chunk_size: int = option(512, min=1, key=False)  # positions whose vocabulary logits exist at once
    seed: int = option(0, min=0)  # corpus shuffling
    split: str = "valid"  # held-out split
    op: str = option("remove", choices=("remove", "zero"))  # remove: 0, or -1 for x*(1+w) norm weights; zero: 0


@dataclass
class RegionPerplexity(PerplexityResult):
    """Mean NLL per language, unmodified and with each region removed (rows: regions).

    ``random_nll`` is all NaN: the random control is a row of its own (``random``).
    """

    KIND: ClassVar[str] = "region_ppl"
    DESCRIPTION: ClassVar[str] = "region removal perplexity"

    def row_language(self, row: str) -> str | None:
        """``mono:xx`` belongs to language ``xx`` (when evaluated); other rows are controls."""
        lang = mono_language(row)
        return lang if lang in self.languages else None

    def ppl_ratio(self, row: str) -> list[float]:
        """``PPL with the row removed / PPL of the unmodified model`` per language."""
        i = self.rows.index(row)
        return [math.exp(v - b) for v, b in zip(self.nll[i], self.base_nll)]

    def control_summary(self) -> list[dict[str, Any]]:
        """Per non-monolingual row: the geometric mean (with its 95% bootstrap interval over the
        languages), smallest and largest PPL ratio over the languages, the number of languages whose PPL at least doubles, and the row's entries and
        norm entries."""
        out = []
        for row in self.rows:
            if mono_language(row):
                continue
            ratios = [r for r in self.ppl_ratio(row) if not math.isnan(r)]
            if not ratios:
                continue
            geo = geomean_interval(ratios)
            out.append({"row": row, "geomean_ppl_ratio": geo.value, "geomean_low": geo.low, "geomean_high": geo.high,
                        "min_ppl_ratio": min(ratios), "max_ppl_ratio": max(ratios),
                        "languages_doubled": sum(r >= 2 for r in ratios), "languages": len(ratios),
                        "entries": (self.meta.get("entries") or {}).get(row),
                        "norm_entries": (self.meta.get("norm_entries") or {}).get(row)})
        return out

    def matrices_summary(self) -> list[dict[str, Any]]:
        """Per region removed both whole and as ``<region>-matrices``: its entries and norm
        entries, the geometric-mean PPL ratio of each row, and ``matrices_share``, the share of
        the region's mean log PPL ratio that its non-norm entries reach alone,
        ``log(ratio without norms) / log(ratio)`` (near 1: the matrices carry the effect; near 0:
        the norm entries do; undefined when the region's own ratio is 1)."""
        controls = {c["row"]: c for c in self.control_summary()}
        out = []
        for row, c in controls.items():
            m = controls.get(row + MATRICES)
            if m is None:
                continue
            full, alone = math.log(c["geomean_ppl_ratio"]), math.log(m["geomean_ppl_ratio"])
            out.append({"region": row, "entries": c["entries"], "norm_entries": c["norm_entries"],
                        "geomean_ppl_ratio": c["geomean_ppl_ratio"],
                        "matrices_geomean_ppl_ratio": m["geomean_ppl_ratio"],
                        "matrices_share": alone / full if full != 0 else math.nan})
        return out

    def keep_massive_sentence(self) -> str:
        """What the core's entries on the massive channels carry: the ``core-keep-massive`` row
        against ``core`` ("most of its effect" when keeping them removes more than half of the
        core's mean log PPL ratio); empty without that row."""
        controls = {c["row"]: c for c in self.control_summary()}
        core, kept_row = controls.get("core"), controls.get(KEEP_MASSIVE_ROW)
        if core is None or kept_row is None or not core["entries"]:
            return ""
        kept = core["entries"] - kept_row["entries"]
        most = math.log(kept_row["geomean_ppl_ratio"]) < 0.5 * math.log(core["geomean_ppl_ratio"])
        return (f"Keeping the {kept:,} core entries that lie on the massive channels (removing the other "
                f"{kept_row['entries']:,}) leaves a PPL ratio of x{kept_row['geomean_ppl_ratio']:.3g} instead of "
                f"x{core['geomean_ppl_ratio']:.3g}: those {kept / core['entries']:.1%} of the core carry "
                + ("most of its effect." if most else "part of its effect, not most of it."))

    def matrices_sentence(self) -> str:
        """Each region's PPL ratio with and without its norm entries; empty without ``-matrices`` rows."""
        matrices = self.matrices_summary()
        if not matrices:
            return ""
        return ("Without their norm entries (`-matrices` rows; norm scales can reach the hundreds, so a region "
                "holding norm entries is no neutral control): " + "; ".join(
                    f"{m['region']} x{m['geomean_ppl_ratio']:.3g} with its {m['norm_entries']:,} norm entries, "
                    f"x{m['matrices_geomean_ppl_ratio']:.3g} without"
                    + (f" (the matrices carry {m['matrices_share'] if abs(m['matrices_share']) >= 0.005 else 0.0:.0%}"
                       " of the log ratio)" if math.isfinite(m["matrices_share"]) else "") for m in matrices) + ".")

    def summary_line(self) -> str:
        parts = [f"{c['row']} x{c['geomean_ppl_ratio']:.3g}" for c in self.control_summary()]
        line = "PPL / unmodified (geometric mean over languages): " + (", ".join(parts) or "no control rows")
        if any(mono_language(r) for r in self.rows):
            d, c = self.diagonal_summary("nll"), self.column_summary()
            line += (f"; monolingual regions hit their own language hardest in {sum(r['own_hit_hardest'] for r in d)} "
                     f"of {len(d)} rows and {sum(r['own_hit_hardest'] for r in c)} of {len(c)} columns (delta NLL)")
        return line

    def payload(self) -> dict[str, Any]:
        return {**super().payload(), "diagonal_nll": self.diagonal_summary("nll"), "controls": self.control_summary(),
                "matrices": self.matrices_summary()}

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        d = self.payload()
        out = {name: [{"removed": r, **dict(zip(self.languages, vals))} for r, vals in zip(self.rows, d[name])]
               for name in ("nll", "delta_nll", "delta_ppl")}
        out["ppl_ratio"] = [{"removed": r, **dict(zip(self.languages, self.ppl_ratio(r)))} for r in self.rows]
        out.update(diagonal=d["diagonal_nll"], columns=d["columns"], controls=d["controls"], matrices=d["matrices"])
        return out


KEEP_MASSIVE_ROW = "core-keep-massive"


def keep_massive_rows(model: nn.Module, regions: ParamRegions, massive: MassiveDims) -> dict[str, dict[str, torch.Tensor]]:
    """The extra removal row ``core-keep-massive``: the core region without its entries on the
    massive residual channels (``{}`` without massive channels or a core region), to pass as
    ``extra=`` to :func:`ablate_regions`."""
    if not massive.dims or "core" not in regions.labels:
        return {}
    return {KEEP_MASSIVE_ROW: without_dims(regions.mask("core"), residual_axes(model), massive.dims)}


def region_of_row(row: str) -> str:
    """The region label a removal row names: ``core-matrices`` -> ``core``; other rows are labels."""
    return row[:-len(MATRICES)] if row.endswith(MATRICES) else row


def without_norms(mask: Mapping[str, torch.Tensor], space: ParamSpace) -> dict[str, torch.Tensor]:
    """``mask`` with the entries of every norm tensor dropped (all ``False``), the others as they are.

    Example:
        >>> core_matrices = without_norms(regions.mask("core"), ParamSpace.of(model))
    """
    norms = {p.name for p in space.params if p.is_norm}
    return {n: torch.zeros_like(m) if n in norms else m for n, m in mask.items()}


def row_mask(regions: ParamRegions, row: str, space: ParamSpace) -> dict[str, torch.Tensor]:
    """The mask a removal row removes: a region label's own, or ``<label>-matrices``: that region
    without its norm entries (:func:`without_norms`).

    Raises:
        LapeError: a row that names no region.
    """
    if row not in regions.labels and row.endswith(MATRICES) and region_of_row(row) in regions.labels:
        return without_norms(regions.mask(region_of_row(row)), space)
    return regions.mask(row)  # an unknown label fails here


def default_rows(regions: ParamRegions, space: ParamSpace) -> list[str]:
    """Every region label, with ``core-matrices``, ``bottom-matrices`` and ``random-matrices``
    after the last of the controls, for each control that holds both norm and other entries
    (otherwise its ``-matrices`` row would be empty or the region itself)."""
    norms = {p.name for p in space.params if p.is_norm}
    labels = list(regions.labels)
    extra = []
    for label in (lab for lab in MATRIX_ROWS if lab in labels and lab + MATRICES not in labels):
        k = labels.index(label)
        on_norms = sum(int(m[k].sum()) for n, m in regions.masks.items() if n in norms)
        off_norms = sum(int(m[k].sum()) for n, m in regions.masks.items() if n not in norms)
        if on_norms and off_norms:
            extra.append(label + MATRICES)
        else:
            logger.info("no %s%s row: %s holds %s", label, MATRICES, label,
                        "no norm entry" if off_norms else "only norm entries")
    at = max((labels.index(lab) + 1 for lab in MATRIX_ROWS if lab in labels), default=len(labels))
    return [*labels[:at], *extra, *labels[at:]]


def ablate_regions(
    model: nn.Module,
    corpus: Mapping[str, Iterable[Any]],
    regions: ParamRegions,
    config: AblateConfig = AblateConfig(),
    *,
    rows: Iterable[str] | None = None,
    extra: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    out: str | Path | None = None,
    progress: bool = True,
) -> RegionPerplexity:
    """Perplexity of every language, unmodified and with each region removed in turn.

    Args:
        model: the model the regions were selected on (fingerprint checked).
        corpus: ``{language: sequences}`` of the held-out split (see :func:`lape.load_corpus`).
        regions: the regions (:func:`lape.regions.select_regions`).
        config: evaluation settings and the removal op.
        rows: rows to remove, in order: region labels, or ``<label>-matrices`` for a region
            without its norm entries (default: :func:`default_rows`, every label with
            ``core-matrices``, ``bottom-matrices``, ``random-matrices`` after the controls).
        extra: more rows, ``{row name: {parameter name: bool mask}}`` (e.g. the core region
            without its massive-dimension entries, :func:`lape.regions.dims.without_dims`).
        out: a folder to save the result into; a result there made from the same model, text,
            regions, rows and settings is returned without recomputation.
        progress: show a progress bar.

    Returns:
        :class:`RegionPerplexity`; the model's weights are unchanged afterwards.

    Raises:
        LapeError: regions of another model, an unknown row, an empty region, a row name
            given twice, or a language without text.

    Example:
        >>> res = ablate_regions(model, valid, regions, rows=["core", "random", "bottom"])
        >>> res.summary_line()
    """
    regions.check_model(model)
    check_positions(model, max([getattr(s, "seq_len", 0) for s in corpus.values()], default=0))
    check_corpus(corpus)
    extra = dict(extra or {})
    space = ParamSpace.of(model)
    rows = list(rows) if rows is not None else default_rows(regions, space)
    masks: dict[str, Mapping[str, torch.Tensor]] = {}
    for row in rows:
        masks[row] = row_mask(regions, row, space)  # an unknown label fails here, before any work
    for name, mask in extra.items():
        if name in masks:
            raise LapeError(f"row {name!r} is given twice (a region label and an extra mask): rename the extra mask")
        masks[name] = mask
    entries = {row: sum(int(m.sum()) for m in mask.values()) for row, mask in masks.items()}
    norms = {p.name for p in space.params if p.is_norm}
    norm_entries = {row: sum(int(m.sum()) for n, m in mask.items() if n in norms) for row, mask in masks.items()}
    empty = [row for row, n in entries.items() if n == 0]
    if empty:
        raise LapeError(f"region {empty[0]!r} is empty, so removing it measures nothing: select it with a larger "
                        "top_rate (a monolingual region can be empty when languages share their top entries)")
    languages = list(corpus)
    inputs = {"corpus": {lang: corpus_key(corpus[lang]) for lang in languages}, "regions": regions.identity(),
              "rows": rows, "extra": {name: artifacts.tensor_digest(dict(m)) for name, m in extra.items()}}
    key = artifacts.stage_key(RegionPerplexity.KIND, model_fingerprint=fingerprint(model),
                              config=config.key_dict(), inputs=inputs)
    pcfg = PerplexityConfig(seq_len=config.seq_len, batch_size=config.batch_size, chunk_size=config.chunk_size)

    def compute() -> RegionPerplexity:
        all_rows = list(masks)
        evaluate = LanguageNLL(model, corpus, pcfg, total=len(languages) * (1 + len(all_rows)),
                               desc="region removal", progress=progress)
        base = [evaluate(lang) for lang in languages]
        nll = []
        for row in all_rows:
            evaluate.bar.set_postfix_str(row)
            with edit_weights(model, masks[row], op=config.op):  # type: ignore[arg-type]
                nll.append([evaluate(lang) for lang in languages])
        evaluate.close()
        tokens = evaluate.tokens
        meta = artifacts.model_sidecar(
            RegionPerplexity.KIND, model, languages=languages, token_counts=tokens, config=config.to_dict(),
            inputs=inputs, entries=entries, norm_entries=norm_entries, extra_rows=list(extra),
            matrices_rows=f"<region>{MATRICES}: the region without its norm entries (the blocks' norm weights)",
            regions={"method": regions.meta.get("method"), "config": regions.meta.get("config"),
                     "counts": regions.counts()},
            removal="0, or -1 for the weights of x*(1+w) norms (Gemma)" if config.op == "remove" else "0")
        nan = [[math.nan] * len(languages) for _ in all_rows]
        return RegionPerplexity(all_rows, languages, base, nll, nan, tokens, meta)

    result = artifacts.run_stage(RegionPerplexity, out, key, compute, model=model)
    logger.info("[regions] %s", result.summary_line())
    return result
