"""The ``lape`` command: one module per command group, each parsing options, calling one library
function and logging one line. No logic lives here; options of a stage come from its config
dataclass (``RecordConfig`` -> ``--tokens-per-language``, ...), so the CLI and the library never
drift apart.

Groups: :mod:`.data` (``data show``, ``data build-builtin``), :mod:`.neurons` (``record``,
``identify``, ``plot``), :mod:`.evaluate` (``ppl``, ``steer``, ``steer-eval``), :mod:`.regions`
(``regions importance|select|ablate|dims|perturb|train|bridge``), :mod:`.keyneurons`
(``keyneurons attribute|select|eval|compare``), :mod:`.explain` (``explain``) and :mod:`.run` (``info``,
``demo``, ``report``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ..errors import LapeError
from ..version import __version__
from .common import Parser


def build_parser() -> argparse.ArgumentParser:
    from . import data, evaluate, explain, keyneurons, neurons, regions, run

    p = Parser(prog="lape", description="Find, measure and steer the language-specific parts of "
                "large language models.")
    p.add_argument("--version", action="version", version=f"lape {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for group in (run, data, neurons, evaluate, regions, keyneurons, explain):
        group.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lape`` and ``python -m lape``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(message)s" if not args.verbose else "%(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "urllib3", "datasets", "filelock", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
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
    except MemoryError:
        print("lape: error: out of memory: lower --batch-size or --seq-len", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
