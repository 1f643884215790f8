"""Multiple-choice questions for key neurons: records, templates, prompts, manifests, splits.

The key-neuron method of Chen et al. (NA-ICA / QRNCA) scores neurons on multiple-choice
questions grouped into **clusters**: knowledge domains (biology, physics, ...) and languages.
This module holds the question data layer: a :class:`Question` is one item with its choices and
the index of the right one; a :class:`Template` turns it into a prompt in the question's language
(options one per line as ``A. choice``, Latin letters in every language, the text ending with
the answer cue such as ``Answer:`` and no trailing space); :func:`prompts_for` renders one
:class:`Prompt` per template, with the options shuffled per template (deterministically).

Built-in question sets (``load_questions(spec)``):

* ``"builtin:domains"``: the MMLU questions (dev and validation splits only; the test split is
  reserved) of the paper's six domains, shipped in ``lape/data/mcqa/mmlu_domains.jsonl``
  (see ``lape/data/mcqa/NOTICE.md``): biology, physics, chemistry, mathematics,
  computer_science, geography; all English.
* ``"builtin:languages"``: cloze questions (:mod:`lape.keyneurons.cloze`) built at run time
  from the held-out ``valid`` split of the built-in corpus, 40 per language, for the 13
  languages :data:`BUILTIN_LANGUAGES`; the cluster is the language code.
* ``"builtin"``: both; ``data_manifests/keyneurons.yaml`` is the same set written as a manifest.

A **question manifest** (YAML) lists the sources of a question set::

    name: my-questions
    description: optional free text
    templates: path/to/templates.json   # optional; default: the shipped lape/data/mcqa one
    sources:
      # records of a JSON-lines file, one question per line:
      #   {"uid", "question", "choices": [...], "answer": <index>, "cluster", "language",
      #    "source" (optional)}
      # path: relative to the manifest; "builtin:<file>" is a file of lape/data/mcqa.
      # optional cluster / language: defaults for records that lack the field.
      - {kind: mcqa, path: questions.jsonl}
      # cloze questions from a corpus manifest's documents (lape.corpora), one cluster per
      # language; corpus: "builtin" or a corpus manifest path (relative to this manifest);
      # count default 40, split default valid, seed default: load_questions' seed.
      - {kind: cloze, languages: [fr, de], count: 40, corpus: builtin, split: valid}
      # a `datasets` dataset: a local `Dataset.save_to_disk` folder (relative to the manifest;
      # read with load_from_disk, `split` picks from a saved DatasetDict; a path starting with
      # ./ ../ / or ~ must be such a folder) or a hub id
      # (load_dataset(path, name, split=split, revision=revision): needs hub access or a
      # populated HF cache). The answer field holds an index or a letter ("A", "B", ...).
      # uid: "hf/<path as written>/<split>/<row>".
      - {kind: hf, path: some/dataset, name: null, split: validation,
         question_field: question, choices_field: choices, answer_field: answer,
         cluster: my-label, language: en}

Every question's language needs templates (else a :class:`~lape.errors.LapeError` at load
time); uids must be unique. :func:`split_questions` divides a set into a selection part (to find
the neurons) and an evaluation part, per cluster, by a stable hash of the uid.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import astuple
from pathlib import Path
from typing import Any

from ..errors import LapeError
from ..files import read_yaml
from ..hf_datasets import open_dataset
from ..masks import NeuronSets
from .prompts import (
    LETTERS,
    Question,
    Template,
    load_templates,
)

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "mcqa"
TEMPLATES_FILE = DATA_DIR / "templates.json"
MMLU_FILE = DATA_DIR / "mmlu_domains.jsonl"
BUILTIN_LANGUAGES = ("en", "zh", "fr", "es", "de", "ru", "ja", "ar", "ko", "vi", "it", "pt", "tr")
BUILTIN_CLOZE_COUNT = 40
BUILTIN_SPECS = ("builtin", "builtin:domains", "builtin:languages")
SOURCE_KINDS = ("mcqa", "cloze", "hf")
_RECORD_FIELDS = ("uid", "question", "choices", "answer", "cluster", "language")
_TOP_KEYS = ("name", "description", "templates", "sources")
_SOURCE_KEYS = {
    "mcqa": ("kind", "path", "cluster", "language"),
    "cloze": ("kind", "languages", "count", "corpus", "split", "seed"),
    "hf": ("kind", "path", "name", "split", "revision", "question_field", "choices_field",
           "answer_field", "cluster", "language"),
}


# --------------------------------------------------------------------------- records


def question_from_record(record: Mapping[str, Any], where: str) -> Question:
    """Validate one question record (a mapping as in the jsonl files) into a :class:`Question`.

    Args:
        record: with ``uid``, ``question``, ``choices``, ``answer``, ``cluster``, ``language``
            and optional ``source``.
        where: names the record in error messages, e.g. ``"questions.jsonl line 12"``.

    Raises:
        LapeError: (one line naming ``where`` and the uid) a missing field, an empty question,
            fewer than two or more than ``len(LETTERS)`` choices, an empty choice, an answer
            that is not an int or out of range.
    """
    if not isinstance(record, Mapping):
        raise LapeError(f"{where}: a question record must be a JSON object, got "
                        f"{type(record).__name__}")
    uid = record.get("uid")
    at = f"{where}, uid {uid!r}" if uid is not None else where
    missing = [f for f in _RECORD_FIELDS if f not in record or record[f] is None]
    if missing:
        raise LapeError(f"{at}: missing field(s) {', '.join(missing)}: every record needs "
                        f"{', '.join(_RECORD_FIELDS)}")
    for f in ("uid", "question", "cluster", "language"):
        if not isinstance(record[f], str) or not record[f].strip():
            raise LapeError(f"{at}: field {f!r} must be a non-empty string, got "
                            f"{_short(record[f])}")
    choices = record["choices"]
    if isinstance(choices, str) or not isinstance(choices, Sequence):
        raise LapeError(f"{at}: 'choices' must be a list of strings, got {_short(choices)}")
    if not 2 <= len(choices) <= len(LETTERS):
        raise LapeError(f"{at}: {len(choices)} choice(s); a question needs 2 to {len(LETTERS)}")
    for k, c in enumerate(choices):
        if not isinstance(c, str) or not c.strip():
            raise LapeError(f"{at}: choice {k} is empty or not a string ({_short(c)})")
    answer = record["answer"]
    if isinstance(answer, bool) or not isinstance(answer, int):
        raise LapeError(f"{at}: 'answer' must be an integer index into choices, got "
                        f"{_short(answer)}")
    if not 0 <= answer < len(choices):
        raise LapeError(f"{at}: answer {answer} is out of range for {len(choices)} choices "
                        f"(0 to {len(choices) - 1})")
    source = record.get("source") or ""
    return Question(uid=record["uid"], question=record["question"],
                    choices=tuple(choices), answer=answer, cluster=record["cluster"],
                    language=record["language"], source=str(source))


def _short(value: Any) -> str:
    """A short one-line repr of a value for error messages."""
    text = repr(value).replace("\n", "\\n")
    return text if len(text) <= 60 else text[:57] + "..."


# --------------------------------------------------------------------------- loading


def builtin_manifest(spec: str = "builtin") -> dict[str, Any]:
    """The question manifest (as a mapping) of a built-in spec.

    ``"builtin:domains"``, ``"builtin:languages"`` or ``"builtin"`` (both); the same content as
    ``data_manifests/keyneurons.yaml``, built in code so that it works from an installed package.
    """
    domains = {"kind": "mcqa", "path": f"builtin:{MMLU_FILE.name}"}
    languages = {"kind": "cloze", "languages": list(BUILTIN_LANGUAGES),
                 "count": BUILTIN_CLOZE_COUNT, "corpus": "builtin", "split": "valid"}
    sources = {"builtin:domains": [domains], "builtin:languages": [languages],
               "builtin": [domains, languages]}
    if spec not in sources:
        raise LapeError(f"unknown built-in question set {spec!r}: use one of "
                        f"{', '.join(BUILTIN_SPECS)} or a question manifest file")
    return {"name": spec, "sources": sources[spec]}


def _read_manifest(spec: str | Path) -> tuple[dict[str, Any], Path, str]:
    """(raw manifest, base folder for relative paths, display name) of a spec."""
    if str(spec) in BUILTIN_SPECS or str(spec).startswith("builtin:"):
        return builtin_manifest(str(spec)), DATA_DIR, str(spec)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise LapeError(f"question manifest {spec} does not exist: pass a YAML manifest or one "
                        f"of {', '.join(BUILTIN_SPECS)}")
    return read_yaml(path, "question manifest"), path.resolve().parent, str(path)


def _check_manifest(raw: Any, name: str) -> list[dict[str, Any]]:
    """Validate the top level and each source's keys; the sources."""
    if not isinstance(raw, dict):
        raise LapeError(f"question manifest {name} must be a mapping with a 'sources' list")
    unknown = sorted(set(raw) - set(_TOP_KEYS))
    if unknown:
        raise LapeError(f"question manifest {name}: unknown key(s) {', '.join(unknown)}; "
                        f"allowed: {', '.join(_TOP_KEYS)}")
    sources = raw.get("sources")
    if not isinstance(sources, list) or not sources:
        raise LapeError(f"question manifest {name}: needs a non-empty 'sources' list")
    for i, src in enumerate(sources):
        at = f"question manifest {name}, source {i + 1}"
        if not isinstance(src, dict):
            raise LapeError(f"{at}: a source must be a mapping with a 'kind'")
        kind = src.get("kind")
        if kind not in SOURCE_KINDS:
            raise LapeError(f"{at}: unknown source kind {kind!r}; kinds: "
                            f"{', '.join(SOURCE_KINDS)}")
        extra = sorted(set(src) - set(_SOURCE_KEYS[kind]))
        if extra:
            raise LapeError(f"{at}: unknown key(s) {', '.join(extra)} for kind {kind}; allowed: "
                            f"{', '.join(_SOURCE_KEYS[kind])}")
        if kind in ("mcqa", "hf") and not src.get("path"):
            raise LapeError(f"{at}: kind {kind} needs a 'path'")
        if kind == "hf" and not all(isinstance(src.get(k), str) and src.get(k)
                                    for k in ("cluster", "language")):
            raise LapeError(f"{at}: kind hf needs 'cluster' and 'language' strings")
        if kind == "cloze":
            langs = src.get("languages")
            if (not isinstance(langs, list) or not langs
                    or not all(isinstance(x, str) for x in langs)):
                raise LapeError(f"{at}: kind cloze needs a non-empty 'languages' list")
            count = src.get("count", BUILTIN_CLOZE_COUNT)
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise LapeError(f"{at}: 'count' must be a positive integer, got {count!r}")
    return sources


def _resolve(path: str, base: Path) -> Path:
    """A source path: ``builtin:<file>`` is a file of lape/data/mcqa, else relative to base."""
    if path.startswith("builtin:"):
        return DATA_DIR / path[len("builtin:"):]
    p = Path(path).expanduser()
    return p if p.is_absolute() else base / p


def _load_mcqa(src: dict[str, Any], base: Path, at: str) -> list[Question]:
    """The questions of a JSON-lines file."""
    file = _resolve(str(src["path"]), base)
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise LapeError(f"{at}: cannot read {file} ({type(exc).__name__}): check the "
                        "path") from None
    defaults = {k: src[k] for k in ("cluster", "language") if k in src}
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LapeError(f"{at}: {file.name} line {n} is not valid JSON ({exc.msg})") from None
        if isinstance(record, dict):
            record = {**defaults, **record}
        out.append(question_from_record(record, f"{file.name} line {n}"))
    return out


def _load_hf(src: dict[str, Any], base: Path, at: str) -> list[Question]:
    """The questions of a ``datasets`` dataset (local save_to_disk folder or the hub)."""
    path, split = str(src["path"]), src.get("split", "validation")
    local = _resolve(path, base)
    if not local.is_dir() and path.startswith(("./", "../", "/", "~", "builtin:")):
        raise LapeError(f"{at}: dataset folder {local} does not exist: write it with "
                        "Dataset.save_to_disk or fix the path")
    fields = {k: src.get(f"{k}_field", k) for k in ("question", "choices", "answer")}
    ds = open_dataset(path, local, split=split, where=at, name=src.get("name"), revision=src.get("revision"),
                      columns=list(fields.values()),
                      fix_columns="set question_field, choices_field and answer_field to its columns")
    out = []
    for i, row in enumerate(ds):
        answer = row[fields["answer"]]
        if isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip() in LETTERS:
            answer = LETTERS.index(answer.strip())
        record = {"uid": f"hf/{path}/{split}/{i}", "question": row[fields["question"]],
                  "choices": row[fields["choices"]], "answer": answer,
                  "cluster": src["cluster"], "language": src["language"],
                  "source": f"{path} {src.get('name') or ''} {split} row {i}".replace("  ", " ")}
        out.append(question_from_record(record, f"{at}, row {i}"))
    return out


def _load_cloze(src: dict[str, Any], base: Path, at: str, clusters: Sequence[str] | None,
                per_cluster: int | None, seed: int,
                templates_path: str | Path | None) -> list[Question]:
    """Cloze questions of each language (only the kept clusters are generated)."""
    from .cloze import cloze_questions

    corpus = src.get("corpus", "builtin")
    if corpus != "builtin":
        corpus = _resolve(str(corpus), base)
    count = src.get("count", BUILTIN_CLOZE_COUNT)
    if per_cluster is not None:
        count = min(count, per_cluster)
    out = []
    for lang in src["languages"]:
        if clusters is not None and lang not in clusters:
            continue
        try:
            out += cloze_questions(lang, count, manifest=corpus, split=src.get("split", "valid"),
                                   seed=src.get("seed", seed), templates=templates_path)
        except LapeError as exc:
            raise LapeError(f"{at}: {exc}") from None
    return out


def load_questions(spec: str | Path, *, clusters: Sequence[str] | None = None,
                   per_cluster: int | None = None, seed: int = 0) -> list[Question]:
    """The questions of a built-in set or a question manifest, in source and file order.

    Args:
        spec: ``"builtin"``, ``"builtin:domains"``, ``"builtin:languages"`` or a YAML question
            manifest (format in the module docstring).
        clusters: keep only these clusters (cloze languages not kept are not generated).
        per_cluster: keep the first N questions of each cluster (cloze: generate N).
        seed: the seed of cloze sources without their own ``seed``.

    Raises:
        LapeError: a malformed manifest, unknown source kind, missing path or unreadable file
            (naming the manifest and source number), an invalid record, repeated uids, an
            unknown cluster in ``clusters`` (listing the available ones), a question whose
            language has no templates.

    Example:
        >>> qs = load_questions("builtin:domains", clusters=["biology"], per_cluster=5)
        >>> len(qs), qs[0].cluster
        (5, 'biology')
    """
    raw, base, name = _read_manifest(spec)
    sources = _check_manifest(raw, name)
    if per_cluster is not None and (isinstance(per_cluster, bool) or per_cluster < 1):
        raise LapeError(f"per_cluster must be a positive integer, got {per_cluster!r}")
    tpath = raw.get("templates")
    templates_path = _resolve(str(tpath), base) if tpath else None
    keep = None if clusters is None else list(clusters)
    questions: list[Question] = []
    available: set[str] = set()
    for i, src in enumerate(sources):
        at = f"question manifest {name}, source {i + 1} ({src['kind']})"
        if src["kind"] == "cloze":
            available.update(src["languages"])
            questions += _load_cloze(src, base, at, keep, per_cluster, seed, templates_path)
        else:
            loaded = _load_mcqa(src, base, at) if src["kind"] == "mcqa" else _load_hf(src, base, at)
            available.update(q.cluster for q in loaded)
            questions += loaded
    if keep is not None:
        unknown = [c for c in keep if c not in available]
        if unknown:
            raise LapeError(f"question set {name}: unknown cluster(s) {', '.join(unknown)}; "
                            f"available: {', '.join(sorted(available))}")
        questions = [q for q in questions if q.cluster in keep]
    if per_cluster is not None:
        questions = _first_per_cluster(questions, per_cluster)
    _check_uids(questions, name)
    _check_templates(questions, load_templates(templates_path), name)
    return questions


def _first_per_cluster(questions: Sequence[Question], n: int) -> list[Question]:
    """The first ``n`` questions of each cluster, in order."""
    seen: dict[str, int] = {}
    out = []
    for q in questions:
        if seen.get(q.cluster, 0) < n:
            seen[q.cluster] = seen.get(q.cluster, 0) + 1
            out.append(q)
    return out


def _check_uids(questions: Sequence[Question], name: str) -> None:
    seen: set[str] = set()
    for q in questions:
        if q.uid in seen:
            raise LapeError(f"question set {name}: uid {q.uid!r} appears more than once; uids "
                            "must be unique")
        seen.add(q.uid)


def _check_templates(questions: Sequence[Question], templates: Mapping[str, list[Template]],
                     name: str) -> None:
    missing = sorted({q.language for q in questions} - set(templates))
    if missing:
        example = next(q.uid for q in questions if q.language == missing[0])
        raise LapeError(f"question set {name}: no prompt templates for language(s) "
                        f"{', '.join(missing)} (e.g. uid {example!r}); languages with templates: "
                        f"{', '.join(sorted(templates))}")


def question_templates(spec: str | Path) -> dict[str, list[Template]]:
    """The templates a question set uses: its manifest's ``templates`` file, or the shipped one."""
    raw, base, name = _read_manifest(spec)
    if not isinstance(raw, dict):
        raise LapeError(f"question manifest {name} must be a mapping with a 'sources' list")
    tpath = raw.get("templates")
    return load_templates(_resolve(str(tpath), base) if tpath else None)


# --------------------------------------------------------------------------- splits and keys


def _uid_hash(uid: str) -> str:
    return hashlib.sha256(uid.encode("utf-8")).hexdigest()


def split_questions(questions: Sequence[Question],
                    eval_share: float = 0.5) -> tuple[list[Question], list[Question]]:
    """Divide questions into (selection, evaluation), per cluster, by the sha256 of the uid.

    Within each cluster the questions are ranked by the hash of their uid; the first
    ``round(n * eval_share)`` go to evaluation (at least one, and at least one left for
    selection, when the cluster has two or more questions; a single question goes to
    selection). So the split is deterministic, never overlaps, ignores input order and does not
    change when questions of other clusters are added. Both lists keep the input order.

    Raises:
        LapeError: ``eval_share`` not strictly between 0 and 1, or repeated uids.
    """
    if not 0.0 < eval_share < 1.0:
        raise LapeError(f"eval_share must be strictly between 0 and 1, got {eval_share!r}")
    _check_uids(questions, "to split")
    by_cluster: dict[str, list[Question]] = {}
    for q in questions:
        by_cluster.setdefault(q.cluster, []).append(q)
    evaluation: set[str] = set()
    for members in by_cluster.values():
        n = len(members)
        if n < 2:
            continue
        k = min(max(round(n * eval_share), 1), n - 1)
        ranked = sorted(members, key=lambda q: _uid_hash(q.uid))
        evaluation.update(q.uid for q in ranked[:k])
    selection = [q for q in questions if q.uid not in evaluation]
    return selection, [q for q in questions if q.uid in evaluation]


def held_out_inputs(sets: NeuronSets, questions: Sequence[Question], selection: Sequence[Question],
                    used_uids: Sequence[str] | None) -> list[Question] | None:
    """Check that the evaluation ``questions`` were not used to select ``sets`` and return the
    selection questions that choose the activation baselines (``None``: unknown here, so the
    evaluation questions' own activations choose them).

    Args:
        sets: the key neurons.
        questions: the evaluation half.
        selection: the selection half of the same split.
        used_uids: the questions the sets were selected on (:class:`KeyNeuronMaps`'s ``uids``), if known.

    Raises:
        LapeError: an evaluation question was used for the selection (another split was given).
    """
    if used_uids is not None:
        used = set(used_uids)
        seen = used & {q.uid for q in questions}
        if seen:
            raise LapeError(f"{len(seen)} evaluation question(s) (e.g. {sorted(seen)[0]!r}) were used to select these "
                            "key neurons: give the same --questions/--clusters/--per-cluster/--eval-share as for "
                            "attribute")
        selection = [q for q in selection if q.uid in used]
    if not selection or not set(sets.labels) <= {q.cluster for q in selection}:
        return None
    return list(selection)


def questions_key(questions: Sequence[Question]) -> str:
    """A content hash (sha256 hex) of the questions, in order: changes when any field changes."""
    h = hashlib.sha256()
    for q in questions:
        h.update(json.dumps(astuple(q), ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()
