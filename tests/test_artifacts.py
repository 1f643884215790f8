"""The artifact format: safetensors + JSON sidecar written atomically, checked on load; tables."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from typing import ClassVar

import pytest
import torch
from tiny_models import tiny_model

from lape import artifacts, files
from lape.errors import LapeError
from lape.fingerprint import fingerprint


@dataclass
class Thing(artifacts.Artifact):
    """A minimal artifact type for these tests: tensors, a JSON payload and a range check."""

    data: dict[str, torch.Tensor]
    note: dict | None = None
    meta: dict = field(default_factory=dict)

    KIND: ClassVar[str] = "thing"
    REQUIRED: ClassVar[tuple[str, ...]] = ("languages",)
    TENSORS: ClassVar[tuple[str, ...]] = ("counts",)

    def tensors(self):
        return self.data

    def payload(self):
        return self.note

    def tables(self):
        return {"rows": [{"n": int(self.data["counts"].sum())}]}

    @classmethod
    def _from_saved(cls, tensors, meta, payload):
        return cls(tensors, payload, meta)

    def validate(self):
        if bool((self.data["counts"] < 0).any()):
            raise LapeError("counts below 0: re-run")


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
    folder = Thing(tensors, {"a": [1.5, float("nan")]}, meta).save(tmp_path / "art")
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [
        "rows.csv", "rows.json", "thing.json", "thing.safetensors"]
    assert artifacts.exists(folder, "thing") and not artifacts.exists(folder, "other")
    assert artifacts.kind_of(folder) == "thing"
    back = Thing.load(folder, model=model)
    assert back.data.keys() == tensors.keys()
    for k, v in tensors.items():
        assert back.data[k].dtype == v.dtype and torch.equal(back.data[k], v)
    assert back.note == {"a": [1.5, None]}  # NaN is standard JSON null
    assert back.meta["format"] == "lape.thing" and back.meta["format_version"] == artifacts.FORMAT_VERSION
    assert back.meta["languages"] == ["fr", "ja"] and back.meta["extra_field"] == "kept"
    sidecar = json.loads((folder / "thing.json").read_text())
    assert sidecar["files"]["thing.safetensors"] == artifacts.file_hash(folder / "thing.safetensors")
    # the generic loader finds the type from the sidecar
    assert isinstance(artifacts.load(folder), Thing)
    # saving again replaces both files
    Thing({"counts": torch.zeros(1, dtype=torch.int64)}, None, {**meta, "config": {"seed": 1}}).save(folder)
    back = Thing.load(folder)
    assert list(back.data) == ["counts"] and back.meta["config"] == {"seed": 1} and back.note is None


@pytest.mark.parametrize("fail_at", ["thing.safetensors.new", "thing.json.new", "swap"])
def test_failed_rewrite_keeps_the_previous_artifact(tmp_path, monkeypatch, fail_at):
    """A full disk (or a crash) during a rewrite leaves the old artifact loadable and no stray files."""
    folder = Thing(_tensors(), None, _meta()).save(tmp_path / "art")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    real_write, real_replace = artifacts.atomic_write_bytes, os.replace

    def full_disk(path, data):
        if str(path).endswith(fail_at):
            raise artifacts.LapeError(f"cannot write {path} (No space left on device): choose ...")
        return real_write(path, data)

    def failing_swap(src, dst):
        if str(dst).endswith("thing.json"):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    if fail_at == "swap":
        monkeypatch.setattr(os, "replace", failing_swap)
    else:  # every file lape writes goes through lape.files (artifacts imports the same function)
        monkeypatch.setattr(artifacts, "atomic_write_bytes", full_disk)
        monkeypatch.setattr(files, "atomic_write_bytes", full_disk)
    with pytest.raises(LapeError, match="No space left on device"):
        Thing({"counts": torch.ones(3, dtype=torch.int64)}, None, _meta()).save(folder)
    monkeypatch.undo()
    back = Thing.load(folder)  # a swap that stopped half way is completed or undone here
    if fail_at == "swap":  # the new tensors were in place, their sidecar is put in place on load
        assert torch.equal(back.data["counts"], torch.ones(3, dtype=torch.int64))
    else:
        assert torch.equal(back.data["counts"], _tensors()["counts"])
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert not [p for p in folder.iterdir() if p.name.endswith((".new", ".tmp"))]


def test_concurrent_writers_to_one_folder_leave_one_complete_artifact(tmp_path):
    """Two processes saving into one --out take turns (flock): the result is one of them, whole."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_save_many, args=(tmp_path / "art", n)) for n in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    back = Thing.load(tmp_path / "art")
    n = int(back.data["counts"][0])
    assert n in (1, 2) and torch.equal(back.data["counts"], torch.full((5000,), n, dtype=torch.int64))
    assert not [p for p in (tmp_path / "art").iterdir() if p.name.endswith((".new", ".tmp"))]


def _save_many(folder, n):
    for _ in range(15):
        Thing({"counts": torch.full((5000,), n, dtype=torch.int64)}, {"n": n}, _meta()).save(folder)
        assert int(Thing.load(folder).data["counts"][0]) in (1, 2)


def test_damaged_or_edited_artifacts_are_refused(tmp_path):
    folder = Thing(_tensors(), None, _meta()).save(tmp_path / "art")
    blob = bytearray((folder / "thing.safetensors").read_bytes())
    blob[-5] ^= 0xFF  # one byte inside the tensor data
    (folder / "thing.safetensors").write_bytes(bytes(blob))
    with pytest.raises(LapeError, match="does not match the checksum in its sidecar"):
        Thing.load(folder)
    # values out of range are refused even with a matching checksum
    Thing({"counts": torch.tensor([-1])}, None, _meta()).tensors()
    with pytest.raises(LapeError, match="counts below 0"):
        Thing({"counts": torch.tensor([-1])}, None, _meta()).save(tmp_path / "neg")
    folder = Thing(_tensors(), None, _meta()).save(tmp_path / "art2")
    meta = json.loads((folder / "thing.json").read_text())
    for edit, needle in (([], "holds a JSON list, not a lape sidecar"),
                         ({k: v for k, v in meta.items() if k != "languages"}, "lacks 'languages'"),
                         ({**meta, "files": {}}, "does not match the checksum")):
        (folder / "thing.json").write_text(json.dumps(edit))
        with pytest.raises(LapeError, match=needle) as err:
            Thing.load(folder)
        assert "\n" not in str(err.value)
    # tensors of another kind: a valid file under the right name, without the tensors this kind needs
    from safetensors.torch import save as st_save

    other = st_save({"masks": torch.ones(2, dtype=torch.bool)})
    (folder / "thing.safetensors").write_bytes(other)
    (folder / "thing.json").write_text(json.dumps({**meta, "files": {"thing.safetensors": artifacts.bytes_hash(other)}}))
    with pytest.raises(LapeError, match="lacks counts"):
        Thing.load(folder)


def test_load_refuses_wrong_or_incomplete_artifacts(tmp_path):
    folder = Thing(_tensors(), None, _meta()).save(tmp_path / "art")

    def refused(kind, *needles, folder=folder, model=None):
        with pytest.raises(LapeError) as err:
            artifacts.load(folder, kind=kind, model=model)
        msg = str(err.value)
        assert "\n" not in msg
        for n in needles:
            assert n in msg, msg

    refused("stats", "holds no complete stats artifact", "(it holds")
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
    (folder / "thing.safetensors").unlink()
    refused("thing", "thing.safetensors is missing or unreadable")
    (folder / "thing.json").unlink()
    refused("thing", "holds no complete thing artifact")
    refused(None, "holds no lape artifact")


def test_run_stage_skips_only_when_the_key_matches(tmp_path):
    calls = []

    def compute(n):
        def f():
            calls.append(n)
            return Thing({"counts": torch.tensor([n])}, None, _meta())
        return f

    a = artifacts.run_stage(Thing, tmp_path / "s", "key-1", compute(1))
    b = artifacts.run_stage(Thing, tmp_path / "s", "key-1", compute(2))
    c = artifacts.run_stage(Thing, tmp_path / "s", "key-2", compute(3))
    assert calls == [1, 3] and not a.from_cache and b.from_cache and not c.from_cache
    assert int(b.data["counts"]) == 1 and int(Thing.load(tmp_path / "s").data["counts"]) == 3


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
