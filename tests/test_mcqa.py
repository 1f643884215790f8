"""The multiple-choice question layer of key neurons: records, templates, prompts, MMLU subset,
cloze questions, splits and question manifests (lape.keyneurons.questions / .cloze)."""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from pathlib import Path

import pytest

from lape.corpora.sources import iter_documents
from lape.errors import LapeError
from lape.keyneurons.cloze import BLANK, cloze_questions
from lape.keyneurons.prompts import (
    DATA_DIR,
    LETTERS,
    Question,
    Template,
    load_templates,
    prompts_for,
    render,
    templates_for,
)
from lape.keyneurons.questions import (
    BUILTIN_LANGUAGES,
    load_questions,
    question_from_record,
    questions_key,
    split_questions,
)

REPO = Path(__file__).resolve().parent.parent
GOOD = {"uid": "x/1", "question": "What is 2 + 2?", "choices": ["3", "4", "5", "22"],
        "answer": 1, "cluster": "math", "language": "en"}
OPTION = re.compile(r"^([A-J])\. (.*)$", re.M)


def one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    return msg


def make_question(uid: str, cluster: str = "c", n: int = 4, answer: int = 2) -> Question:
    return Question(uid=uid, question=f"Question {uid}?", choices=tuple(f"choice {uid} {k}"
                    for k in range(n)), answer=answer, cluster=cluster, language="en")


# --------------------------------------------------------------------------- records


@pytest.mark.parametrize("change, needle", [
    ({"answer": None}, "missing field"),
    ({"choices": None}, "missing field"),
    ({"answer": 4}, "out of range"),
    ({"answer": -1}, "out of range"),
    ({"answer": "1"}, "integer"),
    ({"answer": 1.0}, "integer"),
    ({"answer": True}, "integer"),
    ({"choices": ["only"], "answer": 0}, "1 choice"),
    ({"choices": [str(k) for k in range(11)], "answer": 0}, "11 choice"),
    ({"choices": ["a", " ", "c"], "answer": 0}, "choice 1 is empty"),
    ({"question": "  "}, "'question' must be a non-empty"),
])
def test_malformed_record_one_line_error_names_record(change, needle):
    record = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(LapeError) as excinfo:
        question_from_record(record, "questions.jsonl line 12")
    msg = one_line_error(excinfo)
    assert "questions.jsonl line 12" in msg and "'x/1'" in msg
    assert needle in msg


def test_good_record_validates():
    q = question_from_record({**GOOD, "source": "s"}, "here")
    assert q == Question("x/1", "What is 2 + 2?", ("3", "4", "5", "22"), 1, "math", "en", "s")


# --------------------------------------------------------------------------- templates


def write_templates(tmp_path: Path, text: str, name: str = "broken") -> Path:
    path = tmp_path / "templates.json"
    entry = {"templates": [{"name": "ok", "text": "Q: {question}\n{options}\nA:"},
                           {"name": name, "text": text}]}
    path.write_text(json.dumps({"en": {"templates": [{"name": "ok", "text":
                                "{question}\n{options}\nAnswer:"}]}, "xx": entry}))
    return path


@pytest.mark.parametrize("text, needle", [
    ("Question:\n{options}\nAnswer:", "{question}"),
    ("Question: {question}\nAnswer:", "{options}"),
    ("{question} {question}\n{options}\nAnswer:", "{question}"),
    ("{question}\n{options}\nAnswer: ", "trailing whitespace"),
])
def test_bad_template_one_line_error_names_language_and_template(tmp_path, text, needle):
    with pytest.raises(LapeError) as excinfo:
        load_templates(write_templates(tmp_path, text, name="my-template"))
    msg = one_line_error(excinfo)
    assert "'xx'" in msg and "my-template" in msg and needle in msg


def test_language_without_templates(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"en": {"templates": []}}))
    with pytest.raises(LapeError) as excinfo:
        load_templates(path)
    assert "'en'" in one_line_error(excinfo)
    with pytest.raises(LapeError) as excinfo:
        templates_for("xx")
    msg = one_line_error(excinfo)
    assert "'xx'" in msg and "en, " in msg and "zh" in msg


def test_shipped_templates_cover_the_languages():
    templates = load_templates()
    assert set(BUILTIN_LANGUAGES) <= set(templates)
    for lang in BUILTIN_LANGUAGES:
        assert len(templates[lang]) >= 3, lang
        for t in templates[lang]:
            assert t.language == lang
            assert t.text == t.text.rstrip() and t.text[-1] in ":：", (lang, t.name)
            assert t.text.count("{question}") == t.text.count("{options}") == 1
        # written in the language: the non-slot text differs from the English templates
        if lang != "en":
            english = {t.text for t in templates["en"]}
            assert not english & {t.text for t in templates[lang]}
    raw = json.loads((DATA_DIR / "templates.json").read_text(encoding="utf-8"))
    assert all(raw[lang]["cloze_instruction"].strip() for lang in BUILTIN_LANGUAGES)


# --------------------------------------------------------------------------- prompts


def parse_options(text: str) -> dict[str, str]:
    return dict(OPTION.findall(text))


def test_prompts_shuffle_per_template_and_point_at_the_answer():
    templates = templates_for("en")
    questions = [make_question(f"q{i}", answer=i % 4) for i in range(6)]
    differs = False
    for q in questions:
        prompts = prompts_for(q, templates, seed=3)
        assert len(prompts) == len(templates)
        assert prompts == prompts_for(q, templates, seed=3)  # deterministic
        assert prompts[0].order == (0, 1, 2, 3)  # first template: original order
        for p in prompts:
            assert sorted(p.order) == [0, 1, 2, 3]
            assert p.letters == ("A", "B", "C", "D")
            options = parse_options(p.text)
            assert list(options) == list("ABCD")
            assert options[LETTERS[p.correct]] == q.choices[q.answer]
            assert [options[LETTERS[k]] for k in range(4)] == [q.choices[i] for i in p.order]
            assert p.text.endswith(p.template.text[-7:]) and q.question in p.text
        differs |= len({p.order for p in prompts}) > 1
    assert differs
    # the seed changes the shuffles
    assert any(prompts_for(q, templates, seed=3)[1].order != prompts_for(q, templates, seed=4)[1]
               .order for q in questions)


def test_render_keeps_braces_and_rejects_bad_order():
    q = Question("b", "Compute $\\frac{5}{8}$ {options}?", ("{x}", "y"), 0, "c", "en")
    t = Template("en", "t", "Q: {question}\n{options}\nAnswer:")
    p = render(q, t, [1, 0])
    assert p.text == "Q: Compute $\\frac{5}{8}$ {options}?\nA. y\nB. {x}\nAnswer:"
    assert p.correct == 1
    with pytest.raises(LapeError):
        render(q, t, [0, 0])


# --------------------------------------------------------------------------- MMLU subset


def notice_counts() -> dict[str, dict[str, int]]:
    text = (DATA_DIR / "NOTICE.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| ([a-z_]+) \| (\d+) \| (\d+) \| (\d+) \|$", text, re.M)
    return {d: {"dev": int(a), "validation": int(b)} for d, a, b, _ in rows}


def test_shipped_mmlu_subset():
    lines = (DATA_DIR / "mmlu_domains.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    questions = [question_from_record(r, f"line {n}") for n, r in enumerate(records, 1)]
    assert all("/test/" not in q.uid and " test " not in q.source for q in questions)
    splits = Counter((q.cluster, q.uid.split("/")[2]) for q in questions)
    assert {s for _, s in splits} == {"dev", "validation"}
    expected = notice_counts()
    assert set(expected) == {"biology", "physics", "chemistry", "mathematics",
                             "computer_science", "geography"}
    assert {c: {s: splits[(c, s)] for s in ("dev", "validation")} for c in expected} == expected
    assert all(len(q.choices) == 4 and q.language == "en" for q in questions)
    assert len({q.uid for q in questions}) == len(questions)
    loaded = load_questions("builtin:domains")
    assert loaded == questions


# --------------------------------------------------------------------------- cloze


@pytest.fixture(scope="module")
def cloze_sets():
    return {lang: cloze_questions(lang, 40) for lang in ("en", "zh", "ja", "ko", "ar", "pt")}


def test_cloze_deterministic(cloze_sets):
    assert cloze_questions("ko", 40) == cloze_sets["ko"]
    assert cloze_questions("ko", 10) == cloze_sets["ko"][:10]
    assert cloze_questions("ko", 40, seed=1) != cloze_sets["ko"]


@pytest.mark.parametrize("lang", ["en", "zh", "ja", "ko", "ar", "pt"])
def test_cloze_questions_are_well_formed(cloze_sets, lang):
    questions = cloze_sets[lang]
    docs = list(iter_documents("builtin", lang, "valid"))
    assert [q.uid for q in questions] == [f"cloze/{lang}/{i}" for i in range(40)]
    for q in questions:
        assert q.cluster == q.language == lang and len(q.choices) == 4
        assert q.source == "cloze from lape builtin corpus valid split"
        instruction, sentence = q.question.split("\n", 1)
        assert sentence.count(BLANK) == 1 and q.question.count(BLANK) == 1
        assert 40 <= len(sentence) - len(BLANK) + len(q.choices[q.answer]) <= 300
        answer = q.choices[q.answer]
        restored = sentence.replace(BLANK, answer)
        assert any(restored in doc for doc in docs), (q.uid, restored)
        assert restored.casefold().count(answer.casefold()) == 1  # no hint left in the sentence
        others = [c for k, c in enumerate(q.choices) if k != q.answer]
        assert len({c.casefold() for c in q.choices}) == 4
        for d in others:
            assert answer.casefold() not in d.casefold() and d.casefold() not in answer.casefold()
            assert d.casefold() not in restored.casefold()
            assert all(ch.isalpha() or unicodedata.category(ch).startswith("M") for ch in d)
        if lang in ("zh", "ja"):
            assert all(len(c) == 2 and all("CJK" in unicodedata.name(ch) for ch in c)
                       for c in q.choices)
        elif lang == "ko":
            assert all(len(c) >= 2 and all("HANGUL" in unicodedata.name(ch) for ch in c)
                       for c in q.choices)
        else:
            assert all(len(c) >= 4 for c in q.choices)
    # answers are spread over the positions
    assert len({q.answer for q in questions}) == 4


def test_cloze_too_many_and_unknown_language():
    with pytest.raises(LapeError) as excinfo:
        cloze_questions("zh", 100_000)
    assert "'zh'" in one_line_error(excinfo)
    with pytest.raises(LapeError) as excinfo:
        cloze_questions("sw", 5)  # in the corpus, but no cloze instruction
    assert "cloze_instruction" in one_line_error(excinfo)


# --------------------------------------------------------------------------- splits and keys


def test_split_questions():
    a = [make_question(f"a{i}", "A") for i in range(21)]
    b = [make_question(f"b{i}", "B") for i in range(2)]
    lone = [make_question("c0", "C")]
    sel, ev = split_questions(a + b + lone)
    assert not {q.uid for q in sel} & {q.uid for q in ev}
    assert sorted(q.uid for q in sel + ev) == sorted(q.uid for q in a + b + lone)
    assert (sel, ev) == split_questions(a + b + lone)
    assert split_questions(list(reversed(a + b))) == (list(reversed([q for q in sel
                                                                       if q.cluster != "C"])),
                                                      list(reversed(ev)))
    for cluster in "AB":
        assert any(q.cluster == cluster for q in sel) and any(q.cluster == cluster for q in ev)
    assert lone[0] in sel
    assert abs(sum(q.cluster == "A" for q in ev) - 10.5) <= 1
    # adding another cluster's questions does not move A's
    sel_a, ev_a = split_questions(a)
    assert [q for q in sel if q.cluster == "A"] == sel_a
    assert [q for q in ev if q.cluster == "A"] == ev_a
    sel3, ev3 = split_questions(a, eval_share=0.25)
    assert len(ev3) == 5 and len(sel3) == 16
    with pytest.raises(LapeError):
        split_questions(a, eval_share=1.0)


def test_questions_key_changes_with_any_field():
    qs = [make_question("k1"), make_question("k2")]
    key = questions_key(qs)
    assert key == questions_key([make_question("k1"), make_question("k2")])
    assert key != questions_key(list(reversed(qs)))
    base = qs[0]
    for change in ({"uid": "k9"}, {"question": "other"}, {"choices": ("a", "b", "c", "d")},
                   {"answer": 0}, {"cluster": "z"}, {"language": "fr"}, {"source": "s"}):
        changed = Question(**{**base.__dict__, **change})
        assert questions_key([changed, qs[1]]) != key, change


# --------------------------------------------------------------------------- manifests


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def test_manifest_with_mcqa_and_hf_sources(tmp_path):
    import datasets

    write_jsonl(tmp_path / "qs.jsonl", [{**GOOD, "uid": f"m{i}", "cluster": "math"}
                                        for i in range(3)]
                + [{**GOOD, "uid": "g1", "cluster": "geo", "language": "fr"}])
    datasets.Dataset.from_dict({
        "q": ["Capital of France?", "Largest ocean?"],
        "options": [["Paris", "Rome", "Oslo"], ["Atlantic", "Pacific", "Indian", "Arctic"]],
        "label": ["A", "B"],
    }).save_to_disk(str(tmp_path / "hfset"))
    (tmp_path / "m.yaml").write_text(
        "name: mine\n"
        "sources:\n"
        "  - {kind: mcqa, path: qs.jsonl}\n"
        "  - {kind: hf, path: hfset, split: train, question_field: q, choices_field: options,\n"
        "     answer_field: label, cluster: trivia, language: en}\n")
    qs = load_questions(tmp_path / "m.yaml")
    assert [q.cluster for q in qs] == ["math"] * 3 + ["geo", "trivia", "trivia"]
    assert qs[4] == Question("hf/hfset/train/0", "Capital of France?", ("Paris", "Rome", "Oslo"),
                             0, "trivia", "en", qs[4].source)
    assert qs[5].answer == 1 and qs[5].uid == "hf/hfset/train/1"
    assert [q.uid for q in load_questions(tmp_path / "m.yaml", clusters=["math", "trivia"],
                                          per_cluster=2)] == ["m0", "m1", "hf/hfset/train/0",
                                                              "hf/hfset/train/1"]
    with pytest.raises(LapeError) as excinfo:
        load_questions(tmp_path / "m.yaml", clusters=["nope"])
    msg = one_line_error(excinfo)
    assert "nope" in msg and "geo, math, trivia" in msg


@pytest.mark.parametrize("source, needle", [
    ("{kind: mystery, path: qs.jsonl}", "unknown source kind 'mystery'"),
    ("{kind: mcqa}", "needs a 'path'"),
    ("{kind: mcqa, path: missing.jsonl}", "cannot read"),
    ("{kind: hf, path: ./no-such-folder, cluster: c, language: en}", "does not exist"),
    ("{kind: cloze, languages: [fr], count: 0}", "'count'"),
])
def test_bad_manifest_source_one_line_error(tmp_path, source, needle):
    write_jsonl(tmp_path / "qs.jsonl", [GOOD])
    (tmp_path / "m.yaml").write_text(f"name: bad\nsources:\n  - {{kind: mcqa, path: qs.jsonl}}\n"
                                     f"  - {source}\n")
    with pytest.raises(LapeError) as excinfo:
        load_questions(tmp_path / "m.yaml")
    msg = one_line_error(excinfo)
    assert "m.yaml" in msg and "source 2" in msg and needle in msg


@pytest.mark.parametrize("text, needle", [
    ("name: x\nsources:\n  - {kind: mcqa, path: qs.jsonl\n", "at line"),  # unclosed flow mapping
    ("name: x\nname: y\nsources: []\n", "duplicate key 'name'"),
])
def test_a_question_manifest_that_is_not_yaml_is_a_one_line_error(tmp_path, text, needle):
    """The question manifests read YAML the corpus manifests' way (one reader): the line of the
    problem, and a repeated key is an error rather than the last value silently winning."""
    (tmp_path / "m.yaml").write_text(text)
    with pytest.raises(LapeError) as excinfo:
        load_questions(tmp_path / "m.yaml")
    msg = one_line_error(excinfo)
    assert msg.startswith("question manifest ") and "not valid YAML" in msg and needle in msg, msg


def test_manifest_bad_record_and_missing_templates(tmp_path):
    write_jsonl(tmp_path / "qs.jsonl", [GOOD, {**GOOD, "uid": "bad", "answer": 7}])
    (tmp_path / "m.yaml").write_text("sources:\n  - {kind: mcqa, path: qs.jsonl}\n")
    with pytest.raises(LapeError) as excinfo:
        load_questions(tmp_path / "m.yaml")
    msg = one_line_error(excinfo)
    assert "qs.jsonl line 2" in msg and "'bad'" in msg
    write_jsonl(tmp_path / "qs.jsonl", [GOOD, {**GOOD, "uid": "y", "language": "xx"}])
    with pytest.raises(LapeError) as excinfo:
        load_questions(tmp_path / "m.yaml")
    msg = one_line_error(excinfo)
    assert "xx" in msg and "'y'" in msg and "templates" in msg
    # a manifest's own templates file makes the language usable
    (tmp_path / "t.json").write_text(json.dumps({
        lang: {"templates": [{"name": "p", "text": "{question}\n{options}\n=>"}]}
        for lang in ("en", "xx")}))
    (tmp_path / "m.yaml").write_text("templates: t.json\nsources:\n"
                                     "  - {kind: mcqa, path: qs.jsonl}\n")
    assert [q.language for q in load_questions(tmp_path / "m.yaml")] == ["en", "xx"]
    write_jsonl(tmp_path / "qs.jsonl", [GOOD, GOOD])
    with pytest.raises(LapeError) as excinfo:
        load_questions(tmp_path / "m.yaml")
    assert "more than once" in one_line_error(excinfo)


def test_builtin_specs_match_the_shipped_manifest():
    keep = ["geography", "fr", "ko"]
    from_code = load_questions("builtin", clusters=keep, per_cluster=5)
    from_file = load_questions(REPO / "data_manifests" / "keyneurons.yaml", clusters=keep,
                               per_cluster=5)
    assert from_code == from_file
    assert Counter(q.cluster for q in from_code) == {c: 5 for c in keep}
    assert from_code[5:] == cloze_questions("fr", 5) + cloze_questions("ko", 5)
    with pytest.raises(LapeError) as excinfo:
        load_questions("builtin:nothing")
    assert "builtin:domains" in one_line_error(excinfo)
