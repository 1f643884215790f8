"""Questions, prompt templates and prompts of the key-neuron method: the :class:`Question`,
:class:`Template` and :class:`Prompt` records, the template files (``data/mcqa/templates.json``
or a manifest's own) and rendering a question with a template and an option order
(:func:`render`, :func:`prompts_for`). :mod:`lape.keyneurons.questions` loads question sets.
"""

from __future__ import annotations

import functools
import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import LapeError

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "mcqa"
TEMPLATES_FILE = DATA_DIR / "templates.json"
LETTERS = "ABCDEFGHIJ"
_SLOT = re.compile(r"\{question\}|\{options\}")


@dataclass(frozen=True)
class Question:
    """One multiple-choice question.

    Attributes:
        uid: a unique, stable id (``mmlu/<subject>/<split>/<i>``, ``cloze/<lang>/<i>``, ...).
        question: the question text (for cloze questions: instruction, newline, sentence).
        choices: the options, in their original order.
        answer: index into ``choices`` of the right option.
        cluster: the group the question belongs to (a domain or a language label).
        language: the language code of the text (selects the templates).
        source: free-text provenance.
    """

    uid: str
    question: str
    choices: tuple[str, ...]
    answer: int
    cluster: str
    language: str
    source: str = ""


@dataclass(frozen=True)
class Template:
    """A prompt template of one language.

    Attributes:
        language: the language code.
        name: the template's name (unique within its language; seeds the option shuffle).
        text: the template, with ``{question}`` and ``{options}`` once each, ending with the
            answer cue (no trailing whitespace).
    """

    language: str
    name: str
    text: str


@dataclass(frozen=True)
class Prompt:
    """One question rendered with one template.

    Attributes:
        question: the question.
        template: the template.
        text: the rendered prompt (ends with the answer cue).
        letters: the option letters shown, ``LETTERS[:len(choices)]``.
        order: ``order[k]`` is the index into ``question.choices`` shown at letter ``k``.
        correct: the letter index of the right answer after shuffling.
    """

    question: Question
    template: Template
    text: str
    letters: tuple[str, ...]
    order: tuple[int, ...]
    correct: int


# --------------------------------------------------------------------------- templates


def _read_template_file(path: Path) -> dict[str, Any]:
    """The parsed templates JSON (a mapping language -> entry)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LapeError(f"templates file {path} does not exist: pass a templates JSON "
                        "file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LapeError(f"templates file {path} cannot be read ({exc}): check the file") from None
    except json.JSONDecodeError as exc:
        raise LapeError(f"templates file {path} is not valid JSON ({exc.msg} at line "
                        f"{exc.lineno}): fix the syntax") from None
    if not isinstance(raw, dict) or not raw:
        raise LapeError(f"templates file {path} must map language codes to "
                        "{\"templates\": [...]} entries")
    return raw


def _template_path(path: str | Path | None) -> Path:
    return TEMPLATES_FILE if path is None else Path(path).expanduser()


def load_templates(path: str | Path | None = None) -> dict[str, list[Template]]:
    """Read and validate a templates file: language -> its templates, in file order.

    The file maps each language code to ``{"cloze_instruction": "...", "templates":
    [{"name": "...", "text": "...{question}...{options}...Answer:"}, ...]}``.

    Args:
        path: a templates JSON file; default the shipped ``lape/data/mcqa/templates.json``.

    Raises:
        LapeError: (one line naming the language and template) a language without templates,
            a template without a name or text, ``{question}`` or ``{options}`` missing or
            repeated, trailing whitespace after the answer cue, a repeated name.
    """
    file = _template_path(path)
    try:
        stat = file.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
    except OSError:
        stamp = (0, 0)  # missing: _parse_templates raises the error
    return {lang: list(ts) for lang, ts in _parse_templates(str(file), stamp).items()}


@functools.lru_cache(maxsize=16)
def _parse_templates(file_name: str, stamp: tuple[int, int]) -> dict[str, tuple[Template, ...]]:
    """The validated templates of a file (cached per path, modification time and size, so a
    prompt per question does not re-read the file)."""
    file = Path(file_name)
    raw = _read_template_file(file)
    out: dict[str, tuple[Template, ...]] = {}
    for lang, entry in raw.items():
        items = entry.get("templates") if isinstance(entry, dict) else None
        if not isinstance(items, list) or not items:
            raise LapeError(f"templates file {file}, language {lang!r}: needs a non-empty "
                            "\"templates\" list")
        out[lang] = tuple(_template(file, lang, k, item) for k, item in enumerate(items))
        names = [t.name for t in out[lang]]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise LapeError(f"templates file {file}, language {lang!r}: template name(s) "
                            f"{', '.join(dup)} repeated; names must be unique per language")
    return out


def _template(file: Path, lang: str, k: int, item: Any) -> Template:
    """Validate one template entry."""
    name = item.get("name") if isinstance(item, dict) else None
    at = f"templates file {file}, language {lang!r}, template {name or k!r}"
    if not isinstance(name, str) or not name.strip():
        raise LapeError(f"{at}: needs a non-empty \"name\"")
    text = item.get("text")
    if not isinstance(text, str) or not text.strip():
        raise LapeError(f"{at}: needs a non-empty \"text\"")
    for slot in ("{question}", "{options}"):
        n = text.count(slot)
        if n != 1:
            raise LapeError(f"{at}: the text must contain {slot} exactly once (found {n})")
    if text != text.rstrip():
        raise LapeError(f"{at}: the text must end with the answer cue, without trailing "
                        "whitespace")
    return Template(language=lang, name=name, text=text)


def load_cloze_instructions(path: str | Path | None = None) -> dict[str, str]:
    """Language -> the ``cloze_instruction`` of a templates file (languages that have one)."""
    file = _template_path(path)
    raw = _read_template_file(file)
    out = {}
    for lang, entry in raw.items():
        text = entry.get("cloze_instruction") if isinstance(entry, dict) else None
        if text is not None:
            if not isinstance(text, str) or not text.strip() or "\n" in text.strip():
                raise LapeError(f"templates file {file}, language {lang!r}: "
                                "\"cloze_instruction\" must be one non-empty line")
            out[lang] = text.strip()
    return out


def templates_for(language: str,
                  templates: Mapping[str, list[Template]] | None = None) -> list[Template]:
    """The templates of one language (default: from the shipped templates file).

    Raises:
        LapeError: the language has no templates (names the languages that have them).
    """
    templates = load_templates() if templates is None else templates
    found = templates.get(language)
    if not found:
        raise LapeError(f"no prompt templates for language {language!r}; languages with "
                        f"templates: {', '.join(sorted(templates))} (add some to a templates "
                        "file and name it in the question manifest)")
    return list(found)


# --------------------------------------------------------------------------- prompts


def render(question: Question, template: Template, order: Sequence[int]) -> Prompt:
    """Render a question with a template, showing ``question.choices[order[k]]`` at letter k.

    Options are one per line, ``"A. choice"``; the slots are replaced in one pass, so braces in
    a question (LaTeX, code) are kept as they are.

    Raises:
        LapeError: ``order`` is not a permutation of the choice indices.
    """
    n = len(question.choices)
    order = tuple(int(i) for i in order)
    if sorted(order) != list(range(n)):
        raise LapeError(f"question {question.uid!r}: order {list(order)} is not a permutation "
                        f"of 0..{n - 1}")
    letters = tuple(LETTERS[:n])
    options = "\n".join(f"{letters[k]}. {question.choices[i]}" for k, i in enumerate(order))
    slots = {"{question}": question.question, "{options}": options}
    text = _SLOT.sub(lambda m: slots[m.group(0)], template.text)
    return Prompt(question=question, template=template, text=text, letters=letters,
                  order=order, correct=order.index(question.answer))


def prompts_for(question: Question, templates: Sequence[Template] | None = None, *,
                seed: int = 0) -> list[Prompt]:
    """One prompt per template; the first keeps the original option order, the others shuffle.

    The shuffle of template ``t`` uses ``random.Random(f"{seed}/{question.uid}/{t.name}")``,
    so it is the same in every process and run.

    Args:
        question: the question.
        templates: the templates to use; default the shipped ones of ``question.language``.
        seed: changes every shuffle.
    """
    templates = templates_for(question.language) if templates is None else templates
    prompts = []
    for t_index, template in enumerate(templates):
        order = list(range(len(question.choices)))
        if t_index > 0:
            random.Random(f"{seed}/{question.uid}/{template.name}").shuffle(order)
        prompts.append(render(question, template, order))
    return prompts
