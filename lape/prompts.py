"""Built-in English prompt sets for steering.

* ``parallel``: the opening words of each article of the Universal Declaration of Human Rights,
  from the built-in corpus's ``parallel`` split (used to choose steering defaults);
* ``heldout``: forty everyday sentence openings written for lape (never used to choose
  defaults; the README reports steering on them).
"""

from __future__ import annotations

from pathlib import Path

from .errors import LapeError

PROMPT_SETS = ("parallel", "heldout")


def _opening(text: str, words: int) -> str:
    return " ".join(text.split()[:words])


def builtin_prompts(name: str, words: int = 8) -> list[str]:
    """An English prompt set: ``parallel`` or ``heldout``."""
    if name == "heldout":
        path = Path(__file__).parent / "data" / "prompts" / "heldout_en.txt"
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if name == "parallel":
        from .corpora import load_manifest, parallel_texts

        articles = parallel_texts(load_manifest("builtin"), ["en"])["en"]
        # skip the article title line ("Article 1") if it is there, keep the opening words
        return [_opening(a.split("\n", 1)[-1] if a.lower().startswith("article") else a, words)
                for a in articles]
    raise LapeError(f"unknown built-in prompt set {name!r}: use builtin:{' or builtin:'.join(PROMPT_SETS)}")
