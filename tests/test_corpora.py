"""Tests of lape.corpora: manifests, sources, packing, budgets, the built-in corpus."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import py3langid
import pytest
import torch
import yaml

from lape import corpora
from lape.corpora import (
    batches,
    build_builtin_corpus,
    iter_documents,
    load_corpus,
    load_manifest,
    pack,
    parallel_texts,
    show_manifest,
)
from lape.errors import LapeError
from lape.langid import LANGID_ACCEPT

BOS, EOS, PAD = 1, 2, 0


class CharTokenizer:
    """One token per character (its code point); BOS 1, EOS 2, PAD 0."""

    bos_token_id: int | None = BOS
    eos_token_id: int | None = EOS
    pad_token_id: int | None = PAD

    def __call__(self, texts: list[str], add_special_tokens: bool = True) -> dict:
        assert add_special_tokens is False
        return {"input_ids": [[ord(ch) for ch in t] for t in texts]}


class NoBosTokenizer(CharTokenizer):
    bos_token_id = None


def ids(seq: corpora.Sequence) -> list[int]:
    return seq.input_ids.tolist()


def reference_pack(docs: list[str], seq_len: int, budget: int | None) -> list[list[int]]:
    """An independent token-at-a-time packer: BOS per sequence, EOS between documents."""
    out: list[list[int]] = []
    cur: list[int] = []

    def push(tok: int) -> None:
        nonlocal cur
        if not cur:
            cur.append(BOS)
        cur.append(tok)
        if len(cur) == seq_len:
            out.append(cur)
            cur = []

    for doc in [d for d in docs if d]:
        if cur:
            push(EOS)
        for ch in doc:
            push(ord(ch))
    if cur:
        out.append(cur)
    if budget is None:
        return out
    cut, left = [], budget
    for seq in out:
        if left < 2:  # a sequence needs BOS plus a token
            break
        cut.append(seq[:left])
        left -= len(cut[-1])
    return cut


def write_manifest(folder: Path, text: str, name: str = "m.yaml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def make_text_corpus(folder: Path, n: int = 120, langs: tuple[str, ...] = ("en", "fr")) -> Path:
    """A manifest of n one-line documents per language, valid held out by hash."""
    rng = random.Random(0)
    entries = []
    for lang in langs:
        lines = [f"{lang} document {i} " + "x" * rng.randrange(5, 40) for i in range(n)]
        (folder / f"{lang}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        entries.append(f"  {lang}:\n    license: test\n"
                       f"    train: {{kind: text, path: {lang}.txt}}\n"
                       "    valid: {from: train, share: 0.2}\n")
    return write_manifest(folder, "name: tiny\nlanguages:\n" + "".join(entries))


# --------------------------------------------------------------------------------------------
# Packing


def test_pack_hand_computed():
    seqs = list(pack(["abc", "defgh", "ij"], CharTokenizer(), seq_len=4, max_tokens=None))
    a = [ord(c) for c in "abcdefghij"]
    assert [ids(s) for s in seqs] == [
        [BOS, a[0], a[1], a[2]],  # "abc" fills the sequence: no separator needed
        [BOS, a[3], a[4], a[5]],  # "defgh" starts a new sequence right after BOS
        [BOS, a[6], a[7], EOS],  # ... continues, then the separator
        [BOS, a[8], a[9], PAD],  # the last sequence is padded
    ]
    assert [s.attention_mask.tolist() for s in seqs] == [[1] * 4] * 3 + [[1, 1, 1, 0]]
    assert all(s.input_ids.dtype == torch.long and s.attention_mask.dtype == torch.long for s in seqs)


def test_pack_budget_is_exact():
    seqs = list(pack(["abc", "defgh", "ij"], CharTokenizer(), seq_len=4, max_tokens=6))
    assert [ids(s) for s in seqs] == [[BOS, 97, 98, 99], [BOS, 100, PAD, PAD]]
    assert sum(int(s.attention_mask.sum()) for s in seqs) == 6
    # one token left would make a BOS-only sequence: never yielded
    seqs = list(pack(["abc", "defgh"], CharTokenizer(), seq_len=4, max_tokens=5))
    assert [ids(s) for s in seqs] == [[BOS, 97, 98, 99]]
    assert list(pack(["abc"], CharTokenizer(), seq_len=4, max_tokens=0)) == []


def test_pack_without_bos_separates_with_eos():
    seqs = list(pack(["abc", "defgh", "ij"], NoBosTokenizer(), seq_len=4, max_tokens=None))
    assert [ids(s) for s in seqs] == [[97, 98, 99, EOS], [100, 101, 102, 103], [104, EOS, 105, 106]]
    assert all(int(s.attention_mask.sum()) == 4 for s in seqs)


@pytest.mark.parametrize("trial", range(30))
def test_pack_matches_reference(trial):
    rng = random.Random(trial)
    docs = ["".join(rng.choice("abcdefg") for _ in range(rng.randrange(0, 30)))
            for _ in range(rng.randrange(1, 12))]
    seq_len = rng.randrange(2, 16)
    budget = rng.choice([None, rng.randrange(1, 200)])
    seqs = list(pack(docs, CharTokenizer(), seq_len=seq_len, max_tokens=budget))
    expected = reference_pack(docs, seq_len, budget)
    assert len(seqs) == len(expected)
    for k, (seq, exp) in enumerate(zip(seqs, expected, strict=True)):
        real = int(seq.attention_mask.sum())
        assert real == len(exp) > 1  # never empty, never BOS alone
        assert ids(seq)[:real] == exp
        assert ids(seq)[0] == BOS
        assert seq.attention_mask.tolist() == [1] * real + [0] * (seq_len - real)
        assert ids(seq)[real:] == [PAD] * (seq_len - real)
        if k < len(seqs) - 1:
            assert real == seq_len  # only the last sequence is padded
    total = sum(len(e) for e in expected)
    assert sum(int(s.attention_mask.sum()) for s in seqs) == total
    if budget is not None:
        assert total <= budget


def test_pack_rejects_bad_arguments():
    class NoSpecials(CharTokenizer):
        bos_token_id = None
        eos_token_id = None

    with pytest.raises(LapeError, match="neither an EOS nor a BOS"):
        list(pack(["abc"], NoSpecials(), seq_len=8))
    with pytest.raises(LapeError, match="seq_len 1 is too short"):
        list(pack(["abc"], CharTokenizer(), seq_len=1))


@pytest.fixture(scope="module")
def gemma():
    from lape.models import load_tokenizer

    return load_tokenizer("builtin")


@pytest.mark.slow
def test_pack_with_gemma_tokenizer(gemma):
    docs = ["The capital of France is Paris.", "La capitale de la France est Paris, une ville "
            "qui a su se distinguer.", "日本の首都は東京です。", "Die Hauptstadt von Deutschland ist Berlin."]
    per_doc = [gemma.encode(d, add_special_tokens=False) for d in docs]
    seqs = list(pack(docs, gemma, seq_len=16, max_tokens=None))
    bos, eos, pad = gemma.bos_token_id, gemma.eos_token_id, gemma.pad_token_id
    real = [s.input_ids[s.attention_mask.bool()].tolist() for s in seqs]
    assert all(r[0] == bos for r in real)
    assert all(int(s.attention_mask.sum()) == 16 for s in seqs[:-1])
    assert seqs[-1].input_ids[seqs[-1].attention_mask == 0].eq(pad).all()
    body = [t for r in real for t in r[1:]]  # without the BOS of each sequence
    separators = body.count(eos)
    assert [t for t in body if t != eos] == [t for d in per_doc for t in d]
    assert 1 <= separators <= len(docs) - 1
    assert sum(len(r) for r in real) == sum(map(len, per_doc)) + len(seqs) + separators
    # a budget is met exactly
    seqs = list(pack(docs, gemma, seq_len=16, max_tokens=37))
    assert sum(int(s.attention_mask.sum()) for s in seqs) == 37


# --------------------------------------------------------------------------------------------
# Streams


def test_load_corpus_is_deterministic_and_seeded(tmp_path):
    m = make_text_corpus(tmp_path)
    tok = CharTokenizer()
    a = load_corpus(m, tok, tokens_per_language=600, seq_len=32, seed=0)
    b = load_corpus(m, tok, tokens_per_language=600, seq_len=32, seed=0)
    c = load_corpus(m, tok, tokens_per_language=600, seq_len=32, seed=1)
    assert list(a) == ["en", "fr"]
    first = [ids(s) for s in a["en"]]
    assert [ids(s) for s in a["en"]] == first  # re-iterable
    assert [ids(s) for s in b["en"]] == first  # same seed, same sequences
    assert [ids(s) for s in c["en"]] != first  # another seed, another order
    assert a["en"].tokens == 600 == sum(int(s.attention_mask.sum()) for s in a["en"])
    assert all(len(s.input_ids) == 32 for s in a["en"])
    # one long sequence: the documents, shuffled, separated by EOS
    (seq,) = load_corpus(m, tok, tokens_per_language=None, seq_len=10_000, seed=3)["en"]
    real = seq.input_ids[seq.attention_mask.bool()].tolist()
    assert real[0] == BOS and BOS not in real[1:]
    shuffled = "".join(chr(t) if t != EOS else "\n" for t in real[1:]).split("\n")
    in_order = list(iter_documents(m, "en", "train"))
    assert sorted(shuffled) == sorted(in_order) and shuffled != in_order


def test_stream_warns_below_budget(tmp_path, caplog):
    m = make_text_corpus(tmp_path, n=10)
    stream = load_corpus(m, CharTokenizer(), split="valid", tokens_per_language=10**6,
                         seq_len=16, languages=["fr"])["fr"]
    with caplog.at_level(logging.WARNING, logger="lape.corpora"):
        n = sum(int(s.attention_mask.sum()) for s in stream)
    assert stream.tokens == n < 10**6
    assert any("fr" in r.message and f"got {n} tokens" in r.message and "1000000" in r.message
               for r in caplog.records)
    caplog.clear()
    small = load_corpus(m, CharTokenizer(), tokens_per_language=20, seq_len=16)["en"]
    with caplog.at_level(logging.WARNING, logger="lape.corpora"):
        list(small)
    assert small.tokens == 20 and not caplog.records


def test_batches_shapes(tmp_path):
    m = make_text_corpus(tmp_path)
    stream = load_corpus(m, CharTokenizer(), tokens_per_language=16 * 7 - 3, seq_len=16)["en"]
    out = list(batches(stream, 3))
    assert [tuple(x.shape) for x, _ in out] == [(3, 16), (3, 16), (1, 16)]
    assert int(sum(mask.sum() for _, mask in out)) == 16 * 7 - 3
    assert out[-1][1][0, -3:].tolist() == [0, 0, 0]


# --------------------------------------------------------------------------------------------
# Sources and splits


def test_share_split_is_disjoint_and_order_independent(tmp_path):
    m = make_text_corpus(tmp_path, n=300, langs=("en",))
    train, valid = list(iter_documents(m, "en", "train")), list(iter_documents(m, "en", "valid"))
    docs = (tmp_path / "en.txt").read_text(encoding="utf-8").split("\n")[:-1]
    assert not set(train) & set(valid)
    assert sorted(train + valid) == sorted(docs)
    assert 0.1 < len(valid) / len(docs) < 0.3
    (tmp_path / "en.txt").write_text("\n".join(reversed(docs)) + "\n", encoding="utf-8")
    assert set(iter_documents(m, "en", "valid")) == set(valid)


def test_text_blocks_glob_and_relative_paths(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("one\nstill one\n\n\n  two  \n", encoding="utf-8")
    (tmp_path / "data" / "b.txt").write_text("three\n", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    m = write_manifest(tmp_path / "sub", "languages:\n  de:\n    train:\n"
                       "      - {kind: text, path: ../data/*.txt, docs: blocks}\n"
                       "      - {kind: text, path: ../data/b.txt, min_chars: 2}\n")
    assert list(iter_documents(m, "de", "train")) == ["one\nstill one", "two", "three", "three"]


def test_hf_source_saved_locally(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"content": ["Erster Satz.", "  ", "Zweiter Satz."], "id": [1, 2, 3]}
                               ).save_to_disk(str(tmp_path / "ds"))
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a b", "c d"]}),
                          "test": datasets.Dataset.from_dict({"text": ["e"]})}
                         ).save_to_disk(str(tmp_path / "dd"))
    m = write_manifest(tmp_path, "languages:\n  de:\n"
                       "    train: {kind: hf, path: ds, text_field: content}\n"
                       "    valid: {kind: hf, path: dd, split: test}\n")
    assert list(iter_documents(m, "de", "train")) == ["Erster Satz.", "Zweiter Satz."]
    assert list(iter_documents(m, "de", "valid")) == ["e"]
    seqs = list(load_corpus(m, CharTokenizer(), tokens_per_language=None, seq_len=8)["de"])
    expected = reference_pack(list(iter_documents(m, "de", "train")), 8, None)
    assert sum(int(s.attention_mask.sum()) for s in seqs) == sum(map(len, expected))


def test_show_manifest(tmp_path):
    import hashlib

    def held_out(doc: str, share: float) -> bool:  # the documented rule: sha256 position below the share
        return int.from_bytes(hashlib.sha256(doc.encode("utf-8")).digest()[:8], "big") / 2.0**64 < share

    long_doc = ("long  document " * 25).strip()  # 374 characters, two spaces inside
    assert not held_out(long_doc, 0.2)  # it stays in train: the first train document, the sample
    rng = random.Random(0)
    en = [long_doc] + [f"en document {i} " + "x" * rng.randrange(5, 40) for i in range(50)]
    fr = [f"  fr doc {i} " + "z" * rng.randrange(1, 9) for i in range(30)]
    (tmp_path / "en.txt").write_text("\n".join(en) + "\n\n   \n", encoding="utf-8")  # blank lines: dropped
    (tmp_path / "fr.txt").write_text("\n".join(fr) + "\n", encoding="utf-8")
    m = write_manifest(tmp_path, "name: tiny\nlanguages:\n"
                       "  en:\n    source: written  for\n      this test\n    license: CC0-1.0\n"
                       "    train: {kind: text, path: en.txt}\n    valid: {from: train, share: 0.2}\n"
                       "  fr:\n    license: test\n    note: short lines\n"
                       "    train: {kind: text, path: fr.txt}\n    valid: {from: train, share: 0.25}\n")
    text = show_manifest(m, CharTokenizer())
    lines = text.splitlines()
    assert lines[0].startswith(f"manifest tiny ({m}") and lines[0].endswith(f"hash {load_manifest(m).hash()})")
    assert lines[1:3] == ["2 languages: en fr", "default languages: en fr"]

    def split_lines(docs: list[str], share: float, file: str) -> list[str]:
        docs = [d.strip() for d in docs]
        valid = [d for d in docs if held_out(d, share)]
        train = [d for d in docs if not held_out(d, share)]
        assert train and valid
        row = "  {:<9}{:>7,} docs {:>10,} tokens  [{}]"  # one token a character (CharTokenizer)
        return [row.format("train", len(train), sum(map(len, train)), f"text {file} (lines)"),
                row.format("valid", len(valid), sum(map(len, valid)), f"{share:g} of train by document hash")]

    first_fr = next(d.strip() for d in fr if not held_out(d.strip(), 0.25))
    assert lines[3:] == [
        "", "en", "  source: written for this test", "  license: CC0-1.0",
        *split_lines(en, 0.2, "en.txt"),
        "  sample: " + " ".join(long_doc.split())[:80] + "...",  # whitespace collapsed, cut at 80
        "", "fr", "  license: test", "  note: short lines",
        *split_lines(fr, 0.25, "fr.txt"),
        f"  sample: {first_fr}",
    ]
    plain = show_manifest(m).splitlines()  # without a tokenizer: documents only
    n_train = sum(not held_out(d, 0.2) for d in en)
    assert plain[7] == f"  train    {n_train:>7,} docs  [text en.txt (lines)]"
    assert not any("tokens" in line for line in plain)


# --------------------------------------------------------------------------------------------
# Errors: one line, naming the input and the fix


def check_error(exc: pytest.ExceptionInfo, *parts: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg
    for part in parts:
        assert part in msg, msg


def test_error_unknown_language(tmp_path):
    m = make_text_corpus(tmp_path)
    with pytest.raises(LapeError) as exc:
        load_corpus(m, CharTokenizer(), languages=["en", "xx"])
    check_error(exc, "'xx'", str(m), "available: en, fr")
    with pytest.raises(LapeError) as exc:
        list(iter_documents(m, "xx", "train"))
    check_error(exc, "'xx'", "en, fr")
    with pytest.raises(LapeError) as exc:
        list(iter_documents(m, "en", "parallel"))
    check_error(exc, "no split 'parallel'", "train, valid")
    with pytest.raises(LapeError) as exc:
        parallel_texts(m)
    check_error(exc, "no 'parallel' split")


def test_error_missing_file(tmp_path):
    m = write_manifest(tmp_path, "languages:\n  en:\n    train: {kind: text, path: nope.txt}\n")
    with pytest.raises(LapeError) as exc:
        load_manifest(m)
    check_error(exc, str(m), "'en'", "'train'", "nope.txt does not exist", "fix the path")
    m = write_manifest(tmp_path, "languages:\n  en:\n    train: {kind: text, path: 'x/*.txt'}\n")
    with pytest.raises(LapeError) as exc:
        load_manifest(m)
    check_error(exc, "no file matches x/*.txt")
    with pytest.raises(LapeError) as exc:
        load_manifest(tmp_path / "absent.yaml")
    check_error(exc, "absent.yaml does not exist")


def test_error_empty_source_and_split(tmp_path):
    (tmp_path / "empty.txt").write_text("\n   \n\n", encoding="utf-8")
    (tmp_path / "one.txt").write_text("only\n", encoding="utf-8")
    m = write_manifest(tmp_path, "languages:\n  en:\n    train: {kind: text, path: empty.txt}\n")
    with pytest.raises(LapeError) as exc:
        list(iter_documents(m, "en", "train"))
    check_error(exc, "'en'", "'train'", "empty.txt", "no documents after cleaning")
    # "only" hashes into train: the valid share is empty
    m = write_manifest(tmp_path, "languages:\n  en:\n    train: {kind: text, path: one.txt}\n"
                       "    valid: {from: train, share: 0.01}\n")
    assert list(iter_documents(m, "en", "train")) == ["only"]
    with pytest.raises(LapeError) as exc:
        list(iter_documents(m, "en", "valid"))
    check_error(exc, "'valid'", "no documents")


def test_error_missing_dataset_field(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"body": ["x"]}).save_to_disk(str(tmp_path / "ds"))
    m = write_manifest(tmp_path, "languages:\n  en:\n    train: {kind: hf, path: ds}\n")
    with pytest.raises(LapeError) as exc:
        list(iter_documents(m, "en", "train"))
    check_error(exc, "no field 'text'", "fields: body", "text_field")


def test_error_malformed_yaml(tmp_path):
    m = write_manifest(tmp_path, "languages:\n  en:\n    train: {kind: text, path: [a\n  fr: x\n")
    with pytest.raises(LapeError) as exc:
        load_manifest(m)
    check_error(exc, str(m), "not valid YAML", "at line 4")
    (tmp_path / "a.txt").write_text("a\n", encoding="utf-8")
    m = write_manifest(tmp_path, "languages:\n  en:\n    train: {kind: text, path: a.txt}\n"
                       "  en:\n    train: {kind: text, path: a.txt}\n")
    with pytest.raises(LapeError) as exc:
        load_manifest(m)
    check_error(exc, "duplicate key 'en'", "at line 4")


def test_error_splits_differ(tmp_path):
    (tmp_path / "a.txt").write_text("a\n", encoding="utf-8")
    m = write_manifest(tmp_path, "languages:\n  en:\n    train: {kind: text, path: a.txt}\n"
                       "    valid: {from: train, share: 0.5}\n"
                       "  fr:\n    train: {kind: text, path: a.txt}\n")
    with pytest.raises(LapeError) as exc:
        load_manifest(m)
    check_error(exc, "'fr'", "declares splits train", "valid", "same splits for every language")


def test_error_unknown_kind_and_keys(tmp_path):
    (tmp_path / "a.txt").write_text("a\n", encoding="utf-8")
    cases = {
        "    train: {kind: web, url: x}\n": ["unknown source kind 'web'", "text, hf, builtin"],
        "    train: {kind: text, path: a.txt, lines: 3}\n": ["unknown key 'lines'", "kind, path, docs"],
        "    trian: {kind: text, path: a.txt}\n": ["unknown key 'trian'", "train, valid, parallel"],
        "    train: {kind: text, path: a.txt, docs: paragraphs}\n": ["'lines' or 'blocks'"],
        "    train: {kind: text, path: a.txt}\n    valid: {from: train, share: 2}\n":
            ["share 2", "between 0 and 1"],
        "    train: {kind: text, path: a.txt}\n    valid: {from: test, share: 0.1}\n":
            ["derives from 'test'"],
    }
    for body, parts in cases.items():
        m = write_manifest(tmp_path, "languages:\n  en:\n" + body)
        with pytest.raises(LapeError) as exc:
            load_manifest(m)
        check_error(exc, str(m), "'en'", *parts)
    m = write_manifest(tmp_path, "langs: {}\nlanguages:\n  en:\n    train: {kind: text, path: a.txt}\n")
    with pytest.raises(LapeError) as exc:
        load_manifest(m)
    check_error(exc, "unknown top-level key 'langs'")


def test_manifest_fields_and_hash(tmp_path):
    (tmp_path / "a.txt").write_text("a\n", encoding="utf-8")
    text = ("name: demo\ndefault_languages: [no]\nlanguages:\n"
            "  no:\n    train: {kind: text, path: a.txt}\n"
            "  on:\n    train: {kind: text, path: a.txt}\n")
    m = load_manifest(write_manifest(tmp_path, text))
    assert (m.name, m.languages, m.default_languages) == ("demo", ["no", "on"], ["no"])
    assert m.split_names("no") == ["train"] and m.entry("no")["train"]["kind"] == "text"
    h = m.hash()
    write_manifest(tmp_path, text + "# changed\n")
    assert len(h) == 16 and load_manifest(m.path).hash() != h


# --------------------------------------------------------------------------------------------
# The built-in corpus


def test_clean_generated_text():
    text = ("Of course. Here is 30,000 words of varied text.\n\n---\n\n### **1. Science**\n\n"
            "**Astronomy and the Universe in all its breadth, a title without any punctuation mark**\n\n"
            "*   **Stars:** stars are huge balls of plasma held together by gravity, shining for "
            "billions of years.\n"
            "Short line.\n\n"
            + "A natural paragraph about planets, moons and the long history of their study. " * 2
            + "\n")
    assert corpora.clean_generated_text(text, "en") == [
        "Stars: stars are huge balls of plasma held together by gravity, shining for billions "
        "of years.",
        ("A natural paragraph about planets, moons and the long history of their study. " * 2).strip(),
    ]


@pytest.fixture(scope="module")
def builtin_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("lape-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAPE_CACHE", str(root))
        build_builtin_corpus()
    return root


@pytest.fixture
def builtin_cache(builtin_root, monkeypatch):
    monkeypatch.setenv("LAPE_CACHE", str(builtin_root))
    return builtin_root / "corpora" / corpora.builtin.BUILTIN_VERSION


def test_builtin_build_is_complete_and_disjoint(builtin_cache):
    m = load_manifest("builtin")
    assert len(m.languages) >= 30 and "no" in m.languages
    assert set(m.default_languages) >= {"en", "zh", "fr", "es", "de", "ru", "ja", "ar", "ko", "vi"}
    assert (builtin_cache / "build.json").is_file()
    for code in m.languages:
        assert m.split_names(code) == ["train", "valid", "parallel"]
        train, valid = list(iter_documents(m, code, "train")), list(iter_documents(m, code, "valid"))
        assert train and valid and not set(train) & set(valid), code
        assert len(set(train)) == len(train)
        assert min(len(d) for d in train + valid) >= corpora.builtin.MIN_PARAGRAPH_CHARS
        assert m.entry(code)["stats"]["train"]["documents"] == len(train), code
        assert m.entry(code)["stats"]["valid"]["documents"] == len(valid), code


def test_builtin_valid_is_in_the_labelled_language(builtin_cache):
    m = load_manifest("builtin")
    exact = 0
    for code in m.languages:
        docs = list(iter_documents(m, code, "valid"))[:5]
        labels = [py3langid.classify(d)[0] for d in docs]
        assert all(lab in LANGID_ACCEPT.get(code, (code,)) for lab in labels), (code, labels)
        exact += all(lab == code for lab in labels)
    assert exact >= 30


def test_builtin_parallel_texts_align(builtin_cache):
    texts = parallel_texts("builtin")
    counts = {len(v) for v in texts.values()}
    assert counts == {30}
    assert texts["en"][0].startswith("Article 1\n")
    assert len({v[0] for v in texts.values()}) == len(texts)  # translations, not copies
    assert py3langid.classify(texts["fr"][2])[0] == "fr"


def test_builtin_stream_counts_budget(builtin_cache):
    stream = load_corpus("builtin", CharTokenizer(), tokens_per_language=3000, seq_len=128,
                         languages=["ja"])["ja"]
    seqs = list(stream)
    assert stream.tokens == 3000 and len(seqs) == -(-3000 // 128)


def test_builtin_build_is_atomic(tmp_path, monkeypatch):
    monkeypatch.setenv("LAPE_CACHE", str(tmp_path))
    real = corpora.builtin._builtin_paragraphs
    seen = []

    def failing(code, data):
        seen.append(code)
        if len(seen) == 3:
            raise RuntimeError("boom")
        return real(code, data)

    monkeypatch.setattr(corpora.builtin, "_builtin_paragraphs", failing)
    with pytest.raises(RuntimeError, match="boom"):
        build_builtin_corpus()
    assert list((tmp_path / "corpora").iterdir()) == []  # nothing cached from a failed build


def _corpus_manifests() -> list[Path]:
    """The shipped corpus manifests: every data_manifests/*.yaml except question manifests
    (a top-level ``sources:`` list; those are tested in test_mcqa.py)."""
    found = sorted((Path(__file__).parent.parent / "data_manifests").glob("*.yaml"))
    corpus = [p for p in found if "sources" not in yaml.safe_load(p.read_text(encoding="utf-8"))]
    assert len(corpus) >= 3 and len(corpus) < len(found)  # the split must not silently drop all
    return corpus


def test_question_manifest_given_as_corpus_says_which_flag_takes_it():
    path = Path(__file__).parent.parent / "data_manifests" / "keyneurons.yaml"
    with pytest.raises(LapeError, match="question manifest.*--questions"):
        load_manifest(path)


@pytest.mark.parametrize("path", _corpus_manifests(), ids=lambda p: p.name)
def test_shipped_manifests_validate(path):
    m = load_manifest(path)
    assert m.languages and set(m.default_languages) <= set(m.languages)
    if path.name == "udhr-text.yaml":
        train, valid = list(iter_documents(m, "fr", "train")), list(iter_documents(m, "fr", "valid"))
        assert len(train) + len(valid) == 30 and not set(train) & set(valid)


def test_hf_source_with_local_data_files(tmp_path):
    (tmp_path / "docs.jsonl").write_text('{"body": "Hola mundo."}\n{"body": "Adiós."}\n',
                                         encoding="utf-8")
    m = write_manifest(tmp_path, "languages:\n  es:\n    train: {kind: hf, path: json, "
                       "data_files: docs.jsonl, text_field: body}\n")
    assert list(iter_documents(m, "es", "train")) == ["Hola mundo.", "Adiós."]
