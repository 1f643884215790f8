"""``lape record``, ``lape identify`` and ``lape plot``: LAPE's statistics and neuron sets."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import add_config_args, config_from_args
from ..corpora import load_manifest
from . import common
from .common import logger


def cmd_record(args: argparse.Namespace) -> int:
    from ..activations import RecordConfig, record

    config = config_from_args(RecordConfig, args)
    out = common.out_folder(args.out)
    m = load_manifest(args.corpus)  # every source checked before the model loads
    m.with_split(config.split, config.languages)
    common.init_distributed(args)
    model, tok = common.load(args)
    streams = common.corpus(m, tok, config.split, config.tokens_per_language, config.seq_len, config.seed,
                            config.languages)
    stats = record(model, streams, config, out=out, progress=not args.quiet)
    logger.info("stats of %d languages (%s tokens counted) -> %s", len(stats.languages),
                f"{int(stats.token_counts.sum()):,}", args.out)
    common.finish_distributed()
    return 0


def cmd_identify(args: argparse.Namespace) -> int:
    from ..activations import ActivationStats
    from ..entropy import IdentifyConfig, identify, language_agnostic

    config = config_from_args(IdentifyConfig, args)
    out = common.out_folder(args.out)
    stats = ActivationStats.load(args.stats)
    if args.languages:  # LAPE over the languages of interest only
        stats = stats.subset(args.languages)
    sets = identify(stats, config, out=out)
    language_agnostic(stats, out=Path(args.out).with_name(Path(args.out).name + "-agnostic"))
    logger.info("%s neurons per language: %s -> %s", sets.meta["method"],
                ", ".join(f"{k} {v}" for k, v in sets.counts().items()), args.out)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from ..report import save_neuron_plots

    paths = save_neuron_plots(args.neurons, args.stats, out=common.out_folder(args.out))
    logger.info("wrote %d plots: %s", len(paths), ", ".join(str(p) for p in paths))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from ..activations import RecordConfig
    from ..entropy import IdentifyConfig

    s = sub.add_parser("record", help="count per-language neuron firing (LAPE step 1)")
    common.add_model_args(s)
    s.add_argument("--corpus", default="builtin", help="a data manifest (YAML) or builtin")
    s.add_argument("--out", required=True, help="output folder, e.g. runs/x/stats")
    add_config_args(s, RecordConfig)
    s.set_defaults(fn=cmd_record)

    s = sub.add_parser("identify", help="select language-specific neurons from recorded stats")
    s.add_argument("stats", help="folder written by lape record")
    s.add_argument("--out", required=True, help="output folder, e.g. runs/x/neurons")
    s.add_argument("--languages", nargs="+", default=None, help="identify over these recorded languages only")
    add_config_args(s, IdentifyConfig)
    s.set_defaults(fn=cmd_identify)

    s = sub.add_parser("plot", help="layer distribution, overlap and probability heatmaps of neuron sets")
    s.add_argument("neurons", help="folder written by lape identify")
    s.add_argument("--stats", default=None, help="stats folder (for the probability heatmap); "
                   "default: the stats next to the neurons")
    s.add_argument("--out", default=None, help="plot folder (default: NEURONS/../plots)")
    s.set_defaults(fn=cmd_plot)
