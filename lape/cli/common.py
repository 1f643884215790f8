"""What every command group shares: model options, loading, corpora, torchrun set-up, paths.

Validation of options happens here and in the stage configs, before any work starts.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import LapeError

logger = logging.getLogger("lape")


class Parser(argparse.ArgumentParser):
    """argparse with lape's one-line errors (exit status 2, no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"lape: error: {message} (see lape {self.prog.split(' ', 1)[-1]} --help)\n")


def add_model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    """``--model``, ``--dtype``, ``--device``, ``--device-map``, ``--trust-remote-code``."""
    p.add_argument("--model", required=required, default=None if required else "builtin",
                   help="builtin, a .gguf file, a Hugging Face folder or hub id")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16")
    p.add_argument("--device", default=None, help="cpu (default), cuda, cuda:1, mps")
    p.add_argument("--device-map", default=None, help="auto, balanced, sequential: spread a large model over GPUs")
    p.add_argument("--trust-remote-code", action="store_true", help="allow a model folder's or hub model's own code")


def load(args: argparse.Namespace) -> tuple[Any, Any]:
    """The model and tokenizer named by the model options."""
    from ..models import load_model

    return load_model(args.model, dtype=args.dtype, device=args.device, device_map=args.device_map,
                      trust_remote_code=args.trust_remote_code)


def out_folder(path: str | None, what: str = "--out") -> Path | None:
    """Check an output folder before any work (writable, not a file); ``None`` passes through."""
    from ..artifacts import ensure_folder

    if path is None:
        return None
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise LapeError(f"{what} {path} is a file, not a folder: choose another {what}")
    parent = next((q for q in [p, *p.parents] if q.exists()), Path("."))
    if not parent.is_dir():
        raise LapeError(f"{what} {path} lies under a file ({parent}): choose another {what}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise LapeError(f"{what} {path} cannot be created ({parent} is not writable): choose another {what}")
    if p.exists():
        return ensure_folder(p)
    missing = [q for q in [p, *p.parents] if not q.exists()]  # p first, the outermost missing last
    ensure_folder(p)  # a folder that cannot be made fails here, before any work ...
    for q in missing:  # ... and a command that fails later leaves no empty folders behind
        try:
            q.rmdir()
        except OSError:  # under torchrun another rank checks the same folder at the same time:
            pass  # it may have removed it already, or begun to fill it
    return p


def corpus(m: Any, tokenizer: Any, split: str, tokens: int | None, seq_len: int, seed: int,
           languages: Sequence[str] | None, part: tuple[int, int] | None = None) -> dict[str, Any]:
    """One stream per language of a manifest's split (``part``: only every n-th document)."""
    from ..corpora import load_corpus

    return load_corpus(m, tokenizer, split=split, tokens_per_language=tokens, seq_len=seq_len, seed=seed,
                       languages=list(languages) if languages else None, part=part)


def corpus_pass(args: argparse.Namespace, config: Any, part: tuple[int, int] | None = None
                ) -> tuple[Any, Any, dict[str, Any]]:
    """The start of a command that runs the model over a corpus (``record``, ``regions importance``,
    ``explain``): the manifest's split checked before the model loads, torchrun joined, the model
    loaded, and one stream per language from the config's corpus fields (``split``,
    ``tokens_per_language``, ``seq_len``, ``seed``, ``languages``). Returns ``(model, tokenizer, streams)``."""
    from ..corpora import load_manifest

    m = load_manifest(args.corpus)  # every source checked before the model loads
    m.with_split(config.split, config.languages)
    init_distributed(args)
    model, tok = load(args)
    streams = corpus(m, tok, config.split, config.tokens_per_language, config.seq_len, config.seed,
                     config.languages, part=part)
    return model, tok, streams


def parse_part(text: str | None) -> tuple[int, int] | None:
    """``--part K/N`` (1-based K): documents K, K+N, K+2N, ... of each split; None passes through."""
    if text is None:
        return None
    k, _, n = text.partition("/")
    try:
        part = (int(k) - 1, int(n))
    except ValueError:
        part = None
    if part is None or not 0 <= part[0] < part[1]:
        raise LapeError(f"--part {text} is not K/N with 1 <= K <= N: e.g. 1/2 and 2/2 for two disjoint halves")
    return part


def init_distributed(args: argparse.Namespace) -> None:
    """Join the process group when started by ``torchrun`` (gloo on CPU, nccl on GPUs)."""
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


def finish_distributed() -> None:
    """Leave the process group (all ranks together), then end the process at once.

    Gloo's C++ worker threads can outlive ``destroy_process_group`` and abort the interpreter's
    finalisation ("terminate called without an active exception", SIGABRT) after the work is
    done, which torchrun reports as a failed run. A rank whose results are written therefore
    flushes its output and exits with ``os._exit(0)``.
    """
    import sys

    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
