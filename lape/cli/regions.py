"""``lape regions ...``: Zhang et al.'s linguistic regions.

``importance`` (per-language theta x gradient), ``select`` (core / bottom / random /
monolingual regions), ``stability`` (the regions of two disjoint halves of the text against each
other), ``ablate`` (perplexity with each region removed), ``dims`` (massive
activation dimensions and where the core region sits), ``perturb`` (each massive channel's super
weight and norm scale zeroed and x4, against a median channel), ``train`` (further pre-training
with a region frozen) and ``bridge`` (LAPE neurons against the regions).
"""

from __future__ import annotations

import argparse

from ..config import add_config_args, config_from_args
from ..corpora import load_manifest
from ..errors import LapeError
from ..report import save_result_figure
from . import common
from .common import logger


def _eval_languages(args: argparse.Namespace, manifest, regions_languages: list[str]) -> list[str]:
    """``--languages``, or the manifest's default languages followed by the regions' own."""
    if args.languages:
        return list(args.languages)
    return list(dict.fromkeys([*manifest.default_languages, *regions_languages]))


def cmd_importance(args: argparse.Namespace) -> int:
    from ..regions import ImportanceConfig, param_importance

    config = config_from_args(ImportanceConfig, args)
    out = common.out_folder(args.out)
    model, _, streams = common.corpus_pass(args, config)
    imp = param_importance(model, streams, config, out=out, progress=not args.quiet)
    logger.info("importance of %d tensors over %s (%s predicted tokens) -> %s", len(imp.scores),
                ", ".join(imp.languages), f"{sum(imp.meta['token_counts'].values()):,}", args.out)
    common.finish_distributed()
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    from ..regions import ParamImportance, RegionConfig, select_regions

    config = config_from_args(RegionConfig, args)
    out = common.out_folder(args.out)
    regions = select_regions(ParamImportance.load(args.importance), config, out=out)
    logger.info("regions (entries): %s -> %s", ", ".join(f"{k} {v:,}" for k, v in regions.counts().items()),
                args.out)
    return 0


def cmd_stability(args: argparse.Namespace) -> int:
    from ..corpora import load_manifest
    from ..regions import ImportanceConfig, RegionConfig
    from ..regions.stability import split_half_stability

    config = config_from_args(ImportanceConfig, args)
    region_config = RegionConfig(top_rate=args.top_rate, seed=config.seed, norms=config.norms)
    out = common.out_folder(args.out)
    model, tok, first = common.corpus_pass(args, config, part=(0, 2))  # documents 1, 3, 5, ... (1-based)
    second = common.corpus(load_manifest(args.corpus), tok, config.split, config.tokens_per_language, config.seq_len,
                           config.seed, config.languages, part=(1, 2))
    result = split_half_stability(model, (first, second), config, region_config, labels=args.labels, out=out,
                                  progress=not args.quiet)
    logger.info("%s -> %s", result.summary_line(), args.out)
    common.finish_distributed()
    return 0


def _regions_and_text(args: argparse.Namespace, config, labels: list[str]) -> tuple:
    """``(regions, model, held-out streams)`` of an ``ablate``/``dims`` command line: the
    manifest, the regions of ``args.regions`` and their ``labels`` are checked before the model
    loads, the regions against the model before any text is packed."""
    from ..masks import ParamRegions

    m = load_manifest(args.corpus)
    regions = ParamRegions.load(args.regions)
    for label in labels:
        regions.mask(label)  # an unknown label fails before the model loads
    languages = _eval_languages(args, m, list(regions.meta.get("languages") or []))
    m.with_split(config.split, languages)
    model, tok = common.load(args)
    regions.check_model(model)
    streams = common.corpus(m, tok, config.split, config.tokens_per_language, config.seq_len, config.seed, languages)
    return regions, model, streams


def cmd_ablate(args: argparse.Namespace) -> int:
    from ..plots import region_removal
    from ..regions.ablate import AblateConfig, ablate_regions, keep_massive_rows, region_of_row
    from ..regions.massive import find_massive_dims

    config = config_from_args(AblateConfig, args)
    out = common.out_folder(args.out)
    regions, model, streams = _regions_and_text(args, config, labels=[region_of_row(r) for r in args.rows or []])
    rows = args.rows  # None: every region, with core/bottom/random-matrices (the regions without norm entries)
    extra = {}
    if args.keep_massive and "core" in regions.labels:  # the row is the core without its massive entries
        massive = find_massive_dims(model, streams)
        logger.info("%s", massive.summary_line())
        extra = keep_massive_rows(model, regions, massive)
    result = ablate_regions(model, streams, regions, config, rows=rows, extra=extra, out=out,
                            progress=not args.quiet)
    save_result_figure(result, out, "removal", region_removal)
    logger.info("%s -> %s", result.summary_line(), args.out)
    return 0


def cmd_dims(args: argparse.Namespace) -> int:
    from ..plots.regions import dimension_figure
    from ..regions.dims import DimsConfig, region_dims

    config = config_from_args(DimsConfig, args)
    out = common.out_folder(args.out)
    regions, model, streams = _regions_and_text(args, config, labels=[config.label])
    result = region_dims(model, streams, regions, config, out=out)
    save_result_figure(result, out, "dimensions", lambda r: dimension_figure(r.profile, r.massive))
    logger.info("%s -> %s", result.summary_line(), args.out)
    return 0


def cmd_perturb(args: argparse.Namespace) -> int:
    from ..plots.regions import superweight_figure
    from ..regions import ParamImportance
    from ..regions.massive import find_massive_dims
    from ..regions.perturb import PerturbConfig, region_perturb

    config = config_from_args(PerturbConfig, args)
    out = common.out_folder(args.out)
    m = load_manifest(args.corpus)
    languages = list(args.languages or m.default_languages)
    m.with_split(config.split, languages)
    imp = ParamImportance.load(args.importance) if args.importance else None
    model, tok = common.load(args)
    if imp is not None:
        imp.check_model(model)
    streams = common.corpus(m, tok, config.split, config.tokens_per_language, config.seq_len, config.seed, languages)
    massive = find_massive_dims(model, streams, ratio=args.ratio)
    if not massive.dims:
        raise LapeError(f"no massive-activation dimension above {args.ratio:g}x its layer's median channel peak: lower --ratio "
                        f"({massive.summary_line()})")
    result = region_perturb(model, streams, massive, config, scores=imp, ordinary_dim=args.ordinary_dim, out=out,
                     progress=not args.quiet)
    save_result_figure(result, out, "superweights", superweight_figure)
    logger.info("%s", result.verdict())
    logger.info("%s -> %s", result.summary_line(), args.out)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ..masks import ParamRegions
    from ..plots.regions import forgetting_figure
    from ..regions import train as rt
    from ..regions.forgetting import MAGNITUDE, NONE

    config = config_from_args(rt.TrainConfig, args)
    if not config.train_language:
        raise LapeError("lape regions train needs --train-language (the language to continue pre-training on)")
    out = common.out_folder(args.out)
    m = load_manifest(args.corpus)
    regions = ParamRegions.load(args.regions) if args.regions else None
    if regions is None and any(s not in (NONE, MAGNITUDE) for s in config.freeze):
        raise LapeError(f"--freeze {' '.join(config.freeze)} needs --regions (a folder written by lape regions "
                        "select), or use --freeze none magnitude")
    languages = _eval_languages(args, m, [config.train_language, *((regions.meta.get("languages") or [])
                                                                   if regions else [])])
    m.with_split("train", [config.train_language])
    m.with_split("valid", languages)
    model, tok = common.load(args)
    if regions is not None:
        regions.check_model(model)
    train = common.corpus(m, tok, "train", config.steps * config.batch_size * config.seq_len, config.seq_len,
                          config.seed, [config.train_language])
    valid = common.corpus(m, tok, "valid", config.eval_tokens_per_language, config.seq_len, config.seed, languages)
    result = rt.region_train(model, train, valid, regions, config, out=out, progress=not args.quiet)
    save_result_figure(result, out, "forgetting", forgetting_figure)
    logger.info("%s", result.verdict())
    logger.info("%s -> %s", result.summary_line(), args.out)
    return 0


def cmd_bridge(args: argparse.Namespace) -> int:
    from ..masks import NeuronSets, ParamRegions
    from ..regions.bridge import region_bridge
    from ..space import ParamSpace

    regions = ParamRegions.load(args.regions)
    sets = NeuronSets.load(args.neurons)
    model, _ = common.load(args)  # the neuron-to-weight map comes from the model
    regions.check_model(model)
    sets.check_model(model)
    out = common.out_folder(args.out)
    result = region_bridge(sets, regions, ParamSpace.of(model), region_labels=args.region_labels, out=out)
    for r in result.rows:
        logger.info("%-6s in %-10s params %6.2f%% (chance %6.2f%%, x%.2f)", r["set"], r["region"],
                    100 * r["param_share"], 100 * r["param_share_chance"], r["param_enrichment"])
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from ..regions import ImportanceConfig, RegionConfig
    from ..regions.ablate import AblateConfig
    from ..regions.dims import DimsConfig
    from ..regions.perturb import PerturbConfig
    from ..regions.train import TrainConfig

    group = sub.add_parser("regions", help="linguistic regions (Zhang et al. 2024): importance, select, stability, ablate, "
                           "dims, perturb, train, bridge")
    rsub = group.add_subparsers(dest="regions_command", required=True, metavar="STEP", parser_class=common.Parser)

    s = rsub.add_parser("importance", help="per-language parameter importance theta x summed gradient")
    common.add_model_args(s)
    s.add_argument("--corpus", default="builtin", help="a data manifest (YAML) or builtin")
    s.add_argument("--out", required=True, help="output folder, e.g. runs/x/importance")
    add_config_args(s, ImportanceConfig)
    s.set_defaults(fn=cmd_importance)

    s = rsub.add_parser("select", help="core, bottom, random and monolingual regions from an importance")
    s.add_argument("importance", help="folder written by lape regions importance")
    s.add_argument("--out", required=True, help="output folder, e.g. runs/x/regions")
    add_config_args(s, RegionConfig)
    s.set_defaults(fn=cmd_select)

    s = rsub.add_parser("stability", help="split-half stability: importance and regions on two disjoint halves "
                        "of each language's text, Jaccard between them against chance")
    common.add_model_args(s)
    s.add_argument("--corpus", default="builtin", help="a data manifest (YAML) or builtin")
    s.add_argument("--out", required=True, help="output folder, e.g. runs/x/region-stability")
    s.add_argument("--top-rate", type=float, default=RegionConfig.top_rate,
                   help=f"share of each tensor per region (default: {RegionConfig.top_rate})")
    s.add_argument("--labels", nargs="+", default=None,
                   help="regions to compare (default: core and every monolingual region)")
    add_config_args(s, ImportanceConfig)
    s.set_defaults(fn=cmd_stability)

    s = rsub.add_parser("ablate", help="perplexity per language with each region removed")
    s.add_argument("regions", help="folder written by lape regions select")
    common.add_model_args(s)
    s.add_argument("--corpus", default="builtin")
    s.add_argument("--out", required=True)
    s.add_argument("--rows", nargs="+", default=None,
                   help="regions to remove; LABEL-matrices removes a region without its norm entries (default: "
                        "every region, and core-, bottom- and random-matrices)")
    s.add_argument("--languages", nargs="+", default=None,
                   help="evaluated languages (default: the manifest's default languages and the regions')")
    s.add_argument("--keep-massive", action="store_true",
                   help="add a row: the core region with its massive-activation-dimension entries kept")
    add_config_args(s, AblateConfig)
    s.set_defaults(fn=cmd_ablate)

    s = rsub.add_parser("dims", help="massive activation dimensions and where a region sits along the residual")
    s.add_argument("regions", help="folder written by lape regions select")
    common.add_model_args(s)
    s.add_argument("--corpus", default="builtin")
    s.add_argument("--out", required=True)
    s.add_argument("--languages", nargs="+", default=None,
                   help="text to find massive dimensions on (default: the manifest's default languages and the regions')")
    add_config_args(s, DimsConfig)
    s.set_defaults(fn=cmd_dims)

    s = rsub.add_parser("perturb", help="super weights: each massive channel's down-projection entry (and norm scale) "
                        "zeroed and x4 against a median channel; PPL per language and first-token values")
    common.add_model_args(s)
    s.add_argument("--corpus", default="builtin")
    s.add_argument("--out", required=True)
    s.add_argument("--importance", default=None,
                   help="importance folder: report each super weight's importance and rank in its tensor")
    s.add_argument("--languages", nargs="+", default=None, help="evaluated languages (default: the manifest's default)")
    s.add_argument("--ratio", type=float, default=100.0, help="massive: peak |h| above this x the median (default: 100)")
    s.add_argument("--ordinary-dim", type=int, default=None,
                   help="the control channel (default: the median channel of each super weight's layer)")
    add_config_args(s, PerturbConfig)
    s.set_defaults(fn=cmd_perturb)

    s = rsub.add_parser("train", help="continued pre-training on one language with a region, the largest-|theta| "
                        "entries or nothing frozen, per seed (forgetting, with 95%% intervals)")
    common.add_model_args(s)
    s.add_argument("--regions", default=None, help="folder written by lape regions select (for --freeze core/random; "
                   "--freeze magnitude matches the core's count per tensor)")
    s.add_argument("--corpus", default="builtin")
    s.add_argument("--out", required=True)
    s.add_argument("--languages", nargs="+", default=None,
                   help="evaluated languages (default: the manifest's default languages and the regions')")
    add_config_args(s, TrainConfig)
    s.set_defaults(fn=cmd_train)

    s = rsub.add_parser("bridge", help="share of each neuron set's weights in each region, against chance")
    s.add_argument("regions", help="folder written by lape regions select")
    s.add_argument("--neurons", required=True, help="neuron sets (lape identify, or any NeuronSets folder)")
    common.add_model_args(s, required=False)
    s.add_argument("--region-labels", nargs="+", default=None, help="regions to compare (default: all)")
    s.add_argument("--out", default=None, help="folder to save the result into (bridge.csv beside it)")
    s.set_defaults(fn=cmd_bridge)
