"""``lape explain``: neuron cards for any neuron sets (LAPE, key neurons, a region's neuron view, a
hand-written list), written as ``OUT/index.html`` (offline page) and ``OUT/cards.json``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import add_config_args, config_from_args
from ..errors import LapeError
from ..masks import parse_neuron
from . import common
from .common import logger


def cmd_explain(args: argparse.Namespace) -> int:
    from ..explain import ExplainConfig
    from ..explain.run import explain_sets, load_neuron_sets
    from ..runningstats import dist_info
    from ..space import NeuronSpace

    config = config_from_args(ExplainConfig, args)
    extra = [parse_neuron(t) for t in args.neuron or []]
    if not args.sets and not extra:
        raise LapeError("nothing to explain: give neuron-set folders (e.g. runs/demo/neurons) or --neuron LAYER:INDEX")
    if args.random_control is not None and not args.sets:
        raise LapeError("--random-control needs neuron-set folders to draw a control like")
    out = common.out_folder(args.out)
    model, tok, streams = common.corpus_pass(args, config)
    sets = load_neuron_sets(args.sets, model, NeuronSpace.of(model))
    cards = explain_sets(model, tok, streams, sets, config, extra=extra, random_control=args.random_control,
                         out=out, progress=not args.quiet)
    if dist_info()[0] == 0:
        logger.info("cards of %d neurons over %s -> %s (open %s)", len(cards.neurons), ", ".join(cards.languages),
                    args.out, Path(args.out) / "index.html")
    common.finish_distributed()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from ..explain import ExplainConfig

    s = sub.add_parser("explain", help="neuron cards: top contexts per language, firing and written tokens, "
                       "as an offline page (OUT/index.html) and OUT/cards.json")
    s.add_argument("sets", nargs="*", help="neuron-set folders (RUN/neurons, key-neuron sets) or RUN/regions")
    s.add_argument("--neuron", action="append", default=None, metavar="LAYER:INDEX",
                   help="a neuron to explain as well (repeatable)")
    s.add_argument("--random-control", type=int, default=None, metavar="SEED",
                   help="also explain a random set of the same count per layer as the first set (random:LABEL)")
    common.add_model_args(s)
    s.add_argument("--corpus", default="builtin", help="a data manifest (YAML) or builtin")
    s.add_argument("--out", required=True, help="output folder, e.g. runs/demo/explain")
    add_config_args(s, ExplainConfig)
    s.set_defaults(fn=cmd_explain)
