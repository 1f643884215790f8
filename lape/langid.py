"""Language identification: the one place lape asks which language a text is in.

lape uses ``py3langid`` (offline, BSD-3), pinned to one version: 0.3 and 0.4 answer differently
(0.4 adds ``wuu``, ``yue`` and ``zxx``), and the identifier decides both which paragraphs the
built-in corpus keeps and whether a steered output counts as a success. Every artifact that used
it records :func:`langid_version`.

The identifier alone is fooled by text with few letters: it labels a run of fullwidth commas
``wuu`` (Wu Chinese), so punctuation-heavy output would pass as Chinese. A steered output must
therefore also be written in its language's script (:func:`script_share`, :func:`in_script`).
"""

from __future__ import annotations

import functools
import unicodedata

from .errors import LapeError

LANGID_PACKAGE = "py3langid"
LANGID_PINNED = "0.4.0"  # pyproject.toml pins the same version

# py3langid answers some languages with another code than the ISO 639-1 one lape uses
ALIASES = {"nb": "no", "nn": "no", "zh-tw": "zh", "bs": "sr"}

# py3langid also answers with ISO 639-3 *individual* languages that belong to a macrolanguage whose
# ISO 639-1 code lape uses: "ar" is Arabic as a whole (ISO 639-3 "ara", which includes Egyptian
# "arz" and Moroccan "ary"), "zh" is Chinese ("zho": Wu "wuu", Cantonese "yue"), and so on. A
# steered output labelled "arz" is Arabic-script Arabic, so it counts as "ar" (py3langid 0.4 labels
# about one in six of the Arabic outputs of the built-in model "arz" or "ary"). Scoring only: the
# corpus cleaner reads the raw labels (:data:`LANGID_ACCEPT`), so corpora do not change.
MACROLANGUAGE_MEMBERS = {"arz": "ar", "ary": "ar", "wuu": "zh", "yue": "zh", "ltg": "lv", "uzs": "uz",
                         "sdh": "ku", "fuv": "ff", "gug": "gn"}
LANGUAGE_OF_LABEL = {**ALIASES, **MACROLANGUAGE_MEMBERS}

# The labels accepted for a language when cleaning a corpus (default: its own code). py3langid
# cannot tell the Serbo-Croatian standards apart in Latin script: it labels most of the (ekavian,
# Latin) Serbian paragraphs and a fifth of the Croatian ones "bs". A paragraph is kept when
# langid says its own language or Bosnian, and dropped when it says the *other* standard.
# Norwegian is Bokmal; py3langid's label for it is "no" ("nn" paragraphs are dropped).
LANGID_ACCEPT = {"sr": ("sr", "bs"), "hr": ("hr", "bs")}


@functools.cache
def langid_version() -> str:
    """The installed ``py3langid`` version (recorded in every artifact that used it)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{LANGID_PACKAGE} {version(LANGID_PACKAGE)}"
    except PackageNotFoundError:
        raise LapeError(f"{LANGID_PACKAGE} is not installed: pip install "
                        f"{LANGID_PACKAGE}=={LANGID_PINNED}") from None


def classify(text: str) -> str:
    """The raw ``py3langid`` label of ``text`` (e.g. ``"fr"``, ``"wuu"``)."""
    import py3langid

    return py3langid.classify(text)[0]


def language_label(text: str, min_chars: int = 20) -> str | None:
    """The raw ``py3langid`` label of ``text``, or ``None`` when it has fewer than ``min_chars``
    non-blank characters (the identifier is unreliable on short text)."""
    if len("".join(text.split())) < min_chars:
        return None
    return classify(text)


def language_of_label(label: str) -> str:
    """The ISO 639-1 code lape uses for a raw ``py3langid`` label (``"arz"`` -> ``"ar"``)."""
    return LANGUAGE_OF_LABEL.get(label, label)


def identify(text: str, min_chars: int = 20) -> tuple[str | None, str | None]:
    """``(language, label)``: the ISO 639-1 code of ``text`` (macrolanguage members counted as the
    macrolanguage) and the raw ``py3langid`` label it came from; ``(None, None)`` when the text has
    fewer than ``min_chars`` non-blank characters."""
    label = language_label(text, min_chars)
    return (None, None) if label is None else (language_of_label(label), label)


def labels_of_language(language: str) -> list[str]:
    """Every raw ``py3langid`` label :func:`identify` counts as ``language``: what a
    steering score for that target depends on (part of its cache key)."""
    return sorted({language, *(label for label, lang in LANGUAGE_OF_LABEL.items() if lang == language)})


# The scripts each language is written in, as the first word of a letter's Unicode name
# (:func:`script_of`: LATIN, CYRILLIC, ARABIC, CJK for Han ideographs, HANGUL...). Japanese counts
# kana and Han; Serbian both its alphabets. A language not listed here has no script check.
_LATIN = ("af az ca cs cy da de en eo es et eu fi fil fr ga gl hr hu id is it lt lv ms mt nl no pl pt ro "
          "sk sl sq sv sw tl tr uz vi yo zu")
SCRIPTS: dict[str, tuple[str, ...]] = {
    **{lang: ("LATIN",) for lang in _LATIN.split()},
    "zh": ("CJK", "IDEOGRAPHIC"),  # IDEOGRAPHIC: the iteration mark
    "ja": ("CJK", "IDEOGRAPHIC", "HIRAGANA", "KATAKANA", "KATAKANA-HIRAGANA"),  # the last: the long-vowel mark
    "ko": ("HANGUL",),
    **{lang: ("ARABIC",) for lang in ("ar", "fa", "ur", "ps", "ug")},
    **{lang: ("CYRILLIC",) for lang in ("ru", "uk", "bg", "be", "mk", "kk", "ky", "mn", "tg")},
    "sr": ("CYRILLIC", "LATIN"),
    "el": ("GREEK",), "he": ("HEBREW",), "yi": ("HEBREW",), "hy": ("ARMENIAN",), "ka": ("GEORGIAN",),
    **{lang: ("DEVANAGARI",) for lang in ("hi", "mr", "ne", "sa")},
    "bn": ("BENGALI",), "gu": ("GUJARATI",), "pa": ("GURMUKHI",), "ta": ("TAMIL",), "te": ("TELUGU",),
    "kn": ("KANNADA",), "ml": ("MALAYALAM",), "si": ("SINHALA",), "th": ("THAI",), "lo": ("LAO",),
    "km": ("KHMER",), "my": ("MYANMAR",), "am": ("ETHIOPIC",),
}
# At least this share of an output's non-blank, non-digit characters must be letters of the target's
# script. Digits are left out: they belong to no script, and a Korean date or a numbered list is no
# less Korean for them. Real text clears it easily (Chinese, Japanese and Korean prose ~0.8-0.9,
# punctuation being the rest; Latin-script prose ~0.95); a run of punctuation, markup in another
# script (`<strong>...`) or text in another script fails.
MIN_SCRIPT_SHARE = 0.5


def script_of(ch: str) -> str:
    """The script of a letter, from its Unicode name (LATIN, CYRILLIC, ARABIC, HANGUL, CJK...)."""
    name = unicodedata.name(ch, "")
    return name.split(" ")[0] if name else "UNKNOWN"


def script_share(text: str, language: str) -> float | None:
    """The share of the non-blank, non-digit characters of ``text`` (NFKC-normalised, so fullwidth
    Latin and halfwidth kana count as their plain forms) that are letters (``str.isalpha``) of one
    of ``language``'s :data:`SCRIPTS`:

    ``share = #{c counted : c.isalpha() and script_of(c) in SCRIPTS[language]} / #{c counted}``,
    counted = not blank and not a decimal digit.

    0.0 for text with nothing counted; ``None`` for a language without a script entry.

    Example:
        >>> script_share("你好，世界", "zh")
        0.8
    """
    scripts = SCRIPTS.get(language)
    if scripts is None:
        return None
    chars = [c for c in unicodedata.normalize("NFKC", text) if not c.isspace() and not c.isdecimal()]
    if not chars:
        return 0.0
    return sum(c.isalpha() and script_of(c) in scripts for c in chars) / len(chars)


def in_script(text: str, language: str) -> bool:
    """Whether ``text`` is written in ``language``'s script: :func:`script_share` at least
    :data:`MIN_SCRIPT_SHARE` (always true for a language without a script entry)."""
    share = script_share(text, language)
    return share is None or share >= MIN_SCRIPT_SHARE


def script_rule(language: str) -> dict[str, object] | None:
    """What :func:`in_script` checks for ``language`` (its scripts and the threshold), or
    ``None`` without a check: part of a steering score's cache key, like
    :func:`labels_of_language`."""
    scripts = SCRIPTS.get(language)
    return None if scripts is None else {"scripts": list(scripts), "min_share": MIN_SCRIPT_SHARE,
                                         "of": "non-blank non-digit characters"}
