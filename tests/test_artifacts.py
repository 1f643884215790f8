"""The artifact format: safetensors + JSON sidecar written atomically, checked on load; tables."""

from __future__ import annotations

import csv
import json
import os

import pytest
import torch
from tiny_models import tiny_model

from lape import artifacts
from lape.errors import LapeError
from lape.models import fingerprint


def _meta(model=None, kind="thing"):
    model = model or tiny_model("llama")
    return artifacts.sidecar(kind, model_id="tiny-llama", model_fingerprint=fingerprint(model), num_layers=3,
                             neurons_per_layer=48, languages=["fr", "ja"], token_counts={"fr": 7, "ja": 9},
                             config={"seed": 0}, extra_field="kept")


def _tensors():
    return {"counts": torch.arange(12, dtype=torch.int64).view(2, 2, 3),
            "sums": torch.randn(2, 2, 3, dtype=torch.float64),
            "masks": torch.rand(2, 3, 4) > 0.5,
            "view": torch.randn(4, 3).T}  # not contiguous


def test_save_load_roundtrip(tmp_path):
    model = tiny_model("llama")
    tensors, meta = _tensors(), _meta(model)
    folder = artifacts.save(tmp_path / "art", "thing", tensors, meta)
    assert sorted(p.name for p in folder.iterdir()) == ["thing.json", "thing.safetensors"]  # no temp files
    assert artifacts.exists(folder, "thing") and not artifacts.exists(folder, "other")
    back, back_meta = artifacts.load(folder, "thing", model=model)
    assert back.keys() == tensors.keys()
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v)
    assert back_meta == json.loads(json.dumps(meta))
    assert back_meta["format"] == "lape.thing" and back_meta["format_version"] == artifacts.FORMAT_VERSION
    assert back_meta["languages"] == ["fr", "ja"] and back_meta["extra_field"] == "kept"
    # saving again replaces both files
    artifacts.save(folder, "thing", {"counts": torch.zeros(1, dtype=torch.int64)}, {**meta, "config": {"seed": 1}})
    back, back_meta = artifacts.load(folder, "thing")
    assert list(back) == ["counts"] and back_meta["config"] == {"seed": 1}


def test_failed_save_leaves_no_sidecar_and_no_temp_files(tmp_path, monkeypatch):
    folder = artifacts.save(tmp_path / "art", "thing", _tensors(), _meta())
    real_replace = os.replace

    def failing(src, dst):
        if str(dst).endswith(".safetensors"):
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="disk full"):
        artifacts.save(folder, "thing", {"new": torch.ones(3)}, _meta())
    monkeypatch.setattr(os, "replace", real_replace)
    assert not artifacts.exists(folder, "thing")  # the old sidecar must not describe new tensors
    assert sorted(p.name for p in folder.iterdir()) == ["thing.safetensors"]
    with pytest.raises(LapeError, match="holds no complete thing artifact"):
        artifacts.load(folder, "thing")


def test_load_refuses_wrong_or_incomplete_artifacts(tmp_path):
    folder = artifacts.save(tmp_path / "art", "thing", _tensors(), _meta())

    def refused(kind, *needles, folder=folder, model=None):
        with pytest.raises(LapeError) as err:
            artifacts.load(folder, kind, model=model)
        msg = str(err.value)
        assert "\n" not in msg
        for n in needles:
            assert n in msg, msg

    refused("stats", "holds no complete stats artifact", "(it holds thing)")
    refused("thing", "does not exist", folder=tmp_path / "missing")
    other = tiny_model("llama", seed=1)
    refused("thing", "was made with tiny-llama", fingerprint(other)["checksum"][:8],
            fingerprint(tiny_model("llama"))["checksum"][:8], model=other)

    meta = json.loads((folder / "thing.json").read_text())
    (folder / "thing.json").write_text(json.dumps({**meta, "format": "lape.stats"}))
    refused("thing", "is a lape.stats file, not lape.thing")
    (folder / "thing.json").write_text(json.dumps({**meta, "format_version": 99}))
    refused("thing", "has format version 99")
    (folder / "thing.json").write_text("{not json")
    refused("thing", "is not valid JSON")
    (folder / "thing.json").write_text(json.dumps(meta))
    (folder / "thing.safetensors").write_bytes(b"\x00\x01garbage")
    refused("thing", "thing.safetensors is missing or damaged")
    (folder / "thing.safetensors").unlink()
    refused("thing", "thing.safetensors is missing or damaged")
    (folder / "thing.json").unlink()
    refused("thing", "holds no complete thing artifact")


def test_write_table_json_and_csv_hold_the_same_rows(tmp_path):
    rows = [{"language": "fr", "delta_ppl": 1.25, "note": "a, quoted \"one\""},
            {"language": "ja", "delta_ppl": -0.5, "extra": 3},
            {"language": "zh", "delta_ppl": 0.0, "note": "中文"}]
    artifacts.write_table(tmp_path / "sub" / "table", rows)
    assert json.loads((tmp_path / "sub" / "table.json").read_text(encoding="utf-8")) == rows
    with open(tmp_path / "sub" / "table.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["language", "delta_ppl", "note", "extra"]
        back = list(reader)
    assert back == [{k: str(row.get(k, "")) for k in reader.fieldnames} for row in rows]
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["table.csv", "table.json"]


def test_content_hash_ignores_key_order_and_json_helpers(tmp_path):
    a = artifacts.content_hash({"x": 1, "y": [1, 2], "z": {"b": 2, "a": 1}})
    assert a == artifacts.content_hash({"z": {"a": 1, "b": 2}, "y": [1, 2], "x": 1})
    assert a != artifacts.content_hash({"x": 1, "y": [2, 1], "z": {"b": 2, "a": 1}})
    artifacts.write_json(tmp_path / "t.json", {"t": torch.tensor([1, 2]), "p": tmp_path, "s": (1, 2)})
    assert artifacts.read_json(tmp_path / "t.json") == {"t": [1, 2], "p": str(tmp_path), "s": [1, 2]}
    with pytest.raises(LapeError, match="does not exist: run the step that writes it first"):
        artifacts.read_json(tmp_path / "nope.json")
