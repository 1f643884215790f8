"""``lape ppl``, ``lape steer`` and ``lape steer-eval``: measuring and steering neuron sets."""

from __future__ import annotations

import argparse

from ..config import add_config_args, config_from_args
from ..corpora import load_manifest
from ..errors import LapeError
from . import common
from .common import logger


def cmd_ppl(args: argparse.Namespace) -> int:
    from ..evaluate.perplexity import PerplexityConfig, ppl_matrix
    from ..masks import NeuronSets

    config = config_from_args(PerplexityConfig, args)
    out = common.out_folder(args.out)
    m = load_manifest(args.corpus)  # every source checked before the model loads
    sets = NeuronSets.load(args.neurons)
    languages = args.languages or sets.labels
    m.with_split(config.split, languages)
    model, tok = common.load(args)
    streams = common.corpus(m, tok, config.split, config.tokens_per_language, config.seq_len, config.seed, languages)
    result = ppl_matrix(model, streams, sets.subset([lang for lang in sets.labels if lang in languages]), config,
                        out=out, progress=not args.quiet)
    logger.info("perplexity matrix (%d x %d) -> %s; %s", len(result.rows), len(result.languages), args.out,
                result.summary_line())
    return 0


def _steerer(args: argparse.Namespace, targets: list[str] | None = None):
    """The model, neuron sets, stats and steering profile of a steering command, checked
    against each other; with ``targets``, also the fluency reference (held-out text windows)."""
    from ..evaluate.steer_profile import SteeringProfile, find_profile
    from ..evaluate.steering import SteerConfig, Steerer, check_languages, source_language
    from ..masks import NeuronSets
    from ..neurons.stats import ActivationStats

    config = config_from_args(SteerConfig, args)
    source = source_language(args.source)
    sets = NeuronSets.load(args.neurons)
    stats = ActivationStats.load(args.stats)
    wanted = [args.to] if isinstance(args.to, str) else list(args.to or [])
    check_languages(sets, wanted, source)
    profile = None
    if not getattr(args, "no_profile", True):
        profile = SteeringProfile.load(args.profile) if args.profile else find_profile(args.neurons)
    manifest = load_manifest(args.corpus) if targets else None
    if manifest is not None:
        manifest.with_split("valid", targets)  # every target needs held-out text, checked before the model loads
    model, tok = common.load(args)
    steerer = Steerer(model, tok, sets, stats, config, profile=profile)
    if profile is not None:
        logger.info("steering profile of %s: %s", args.profile or args.neurons,
                    "; ".join(f"{t} {r.describe()}" for t, r in profile.rules.items()))
    reference = None
    if manifest is not None:
        reference = _reference(args, model, tok, manifest, targets, config.max_new_tokens)
    return steerer, source, reference


def _reference(args: argparse.Namespace, model, tok, manifest, targets: list[str], length: int):
    """Real-text NLL per target (cached in ``--reference``, default RUN/fluency-reference beside
    the neuron sets)."""
    from pathlib import Path

    from ..evaluate.fluency import fluency_reference

    out = common.out_folder(args.reference or str(Path(args.neurons).parent / "fluency-reference"), "--reference")
    windows = common.corpus(manifest, tok, "valid", args.reference_windows * (length + 1), length + 1, 0, targets)
    return fluency_reference(model, windows, out=out)


def cmd_steer(args: argparse.Namespace) -> int:
    from ..evaluate.steer_repl import repl

    if not args.interactive and not args.prompt:
        raise LapeError("lape steer needs a prompt (or --interactive)")
    if not args.interactive and not args.to:
        raise LapeError("lape steer needs --to LANG (a language of the neuron sets)")
    steerer, source, _ = _steerer(args)
    reference = None
    if not args.no_fluency:  # every language of the sets the corpus holds held-out text for
        manifest = load_manifest(args.corpus)
        langs = [lang for lang in steerer.sets.labels if lang in manifest.languages
                 and "valid" in manifest.split_names(lang)]
        if langs:
            reference = _reference(args, steerer.model, steerer.tokenizer, manifest, langs,
                                   steerer.config.max_new_tokens)
    if args.interactive:
        return repl(steerer, target=args.to, source=source, reference=reference)
    print(steerer.steer(args.prompt, to=args.to, source=source, reference=reference).format())
    return 0


def _targets(args: argparse.Namespace) -> list[str]:
    from ..evaluate.steering import source_language
    from ..masks import NeuronSets

    if args.to:
        return list(args.to)
    source = source_language(args.source)
    return [lang for lang in NeuronSets.load(args.neurons).labels if lang != source]


def cmd_steer_eval(args: argparse.Namespace) -> int:
    from ..prompts import load_prompts

    out = common.out_folder(args.out)
    prompts = load_prompts(args.prompts, limit=args.limit)
    steerer, source, reference = _steerer(args, None if args.no_fluency else _targets(args))
    result = steerer.evaluate(prompts, targets=_targets(args), source=source, strengths=args.strengths,
                              controls=args.controls, random_seeds=args.random_seeds, reference=reference,
                              prompt_set=args.prompts, progress=not args.quiet, out=out)
    for line in result.summary_lines():
        logger.info(line)
    return 0


def cmd_steer_calibrate(args: argparse.Namespace) -> int:
    from ..evaluate.steer_profile import CalibrateConfig, calibrate
    from ..prompts import development_prompts

    config = config_from_args(CalibrateConfig, args)
    prompts = development_prompts(args.prompts, limit=args.limit)  # refuses the held-out test prompts
    out = common.out_folder(args.out or args.neurons, "--out")
    targets = _targets(args)
    args.no_profile = True  # calibrate from the plain settings
    steerer, source, reference = _steerer(args, targets)
    profile = calibrate(steerer, prompts, targets, reference, source=source, config=config, progress=not args.quiet,
                        out=out)
    for t, r in profile.rules.items():
        score = profile.meta.get("dev_scores", {}).get(t, {})
        logger.info("%s: %s (dev: fluent success %.0f%%, success %.0f%%)", t, r.describe(),
                    100 * score.get("fluent_success", 0), 100 * score.get("success", 0))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from ..evaluate.perplexity import PerplexityConfig
    from ..evaluate.steer_profile import CalibrateConfig
    from ..evaluate.steering import SteerConfig
    from ..evaluate.steering_result import CONTROLS

    s = sub.add_parser("ppl", help="perplexity matrix under deactivation of each language's neurons")
    common.add_model_args(s)
    s.add_argument("--corpus", default="builtin")
    s.add_argument("--neurons", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--languages", nargs="+", default=None, help="evaluated languages (default: the sets')")
    add_config_args(s, PerplexityConfig)
    s.set_defaults(fn=cmd_ppl)

    commands = (("steer", cmd_steer, "switch the output language of one prompt, or a REPL"),
                ("steer-eval", cmd_steer_eval, "steering success and fluency over a prompt set, with controls"),
                ("steer-calibrate", cmd_steer_calibrate, "choose a steering rule per language on development "
                 "prompts (a steering profile saved beside the neuron sets)"))
    for name, fn, helptext in commands:
        s = sub.add_parser(name, help=helptext)
        common.add_model_args(s, required=False)
        s.add_argument("--neurons", required=True)
        s.add_argument("--stats", required=True)
        s.add_argument("--from", dest="source", default="en", help="source language whose neurons are "
                       "scaled down (default en; 'none' keeps them)")
        add_config_args(s, SteerConfig)
        if name != "steer-calibrate":
            s.add_argument("--profile", default=None, help="a steering profile folder (default: the one saved "
                           "beside --neurons, if any)")
            s.add_argument("--no-profile", action="store_true", help="ignore any steering profile: the plain settings")
            s.add_argument("--no-fluency", action="store_true", help="skip the fluency figures (and the "
                           "real-text reference they need)")
        if name == "steer":
            s.add_argument("--to", default=None, help="target language")
            s.add_argument("--interactive", action="store_true", help="a REPL (:to ja, :strength 2, :profile, :help)")
            s.add_argument("prompt", nargs="?", default=None)
        else:
            s.add_argument("--to", nargs="+", default=None, help="target languages (default all)")
            s.add_argument("--prompts", required=True, help="a text file (one prompt per line) or "
                           "builtin:dev / builtin:test / builtin:test1 / builtin:parallel")
            s.add_argument("--limit", type=positive_number, default=None, help="use the first N prompts")
        s.add_argument("--corpus", default="builtin", help="manifest whose valid split gives the real-text "
                       "fluency reference")
        s.add_argument("--reference", default=None, help="folder caching the fluency reference (default: "
                       "fluency-reference beside --neurons)")
        s.add_argument("--reference-windows", type=positive_number, default=48,
                       help="held-out text windows per language for the fluency reference")
        if name == "steer-eval":
            s.add_argument("--strengths", type=float, nargs="+", default=None, help="a strength sweep")
            s.add_argument("--controls", nargs="+", default=[], choices=CONTROLS,
                           help="controls beside the steered outputs")
            s.add_argument("--random-seeds", type=_natural, nargs="+", default=[0, 1, 2],
                           help="draws of the random control")
            s.add_argument("--out", required=True)
        if name == "steer-calibrate":
            add_config_args(s, CalibrateConfig)
            s.add_argument("--out", default=None, help="where the profile is saved (default: beside the neuron "
                           "sets, in --neurons, where lape steer finds it)")
        s.set_defaults(fn=fn)


def _whole(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{value} is below {least}")
    return value


def positive_number(text: str) -> int:
    return _whole(text, 1)


def _natural(text: str) -> int:
    return _whole(text, 0)
