"""Language identification: the one place lape asks which language a text is in.

lape uses ``py3langid`` (offline, BSD-3), pinned to one version: 0.3 and 0.4 answer differently
(0.4 adds ``wuu``, ``yue`` and ``zxx``), and the identifier decides both which paragraphs the
built-in corpus keeps and whether a steered output counts as a success. Every artifact that used
it records :func:`langid_version`.
"""

from __future__ import annotations

import functools

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


def identify_language(text: str, min_chars: int = 20) -> str | None:
    """ISO 639-1 code of ``text`` (macrolanguage members counted as the macrolanguage), or
    ``None`` when it has fewer than ``min_chars`` non-blank characters."""
    label = language_label(text, min_chars)
    return None if label is None else language_of_label(label)


def labels_of_language(language: str) -> list[str]:
    """Every raw ``py3langid`` label :func:`identify_language` counts as ``language``: what a
    steering score for that target depends on (part of its cache key)."""
    return sorted({language, *(label for label, lang in LANGUAGE_OF_LABEL.items() if lang == language)})
