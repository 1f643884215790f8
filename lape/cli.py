"""The ``lape`` command: argparse subcommands, each parsing options, calling one library
function and logging a one-line summary. No logic lives here.

Options of a stage come from its config dataclass (``RecordConfig`` -> ``--tokens-per-language``,
``--seq-len``, ...), so the CLI and the library never drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .errors import LapeError

logger = logging.getLogger("lape")


# --------------------------------------------------------------------------------------------
# helpers: config dataclasses <-> argparse


def add_config_args(parser: argparse.ArgumentParser, cls: type, skip: Sequence[str] = ()) -> None:
    """Add one ``--option`` per field of a config dataclass (defaults from the dataclass)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        hint = hints[f.name]
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif default is None or "tuple" in str(hint):
            item = int if "int" in str(hint) else float if "float" in str(hint) else str
            parser.add_argument(flag, nargs="+", type=item, default=default, metavar="X")
        else:
            parser.add_argument(flag, type=type(default), default=default,
                                help=f"(default: {default})")


def config_from_args(cls: type, args: argparse.Namespace, **overrides: Any):
    """Build a config dataclass from parsed args (fields missing from args keep their default)."""
    kw = {}
    for f in dataclasses.fields(cls):
        if hasattr(args, f.name):
            v = getattr(args, f.name)
            kw[f.name] = tuple(v) if isinstance(v, list) else v
    kw.update(overrides)
    return cls(**kw)


def _add_model(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--model", required=required, default=None if required else "builtin",
                   help="builtin, a .gguf file, a Hugging Face folder or hub id")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16")
    p.add_argument("--device", default=None, help="cpu (default), cuda, cuda:1, ...")
    p.add_argument("--device-map", default=None, help="e.g. auto: spread a large model over GPUs")
    p.add_argument("--trust-remote-code", action="store_true", help="allow a hub model's own code")


def _load(args: argparse.Namespace):
    from .models import load_model

    return load_model(args.model, dtype=args.dtype, device=args.device, device_map=args.device_map,
                      trust_remote_code=args.trust_remote_code)


# --------------------------------------------------------------------------------------------
# subcommands


def cmd_info(args: argparse.Namespace) -> int:
    from .models import fingerprint
    from .neurons import NeuronSpace

    t0 = time.perf_counter()
    model, _ = _load(args)
    seconds = time.perf_counter() - t0
    space = NeuronSpace.of(model, pattern=args.pattern)
    fp = fingerprint(model)
    info = {
        "model": args.model, "architecture": fp["architecture"],
        "parameters": fp["num_parameters"], "layers_x_neurons": f"{space.num_layers} x {space.neurons_per_layer}",
        "neurons": space.num_neurons, "activation_module": space.act_paths[0],
        "down_projection": space.down_paths[0], "fingerprint": fp, "load_seconds": round(seconds, 2),
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"model           {args.model}")
        print(f"architecture    {fp['architecture']}")
        print(f"parameters      {fp['num_parameters']:,}")
        print(f"layers x neurons {space.num_layers} x {space.neurons_per_layer} = {space.num_neurons:,}")
        print(f"activation      {space.act_paths[0]}  (layers 0..{space.num_layers - 1})")
        print(f"down projection {space.down_paths[0]}")
        print(f"fingerprint     {fp['checksum']}  ({fp['architecture']}, hidden {fp['hidden_size']}, "
              f"vocab {fp['vocab_size']})")
        print(f"load time       {seconds:.1f} s")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from . import corpora

    if args.data_cmd == "build-builtin":
        folder = corpora.build_builtin_corpus(force=True)
        logger.info("built-in corpus rebuilt in %s", folder)
        return 0
    tok = None
    if not args.no_tokens:
        from .models import load_tokenizer

        tok = load_tokenizer(args.tokenizer)
    print(corpora.show_manifest(args.manifest, tok))
    return 0


def _corpus(args: argparse.Namespace, tokenizer, split: str, tokens: int, seq_len: int, seed: int,
            languages: Sequence[str] | None):
    from .corpora import load_corpus, load_manifest

    manifest = load_manifest(args.corpus)
    streams = load_corpus(manifest, tokenizer, split=split, tokens_per_language=tokens, seq_len=seq_len,
                          seed=seed, languages=list(languages) if languages else None)
    return manifest, streams


def _init_distributed(args: argparse.Namespace) -> None:
    """Join the process group when started by ``torchrun`` (gloo on CPU, nccl on GPUs)."""
    import os

    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.distributed.is_initialized():
        return
    use_cuda = torch.cuda.is_available() and (args.device or "").startswith("cuda")
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        args.device = f"cuda:{local}"
    else:  # ranks share the CPU cores instead of each taking all of them
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    torch.distributed.init_process_group("nccl" if use_cuda else "gloo")
    if torch.distributed.get_rank() != 0:
        args.quiet = True
        logging.getLogger().setLevel(logging.WARNING)


def cmd_record(args: argparse.Namespace) -> int:
    from .record import RecordConfig, record

    config = config_from_args(RecordConfig, args)
    _init_distributed(args)
    model, tok = _load(args)
    manifest, streams = _corpus(args, tok, config.split, config.tokens_per_language, config.seq_len,
                                config.seed, config.languages)
    stats = record(model, streams, config, out=args.out,
                   inputs={"manifest": str(manifest.path), "manifest_hash": manifest.hash()},
                   progress=not args.quiet)
    logger.info("stats of %d languages (%s tokens) -> %s  [%.0f tokens/s]", len(stats.languages),
                f"{int(stats.token_counts.sum()):,}", args.out, stats.meta.get("tokens_per_second", 0))
    import torch

    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0


def cmd_identify(args: argparse.Namespace) -> int:
    from .entropy import IdentifyConfig, identify, language_agnostic
    from .record import ActivationStats

    stats = ActivationStats.load(args.stats)
    if args.languages:  # LAPE over the languages of interest only
        stats = stats.subset(args.languages)
    sets = identify(stats, config_from_args(IdentifyConfig, args))
    sets.save(args.out)
    language_agnostic(stats).save(Path(args.out).with_name(Path(args.out).name + "-agnostic"))
    counts = sets.counts()
    logger.info("%s neurons per language: %s -> %s", sets.meta["method"],
                ", ".join(f"{k} {v}" for k, v in counts.items()), args.out)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from .report import save_neuron_plots

    paths = save_neuron_plots(args.neurons, args.stats, out=args.out)
    logger.info("wrote %d plots: %s", len(paths), ", ".join(str(p) for p in paths))
    return 0


def cmd_ppl(args: argparse.Namespace) -> int:
    from . import artifacts
    from .corpora import load_manifest
    from .models import fingerprint
    from .neurons import NeuronSets
    from .perplexity import PerplexityConfig, ppl_matrix

    config = config_from_args(PerplexityConfig, args)
    model, tok = _load(args)
    sets = NeuronSets.load(args.neurons, model=model)
    languages = args.languages or sets.labels
    key = artifacts.content_hash({"fingerprint": fingerprint(model), "config": config.to_dict(),
                                  "languages": languages, "manifest": load_manifest(args.corpus).hash(),
                                  "neurons": artifacts.file_hash(Path(args.neurons) / "neurons.safetensors")})
    if artifacts.is_current(Path(args.out) / "ppl.json", key):
        logger.info("%s is up to date for these inputs: skipped", args.out)
        return 0
    manifest, streams = _corpus(args, tok, config.split, config.tokens_per_language, config.seq_len,
                                config.seed, languages)
    result = ppl_matrix(model, streams, sets.subset([lang for lang in sets.labels if lang in languages]),
                        config, inputs={"manifest_hash": manifest.hash(), "neurons": str(args.neurons)},
                        progress=not args.quiet)
    result.meta["cache_key"] = key
    result.save(args.out)
    wins = sum(d["own_above_off_diagonal"] for d in result.diagonal_summary())
    logger.info("perplexity matrix (%d x %d) -> %s; own language hit hardest in %d of %d rows",
                len(result.rows), len(result.languages), args.out, wins, len(result.rows))
    return 0


def _steerer(args: argparse.Namespace):
    """The model, neuron sets and stats of a steering command, checked against each other."""
    from .neurons import NeuronSets
    from .record import ActivationStats
    from .steering import SteerConfig, Steerer

    if args.source == "none":
        args.source = None
    model, tok = _load(args)
    sets = NeuronSets.load(args.neurons, model=model)
    stats = ActivationStats.load(args.stats, model=model)
    return Steerer(model, tok, sets, stats, config_from_args(SteerConfig, args))


def cmd_steer(args: argparse.Namespace) -> int:
    from .steering import repl

    steerer = _steerer(args)
    if args.interactive:
        return repl(steerer, target=args.to, source=args.source)
    if not args.prompt:
        raise LapeError("lape steer needs a prompt (or --interactive)")
    if not args.to:
        raise LapeError("lape steer needs --to LANG (a language of the neuron sets)")
    out = steerer.steer(args.prompt, to=args.to, source=args.source)
    print(out.format())
    return 0


def cmd_steer_eval(args: argparse.Namespace) -> int:
    from . import artifacts
    from .models import fingerprint
    from .steering import load_prompts

    steerer = _steerer(args)
    model, sets, config = steerer.model, steerer.sets, steerer.config
    prompts = load_prompts(args.prompts, limit=args.limit)
    targets = args.to or [lang for lang in sets.labels if lang != args.source]
    key = artifacts.content_hash({"fingerprint": fingerprint(model), "config": config.to_dict(), "prompts": prompts,
                                  "targets": targets, "source": args.source, "strengths": args.strengths,
                                  "neurons": artifacts.file_hash(Path(args.neurons) / "neurons.safetensors"),
                                  "stats": artifacts.file_hash(Path(args.stats) / "stats.safetensors")})
    if artifacts.is_current(Path(args.out) / "steering.json", key):
        logger.info("%s is up to date for these inputs: skipped", args.out)
        return 0
    result = steerer.evaluate(prompts, targets=targets, source=args.source,
                              strengths=args.strengths, progress=not args.quiet)
    result.meta["cache_key"] = key
    result.save(args.out)
    for line in result.summary_lines():
        logger.info(line)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .pipeline import DemoConfig, run_demo

    config = config_from_args(DemoConfig, args)
    run_demo(config, out=args.out, progress=not args.quiet)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    path = write_report(args.run)
    logger.info("report -> %s", path)
    return 0


# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from .entropy import IdentifyConfig
    from .perplexity import PerplexityConfig
    from .record import RecordConfig

    p = argparse.ArgumentParser(prog="lape", description="Find, measure and steer the language-specific "
                                "neurons of large language models.")
    p.add_argument("--version", action="version", version=f"lape {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("info", help="architecture, size, neuron space and fingerprint of a model")
    _add_model(s, required=False)
    s.add_argument("--pattern", default=None, help="activation module path, e.g. model.layers.{layer}.mlp.act_fn")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_info)

    s = sub.add_parser("data", help="corpora: show a manifest, rebuild the built-in corpus")
    dsub = s.add_subparsers(dest="data_cmd", required=True, metavar="ACTION")
    d = dsub.add_parser("show", help="per-language sources, documents and tokens of a manifest")
    d.add_argument("manifest", help="a YAML manifest, or builtin")
    d.add_argument("--tokenizer", default="builtin", help="model whose tokenizer counts tokens")
    d.add_argument("--no-tokens", action="store_true", help="skip token counting")
    dsub.add_parser("build-builtin", help="rebuild the cached built-in corpus")
    s.set_defaults(fn=cmd_data)

    s = sub.add_parser("record", help="count per-language neuron firing (LAPE step 1)")
    _add_model(s)
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

    s = sub.add_parser("ppl", help="perplexity matrix under deactivation of each language's neurons")
    _add_model(s)
    s.add_argument("--corpus", default="builtin")
    s.add_argument("--neurons", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--languages", nargs="+", default=None, help="evaluated languages (default: the sets')")
    add_config_args(s, PerplexityConfig)
    s.set_defaults(fn=cmd_ppl)

    from .steering import SteerConfig

    for name, fn, helptext in (("steer", cmd_steer, "switch the output language of one prompt, or a REPL"),
                               ("steer-eval", cmd_steer_eval, "steering success over a prompt set")):
        s = sub.add_parser(name, help=helptext)
        _add_model(s, required=False)
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

    from .pipeline import DemoConfig

    s = sub.add_parser("demo", help="record -> identify -> perplexity -> steering -> report on the built-in model")
    s.add_argument("--out", default="runs/demo")
    add_config_args(s, DemoConfig)
    s.set_defaults(fn=cmd_demo)

    s = sub.add_parser("report", help="write RUN/report.html from a run folder")
    s.add_argument("run")
    s.set_defaults(fn=cmd_report)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lape`` and ``python -m lape``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(message)s" if not args.verbose else "%(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "urllib3", "datasets", "filelock", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        return int(args.fn(args) or 0)
    except LapeError as exc:
        print(f"lape: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lape: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
