"""The one loader of ``datasets`` sources (corpus and question manifests): saved datasets and
dataset dicts, split choice, column checks, one-line errors."""

from __future__ import annotations

import pytest

from lape.errors import LapeError
from lape.hf_datasets import is_saved_dataset, open_dataset


def test_saved_dataset_dict_split_choice_and_columns(tmp_path):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a", "b"], "id": [1, 2]}),
                          "test": datasets.Dataset.from_dict({"text": ["c"], "id": [3]})}).save_to_disk(str(tmp_path / "dd"))
    datasets.DatasetDict({"only": datasets.Dataset.from_dict({"text": ["x"]})}).save_to_disk(str(tmp_path / "one"))
    assert is_saved_dataset(tmp_path / "dd") and not is_saved_dataset(tmp_path)
    ds = open_dataset("dd", tmp_path / "dd", split="test", where="m.yaml en", columns=["text"])
    assert list(ds) == [{"text": "c"}]  # only the asked-for column is decoded
    assert [r["text"] for r in open_dataset("one", tmp_path / "one", split=None, where="w")] == ["x"]
    with pytest.raises(LapeError, match=r"^m.yaml en: dataset .*dd has splits train, test: set 'split:'"):
        open_dataset("dd", tmp_path / "dd", split=None, where="m.yaml en")
    with pytest.raises(LapeError, match=r"^w: dataset dd has no field 'body' \(fields: text, id\): use body"):
        open_dataset("dd", tmp_path / "dd", split="train", where="w", columns=["body"], fix_columns="use body")


def test_an_unloadable_dataset_is_one_line(tmp_path):
    with pytest.raises(LapeError) as exc:
        open_dataset("no/such-dataset", tmp_path / "no/such-dataset", split="train", where="q.yaml source 1")
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("q.yaml source 1: dataset no/such-dataset could not be loaded")
    assert "save_to_disk" in msg
