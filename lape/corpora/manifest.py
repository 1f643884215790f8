"""Multilingual text for lape: YAML manifests, document sources, packing into token sequences.

The first step of the LAPE pipeline (Tang et al. 2024, "Language-Specific Neurons: The Key to
Multilingual Capabilities in Large Language Models"): per language, a stream of fixed-length
token sequences that the recorder runs through the model. The paper records on Wikipedia text
per language under a token budget; lape reads any corpus a manifest describes.

A **manifest** (``data_manifests/*.yaml``) names, per language code (ISO 639-1 where one
exists), its provenance, licence and splits::

    name: my-corpus
    default_languages: [en, fr]          # optional demo subset; default: all
    languages:
      en:
        source: English Wikipedia dump 2023-11-01      # free-text provenance
        license: CC BY-SA 4.0
        train:                                          # one source or a list of sources
          - {kind: text, path: texts/en/*.txt, docs: blocks}
          - {kind: hf, path: wikimedia/wikipedia, name: 20231101.en, split: train,
             text_field: text, streaming: true}
        valid: {from: train, share: 0.1}                # held back from train by document hash
        parallel: {kind: text, path: udhr/en.txt, docs: blocks}
      fr: ...

Split names are ``train`` (recording), ``valid`` (held out, for perplexity) and the optional
``parallel`` (the same content in every language, aligned by position). Every language must
declare the same splits. Source kinds:

* ``text``: ``path`` (a file, a glob, or a list of them; relative to the manifest's folder),
  ``docs: lines`` (one document per line, the default) or ``blocks`` (blank-line-separated),
  optional ``min_chars``.
* ``hf``: a ``datasets`` dataset. A local folder written by ``Dataset.save_to_disk`` is read
  with ``load_from_disk``; anything else goes to ``load_dataset(path, name, split=...,
  streaming=...)``, e.g. ``{kind: hf, path: wikimedia/wikipedia, name: 20231101.fr, split:
  train, streaming: true}`` (needs the hub or a populated HF cache). Keys: ``path``, ``name``,
  ``split``, ``text_field`` (default ``text``), ``streaming``, ``data_files``, ``revision``,
  ``min_chars``.
* ``builtin``: the built-in corpus (``split: train | valid | parallel``, optional
  ``language``), see :func:`build_builtin_corpus`.

A derived split ``{from: train, share: 0.1}`` takes the documents whose stable hash (sha256 of
the text) falls in a fixed share of the hash range; the base split keeps the rest. So the two
never share a document, whatever the order of the documents or the seed.

Documents are stripped and empty ones dropped. :func:`pack` turns documents into sequences of
``seq_len`` tokens: each starts with BOS, documents are separated by EOS, only the last one is
padded (attention mask 0). :func:`load_corpus` returns one re-iterable, deterministic
:class:`LanguageStream` per language with a token budget.

This module reads and validates manifests; it never reads a corpus or touches a model.
"""

from __future__ import annotations

import glob
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..artifacts import file_hash
from ..errors import LapeError
from ..files import read_yaml

_Fail = Callable[[str], LapeError]  # builds the error for a message (adds the manifest's name)

SPLITS = ("train", "valid", "parallel")  # the split names a manifest may declare
KINDS = ("text", "hf", "builtin")  # the source kinds
_TOP_KEYS = ("name", "description", "default_languages", "stats_tokenizer", "languages")
_ENTRY_KEYS = ("source", "license", "note", "stats", *SPLITS)
_SOURCE_KEYS = {
    "text": ("kind", "path", "docs", "min_chars"),
    "hf": ("kind", "path", "name", "split", "text_field", "streaming", "data_files", "revision",
           "min_chars"),
    "builtin": ("kind", "split", "language"),
}
_DERIVED_KEYS = ("from", "share")

_PACKAGE_DIR = Path(__file__).resolve().parent.parent
BUILTIN_MANIFEST = _PACKAGE_DIR.parent / "data_manifests" / "builtin.yaml"


def bucket(doc: str) -> float:
    """A stable position in [0, 1) for a document: its sha256, independent of order or seed."""
    return int.from_bytes(hashlib.sha256(doc.encode("utf-8")).digest()[:8], "big") / 2.0**64


@dataclass(frozen=True)
class Manifest:
    """A validated corpus manifest.

    Attributes:
        path: the YAML file.
        name: the manifest's ``name`` (default: the file's stem).
        languages: every language code, in manifest order.
        default_languages: the manifest's ``default_languages`` (a demo subset), or all.
        entries: the raw entry of each language (as in the YAML).

    Example:
        >>> m = load_manifest("builtin")
        >>> m.split_names("en")
        ['train', 'valid', 'parallel']
    """

    path: Path
    name: str
    languages: list[str]
    default_languages: list[str]
    entries: dict[str, dict[str, Any]] = field(repr=False)

    def entry(self, lang: str) -> dict[str, Any]:
        """The raw entry of one language (its provenance, licence, splits and stats)."""
        self._check_language(lang)
        return self.entries[lang]

    def hash(self) -> str:
        """Content hash of the manifest file (16 hex digits; goes into artifact sidecars)."""
        return file_hash(self.path)

    def split_names(self, lang: str) -> list[str]:
        """The splits the language declares, in manifest order."""
        return [k for k in self.entry(lang) if k in SPLITS]

    def with_split(self, split: str, languages: list[str] | None = None) -> list[str]:
        """``languages`` (default: all of the manifest's), after checking that each is in the
        manifest and declares ``split``; a one-line error names the first that does not."""
        codes = list(self.languages) if languages is None else [str(c) for c in languages]
        for code in codes:
            if split not in self.split_names(code):
                raise LapeError(f"language {code!r} of manifest {self.path} has no split {split!r} "
                                f"(declared: {', '.join(self.split_names(code))}): use one of those")
        return codes

    def _check_language(self, lang: str) -> None:
        if lang not in self.entries:
            raise LapeError(f"language {lang!r} is not in manifest {self.path} (available: "
                            f"{', '.join(self.languages)}): pick one of those or add an entry")


def load_manifest(spec: str | Path | Manifest) -> Manifest:
    """Read and validate a manifest.

    Args:
        spec: a YAML file, or ``"builtin"`` for the built-in manifest
            (``data_manifests/builtin.yaml``). A :class:`Manifest` is returned as is.

    Returns:
        The :class:`Manifest`.

    Raises:
        LapeError: a missing file, malformed YAML (with its line), unknown keys or source kinds,
            missing text files, or languages declaring different splits.

    Example:
        >>> load_manifest("data_manifests/builtin.yaml").default_languages[:3]
        ['en', 'zh', 'fr']
    """

    if isinstance(spec, Manifest):
        return spec
    if str(spec) == "builtin":
        path = BUILTIN_MANIFEST
        if not path.is_file():
            raise LapeError(f"the built-in manifest {path} is missing: install lape from its "
                            "repository (pip install -e .) or pass a manifest file")
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise LapeError(f"manifest {spec} does not exist: pass a YAML manifest file or "
                            "'builtin'")
    return _validate(path, read_yaml(path, "manifest"))


def _validate(path: Path, raw: Any) -> Manifest:
    def fail(msg: str) -> LapeError:
        return LapeError(f"manifest {path}: {msg}")

    if isinstance(raw, dict) and "sources" in raw and "languages" not in raw:
        raise fail("this is a question manifest (a 'sources:' list), not a corpus manifest: "
                   "pass it to the key-neuron commands with --questions")
    if not isinstance(raw, dict) or not isinstance(raw.get("languages"), dict):
        raise fail("expected a mapping with a 'languages:' mapping of language codes to "
                   "entries: see data_manifests/builtin.yaml for the format")
    unknown = [str(k) for k in raw if k not in _TOP_KEYS]
    if unknown:
        raise fail(f"unknown top-level key {unknown[0]!r}: allowed keys are "
                   f"{', '.join(_TOP_KEYS)}")
    entries: dict[str, dict[str, Any]] = {}
    first_splits: tuple[str, list[str]] | None = None
    for code, entry in raw["languages"].items():
        code = str(code)
        where = f"language {code!r}"
        if not isinstance(entry, dict):
            raise fail(f"{where} must be a mapping with its splits (train, valid, ...)")
        bad = [str(k) for k in entry if k not in _ENTRY_KEYS]
        if bad:
            raise fail(f"{where} has unknown key {bad[0]!r}: allowed keys are "
                       f"{', '.join(_ENTRY_KEYS)}")
        splits = [k for k in entry if k in SPLITS]
        if not splits:
            raise fail(f"{where} declares no split: add at least 'train:'")
        if first_splits is None:
            first_splits = (code, splits)
        elif set(splits) != set(first_splits[1]):
            missing = sorted(set(first_splits[1]) - set(splits)) or sorted(set(splits) - set(first_splits[1]))
            raise fail(f"{where} declares splits {', '.join(splits)} but {first_splits[0]!r} "
                       f"declares {', '.join(first_splits[1])} ({', '.join(missing)} differs): "
                       "declare the same splits for every language")
        shares: dict[str, float] = {}
        for split in splits:
            spec = entry[split]
            at = f"{where}, split {split!r}"
            if isinstance(spec, dict) and "from" in spec:
                _check_derived(fail, at, spec, split, entry)
                shares[spec["from"]] = shares.get(spec["from"], 0.0) + float(spec["share"])
            else:
                for i, src in enumerate(as_list(spec)):
                    _check_source(fail, f"{at}, source {i + 1}", src, path.parent)
        plain = {k: as_list(entry[k]) for k in splits if not (isinstance(entry[k], dict) and "from" in entry[k])}
        if "train" in plain and "valid" in plain and plain["train"] == plain["valid"]:
            raise fail(f"{where}: 'valid' reads the same sources as 'train', so held-out results would be "
                       "measured on training text: give it other text, or derive it with "
                       "'valid: {from: train, share: 0.1}'")
        for base, total in shares.items():
            if total >= 1.0:
                raise fail(f"{where}: splits derived from {base!r} take {total:g} of it, "
                           "nothing would be left: make the shares sum to less than 1")
        entries[code] = entry
    if not entries:
        raise fail("'languages:' is empty: add at least one language entry")
    languages = list(entries)
    default = raw.get("default_languages")
    if default is None:
        default_languages = list(languages)
    else:
        if not isinstance(default, list) or not default:
            raise fail("'default_languages' must be a non-empty list of language codes")
        default_languages = [str(x) for x in default]
        extra = [x for x in default_languages if x not in entries]
        if extra:
            raise fail(f"default language {extra[0]!r} has no entry (available: "
                       f"{', '.join(languages)}): add an entry or remove it from "
                       "default_languages")
    return Manifest(path=path, name=str(raw.get("name") or path.stem), languages=languages,
                    default_languages=default_languages, entries=entries)


def as_list(spec: Any) -> list[Any]:
    return spec if isinstance(spec, list) else [spec]


def _check_derived(fail: _Fail, at: str, spec: dict, split: str, entry: dict) -> None:
    bad = [str(k) for k in spec if k not in _DERIVED_KEYS]
    if bad:
        raise fail(f"{at} has unknown key {bad[0]!r}: a derived split has only 'from' and 'share'")
    base = spec["from"]
    if base not in SPLITS or base not in entry or base == split:
        raise fail(f"{at} derives from {base!r}, which this language does not declare: use "
                   "'from: train' (another declared split)")
    if isinstance(entry[base], dict) and "from" in entry[base]:
        raise fail(f"{at} derives from {base!r}, itself a derived split: derive from a split "
                   "with sources")
    share = spec.get("share")
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share < 1:
        raise fail(f"{at} has share {share!r}: give a number between 0 and 1, e.g. 'share: 0.1'")


def _check_source(fail: _Fail, at: str, src: Any, base: Path) -> None:
    if not isinstance(src, dict):
        raise fail(f"{at} must be a mapping with 'kind:' ({', '.join(KINDS)}) or "
                   "'{from: train, share: 0.1}'")
    kind = src.get("kind")
    if kind not in KINDS:
        raise fail(f"{at} has unknown source kind {kind!r}: use one of {', '.join(KINDS)}")
    allowed = _SOURCE_KEYS[kind]
    bad = [str(k) for k in src if k not in allowed]
    if bad:
        raise fail(f"{at} has unknown key {bad[0]!r}: a {kind} source allows {', '.join(allowed)}")
    if kind == "text":
        if not src.get("path"):
            raise fail(f"{at} (text) has no 'path': give a file or a glob")
        if src.get("docs", "lines") not in ("lines", "blocks"):
            raise fail(f"{at} has docs {src.get('docs')!r}: use 'lines' or 'blocks'")
        for pattern in as_list(src["path"]):
            text_files(fail, at, str(pattern), base)
    elif kind == "hf":
        if not src.get("path"):
            raise fail(f"{at} (hf) has no 'path': give a hub dataset id or a folder written by "
                       "save_to_disk")
    elif kind == "builtin":
        if src.get("split") not in SPLITS:
            raise fail(f"{at} (builtin) has split {src.get('split')!r}: use one of "
                       f"{', '.join(SPLITS)}")
    min_chars = src.get("min_chars", 1)
    if isinstance(min_chars, bool) or not isinstance(min_chars, int) or min_chars < 1:
        raise fail(f"{at} has min_chars {min_chars!r}: give a positive integer")


def text_files(fail: _Fail, at: str, pattern: str, base: Path) -> list[Path]:
    """The files a text source's path names (a glob is expanded, sorted)."""
    full = Path(pattern).expanduser()
    if not full.is_absolute():
        full = base / full
    if glob.has_magic(str(full)):
        files = sorted(Path(p) for p in glob.glob(str(full), recursive=True) if Path(p).is_file())
        if not files:
            raise fail(f"{at}: no file matches {pattern} (relative paths resolve against "
                       f"{base}): fix the path or glob")
        return files
    if full.is_dir():
        raise fail(f"{at}: {pattern} is a folder: name its files with a glob such as "
                   f"{pattern.rstrip('/')}/*.txt")
    if not full.is_file():
        raise fail(f"{at}: file {full} does not exist (relative paths resolve against "
                   f"{base}): fix the path")
    return [full]
