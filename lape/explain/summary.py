"""What the cards say per language: are a language's neurons about that language?

Two questions per set label whose last part is a language code (``ru``, ``lape:ru``,
``random:ru``), each asked of every member neuron's card:

* **contexts**: are all its top contexts over all languages in that language?
* **script**: are most of its promoted tokens (those with letters) in that language's script?

A control set (random neurons with the same count per layer, labelled e.g. ``random:ru``) gets
the same rows, so that each share can be read against chance.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

# the script(s) of a language's ordinary text; languages not listed are written in Latin script
LANGUAGE_SCRIPTS: dict[str, frozenset[str]] = {
    "zh": frozenset({"HAN"}), "ja": frozenset({"HAN", "HIRAGANA", "KATAKANA"}), "ko": frozenset({"HANGUL"}),
    "ru": frozenset({"CYRILLIC"}), "uk": frozenset({"CYRILLIC"}), "bg": frozenset({"CYRILLIC"}),
    "sr": frozenset({"CYRILLIC"}), "ar": frozenset({"ARABIC"}), "el": frozenset({"GREEK"}),
    "he": frozenset({"HEBREW"}), "hi": frozenset({"DEVANAGARI"}), "bn": frozenset({"BENGALI"}),
    "th": frozenset({"THAI"}),
}


def language_scripts(language: str) -> frozenset[str]:
    """The scripts of ``language`` (Latin unless :data:`LANGUAGE_SCRIPTS` says otherwise)."""
    return LANGUAGE_SCRIPTS.get(language, frozenset({"LATIN"}))


def char_script(ch: str) -> str | None:
    """The script of one letter (``LATIN``, ``CYRILLIC``, ``HAN``, ...), ``None`` for a non-letter."""
    if not ch.isalpha():
        return None
    name = unicodedata.name(ch, "")
    if name.startswith("CJK UNIFIED IDEOGRAPH") or name.startswith("CJK COMPATIBILITY IDEOGRAPH"):
        return "HAN"
    return name.split(" ", 1)[0] or None


def token_script(text: str) -> str | None:
    """The most frequent script among a token's letters (``None``: no letters)."""
    counts: dict[str, int] = {}
    for ch in text:
        s = char_script(ch)
        if s:
            counts[s] = counts.get(s, 0) + 1
    return max(counts, key=lambda s: (counts[s], s)) if counts else None


def script_share(tokens: Sequence[str], language: str) -> float | None:
    """Share of the tokens with letters that are in ``language``'s script (``None``: no letters)."""
    scripts = [s for s in (token_script(t) for t in tokens) if s]
    if not scripts:
        return None
    return sum(s in language_scripts(language) for s in scripts) / len(scripts)


def explain_summary(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per language set label of ``cards.json`` data (module docstring): members, the share
    whose top contexts are all in the language, and the share whose promoted tokens are mostly in
    its script (with the mean in-script share)."""
    languages = set(data["meta"].get("languages") or [])
    rows = []
    for label in data["meta"].get("sets") or []:
        lang = label.rsplit(":", 1)[-1]
        if lang not in languages:
            continue
        members = [c for c in data["cards"] if label in c["sets"]]
        pure = [bool(c["top"]) and all(t["language"] == lang for t in c["top"]) for c in members]
        shares = [script_share([p["token"] for p in c["promoted"]], lang) for c in members]
        known = [s for s in shares if s is not None]
        rows.append({"set": label, "language": lang, "neurons": len(members),
                     "contexts_all_in_language": sum(pure) / len(members) if members else None,
                     "promoted_mostly_in_script": sum(s > 0.5 for s in known) / len(known) if known else None,
                     "mean_promoted_in_script": sum(known) / len(known) if known else None})
    return rows
