"""``lape demo``: record -> identify -> perplexity -> steering -> report, each stage cached.

Each stage's cache key is the hash of its inputs (settings, model fingerprint, manifest hash
and its parent stage's key). A stage whose key matches the marker in ``RUN/.stages/`` and whose
artifact is complete is skipped, so a second run finishes at once; a run stopped midway
continues (recording also resumes inside a language). This module only chains library calls.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import artifacts

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    """Settings of ``lape demo`` (defaults finish in under 10 minutes on 2 CPU cores)."""

    model: str = "builtin"  # model spec
    corpus: str = "builtin"  # data manifest
    languages: tuple[str, ...] | None = None  # None: the manifest's default_languages
    tokens_per_language: int = 8192  # recording budget per language (the corpus has 14-30k)
    ppl_tokens_per_language: int = 256  # held-out tokens per language for the perplexity matrix
    ppl_languages: tuple[str, ...] | None = None  # rows/columns of the matrix (None: all languages);
    # the matrix costs (rows + 1) x columns evaluations, so large runs restrict it
    ppl_random_baseline: str = "diagonal"  # random sets on their own language only (see PerplexityConfig)
    steer_targets: tuple[str, ...] | None = None  # target languages (None: all but English)
    steer_prompts: int = 8  # English prompts per target language for the steering evaluation
    prompt_set: str = "builtin:heldout"  # prompts for the steering evaluation
    seq_len: int = 256  # packed sequence length (256 is ~20% faster per token than 512 on CPU)
    batch_size: int = 8  # sequences per forward pass while recording
    seed: int = 0  # corpus shuffling, random baseline

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for name in ("languages", "ppl_languages", "steer_targets"):
            d[name] = list(d[name]) if d[name] else None
        return d


class _Stages:
    """Markers in ``RUN/.stages/NAME.json`` holding each finished stage's key and summary."""

    def __init__(self, run: Path) -> None:
        self.dir = run / ".stages"
        self.ran: list[str] = []
        self.skipped: list[str] = []
        self.seconds: dict[str, float] = {}

    def run(self, name: str, key_inputs: dict[str, Any], done: Callable[[], bool],
            compute: Callable[[], Any]) -> str:
        key = artifacts.content_hash(key_inputs)
        marker = self.dir / f"{name}.json"
        if marker.is_file() and done():
            try:
                if artifacts.read_json(marker).get("key") == key:
                    logger.info("[%s] up to date: skipped", name)
                    self.skipped.append(name)
                    return key
            except Exception:  # a damaged marker means: run the stage again
                pass
        t0 = time.perf_counter()
        summary = compute()
        self.seconds[name] = round(time.perf_counter() - t0, 1)
        artifacts.write_json(marker, {"key": key, "seconds": self.seconds[name], "summary": summary})
        self.ran.append(name)
        logger.info("[%s] done in %.0f s%s", name, self.seconds[name], f": {summary}" if summary else "")
        return key


def run_demo(config: DemoConfig = DemoConfig(), out: str | Path = "runs/demo", progress: bool = True) -> dict[str, Any]:
    """Run the whole LAPE pipeline on one model and corpus, writing ``out/report.html``.

    Returns:
        ``{"ran": [...], "skipped": [...], "seconds": {...}, "report": path}``.
    """
    from .corpora import load_corpus, load_manifest
    from .entropy import IdentifyConfig, identify, language_agnostic
    from .models import fingerprint, load_model
    from .neurons import NeuronSets
    from .perplexity import PerplexityConfig, PerplexityResult, ppl_matrix
    from .record import ActivationStats, RecordConfig, record
    from .report import save_neuron_plots, write_report
    from .steering import SteerConfig, Steerer, SteeringEval, load_prompts

    run = Path(out)
    run.mkdir(parents=True, exist_ok=True)
    stages = _Stages(run)
    t0 = time.perf_counter()
    model, tok = load_model(config.model)
    fp = fingerprint(model)
    manifest = load_manifest(config.corpus)
    languages = list(config.languages or manifest.default_languages)
    artifacts.write_json(run / "demo.json", {"settings": config.to_dict(), "languages": languages,
                                             "model_fingerprint": fp, "manifest": str(manifest.path)})
    base_key = {"fingerprint": fp, "manifest": manifest.hash(), "languages": languages}

    rcfg = RecordConfig(tokens_per_language=config.tokens_per_language, seq_len=config.seq_len,
                        batch_size=config.batch_size, seed=config.seed, languages=tuple(languages))

    def do_record() -> str:
        corpus = load_corpus(manifest, tok, split="train", tokens_per_language=rcfg.tokens_per_language,
                             seq_len=rcfg.seq_len, seed=rcfg.seed, languages=languages)
        stats = record(model, corpus, rcfg, out=run / "stats", progress=progress,
                       inputs={"manifest": str(manifest.path), "manifest_hash": manifest.hash()})
        return f"{int(stats.token_counts.sum()):,} tokens, {stats.meta['tokens_per_second']:.0f} tokens/s"

    k_rec = stages.run("record", {**base_key, "record": rcfg.to_dict()},
                       lambda: artifacts.exists(run / "stats", "stats"), do_record)

    icfg = IdentifyConfig(seed=config.seed)

    def do_identify() -> str:
        stats = ActivationStats.load(run / "stats", model=model)
        sets = identify(stats, icfg)
        sets.save(run / "neurons")
        language_agnostic(stats).save(run / "neurons-agnostic")
        save_neuron_plots(run / "neurons", run / "stats", out=run / "plots")
        return ", ".join(f"{k} {v}" for k, v in sets.counts().items())

    k_id = stages.run("identify", {"parent": k_rec, "identify": icfg.to_dict()},
                      lambda: artifacts.exists(run / "neurons", "neurons"), do_identify)

    pcfg = PerplexityConfig(tokens_per_language=config.ppl_tokens_per_language, seq_len=config.seq_len,
                            seed=config.seed, random_baseline=config.ppl_random_baseline)

    ppl_languages = list(config.ppl_languages or languages)

    def do_ppl() -> str:
        sets = NeuronSets.load(run / "neurons", model=model).subset(ppl_languages)
        corpus = load_corpus(manifest, tok, split="valid", tokens_per_language=pcfg.tokens_per_language,
                             seq_len=pcfg.seq_len, seed=pcfg.seed, languages=ppl_languages)
        result = ppl_matrix(model, corpus, sets, pcfg, progress=progress,
                            inputs={"manifest_hash": manifest.hash()})
        result.save(run / "ppl")
        wins = sum(d["own_above_off_diagonal"] for d in result.diagonal_summary())
        return f"own language hit hardest in {wins}/{len(result.rows)} rows"

    k_ppl = stages.run("ppl", {"parent": k_id, "ppl": pcfg.to_dict(), "languages": ppl_languages},
                       lambda: (run / "ppl" / f"{PerplexityResult.KIND}.json").is_file(), do_ppl)

    scfg = SteerConfig()
    targets = list(config.steer_targets or [lang for lang in languages if lang != "en"])

    def do_steer() -> str:
        sets = NeuronSets.load(run / "neurons", model=model)
        stats = ActivationStats.load(run / "stats", model=model)
        steerer = Steerer(model, tok, sets, stats, scfg)
        prompts = load_prompts(config.prompt_set, limit=config.steer_prompts)
        # the prompts are English: switch English off if it has a set, else steer by activation only
        source = "en" if "en" in sets.labels else None
        ev = steerer.evaluate(prompts, targets=targets, source=source, progress=progress)
        ev.save(run / "steering")
        good = sum(r["steered_success"] >= 0.8 for r in ev.rows)
        return f"{good}/{len(ev.rows)} target languages steered with >= 80% success"

    stages.run("steering", {"parent": k_id, "steer": scfg.to_dict(), "prompts": config.prompt_set,
                            "n": config.steer_prompts, "targets": targets},
               lambda: (run / "steering" / f"{SteeringEval.KIND}.json").is_file(), do_steer)

    report = write_report(run)
    total = round(time.perf_counter() - t0, 1)
    summary = {"ran": stages.ran, "skipped": stages.skipped, "seconds": stages.seconds, "total_seconds": total,
               "report": str(report), "keys": {"ppl": k_ppl}}
    artifacts.write_json(run / "demo-timings.json", summary)
    logger.info("demo finished in %.0f s (ran: %s; skipped: %s) -> %s", total, ", ".join(stages.ran) or "nothing",
                ", ".join(stages.skipped) or "nothing", report)
    return summary
