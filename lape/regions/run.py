"""The whole linguistic-regions experiment on one model and corpus, each step cached:
importance -> regions -> dimension dependence -> removal -> the super-weight test (each massive
channel's super weight and norm scale zeroed and scaled: :mod:`lape.regions.perturb`) ->
frozen further pre-training -> the bridge to LAPE neurons.

``lape demo`` runs it with small budgets (minutes on a CPU); ``scripts/run_full.sh`` with the
README's. Every step is a library call given ``out=``, so a re-run skips what is done.

Folders written under the run folder: ``importance``, ``regions``, ``region-dims``,
``region-ppl``, ``region-perturb``, ``region-train`` (when ``train_steps > 0``) and
``region-bridge`` (when LAPE neuron sets are given).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import StageConfig, option
from ..errors import LapeError

logger = logging.getLogger(__name__)
PAPER_LANGUAGES = ("ar", "es", "ru", "zh", "ko", "vi")  # Zhang et al.'s six


@dataclass(frozen=True)
class RegionsRunConfig(StageConfig):
    """Budgets of the regions experiment (defaults: the demo's, a few minutes on 2 CPU cores)."""

    languages: tuple[str, ...] | None = None  # importance languages (None: the paper's six the corpus has)
    tokens_per_language: int = option(1024, gt=0)  # importance budget per language (paper: 10,000 x 512)
    seq_len: int = option(256, min=2, max=1 << 16)  # packed sequence length (paper: 512)
    batch_size: int = option(4, min=1, max=4096)  # sequences per backward pass
    top_rate: float = option(0.01, gt=0.0, max=0.5)  # region share of each tensor (paper: 1%)
    eval_languages: tuple[str, ...] | None = None  # removal/perturbation languages (None: importance languages + en)
    eval_tokens_per_language: int = option(256, gt=0)  # held-out tokens per evaluated language
    massive_ratio: float = option(100.0, gt=0.0, max=1e6)  # massive channel: peak above this x the median
    perturb_factor: float = option(4.0, gt=0.0, max=1e3)  # the super-weight test's scale edit, beside zeroing (Zhang et al.: x4)
    perturb_max_dims: int | None = option(None, min=1)  # super-weight test: the largest massive channels only (None: all)
    train_steps: int = option(0, min=0)  # further pre-training steps per setting (0: skip)
    train_language: str | None = None  # None: the first importance language
    train_lr: float = option(1e-5, gt=0.0, max=1.0)  # AdamW learning rate (paper: 5e-5; 1e-5 lowers the trained language's NLL in 12 CPU-sized steps)
    seed: int = option(0, min=0)  # corpus shuffling, random region


def region_languages(config: RegionsRunConfig, available: list[str]) -> list[str]:
    """The importance languages: the configured ones, else the paper's six the corpus has (else
    every available language)."""
    if config.languages:
        return list(config.languages)
    paper = [lang for lang in PAPER_LANGUAGES if lang in available]
    return paper if len(paper) >= 2 else list(available)


def run_regions(model: Any, tok: Any, manifest: Any, run: str | Path, config: RegionsRunConfig = RegionsRunConfig(),
                *, neurons: Any = None, progress: bool = True,
                timer: Callable[[str, Callable[[], Any]], Any] | None = None) -> dict[str, Any]:
    """Run every step of the regions experiment into ``run``.

    Args:
        model, tok: from :func:`lape.load_model`.
        manifest: a loaded data manifest (:func:`lape.corpora.load_manifest`).
        run: the run folder.
        config: budgets and settings.
        neurons: LAPE :class:`~lape.masks.NeuronSets` of the same model for the bridge (optional).
        progress: progress bars.
        timer: ``timer(name, fn)`` runs a step and records it (``lape demo``'s); default: call it.

    Returns:
        ``{step name: result}``.

    Raises:
        LapeError: a language without a train or valid split, or fewer than two languages.
    """
    from ..corpora import load_corpus
    from ..space import ParamSpace
    from .ablate import AblateConfig, ablate_regions, keep_massive_rows
    from .bridge import region_bridge
    from .dims import DimsConfig, region_dims
    from .importance import ImportanceConfig, param_importance
    from .perturb import PerturbConfig, region_perturb
    from .select import RegionConfig, select_regions
    from .train import TrainConfig, region_train

    step = timer or (lambda name, fn: fn())
    run = Path(run)
    languages = region_languages(config, list(manifest.languages))
    if len(languages) < 2:
        raise LapeError(f"linguistic regions need at least two languages, got {languages}: add languages")
    default_eval = [*languages, *(["en"] if "en" in manifest.languages and "en" not in languages else [])]
    eval_languages = list(config.eval_languages or default_eval)
    train_language = config.train_language or languages[0]
    manifest.with_split("train", [*languages, train_language])
    manifest.with_split("valid", eval_languages)
    out: dict[str, Any] = {}

    icfg = ImportanceConfig(tokens_per_language=config.tokens_per_language, seq_len=config.seq_len,
                            batch_size=config.batch_size, seed=config.seed, languages=tuple(languages))
    train = load_corpus(manifest, tok, split="train", tokens_per_language=icfg.tokens_per_language,
                        seq_len=icfg.seq_len, seed=icfg.seed, languages=languages)
    imp = out["importance"] = step("importance", lambda: param_importance(model, train, icfg, out=run / "importance",
                                                                    progress=progress))
    regions = out["regions"] = step("regions", lambda: select_regions(
        imp, RegionConfig(top_rate=config.top_rate, seed=config.seed), out=run / "regions"))

    valid = load_corpus(manifest, tok, split="valid", tokens_per_language=config.eval_tokens_per_language,
                        seq_len=config.seq_len, seed=config.seed, languages=eval_languages)
    dims = out["dims"] = step("region-dims", lambda: region_dims(
        model, valid, regions, DimsConfig(ratio=config.massive_ratio), out=run / "region-dims"))
    massive = dims.massive
    logger.info("[regions] %s", dims.summary_line())

    extra = keep_massive_rows(model, regions, massive)
    acfg = AblateConfig(tokens_per_language=config.eval_tokens_per_language, seq_len=config.seq_len, seed=config.seed)
    out["region-ppl"] = step("region-ppl", lambda: ablate_regions(model, valid, regions, acfg, extra=extra,
                                                                  out=run / "region-ppl", progress=progress))
    if massive.dims:
        pcfg = PerturbConfig(factor=config.perturb_factor, tokens_per_language=config.eval_tokens_per_language,
                             seq_len=config.seq_len, seed=config.seed, max_dims=config.perturb_max_dims)
        out["region-perturb"] = step("region-perturb", lambda: region_perturb(
            model, valid, massive, pcfg, scores=imp, out=run / "region-perturb", progress=progress))
    if config.train_steps > 0:
        tcfg = TrainConfig(train_language=train_language, steps=config.train_steps, seq_len=config.seq_len,
                           lr=config.train_lr, eval_tokens_per_language=config.eval_tokens_per_language,
                           seed=config.seed)
        train_text = load_corpus(manifest, tok, split="train", seq_len=tcfg.seq_len, seed=tcfg.seed,
                                 tokens_per_language=tcfg.steps * tcfg.batch_size * tcfg.seq_len,
                                 languages=[train_language])
        out["region-train"] = step("region-train", lambda: region_train(
            model, train_text, valid, regions, tcfg, out=run / "region-train", progress=progress))
    if neurons is not None:
        out["region-bridge"] = step("region-bridge", lambda: region_bridge(
            neurons, regions, ParamSpace.of(model), out=run / "region-bridge"))
    return out
