"""Built-in English prompt sets for steering.

* ``parallel``: the opening words of each article of the Universal Declaration of Human Rights,
  from the built-in corpus's ``parallel`` split (used to choose steering defaults);
* ``heldout``: forty everyday sentence openings written for lape. Despite the name they are
  development prompts: they were scored while the steering defaults were chosen, so results on
  them are not held-out figures (issue #16 adds a fresh test set).
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


def load_prompts(spec: str, limit: int | None = None) -> list[str]:
    """Prompts from a text file (one per line) or ``builtin:parallel`` / ``builtin:heldout``."""
    if spec.startswith("builtin:"):
        prompts = builtin_prompts(spec.split(":", 1)[1])
    else:
        path = Path(spec)
        if not path.is_file():
            raise LapeError(f"prompt file {spec} does not exist: give a text file with one prompt per line")
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not prompts:
            raise LapeError(f"prompt file {spec} is empty: write one prompt per line")
    return prompts[:limit] if limit else prompts
