"""``lape demo``: record -> identify -> perplexity -> steering (with the random control and
fluency) -> linguistic regions -> key neurons (with the cross-method comparison) -> report, each
stage cached.

This module only chains library calls. Every stage is given ``out=`` and skips itself when the
artifact there was made from the same inputs (its sidecar's cache key: model fingerprint,
corpus content, settings and parent artifacts), so a second run finishes at once and a run
stopped midway continues (recording also resumes inside a language).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import artifacts
from .config import StageConfig, option
from .neurons.run import LapeRunConfig
from .regions.run import RegionsRunConfig

_LAPE = LapeRunConfig()  # the LAPE steps' defaults, which lape demo's fields of the same names keep
_REGIONS = RegionsRunConfig()  # the regions experiment's defaults, which lape demo's regions_* fields keep

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig(StageConfig):
    """Settings of ``lape demo`` (defaults finish in under 10 minutes on 2 CPU cores)."""

    model: str = "builtin"  # model spec
    corpus: str = "builtin"  # data manifest
    languages: tuple[str, ...] | None = None  # None: the manifest's default_languages
    tokens_per_language: int = option(_LAPE.tokens_per_language, gt=0)  # recording budget per language (the corpus has 14-30k)
    ppl_tokens_per_language: int = option(_LAPE.ppl_tokens_per_language, gt=0)  # held-out tokens per language for the perplexity matrices
    ppl_languages: tuple[str, ...] | None = None  # rows/columns of the matrix (None: all languages);
    # the matrix costs (rows + 1) x columns evaluations, so large runs restrict it
    ppl_random_baseline: str = option(_LAPE.ppl_random_baseline, choices=("full", "diagonal", "none"))  # random sets on their own language only (see PerplexityConfig)
    ppl_random_draws: int = option(_LAPE.ppl_random_draws, min=1, max=100)  # random sets per row (the full run uses 3 for their spread)
    steer_targets: tuple[str, ...] | None = None  # target languages (None: all but English)
    steer_prompts: int = option(_LAPE.steer_prompts, min=1)  # English prompts per target language for the steering evaluation
    fluency_windows: int = option(_LAPE.fluency_windows, min=1)  # held-out text windows per target for the fluency reference
    prompt_set: str = _LAPE.prompt_set  # prompts for the steering evaluation (the demo is a quick look, not a held-out figure)
    seq_len: int = option(_LAPE.seq_len, min=2, max=1 << 16)  # packed sequence length (256 is ~20% faster per token than 512 on CPU)
    batch_size: int = option(_LAPE.batch_size, min=1, max=4096)  # sequences per forward pass while recording
    seed: int = option(0, min=0)  # corpus shuffling, random baseline
    regions: bool = True  # run the linguistic-regions stages (lape.regions.run) after steering
    regions_languages: tuple[str, ...] | None = None  # importance languages (None: the paper's six the corpus has)
    regions_tokens_per_language: int = option(384, gt=0)  # importance budget per language (paper: 10,000 x 512)
    regions_eval_tokens: int = option(128, gt=0)  # held-out tokens per language for region removal and perturbation
    regions_perturb_dims: int | None = option(None, min=1)  # super-weight test on the largest N massive channels (None: all)
    regions_batch_size: int = option(_REGIONS.batch_size, min=1, max=4096)  # sequences per importance backward pass
    regions_top_rate: float = option(_REGIONS.top_rate, gt=0.0, max=0.5)  # region share of each tensor (paper: 1%)
    regions_eval_languages: tuple[str, ...] | None = None  # removal/perturbation languages (None: importance languages + en)
    regions_massive_ratio: float = option(_REGIONS.massive_ratio, gt=0.0, max=1e6)  # massive channel: peak above this x its layer's median
    regions_perturb_factor: float = option(_REGIONS.perturb_factor, gt=0.0, max=1e3)  # the super-weight test's scale edit, beside zeroing
    regions_train_steps: int = option(_REGIONS.train_steps, min=0)  # frozen further pre-training steps per setting (0: skip)
    regions_train_language: str | None = None  # the language trained on (None: the first importance language)
    regions_train_lr: float = option(_REGIONS.train_lr, gt=0.0, max=1.0)  # AdamW learning rate of that training
    keyneurons: bool = True  # run the key-neuron stage (lape.keyneurons.run; sizes: KeyNeuronsRunConfig's defaults)
    explain: bool = True  # neuron cards of the LAPE sets and a random control (RUN/explain/index.html)
    explain_tokens_per_language: int = option(1024, gt=0)  # held-out tokens per language the cards' contexts come from


class _Timer:
    """Which stages ran (and how long) or came from their cache."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.skipped: list[str] = []
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        result = fn()
        if getattr(result, "from_cache", False):
            self.skipped.append(name)
            logger.info("[%s] up to date: skipped", name)
        else:
            self.seconds[name] = round(time.perf_counter() - t0, 1)
            self.ran.append(name)
            logger.info("[%s] done in %.0f s", name, self.seconds[name])
        return result


def lape_run_config(config: DemoConfig) -> LapeRunConfig:
    """The LAPE steps' settings in a demo: the demo's fields of the same names."""
    names = {f.name for f in dataclasses.fields(LapeRunConfig)}
    return LapeRunConfig(**{name: getattr(config, name) for name in names})


def regions_config(config: DemoConfig) -> RegionsRunConfig:
    """The regions experiment's settings in a demo: every ``regions_*`` field (two renamed), the
    demo's sequence length and seed."""
    renamed = {"regions_eval_tokens": "eval_tokens_per_language", "regions_perturb_dims": "perturb_max_dims"}
    fields = {renamed.get(f.name, f.name[len("regions_"):]): getattr(config, f.name)
              for f in dataclasses.fields(config) if f.name.startswith("regions_")}
    return RegionsRunConfig(**fields, seq_len=config.seq_len, seed=config.seed)


def run_demo(config: DemoConfig = DemoConfig(), out: str | Path = "runs/demo", progress: bool = True) -> dict[str, Any]:
    """Run the whole LAPE pipeline on one model and corpus, writing ``out/report.html``.

    Returns:
        ``{"ran": [...], "skipped": [...], "seconds": {...}, "report": path}``.
    """
    from .corpora import load_corpus, load_manifest
    from .models import load_model
    from .neurons.run import plan_lape, run_lape
    from .report import write_report

    run = artifacts.ensure_folder(out)
    timer = _Timer()
    t0 = time.perf_counter()
    manifest = load_manifest(config.corpus)  # the whole manifest is checked before the model loads
    lape_config = lape_run_config(config)
    plan = plan_lape(manifest, lape_config)
    languages = plan.languages
    model, tok = load_model(config.model)
    artifacts.write_json(run / "demo.json", {"settings": config.to_dict(), "languages": languages,
                                             "manifest": str(manifest.path)})
    sets = run_lape(model, tok, manifest, run, lape_config, plan=plan, progress=progress, timer=timer.run)["neurons"]

    if config.regions:
        from .regions.run import run_regions

        rcfg_regions = regions_config(config)
        run_regions(model, tok, manifest, run, rcfg_regions, neurons=sets, progress=progress, timer=timer.run)

    if config.keyneurons:
        from .keyneurons.run import KeyNeuronsRunConfig, run_keyneurons

        kcfg = KeyNeuronsRunConfig(seq_len=config.seq_len, seed=config.seed,
                                    ppl_tokens_per_language=config.ppl_tokens_per_language)
        run_keyneurons(model, tok, run, kcfg, lape_sets=sets, manifest=manifest, progress=progress, timer=timer.run)

    held_out = [lang for lang in languages if "valid" in manifest.split_names(lang)]
    if config.explain and not held_out:
        logger.info("[explain] skipped: no language of the manifest has a valid split for the cards' contexts")
    elif config.explain:
        from .explain import ExplainConfig
        from .explain.run import explain_sets

        ecfg = ExplainConfig(tokens_per_language=config.explain_tokens_per_language, seq_len=config.seq_len,
                             seed=config.seed)
        texts = load_corpus(manifest, tok, split=ecfg.split, tokens_per_language=ecfg.tokens_per_language,
                            seq_len=ecfg.seq_len, seed=ecfg.seed, languages=held_out)
        timer.run("explain", lambda: explain_sets(model, tok, texts, {"lape": sets}, ecfg, random_control=config.seed,
                                                  out=run / "explain", progress=progress))

    report = write_report(run)
    total = round(time.perf_counter() - t0, 1)
    summary = {"ran": timer.ran, "skipped": timer.skipped, "seconds": timer.seconds, "total_seconds": total,
               "report": str(report)}
    artifacts.write_json(run / "demo-timings.json", summary)
    logger.info("demo finished in %.0f s (ran: %s; skipped: %s) -> %s", total, ", ".join(timer.ran) or "nothing",
                ", ".join(timer.skipped) or "nothing", report)
    return summary
