"""LAPE end to end, as ``lape demo`` runs it: record -> identify (with the neuron figures) ->
deactivation perplexity -> steering with its random control and fluency reference. Every step
is cached in its folder under the run folder (``stats``, ``neurons``, ``plots``, ``ppl``,
``fluency-reference``, ``steering``); the CLI's ``record``, ``identify``, ``ppl`` and
``steer-eval`` call the same library functions one at a time."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import StageConfig, option

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LapeRunConfig(StageConfig):
    """Budgets of the LAPE steps (defaults: the demo's, a few minutes on 2 CPU cores)."""

    languages: tuple[str, ...] | None = None  # None: the manifest's default_languages
    tokens_per_language: int = option(5120, gt=0)  # recording budget per language
    seq_len: int = option(256, min=2, max=1 << 16)  # packed sequence length
    batch_size: int = option(8, min=1, max=4096)  # sequences per forward pass while recording
    ppl_tokens_per_language: int = option(128, gt=0)  # held-out tokens per language for the perplexity matrix
    ppl_languages: tuple[str, ...] | None = None  # rows/columns of the matrix (None: all languages)
    ppl_random_baseline: str = option("diagonal", choices=("full", "diagonal", "none"))  # see PerplexityConfig
    ppl_random_draws: int = option(1, min=1, max=100)  # random sets per row
    steer_targets: tuple[str, ...] | None = None  # target languages (None: all but English)
    steer_prompts: int = option(5, min=1)  # English prompts per target language
    fluency_windows: int = option(16, min=1)  # held-out text windows per target for the fluency reference
    prompt_set: str = "builtin:dev"  # prompts for the steering evaluation
    seed: int = option(0, min=0)  # corpus shuffling, random baselines


@dataclass
class LapePlan:
    """What the LAPE steps will use, checked against the manifest before the model loads."""

    languages: list[str]
    ppl_languages: list[str]
    targets: list[str]
    prompts: list[str]


def plan_lape(manifest: Any, config: LapeRunConfig) -> LapePlan:
    """The languages, perplexity languages, steering targets and prompts of ``config``; refuses a
    language without the text a step needs (one-line :class:`~lape.errors.LapeError`)."""
    from ..prompts import load_prompts

    languages = list(config.languages or manifest.default_languages)
    ppl_languages = list(config.ppl_languages or languages)
    targets = list(config.steer_targets or [lang for lang in languages if lang != "en"])
    manifest.with_split("train", [*languages, *targets])
    manifest.with_split("valid", ppl_languages)
    return LapePlan(languages, ppl_languages, targets, load_prompts(config.prompt_set, limit=config.steer_prompts))


def run_lape(model: Any, tok: Any, manifest: Any, run: str | Path, config: LapeRunConfig = LapeRunConfig(), *,
             plan: LapePlan | None = None, progress: bool = True,
             timer: Callable[[str, Callable[[], Any]], Any] | None = None) -> dict[str, Any]:
    """Run LAPE's steps into ``run``.

    Args:
        model, tok: from :func:`lape.load_model`.
        manifest: a loaded data manifest (:func:`lape.corpora.load_manifest`).
        run: the run folder.
        config: budgets and settings.
        plan: :func:`plan_lape`'s result, if it was checked before the model loaded.
        progress: progress bars.
        timer: ``timer(name, fn)`` runs a step and records it (``lape demo``'s); default: call it.

    Returns:
        ``{"stats", "neurons", "ppl", "steering"}``: the results.
    """
    from ..corpora import load_corpus
    from ..evaluate.fluency import fluency_reference
    from ..evaluate.perplexity import PerplexityConfig, ppl_matrix
    from ..evaluate.steering import SteerConfig, Steerer
    from ..report import save_neuron_plots
    from .select import IdentifyConfig, identify
    from .stats import RecordConfig, record

    step = timer or (lambda name, fn: fn())
    run = Path(run)
    plan = plan or plan_lape(manifest, config)
    rcfg = RecordConfig(tokens_per_language=config.tokens_per_language, seq_len=config.seq_len,
                        batch_size=config.batch_size, seed=config.seed, languages=tuple(plan.languages))
    corpus = load_corpus(manifest, tok, split="train", tokens_per_language=rcfg.tokens_per_language,
                         seq_len=rcfg.seq_len, seed=rcfg.seed, languages=plan.languages)
    stats = step("record", lambda: record(model, corpus, rcfg, out=run / "stats", progress=progress))

    sets = step("identify", lambda: identify(stats, IdentifyConfig(seed=config.seed), out=run / "neurons"))
    if not getattr(sets, "from_cache", False) or not (run / "plots").is_dir():
        save_neuron_plots(run / "neurons", run / "stats", out=run / "plots")

    pcfg = PerplexityConfig(tokens_per_language=config.ppl_tokens_per_language, seq_len=config.seq_len,
                            seed=config.seed, random_baseline=config.ppl_random_baseline,
                            random_draws=config.ppl_random_draws)
    valid = load_corpus(manifest, tok, split="valid", tokens_per_language=pcfg.tokens_per_language,
                        seq_len=pcfg.seq_len, seed=pcfg.seed, languages=plan.ppl_languages)
    ppl = step("ppl", lambda: ppl_matrix(model, valid, sets.subset(plan.ppl_languages), pcfg, out=run / "ppl",
                                         progress=progress))
    logger.info("[ppl] %s", ppl.summary_line())

    steerer = Steerer(model, tok, sets, stats, SteerConfig())
    # the prompts are English: switch English off if it has a set, else steer by activation only
    source = "en" if "en" in sets.labels else None
    length = steerer.config.max_new_tokens + 1
    with_text = [t for t in plan.targets if "valid" in manifest.split_names(t)]
    windows = load_corpus(manifest, tok, split="valid", tokens_per_language=config.fluency_windows * length,
                          seq_len=length, seed=config.seed, languages=with_text)
    reference = fluency_reference(model, windows, out=run / "fluency-reference") if with_text == plan.targets else None
    ev = step("steering", lambda: steerer.evaluate(plan.prompts, targets=plan.targets, source=source,
                                                   controls=["random"], reference=reference, progress=progress,
                                                   out=run / "steering"))
    good = sum(r["steered_success"] >= 0.9 for r in ev.steered())
    logger.info("[steering] %d/%d target languages steered with >= 90%% success", good, len(ev.steered()))
    return {"stats": stats, "neurons": sets, "ppl": ppl, "steering": ev}
