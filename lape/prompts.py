"""Built-in English prompt sets for steering.

* ``dev``: forty everyday sentence openings written for lape. They are
  *development* prompts: steering settings and profiles are chosen on them;
* ``test``: seventy fresh openings of twenty genres (news, science, recipes, travel, letters,
  fiction, reviews, how-to, notices, ...), written after ``test1`` was spent. They are scored only
  once the settings are frozen, so results on them are held-out figures; never choose anything
  on them;
* ``test1``: the first round of seventy test openings. They were scored once with the
  profile frozen, and their failures were then read to decide how macrolanguage labels count
  (:data:`lape.langid.MACROLANGUAGE_MEMBERS`): they are spent, development data from then on;
* ``parallel``: the opening words of each article of the Universal Declaration of Human Rights,
  from the built-in corpus's ``parallel`` split.
"""

from __future__ import annotations

from pathlib import Path

from .errors import LapeError

PROMPT_SETS = ("dev", "test", "test1", "parallel")
_FILES = {"dev": "dev_en.txt", "test": "test_en.txt", "test1": "test1_en.txt"}


def _opening(text: str, words: int) -> str:
    return " ".join(text.split()[:words])


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def builtin_prompts(name: str, words: int = 8) -> list[str]:
    """An English prompt set: ``dev``, ``test``, ``test1`` or ``parallel``."""
    if name in _FILES:
        return _lines(Path(__file__).parent / "data" / "prompts" / _FILES[name])
    if name == "heldout":
        raise LapeError("builtin:heldout was renamed builtin:dev (settings were chosen on it, so it is a "
                        "development set); use builtin:test for held-out figures")
    if name == "parallel":
        from .corpora import load_manifest, parallel_texts

        articles = parallel_texts(load_manifest("builtin"), ["en"])["en"]
        # skip the article title line ("Article 1") if it is there, keep the opening words
        return [_opening(a.split("\n", 1)[-1] if a.lower().startswith("article") else a, words)
                for a in articles]
    raise LapeError(f"unknown built-in prompt set {name!r}: use builtin:{' or builtin:'.join(PROMPT_SETS)}")


HELD_OUT_PROMPTS = "builtin:test"  # the set results are reported on: never used to choose settings


def development_prompts(spec: str, limit: int | None = None) -> list[str]:
    """:func:`load_prompts` for choosing settings (steering calibration): refuses the held-out
    test prompts, so that a reported figure never comes from data its settings were chosen on."""
    if spec == HELD_OUT_PROMPTS:
        raise LapeError(f"{HELD_OUT_PROMPTS} holds the held-out prompts results are reported on: calibrate on "
                        "builtin:dev (or your own development prompts)")
    return load_prompts(spec, limit)


def load_prompts(spec: str, limit: int | None = None) -> list[str]:
    """Prompts from a text file (one per line) or ``builtin:NAME`` (:data:`PROMPT_SETS`)."""
    if spec.startswith("builtin:"):
        prompts = builtin_prompts(spec.split(":", 1)[1])
    else:
        path = Path(spec)
        if not path.is_file():
            raise LapeError(f"prompt file {spec} does not exist: give a text file with one prompt per line")
        prompts = _lines(path)
        if not prompts:
            raise LapeError(f"prompt file {spec} is empty: write one prompt per line")
    return prompts[:limit] if limit else prompts
