"""The key-neuron experiment as one call (``lape demo``'s stage; the full-size runs are in
``scripts/run_keyneurons.sh``): attribute the selection half, select NA-ICA key neurons (and the
plain-NA baseline), evaluate on the held-out half, plot, and compare with LAPE's language neurons
and the regions' neuron view."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import artifacts
from ..config import StageConfig, option
from .compare import REGION_MIN_SHARE


@dataclass(frozen=True)
class KeyNeuronsRunConfig(StageConfig):
    """Sizes of the key-neuron stage (defaults: the demo's, about a minute on 2 CPU cores)."""

    questions: str = "builtin:languages"  # question set (builtin:domains, builtin:languages, builtin, a manifest)
    clusters: tuple[str, ...] | None = ("en", "fr", "ru", "zh")  # None: every cluster of the set
    per_cluster: int = option(4, min=2)  # questions per cluster, half for selection, half held out
    eval_share: float = option(0.5, gt=0.0, max=0.99)
    steps: int = option(8, min=1)  # IG steps (the paper's 16 in the full run)
    templates: int = option(1, min=1)  # templates per question (paper: 3)
    random_seeds: int = option(2, min=0)  # random-set draws in the evaluation
    region_min_share: float = option(REGION_MIN_SHARE, gt=0.0, max=1.0)  # neuron view of the monolingual regions
    ppl_tokens_per_language: int = option(256, gt=0)  # held-out tokens per language for the effect table
    seq_len: int = option(256, min=2)
    seed: int = option(0, min=0)


def run_keyneurons(model: Any, tok: Any, run: str | Path, config: KeyNeuronsRunConfig = KeyNeuronsRunConfig(), *,
                   lape_sets: Any = None, manifest: Any = None, progress: bool = True,
                   timer: Callable[[str, Callable[[], Any]], Any] | None = None) -> dict[str, Any]:
    """Run the key-neuron steps into ``run`` (``keyneurons-scores``, ``keyneurons``,
    ``keyneurons-plots``, ``keyneurons-eval``, ``method-comparison``); ``lape_sets`` (LAPE
    neurons) and ``manifest`` (the corpus, for the effect table) enable the comparison."""
    from ..masks import ParamRegions
    from ..plots import accumulated_heatmap
    from ..report import save_figure, save_neuron_plots
    from .attribute import AttributeConfig, attribute
    from .evaluate import KeyEvalConfig, evaluate_key_neurons
    from .questions import load_questions, split_questions
    from .select import SelectConfig, plain_na_sets, select

    step = timer or (lambda name, fn: fn())
    run = Path(run)
    questions = load_questions(config.questions, clusters=config.clusters, per_cluster=config.per_cluster)
    selection, evaluation = split_questions(questions, config.eval_share)
    acfg = AttributeConfig(steps=config.steps, templates=config.templates, seed=config.seed)
    scores = step("keyneurons-attribute", lambda: attribute(model, tok, selection, acfg, out=run / "keyneurons-scores",
                                                            progress=progress))
    sets, maps = select(scores, SelectConfig(), out=run / "keyneurons")
    na_sets = plain_na_sets(scores, sets)
    if not getattr(sets, "from_cache", False) or not (run / "keyneurons-plots").is_dir():
        save_neuron_plots(run / "keyneurons", out=run / "keyneurons-plots")
        save_figure(accumulated_heatmap(maps.clusters, maps.accumulated), run / "keyneurons-plots" / "accumulated_heatmap")
    ecfg = KeyEvalConfig(templates=config.templates, random_seeds=config.random_seeds, seed=config.seed)
    ev = step("keyneurons-eval", lambda: evaluate_key_neurons(model, tok, sets, evaluation, ecfg, na_sets=na_sets,
                                                              selection=selection, out=run / "keyneurons-eval",
                                                              progress=progress))
    out = {"scores": scores, "sets": sets, "eval": ev}
    if lape_sets is None:
        return out
    regions = ParamRegions.load(run / "regions") if artifacts.exists(run / "regions", ParamRegions.KIND) else None
    out["comparison"] = method_comparison(model, tok, lape_sets, sets, regions, manifest, run / "method-comparison",
                                          config, progress=progress, timer=step)
    return out


def method_comparison(model: Any, tok: Any, lape_sets: Any, key_sets: Any, regions: Any, manifest: Any,
                      out: str | Path, config: KeyNeuronsRunConfig = KeyNeuronsRunConfig(), *, progress: bool = True,
                      timer: Callable[[str, Callable[[], Any]], Any] | None = None, questions: Any = None) -> Any:
    """Compare LAPE's sets, the key neurons of the language clusters and (when ``regions`` is
    given) the monolingual regions' neuron view on their shared languages; with ``manifest``,
    one perplexity matrix per method on held-out text disjoint from the cloze questions (saved
    beside ``out``), each set next to ``max(1, config.random_seeds)`` random sets with its counts
    per layer (:mod:`lape.keyneurons.compare`).

    ``questions``: the questions the key neurons were selected and evaluated on (default: those
    ``config`` describes, loaded as :func:`run_keyneurons` loads them); no perplexity document
    holds one of their sentences."""
    from ..evaluate.perplexity import PerplexityConfig, ppl_matrix
    from ..space import ParamSpace
    from .compare import compare_methods, comparison_text, region_neuron_sets, with_random

    step = timer or (lambda name, fn: fn())
    out = Path(out)
    families = {"LAPE": lape_sets, "key neurons": key_sets}
    if regions is not None:
        families["regions"] = region_neuron_sets(regions, ParamSpace.of(model), config.region_min_share)
    languages = [c for c in key_sets.labels if c in lape_sets.labels]
    ppl, counts, text_info = {}, {}, None
    draws = max(1, config.random_seeds)
    if manifest is not None and languages:
        from .questions import load_questions

        if questions is None:
            questions = load_questions(config.questions, clusters=config.clusters, per_cluster=config.per_cluster)
        pcfg = PerplexityConfig(tokens_per_language=config.ppl_tokens_per_language, seq_len=config.seq_len,
                                seed=config.seed, random_baseline="none")
        text, text_info = comparison_text(manifest, tok, languages, questions,
                                          tokens_per_language=pcfg.tokens_per_language, seq_len=pcfg.seq_len)
        for fam, fsets in families.items():
            have = [lang for lang in languages if lang in fsets.labels]
            if have:
                slug = fam.replace(" ", "-").lower()
                rows = with_random(fsets, have, draws, seed=config.seed)
                counts[fam] = rows.counts_per_layer()
                ppl[fam] = step(f"compare-ppl-{slug}", lambda rows=rows, slug=slug: ppl_matrix(
                    model, text, rows, pcfg, out=out.parent / f"{out.name}-ppl-{slug}", progress=progress))
    from .compare import MethodComparison

    inputs = {"families": {f: s.identity() for f, s in families.items()},
              "ppl": {f: r.identity() for f, r in ppl.items()}, "ppl_text": text_info, "languages": languages}
    key = artifacts.stage_key(MethodComparison.KIND, model_fingerprint=artifacts.fingerprint(model),
                              config=config.to_dict(), inputs=inputs)
    return artifacts.run_stage(MethodComparison, out, key, lambda: compare_methods(
        families, languages, ppl, meta=artifacts.model_sidecar(
            "method_comparison", model, languages=languages, config=config.to_dict(),
            inputs={f: s.identity() for f, s in families.items()}, region_min_share=config.region_min_share,
            random_draws=draws if ppl else 0, ppl_text=text_info), counts=counts))
