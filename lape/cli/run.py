"""``lape info``, ``lape demo`` and ``lape report``."""

from __future__ import annotations

import argparse
import json
import time

from ..config import add_config_args, config_from_args
from . import common
from .common import logger


def cmd_info(args: argparse.Namespace) -> int:
    from ..space import describe_model

    t0 = time.perf_counter()
    model, _ = common.load(args)
    info = describe_model(model, pattern=args.pattern)
    info["load_seconds"] = round(time.perf_counter() - t0, 2)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        fp = info["fingerprint"]
        print(f"model           {info['model']}")
        print(f"architecture    {fp['architecture']}")
        print(f"parameters      {fp['num_parameters']:,}")
        print(f"layers x neurons {info['layers_x_neurons']} = {info['neurons']:,}")
        print(f"activation      {info['activation_module']}  (layers 0..{info['num_layers'] - 1})")
        print(f"down projection {info['down_projection']}")
        print(f"fingerprint     {fp['checksum']}  ({fp['architecture']}, hidden {fp['hidden_size']}, "
              f"vocab {fp['vocab_size']}, {fp['dtype']})")
        print(f"load time       {info['load_seconds']:.1f} s")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..pipeline import DemoConfig, run_demo

    config = config_from_args(DemoConfig, args)
    run_demo(config, out=common.out_folder(args.out), progress=not args.quiet)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ..report import write_report

    logger.info("report -> %s", write_report(args.run))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from ..pipeline import DemoConfig

    s = sub.add_parser("info", help="architecture, size, neuron space and fingerprint of a model")
    common.add_model_args(s, required=False)
    s.add_argument("--pattern", default=None, help="activation module path, e.g. model.layers.{layer}.mlp.act_fn")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_info)

    s = sub.add_parser("demo", help="record -> identify -> perplexity -> steering -> report on the built-in model")
    s.add_argument("--out", default="runs/demo")
    add_config_args(s, DemoConfig)
    s.set_defaults(fn=cmd_demo)

    s = sub.add_parser("report", help="write RUN/report.html from a run folder")
    s.add_argument("run")
    s.set_defaults(fn=cmd_report)
