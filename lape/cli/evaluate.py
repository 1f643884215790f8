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


def _steerer(args: argparse.Namespace):
    """The model, neuron sets and stats of a steering command, checked against each other."""
    from ..activations import ActivationStats
    from ..evaluate.steering import SteerConfig, Steerer, check_languages, source_language
    from ..masks import NeuronSets

    config = config_from_args(SteerConfig, args)
    source = source_language(args.source)
    sets = NeuronSets.load(args.neurons)
    stats = ActivationStats.load(args.stats)
    check_languages(sets, [args.to] if isinstance(args.to, str) else list(args.to or []), source)
    model, tok = common.load(args)
    return Steerer(model, tok, sets, stats, config), source


def cmd_steer(args: argparse.Namespace) -> int:
    from ..evaluate.steering import repl

    if not args.interactive and not args.prompt:
        raise LapeError("lape steer needs a prompt (or --interactive)")
    if not args.interactive and not args.to:
        raise LapeError("lape steer needs --to LANG (a language of the neuron sets)")
    steerer, source = _steerer(args)
    if args.interactive:
        return repl(steerer, target=args.to, source=source)
    print(steerer.steer(args.prompt, to=args.to, source=source).format())
    return 0


def cmd_steer_eval(args: argparse.Namespace) -> int:
    from ..prompts import load_prompts

    out = common.out_folder(args.out)
    if args.limit is not None and args.limit < 1:
        raise LapeError(f"--limit is {args.limit}: give at least 1 prompt")
    prompts = load_prompts(args.prompts, limit=args.limit)
    steerer, source = _steerer(args)
    targets = args.to or [lang for lang in steerer.sets.labels if lang != source]
    result = steerer.evaluate(prompts, targets=targets, source=source, strengths=args.strengths,
                              progress=not args.quiet, out=out)
    for line in result.summary_lines():
        logger.info(line)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from ..evaluate.perplexity import PerplexityConfig
    from ..evaluate.steering import SteerConfig

    s = sub.add_parser("ppl", help="perplexity matrix under deactivation of each language's neurons")
    common.add_model_args(s)
    s.add_argument("--corpus", default="builtin")
    s.add_argument("--neurons", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--languages", nargs="+", default=None, help="evaluated languages (default: the sets')")
    add_config_args(s, PerplexityConfig)
    s.set_defaults(fn=cmd_ppl)

    for name, fn, helptext in (("steer", cmd_steer, "switch the output language of one prompt, or a REPL"),
                               ("steer-eval", cmd_steer_eval, "steering success over a prompt set")):
        s = sub.add_parser(name, help=helptext)
        common.add_model_args(s, required=False)
        s.add_argument("--neurons", required=True)
        s.add_argument("--stats", required=True)
        s.add_argument("--from", dest="source", default="en", help="source language whose neurons are "
                       "switched off (default en; 'none' keeps them)")
        add_config_args(s, SteerConfig)
        if name == "steer":
            s.add_argument("--to", default=None, help="target language")
            s.add_argument("--interactive", action="store_true", help="a REPL (:to ja, :strength 2, :off, :help)")
            s.add_argument("prompt", nargs="?", default=None)
        else:
            s.add_argument("--to", nargs="+", default=None, help="target languages (default all)")
            s.add_argument("--prompts", required=True, help="a text file (one prompt per line) or "
                           "builtin:parallel / builtin:heldout")
            s.add_argument("--limit", type=int, default=None, help="use the first N prompts")
            s.add_argument("--strengths", type=float, nargs="+", default=None, help="a strength sweep")
            s.add_argument("--out", required=True)
        s.set_defaults(fn=fn)
