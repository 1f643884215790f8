"""``lape record``, ``lape identify`` and ``lape plot``: LAPE's statistics and neuron sets."""

from __future__ import annotations

import argparse

from ..config import add_config_args, config_from_args
from . import common
from .common import logger


def cmd_record(args: argparse.Namespace) -> int:
    from ..neurons.stats import RecordConfig, record

    config = config_from_args(RecordConfig, args)
    part = common.parse_part(args.part)
    out = common.out_folder(args.out)
    model, _, streams = common.corpus_pass(args, config, part=part)
    stats = record(model, streams, config, out=out, progress=not args.quiet)
    logger.info("stats of %d languages (%s tokens counted) -> %s", len(stats.languages),
                f"{int(stats.token_counts.sum()):,}", args.out)
    common.finish_distributed()
    return 0


def cmd_identify(args: argparse.Namespace) -> int:
    from ..neurons.select import IdentifyConfig, identify
    from ..neurons.stats import ActivationStats

    config = config_from_args(IdentifyConfig, args)
    out = common.out_folder(args.out)
    stats = ActivationStats.load(args.stats)
    if args.languages:  # LAPE over the languages of interest only
        stats = stats.subset(args.languages)
    sets = identify(stats, config, out=out)  # and the language-agnostic set in OUT-agnostic
    logger.info("%s neurons per language: %s -> %s", sets.meta["method"],
                ", ".join(f"{k} {v}" for k, v in sets.counts().items()), args.out)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from ..report import save_neuron_plots

    paths = save_neuron_plots(args.neurons, args.stats, out=common.out_folder(args.out))
    logger.info("wrote %d plots: %s", len(paths), ", ".join(str(p) for p in paths))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ..masks import NeuronSets, set_agreement

    rows = set_agreement(NeuronSets.load(args.a), NeuronSets.load(args.b))
    print(f"{'label':<8} {'size A':>7} {'size B':>7} {'shared':>7} {'Jaccard':>8} {'chance':>8}")
    for r in rows:
        print(f"{r['label']:<8} {r['size_a']:>7} {r['size_b']:>7} {r['shared']:>7} {r['jaccard']:>8.3f} "
              f"{r['chance_jaccard']:>8.4f}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from ..neurons.select import IdentifyConfig
    from ..neurons.stats import RecordConfig

    s = sub.add_parser("record", help="count per-language neuron firing (LAPE step 1)")
    common.add_model_args(s)
    s.add_argument("--corpus", default="builtin", help="a data manifest (YAML) or builtin")
    s.add_argument("--out", required=True, help="output folder, e.g. runs/x/stats")
    s.add_argument("--part", default=None, help="K/N: record only documents K, K+N, ... of each language "
                   "(e.g. 1/2 and 2/2: two disjoint halves, for lape compare)")
    add_config_args(s, RecordConfig)
    s.set_defaults(fn=cmd_record)

    s = sub.add_parser("identify", help="select language-specific neurons from recorded stats")
    s.add_argument("stats", help="folder written by lape record")
    s.add_argument("--out", required=True, help="output folder, e.g. runs/x/neurons")
    s.add_argument("--languages", nargs="+", default=None, help="identify over these recorded languages only")
    add_config_args(s, IdentifyConfig)
    s.set_defaults(fn=cmd_identify)

    s = sub.add_parser("compare", help="Jaccard overlap of two neuron-set folders per label, next to chance "
                       "(e.g. sets identified on two halves of the text)")
    s.add_argument("a", help="a neurons folder")
    s.add_argument("b", help="another neurons folder of the same model")
    s.set_defaults(fn=cmd_compare)

    s = sub.add_parser("plot", help="layer distribution, overlap and probability heatmaps of neuron sets")
    s.add_argument("neurons", help="folder written by lape identify")
    s.add_argument("--stats", default=None, help="stats folder (for the probability heatmap); "
                   "default: the stats next to the neurons")
    s.add_argument("--out", default=None, help="plot folder (default: NEURONS/../plots)")
    s.set_defaults(fn=cmd_plot)
