"""What a corpus stream's cache key covers (the text behind the manifest), and manifests that
would make held-out results meaningless."""

from __future__ import annotations

import pytest

from lape.corpora import load_corpus, load_manifest, sources_key
from lape.errors import LapeError


class _Tok:
    bos_token_id, eos_token_id, pad_token_id, name_or_path = 1, 2, 0, "chars"

    def __call__(self, texts, add_special_tokens=True):
        return {"input_ids": [[ord(c) for c in t] for t in texts]}


def _manifest(tmp_path, valid="{from: train, share: 0.3}"):
    (tmp_path / "en").mkdir(exist_ok=True)
    (tmp_path / "en" / "a.txt").write_text("".join(f"english line {i}\n" for i in range(40)))
    (tmp_path / "en" / "b.txt").write_text("".join(f"more english {i}\n" for i in range(40)))
    path = tmp_path / "m.yaml"
    path.write_text(f"languages:\n  en:\n    train: {{kind: text, path: 'en/*.txt'}}\n    valid: {valid}\n")
    return path


def test_stream_key_follows_every_file_a_split_reads(tmp_path):
    path = _manifest(tmp_path)
    m = load_manifest(path)
    key = load_corpus(m, _Tok(), tokens_per_language=100)["en"].key
    assert key == load_corpus(load_manifest(path), _Tok(), tokens_per_language=100)["en"].key  # stable
    (tmp_path / "en" / "b.txt").write_text("replaced text\n" * 40)  # behind the unchanged manifest
    changed = load_corpus(load_manifest(path), _Tok(), tokens_per_language=100)["en"].key
    assert changed != key and load_manifest(path).hash() == m.hash()
    (tmp_path / "en" / "c.txt").write_text("a new file the glob now matches\n")
    assert load_corpus(load_manifest(path), _Tok(), tokens_per_language=100)["en"].key != changed
    # the valid split reads the same files: its key changes with them too, and differs from train's
    assert sources_key(m, "en", "valid") != sources_key(m, "en", "train")
    # budget, seq_len and seed are part of it
    base = load_corpus(m, _Tok(), tokens_per_language=100)["en"].key
    for other in (dict(tokens_per_language=101), dict(tokens_per_language=100, seq_len=64),
                  dict(tokens_per_language=100, seed=1)):
        assert load_corpus(m, _Tok(), **other)["en"].key != base


def test_valid_split_reading_the_train_sources_is_refused(tmp_path):
    path = _manifest(tmp_path, valid="{kind: text, path: 'en/*.txt'}")
    with pytest.raises(LapeError, match="'valid' reads the same sources as 'train'") as err:
        load_manifest(path)
    assert "\n" not in str(err.value)
