"""One artifact format: a folder with ``NAME.safetensors`` (tensors) and ``NAME.json`` (sidecar).

The sidecar records the format name and version, the lape version, the model id and
fingerprint, ``num_layers``/``neurons_per_layer``, languages in tensor-axis order, token
counts, the full config and the inputs (manifest hash, parent fingerprints), and the creation
time. Tensors are written first and the sidecar last, each to a temporary name in the same folder
then ``os.replace``d, so a sidecar means a complete artifact. Nothing is pickled.

This module knows no method's content; ``ActivationStats``, ``NeuronSets`` and the result tables
are built on :func:`save` and :func:`load`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from .errors import LapeError
from .models import describe_fingerprint, fingerprint, same_model

FORMAT_VERSION = 1


def _version() -> str:
    from . import __version__

    return __version__


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _standard(obj: Any) -> Any:
    """``obj`` with NaN and infinities as ``null`` (standard JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _standard(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_standard(v) for v in obj]
    return obj


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented standard JSON (NaN as ``null``), atomically."""
    text = json.dumps(_standard(obj), indent=2, ensure_ascii=False, default=_json_default, allow_nan=False)
    atomic_write_text(path, text + "\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file, with a one-line error if it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise LapeError(f"{path} does not exist: run the step that writes it first")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise LapeError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}): delete it and "
                        "re-run the step that writes it") from None


def write_table(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Write rows as ``path.json`` and ``path.csv`` (same stem), atomically."""
    path = Path(path)
    write_json(path.with_suffix(".json"), rows)
    buf = io.StringIO()
    if rows:
        fields = list(dict.fromkeys(k for row in rows for k in row))
        w = csv.DictWriter(buf, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    atomic_write_text(path.with_suffix(".csv"), buf.getvalue())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return _standard(obj.tolist())
    if hasattr(obj, "item"):
        return _standard(obj.item())
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def content_hash(obj: Any) -> str:
    """A stable short hash of a JSON-serialisable object (a stage's cache key)."""
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=_json_default)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def file_hash(path: str | Path) -> str:
    """sha256 (16 hex digits) of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def sidecar(
    kind: str,
    *,
    model_id: str,
    model_fingerprint: Mapping[str, Any],
    num_layers: int,
    neurons_per_layer: int,
    languages: Iterable[str] = (),
    token_counts: Mapping[str, int] | None = None,
    config: Mapping[str, Any] | None = None,
    inputs: Mapping[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Build the JSON sidecar every artifact carries (see the module docstring)."""
    meta = {
        "format": f"lape.{kind}",
        "format_version": FORMAT_VERSION,
        "lape_version": _version(),
        "model_id": model_id,
        "fingerprint": dict(model_fingerprint),
        "num_layers": int(num_layers),
        "neurons_per_layer": int(neurons_per_layer),
        "languages": list(languages),
        "token_counts": dict(token_counts or {}),
        "config": dict(config or {}),
        "inputs": dict(inputs or {}),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    meta.update(extra)
    return meta


def save(folder: str | Path, kind: str, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> Path:
    """Write ``folder/KIND.safetensors`` then ``folder/KIND.json``, each atomically.

    Returns:
        The folder.
    """
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # a stale sidecar must not describe new tensors while they are being written
    (folder / f"{kind}.json").unlink(missing_ok=True)
    blob = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    atomic_write_bytes(folder / f"{kind}.safetensors", blob)
    write_json(folder / f"{kind}.json", dict(meta))
    return folder


def exists(folder: str | Path, kind: str) -> bool:
    """Whether a complete artifact (its sidecar) is in ``folder``."""
    return (Path(folder) / f"{kind}.json").is_file()


def load(folder: str | Path, kind: str, model: torch.nn.Module | None = None,
         ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read an artifact written by :func:`save`, checking format and, given a model, fingerprint.

    Raises:
        LapeError: missing or incomplete artifact, another format or version, or a model whose
            fingerprint differs from the one the artifact was made with.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    meta_path = folder / f"{kind}.json"
    if not folder.exists():
        raise LapeError(f"{folder} does not exist: run the step that writes the {kind} artifact first")
    if not meta_path.is_file():
        found = sorted(p.stem for p in folder.glob("*.json"))
        hint = f" (it holds {', '.join(found)})" if found else ""
        raise LapeError(f"{folder} holds no complete {kind} artifact{hint}: pass the {kind} folder, "
                        "or re-run the step that writes it")
    meta = read_json(meta_path)
    if meta.get("format") != f"lape.{kind}":
        raise LapeError(f"{meta_path} is a {meta.get('format')} file, not lape.{kind}: pass the right folder")
    if meta.get("format_version") != FORMAT_VERSION:
        raise LapeError(f"{meta_path} has format version {meta.get('format_version')}, this lape reads "
                        f"{FORMAT_VERSION}: re-run the step with this lape version")
    if model is not None:
        check_fingerprint(meta, model, what=str(folder))
    try:
        tensors = load_file(str(folder / f"{kind}.safetensors"))
    except (FileNotFoundError, SafetensorError, OSError) as exc:
        raise LapeError(f"{folder / (kind + '.safetensors')} is missing or damaged ({exc}): re-run "
                        "the step that writes it") from None
    return tensors, meta


def check_fingerprint(meta: Mapping[str, Any], model: torch.nn.Module, what: str) -> None:
    """Refuse an artifact made with another model, naming both models."""
    fp = fingerprint(model)
    theirs = meta.get("fingerprint") or {}
    if not same_model(theirs, fp):
        raise LapeError(f"{what} was made with {meta.get('model_id')} [{describe_fingerprint(theirs)}], "
                        f"not this model [{describe_fingerprint(fp)}]: re-run it on this model or load "
                        "the model it was made with")


def is_current(path: str | Path, key: str) -> bool:
    """Whether the JSON result at ``path`` exists and was made with cache key ``key``
    (so a re-run can skip it)."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("cache_key") == key
    except (json.JSONDecodeError, OSError):
        return False
