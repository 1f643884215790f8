"""Documents of one language and split, read from the sources a manifest names.

Source kinds: ``text`` files, ``hf`` datasets (a ``save_to_disk`` folder or the hub) and the
``builtin`` corpus. A derived split (``{from: train, share: s}``) keeps the documents whose
stable hash falls in its share of the base split. :func:`sources_key` gives a cheap content key
of everything a split reads, so that a changed text file changes every cache key built on it.
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ..errors import LapeError
from ..hf_datasets import open_dataset
from .builtin import BUILTIN_SOURCES, UDHR_DIR, build_builtin_corpus
from .manifest import SPLITS, Manifest, as_list, bucket, load_manifest, text_files

logger = logging.getLogger(__name__)


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
    m.with_split(split, [lang])
    entry = m.entry(lang)
    sources, lo, hi = _resolve_split(entry, split)
    where = f"manifest {m.path}, language {lang!r}, split {split!r}"
    n = 0
    for i, src in enumerate(sources):
        count = 0
        for doc in _iter_source(m, lang, src, f"{where}, source {i + 1}"):
            count += 1
            if (lo, hi) != (0.0, 1.0) and not lo <= bucket(doc) < hi:
                continue
            n += 1
            yield doc
        if count == 0:
            raise LapeError(f"{where}, source {i + 1} ({_describe_source(src)}) has no documents "
                            "after cleaning: check its files or dataset")
    if n == 0:
        raise LapeError(f"{where} has no documents after cleaning and hash split: add documents "
                        "or change the share held out")


def sources_key(manifest: Manifest | str | Path, lang: str, split: str) -> dict[str, Any]:
    """A content key of everything one language's split reads: changes when any text changes.

    * ``text`` sources: the sha256 of every file the paths name (a changed or replaced file, or a
      glob that now matches other files, changes it). Hashes are remembered per process by path,
      size, modification time and inode, so a corpus is read once per process for its key;
      sha256 runs at about 1 GB/s, small next to a model pass over the same text.
    * ``builtin``: the same, over the built-in corpus files (and the vendored UDHR).
    * ``hf``: a local ``save_to_disk`` folder is hashed like text files (its ``*.arrow`` and
      ``*.json``); a hub dataset is keyed by id, name, split and revision (pin ``revision:`` for a
      key that follows the data).
    """
    from ..artifacts import content_hash, source_file_hash

    m = load_manifest(manifest)
    entry = m.entry(lang)
    sources, lo, hi = _resolve_split(entry, split)
    parts: list[Any] = [{"split": split, "hash_range": [lo, hi], "manifest": m.hash()}]
    used: dict[str, str] = {}
    for src in sources:
        kind = src["kind"]
        files: list[Path] = []
        if kind == "text":
            for pattern in as_list(src["path"]):
                files += text_files(LapeError, f"manifest {m.path}, language {lang!r}", str(pattern), m.path.parent)
        elif kind == "builtin":  # cleaned with the pinned language identifier: say which
            from ..langid import langid_version

            used["langid"] = langid_version()
            code, bsplit = str(src.get("language", lang)), src["split"]
            files = [UDHR_DIR / f"{code}.txt"] if bsplit == "parallel" else [build_builtin_corpus() / code / f"{bsplit}.txt"]
        else:
            local = Path(str(src["path"])).expanduser()
            local = local if local.is_absolute() else m.path.parent / local
            if local.is_dir():
                files = sorted(p for p in local.rglob("*") if p.is_file() and p.suffix in (".arrow", ".json"))
        hashes = {str(f): source_file_hash(f) for f in files if f.is_file()}
        parts.append({"source": dict(src), "files": hashes})
    return {"content": content_hash([*parts, used]), **used}


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
                return as_list(entry[base]), lo, lo + float(s["share"])
            lo += float(s["share"])
    held = sum(float(s["share"]) for _, s in derived if s["from"] == split)
    return as_list(spec), held, 1.0


def _describe_source(src: Mapping[str, Any]) -> str:
    kind = src.get("kind")
    if kind == "text":
        paths = ", ".join(str(p) for p in as_list(src["path"]))
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
    for pattern in as_list(src["path"]):
        for path in text_files(LapeError, where, str(pattern), m.path.parent):
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
    path = str(src["path"])
    field_name = str(src.get("text_field", "text"))
    local = Path(path).expanduser()
    if not local.is_absolute():
        local = m.path.parent / local
    data_files = src.get("data_files")
    if data_files is not None:  # local data files resolve against the manifest's folder
        data_files = _resolve_data_files(data_files, m.path.parent)
    ds = open_dataset(path, local, split=src.get("split"), where=where, name=src.get("name"),
                      revision=src.get("revision"), data_files=data_files, streaming=bool(src.get("streaming", False)),
                      columns=[field_name], fix_columns="set 'text_field' to the text column")
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
                what = "; ".join(_describe_source(s) for s in as_list(spec))
            if _is_streaming(entry, split):
                lines.append(f"  {split:<9} streamed, not counted  [{what}]")
                continue
            docs = tokens = 0
            for batch in chunks(iter_documents(m, code, split), 64):
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


def chunks(items: Iterable[str], n: int) -> Iterator[list[str]]:
    buf: list[str] = []
    for item in items:
        buf.append(item)
        if len(buf) == n:
            yield buf
            buf = []
    if buf:
        yield buf
