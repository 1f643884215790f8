"""Multilingual text for lape: manifests, document sources, packing, the built-in corpus.

* :mod:`.manifest`: YAML manifests and their validation (``load_manifest``);
* :mod:`.sources`: documents of a language and split (``iter_documents``), parallel text,
  the content key of what a split reads (``sources_key``), ``show_manifest``;
* :mod:`.packing`: packed token sequences and per-language streams (``load_corpus``,
  ``batches``);
* :mod:`.builtin`: building the cached built-in corpus (``build_builtin_corpus``);
* :mod:`.identity`: what a stage records about its text (``corpus_key``, ``corpus_config``) and the
  checks before the model runs (``check_corpus``).

This package never runs a model (:mod:`.identity` reads its position limit).
"""

from .builtin import BUILTIN_SOURCES, build_builtin_corpus, clean_generated_text
from .manifest import BUILTIN_MANIFEST, KINDS, SPLITS, Manifest, load_manifest
from .packing import LanguageStream, Sequence, batches, load_corpus, pack
from .sources import iter_documents, parallel_texts, show_manifest, sources_key

__all__ = [
    "BUILTIN_MANIFEST", "BUILTIN_SOURCES", "KINDS", "SPLITS", "LanguageStream", "Manifest",
    "Sequence", "batches", "build_builtin_corpus", "clean_generated_text", "iter_documents",
    "load_corpus", "load_manifest", "pack", "parallel_texts", "show_manifest", "sources_key",
]
