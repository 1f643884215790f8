"""Cloze questions built from a language's held-out text: the language clusters of key neurons.

No package ships translated MMLU for every language, so a language cluster is a set of cloze
questions made from the language's own text (by default the ``valid`` split of lape's built-in
corpus, which no recording reads). One question:

* a sentence of 40 to 300 characters of a document (an exact substring of it, stripped), with
  one word replaced by ``____``; the question text is the language's ``cloze_instruction``
  (``lape/data/mcqa/templates.json``), a newline, and that sentence;
* four choices: the removed word and three distractors, in a seeded random order.

Words:

* languages written with spaces: a maximal run of letters (``str.isalpha``, with the
  combining marks that follow them; internal apostrophes and hyphens join a run, and such joined
  words are never blanked nor used as distractors). The blank is a word of at least 4
  characters (Hangul: at least 2 syllables) in the language's main script (the most frequent
  script of its letters); it occurs once in the sentence.
* Chinese and Japanese (``zh``, ``ja``, or a text whose main script is Han or kana): a span of
  exactly 2 Han characters. Japanese: a run of Han characters of length exactly 2 between kana
  or punctuation (most often a word). Chinese, which has no kana to mark word edges: a
  2-character window of a Han run that looks like a word, i.e. seen in the text with at least
  two different neighbours on each side (a fragment of a longer term always has the same
  neighbour) and without one of the particles 的了着和与及或把被.

Distractors come from the same language's text: in the main script, of the same kind, not
occurring in the sentence (case-insensitively), neither containing nor contained in the answer
or each other, within a similar length band (``|len(d) - len(a)| <= max(2, 0.3 len(a))``) and,
for cased scripts, with the same capitalisation of the first letter; for Chinese and Japanese,
spans of other sentences.

Everything is drawn from ``random.Random(seed + stable_hash(lang))`` (sha256, not ``hash()``),
walking the shuffled sentences in order, so the same (text, lang, count, seed) always gives the
same questions, and a smaller ``count`` gives a prefix of a larger one. When one pass over the
sentences gives fewer than ``count`` questions (the built-in Chinese and Portuguese held-out
text has about 31 and 33 sentences of 40-300 characters), further passes blank other words of
the same sentences; a sentence never gives the same blank twice.
"""

from __future__ import annotations

import hashlib
import random
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import LapeError
from ..langid import script_of
from .prompts import Question, load_cloze_instructions

BLANK = "____"
MIN_SENTENCE_CHARS = 40
MAX_SENTENCE_CHARS = 300
MIN_WORD_CHARS = 4  # space-separated languages
MIN_HANGUL_SYLLABLES = 2
N_DISTRACTORS = 3
SOURCE = "cloze from lape builtin corpus valid split"
# a sentence ends at . ! ? … ؟ (then closing quotes/brackets) before whitespace or the end, or
# at a CJK full stop / exclamation / question mark (no space needed)
_SENTENCE_END = re.compile(
    r"(?:[.!?\u2026\u061f]+[\"'\u201d\u2019\u00bb)\]]*(?=\s|$))"
    r"|(?:[\u3002\uff01\uff1f]+[\u300d\u300f\uff09\u201d]*)"
)
HAN_LANGUAGES = ("zh", "ja")
# Chinese particles and conjunctions that rarely start or end a word: no span contains them
_ZH_PARTICLES = set("的了着和与及或把被")
_JOINERS = "'\u2019-\u2010"  # apostrophes and hyphens that may join two letter runs


@dataclass(frozen=True)
class _Span:
    """A candidate word of a sentence: its text and position."""

    text: str
    start: int
    end: int


def stable_hash(text: str) -> int:
    """A process-independent integer hash of a string (first 8 bytes of its sha256)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def split_sentences(doc: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence of a document, stripped of surrounding whitespace."""
    spans = []
    start = 0
    for m in _SENTENCE_END.finditer(doc):
        spans.append((start, m.end()))
        start = m.end()
    spans.append((start, len(doc)))
    out = []
    for a, b in spans:
        piece = doc[a:b]
        lead = len(piece) - len(piece.lstrip())
        trail = len(piece) - len(piece.rstrip())
        if b - trail > a + lead:
            out.append((a + lead, b - trail))
    return out


def _is_han(ch: str) -> bool:
    return script_of(ch) == "CJK" and ch.isalpha()


def _is_mark(ch: str) -> bool:
    return unicodedata.category(ch).startswith("M")


def word_spans(text: str) -> list[_Span]:
    """Maximal letter runs of a text (letters plus following combining marks; an apostrophe or
    hyphen between two letters joins them into one word)."""
    spans = []
    i, n = 0, len(text)
    while i < n:
        if not text[i].isalpha():
            i += 1
            continue
        j = i
        while j < n:
            if text[j].isalpha() or (_is_mark(text[j]) and j > i):
                j += 1
            elif text[j] in _JOINERS and j + 1 < n and text[j + 1].isalpha() and j > i:
                j += 1
            else:
                break
        spans.append(_Span(text[i:j], i, j))
        i = j
    return spans


def main_script(docs: Sequence[str]) -> str:
    """The most frequent script of the letters of the documents."""
    counts = Counter(script_of(ch) for doc in docs for ch in doc if ch.isalpha())
    if not counts:
        raise LapeError("the documents hold no letters: cannot build cloze questions")
    return counts.most_common(1)[0][0]


def _pure_word(word: str, script: str) -> bool:
    """Only letters (and marks) of one script; no digits, joiners or other punctuation."""
    return all((ch.isalpha() and script_of(ch) == script) or _is_mark(ch) for ch in word)


def _eligible_word(word: str, script: str) -> bool:
    """A word that may be blanked or used as a distractor (space-separated languages)."""
    if not _pure_word(word, script):
        return False
    if script == "HANGUL":
        return sum(1 for ch in word if ch.isalpha()) >= MIN_HANGUL_SYLLABLES
    return len(word) >= MIN_WORD_CHARS


def _han_runs(text: str) -> list[_Span]:
    """Maximal runs of Han characters."""
    return [_Span(m.group(0), m.start(), m.end())
            for m in re.finditer(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+", text)
            if all(_is_han(ch) for ch in m.group(0))]


def _word_like_bigrams(docs: Sequence[str]) -> set[str]:
    """Han bigrams that look like words: seen with at least two different characters (or a
    run edge) on each side, and without a Chinese particle. A fragment of a longer word (the
    middle of a three-character term) always has the same neighbour and is left out."""
    left: dict[str, set[str]] = {}
    right: dict[str, set[str]] = {}
    for doc in docs:
        for run in _han_runs(doc):
            t = run.text
            for k in range(len(t) - 1):
                b = t[k:k + 2]
                left.setdefault(b, set()).add(t[k - 1] if k > 0 else "^")
                right.setdefault(b, set()).add(t[k + 2] if k + 2 < len(t) else "$")
    return {b for b in left if len(left[b]) >= 2 and len(right[b]) >= 2
            and not set(b) & _ZH_PARTICLES}


class _Words:
    """The candidate words of a language: per sentence, and the distractor pool."""

    def __init__(self, lang: str, docs: Sequence[str]) -> None:
        self.lang = lang
        script = main_script(docs)
        # Chinese and Japanese (kana is Japanese's most frequent script): 2-Han-character spans
        self.han = lang in HAN_LANGUAGES or script in ("CJK", "HIRAGANA", "KATAKANA")
        self.script = "CJK" if self.han else script
        self.kana = lang == "ja" or script in ("HIRAGANA", "KATAKANA")
        self.recurring: set[str] = set()
        if self.han and not self.kana:
            self.recurring = _word_like_bigrams(docs)

    def candidates(self, sentence: str) -> list[_Span]:
        """The spans of a sentence that may be blanked or drawn as distractors."""
        if not self.han:
            return [s for s in word_spans(sentence) if _eligible_word(s.text, self.script)]
        if self.kana:
            return [s for s in _han_runs(sentence) if len(s.text) == 2]
        return [_Span(run.text[k:k + 2], run.start + k, run.start + k + 2)
                for run in _han_runs(sentence) for k in range(len(run.text) - 1)
                if run.text[k:k + 2] in self.recurring]

    def fits(self, answer: str, other: str, sentence: str) -> bool:
        """Whether ``other`` may be a distractor of ``answer`` blanked in ``sentence``."""
        a, d = answer.casefold(), other.casefold()
        if a in d or d in a or d in sentence.casefold():
            return False
        if self.han:
            return True
        if abs(len(other) - len(answer)) > max(2, round(0.3 * len(answer))):
            return False
        return other[0].isupper() == answer[0].isupper()


def cloze_questions(lang: str, count: int, *, manifest: str | Path = "builtin",
                    split: str = "valid", seed: int = 0,
                    templates: str | Path | None = None) -> list[Question]:
    """``count`` cloze questions of one language, built from a corpus split.

    Args:
        lang: a language code of the corpus manifest that has a ``cloze_instruction``.
        count: how many questions.
        manifest: the corpus (``"builtin"`` or a corpus manifest file, see
            :mod:`lape.corpora`).
        split: the corpus split to read (default ``valid``: held out from recording).
        seed: changes the sentences, blanks, distractors and answer positions.
        templates: the templates file holding the ``cloze_instruction``; default the shipped one.

    Returns:
        Questions with uid ``cloze/<lang>/<i>``, cluster and language ``lang``.

    Raises:
        LapeError: no cloze instruction for the language, an unknown language or split, or
            fewer than ``count`` questions in the text.

    Example:
        >>> qs = cloze_questions("fr", 5)
        >>> qs[0].question.count("____")
        1
    """
    from ..corpora.sources import iter_documents

    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise LapeError(f"cloze count must be a positive integer, got {count!r}")
    instructions = load_cloze_instructions(templates)
    if lang not in instructions:
        raise LapeError(f"no cloze_instruction for language {lang!r} in the templates file; "
                        f"languages with one: {', '.join(sorted(instructions))}")
    docs = list(iter_documents(manifest, lang, split))
    corpus = manifest if str(manifest) == "builtin" else Path(manifest).name
    source = f"cloze from lape {corpus} corpus {split} split"
    questions = _build(lang, docs, count, seed, instructions[lang], source)
    if len(questions) < count:
        raise LapeError(f"language {lang!r}, split {split!r} of corpus {manifest}: only "
                        f"{len(questions)} cloze questions can be built, {count} asked: ask "
                        "for fewer or add text")
    return questions


def _build(lang: str, docs: Sequence[str], count: int, seed: int, instruction: str,
           source: str = SOURCE) -> list[Question]:
    """Up to ``count`` cloze questions from the documents (deterministic)."""
    rng = random.Random(seed + stable_hash(lang))
    words = _Words(lang, docs)
    sentences = [doc[a:b] for doc in docs for a, b in split_sentences(doc)]
    pool = sorted({s.text for sent in sentences for s in words.candidates(sent)})
    usable = [s for s in sentences if MIN_SENTENCE_CHARS <= len(s) <= MAX_SENTENCE_CHARS
              and BLANK not in s]
    rng.shuffle(usable)
    used: dict[str, set[str]] = {s: set() for s in usable}  # blanked words per sentence
    out: list[Question] = []
    while len(out) < count:
        before = len(out)
        for sentence in usable:
            if len(out) == count:
                break
            question = _one(lang, sentence, words, pool, rng, len(out), instruction, source,
                            used[sentence])
            if question is not None:
                out.append(question)
        if len(out) == before:  # no sentence has an unused blank left
            break
    return out


def _draw(others: Sequence[str], rng: random.Random, tries: int = 100) -> list[str] | None:
    """Three distractors, none containing another (case-insensitively); None if not found."""
    picks: list[str] = []
    for _ in range(tries):
        if len(picks) == N_DISTRACTORS:
            break
        word = rng.choice(others)
        w = word.casefold()
        if not any(w in p.casefold() or p.casefold() in w for p in picks):
            picks.append(word)
    return picks if len(picks) == N_DISTRACTORS else None


def _one(lang: str, sentence: str, words: _Words, pool: Sequence[str], rng: random.Random,
         index: int, instruction: str, source: str, used: set[str]) -> Question | None:
    """One cloze question from a sentence, blanking a word not in ``used`` (then added to it),
    or None when the sentence has no usable blank left."""
    folded = sentence.casefold()
    spans = [s for s in words.candidates(sentence)
             if folded.count(s.text.casefold()) == 1 and s.text not in used]
    if not spans:
        return None
    span = rng.choice(spans)
    used.add(span.text)
    others = [w for w in pool if words.fits(span.text, w, sentence)]
    if len(others) < N_DISTRACTORS:
        return None
    distractors = _draw(others, rng)
    if distractors is None:
        return None
    answer = rng.randrange(N_DISTRACTORS + 1)
    choices = distractors[:answer] + [span.text] + distractors[answer:]
    blanked = sentence[:span.start] + BLANK + sentence[span.end:]
    return Question(uid=f"cloze/{lang}/{index}", question=f"{instruction}\n{blanked}",
                    choices=tuple(choices), answer=answer, cluster=lang, language=lang,
                    source=source)
