"""``lape data show`` and ``lape data build-builtin``."""

from __future__ import annotations

import argparse

from .common import logger


def cmd_show(args: argparse.Namespace) -> int:
    from ..corpora import load_manifest, show_manifest

    m = load_manifest(args.manifest)  # checked before the tokenizer loads
    tok = None
    if not args.no_tokens:
        from ..models import load_tokenizer

        tok = load_tokenizer(args.tokenizer)
    print(show_manifest(m, tok))
    return 0


def cmd_build_builtin(args: argparse.Namespace) -> int:
    from ..corpora import build_builtin_corpus

    logger.info("built-in corpus rebuilt in %s", build_builtin_corpus(force=True))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("data", help="corpora: show a manifest, rebuild the built-in corpus")
    dsub = s.add_subparsers(dest="data_cmd", required=True, metavar="ACTION")
    d = dsub.add_parser("show", help="per-language sources, documents and tokens of a manifest")
    d.add_argument("manifest", help="a YAML manifest, or builtin")
    d.add_argument("--tokenizer", default="builtin", help="model whose tokenizer counts tokens")
    d.add_argument("--no-tokens", action="store_true", help="skip token counting")
    d.set_defaults(fn=cmd_show)
    b = dsub.add_parser("build-builtin", help="rebuild the cached built-in corpus")
    b.set_defaults(fn=cmd_build_builtin)
