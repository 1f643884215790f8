"""One artifact base: every result of lape is a folder written and read here.

A folder holds ``KIND.json`` (the sidecar), optionally ``KIND.safetensors`` (tensors) and tables
(``*.json`` + ``*.csv``, exports for other tools). The sidecar records the format name and
version, the lape version, the model id and fingerprint, ``num_layers``/``neurons_per_layer``,
languages in tensor-axis order, token counts, the full config, the inputs (corpus keys, parent
artifacts), the cache key, a sha256 of every tensor file and the creation time. Nothing is
pickled.

**Writing** never destroys the previous result: the new tensors and sidecar are written as
``*.new`` files beside the old ones (each through a temporary file and ``os.replace``), then
swapped in, tensors first and the sidecar last. A failure while writing (a full disk, a killed
process) leaves the old artifact as it was; a crash between the two swaps is completed on the
next load (the new sidecar's checksum names the tensors it belongs to).

**Reading** (:func:`load`, or ``Type.load``) checks the format, version, required sidecar keys,
the tensor file's checksum and, given a model, its fingerprint; each type then checks its value
ranges (counts >= 0, probabilities in [0, 1], ...). Any failure is a one-line :class:`LapeError`.

**Caching**: a stage's key is the hash of its sidecar inputs (:func:`stage_key`: kind, model
fingerprint, the settings that change the result, corpus keys and parent artifacts). A stage
given ``out=`` returns the artifact already there when its key matches (:func:`run_stage`), and
computes and saves it otherwise.

This module knows no method's content; result types subclass :class:`Artifact`.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import io
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch

from .errors import LapeError
from .files import atomic_write_bytes, atomic_write_text, ensure_folder, read_json, write_error
from .fingerprint import describe_fingerprint, dtype_note, fingerprint, same_model

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: tensor checksums in the sidecar, write-beside-then-swap
A = TypeVar("A", bound="Artifact")

# the module that defines each artifact kind (imported when a folder of that kind is loaded)
_KIND_MODULES = {"stats": "lape.neurons.stats", "neurons": "lape.masks", "regions": "lape.masks",
                 "ppl": "lape.evaluate.perplexity", "steering": "lape.evaluate.steering_result",
                 "fluency_reference": "lape.evaluate.fluency", "steering_profile": "lape.evaluate.steer_profile",
                 "importance": "lape.regions.importance", "region_ppl": "lape.regions.ablate",
                 "region_perturb": "lape.regions.perturb", "region_train": "lape.regions.forgetting",
                 "region_bridge": "lape.regions.bridge", "region_dims": "lape.regions.dims",
                 "region_stability": "lape.regions.stability",
                 "keyneuron_scores": "lape.keyneurons.attribute", "keyneuron_maps": "lape.keyneurons.select",
                 "keyneuron_eval": "lape.keyneurons.evaluate", "method_comparison": "lape.keyneurons.compare",
                 "explain": "lape.explain.cards"}
_TYPES: dict[str, type[Artifact]] = {}
# kinds renamed so that a stage has one name (folder region-dims, kind region_dims, ...): folders
# written under the former name are refused with the command that rewrites them
_FORMER_KINDS = {"dims": ("region_dims", "lape regions dims"), "perturb": ("region_perturb", "lape regions perturb"),
                 "forgetting": ("region_train", "lape regions train"),
                 "region_overlap": ("region_bridge", "lape regions bridge")}


def _version() -> str:
    from .version import __version__

    return __version__


# --------------------------------------------------------------------------------------------
# Files


def _standard(obj: Any) -> Any:
    """``obj`` with NaN and infinities as ``null`` (standard JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _standard(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_standard(v) for v in obj]
    return obj


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


def to_json(obj: Any) -> str:
    """Indented standard JSON (NaN as ``null``)."""
    return json.dumps(_standard(obj), indent=2, ensure_ascii=False, default=_json_default, allow_nan=False)


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented standard JSON (NaN as ``null``), atomically."""
    atomic_write_text(path, to_json(obj) + "\n")


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


# --------------------------------------------------------------------------------------------
# Hashes and cache keys


def content_hash(obj: Any) -> str:
    """A stable short hash of a JSON-serialisable object (a stage's cache key)."""
    text = json.dumps(_standard(obj), sort_keys=True, ensure_ascii=False, default=_json_default)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def bytes_hash(data: bytes) -> str:
    """sha256 (16 hex digits) of bytes."""
    return hashlib.sha256(data).hexdigest()[:16]


def file_hash(path: str | Path) -> str:
    """sha256 (16 hex digits) of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


_HASHED: dict[tuple[str, int, int, int], str] = {}


def source_file_hash(path: str | Path) -> str:
    """:func:`file_hash` of a corpus file, remembered per process by (path, size, mtime, inode).

    A changed file changes its size, modification time or inode, so it is hashed again; an
    unchanged one is hashed once per process. sha256 runs at about 1 GB/s, so even a 10 GB
    corpus costs seconds per run, small next to a pass of the model over it.
    """
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _HASHED:
        _HASHED[key] = file_hash(p)
    return _HASHED[key]


def tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 (16 hex digits) of named tensors: names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def stage_key(kind: str, *, model_fingerprint: Mapping[str, Any] | None, config: Mapping[str, Any],
              inputs: Mapping[str, Any]) -> str:
    """The cache key of a stage: the hash of its sidecar inputs (kind, model fingerprint, the
    settings that change the result, corpus keys and parent artifacts' identities)."""
    return content_hash({"kind": kind, "format_version": FORMAT_VERSION,
                         "fingerprint": dict(model_fingerprint or {}), "config": dict(config),
                         "inputs": dict(inputs)})


# --------------------------------------------------------------------------------------------
# The sidecar


def sidecar(
    kind: str,
    *,
    model_id: str | None = None,
    model_fingerprint: Mapping[str, Any] | None = None,
    num_layers: int | None = None,
    neurons_per_layer: int | None = None,
    languages: list[str] | tuple[str, ...] = (),
    token_counts: Mapping[str, int] | None = None,
    config: Mapping[str, Any] | None = None,
    inputs: Mapping[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The JSON sidecar every artifact carries (see the module docstring)."""
    meta = {
        "format": f"lape.{kind}", "format_version": FORMAT_VERSION, "lape_version": _version(),
        "model_id": model_id, "fingerprint": dict(model_fingerprint or {}),
        "num_layers": None if num_layers is None else int(num_layers),
        "neurons_per_layer": None if neurons_per_layer is None else int(neurons_per_layer),
        "languages": list(languages), "token_counts": dict(token_counts or {}),
        "config": dict(config or {}), "inputs": dict(inputs or {}),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    meta.update(extra)
    return meta


def model_sidecar(kind: str, model: torch.nn.Module, space: Any = None, **fields: Any) -> dict[str, Any]:
    """:func:`sidecar` for a result computed on ``model`` (id, fingerprint and neuron space filled
    in; ``space`` is the model's :class:`~lape.space.NeuronSpace` when it needed ``pattern=``)."""
    from .models import model_id_of
    from .space import NeuronSpace

    space = space or NeuronSpace.of(model)
    return sidecar(kind, model_id=model_id_of(model), model_fingerprint=fingerprint(model),
                   num_layers=space.num_layers, neurons_per_layer=space.neurons_per_layer, **fields)


# --------------------------------------------------------------------------------------------
# The artifact base


class Artifact:
    """Base of every result type: ``save(path)``, ``Type.load(path, model=None)``, ``identity()``.

    A subclass sets ``KIND`` and implements :meth:`tensors` (written to ``KIND.safetensors``)
    and/or :meth:`payload` (stored in the sidecar under ``"result"``), :meth:`_from_saved`,
    and :meth:`validate` (value ranges; raise :class:`LapeError`). ``tables()`` gives CSV/JSON
    exports written beside it; ``derived_meta()`` sidecar fields computed from the content. ``REQUIRED`` names sidecar keys that must be present.
    """

    KIND: ClassVar[str] = ""
    REQUIRED: ClassVar[tuple[str, ...]] = ()
    TENSORS: ClassVar[tuple[str, ...]] = ()  # tensor names that must be present
    DESCRIPTION: ClassVar[str] = ""  # what messages call it (default: the kind)
    meta: dict[str, Any]

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.KIND:
            _TYPES[cls.KIND] = cls

    # to implement -------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def payload(self) -> Any:
        return None

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        return {}

    def derived_meta(self) -> dict[str, Any]:
        """Sidecar fields that follow from the content (labels, counts, tensor names), added on save."""
        return {}

    @classmethod
    def _from_saved(cls: type[A], tensors: dict[str, torch.Tensor], meta: dict[str, Any], payload: Any) -> A:
        raise NotImplementedError

    def validate(self) -> None:
        """Refuse impossible values (a damaged or hand-edited artifact)."""

    # provided -----------------------------------------------------------------------------
    def identity(self) -> dict[str, str]:
        """What a later stage's cache key records about this artifact as its input."""
        return {"kind": self.KIND, "digest": content_hash({"tensors": tensor_digest(self.tensors()),
                                                           "payload": self.payload()})}

    def check_model(self, model: torch.nn.Module) -> None:
        """Refuse a model this artifact was not made with (by its fingerprint, naming both models);
        an artifact without a fingerprint (built by hand) is accepted."""
        if self.meta.get("fingerprint"):
            what = f"the {self.DESCRIPTION or self.KIND}" + (f" ({self.meta['method']})" if self.meta.get("method") else "")
            check_fingerprint(self.meta, model, what=what)

    def save(self, path: str | Path) -> Path:
        """Write the artifact into folder ``path`` (see the module docstring for the guarantees)."""
        return save(path, self)

    @classmethod
    def load(cls: type[A], path: str | Path, model: torch.nn.Module | None = None) -> A:
        """Read an artifact of this type; given a model, check it was made with it."""
        return load(path, model=model, kind=cls.KIND)  # type: ignore[return-value]


@contextmanager
def _locked(folder: Path, kind: str, wait: bool = True, shared: bool = False) -> Iterator[bool]:
    """An advisory lock (``flock``) on ``folder/.KIND.lock``: exclusive while an artifact is
    written or repaired, shared while it is read. Two processes saving into one folder write one
    after the other (the last one wins, both complete) and a reader never sees half a swap.
    Yields whether the lock was taken (``wait=False`` may not get it)."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): saves are still atomic per file
        yield True
        return
    try:
        f = open(folder / f".{kind}.lock", "a+b")  # noqa: SIM115 - closed in finally
    except OSError:  # a read-only folder: nothing will be written
        yield False
        return
    try:
        try:
            fcntl.flock(f, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB))
        except OSError:
            yield False
            return
        yield True
    finally:
        f.close()


def save(folder: str | Path, artifact: Artifact) -> Path:
    """Write ``artifact`` into ``folder``: new files beside the old, then swapped in (tensors,
    then the sidecar), so the previous result stays loadable until the new one is complete."""
    folder = ensure_folder(folder)
    with _locked(folder, artifact.KIND):
        return _save(folder, artifact)


def _save(folder: Path, artifact: Artifact) -> Path:
    from safetensors.torch import save as st_save

    kind = artifact.KIND
    artifact.validate()
    tensors = artifact.tensors()
    meta = {**artifact.meta, **artifact.derived_meta()}
    meta.setdefault("fingerprint", {})
    meta.update(format=f"lape.{kind}", format_version=FORMAT_VERSION, lape_version=_version())
    files: dict[str, str] = {}
    t_new = folder / f"{kind}.safetensors.new"
    m_new = folder / f"{kind}.json.new"
    swapped = False  # once the tensors are in place, a left-over new sidecar completes the swap on load
    try:
        if tensors:
            blob = st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
            files[f"{kind}.safetensors"] = bytes_hash(blob)
            atomic_write_bytes(t_new, blob)
        payload = artifact.payload()
        if payload is not None:
            meta["result"] = payload
        meta["files"] = files
        write_json(m_new, meta)
        if tensors:
            os.replace(t_new, folder / f"{kind}.safetensors")
        swapped = True
        os.replace(m_new, folder / f"{kind}.json")
        if not tensors:
            (folder / f"{kind}.safetensors").unlink(missing_ok=True)
    except OSError as exc:
        raise write_error(folder, exc) from None
    finally:
        if not swapped:
            t_new.unlink(missing_ok=True)
            m_new.unlink(missing_ok=True)
    artifact.meta = {k: v for k, v in meta.items() if k != "result"}
    for name, rows in artifact.tables().items():
        write_table(folder / name, rows)
    return folder


def exists(folder: str | Path, kind: str) -> bool:
    """Whether ``folder`` holds a sidecar of ``kind`` (complete unless damaged; :func:`load` checks)."""
    return (Path(folder) / f"{kind}.json").is_file()


def kind_of(folder: str | Path) -> str | None:
    """The artifact kind a folder holds, read from its sidecar (``None`` if it holds none)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    for kind in sorted({*_KIND_MODULES, *_TYPES}):  # the sidecars only, not the exported tables
        p = folder / f"{kind}.json"
        if not p.is_file():
            continue
        try:
            meta = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and meta.get("format") == f"lape.{kind}":
            return kind
    return None


def _finish_interrupted_swap(folder: Path, kind: str) -> None:
    """Complete a save that stopped between its two swaps, or drop the leftovers of one that
    stopped earlier (the old artifact is then intact)."""
    m_new, t_new = folder / f"{kind}.json.new", folder / f"{kind}.safetensors.new"
    if not m_new.exists():
        t_new.unlink(missing_ok=True)
        return
    try:
        want = (json.loads(m_new.read_text(encoding="utf-8")).get("files") or {}).get(f"{kind}.safetensors")
    except (OSError, ValueError, AttributeError):
        want = None
    tensors = folder / f"{kind}.safetensors"
    if want and t_new.is_file() and file_hash(t_new) == want:
        os.replace(t_new, tensors)
    if want and tensors.is_file() and file_hash(tensors) == want:
        os.replace(m_new, folder / f"{kind}.json")
    m_new.unlink(missing_ok=True)
    t_new.unlink(missing_ok=True)


def _artifact_type(kind: str) -> type[Artifact]:
    if kind not in _TYPES and kind in _KIND_MODULES:
        importlib.import_module(_KIND_MODULES[kind])
    if kind not in _TYPES:
        raise LapeError(f"unknown artifact kind {kind!r}: this lape reads {', '.join(sorted(_KIND_MODULES))}")
    return _TYPES[kind]


def load(folder: str | Path, model: torch.nn.Module | None = None, kind: str | None = None) -> Artifact:
    """Read the artifact in ``folder`` (of ``kind``, or whatever its sidecar says it is).

    Raises:
        LapeError: a missing, incomplete, damaged or hand-broken artifact; another kind or
            format version; values out of range; or a model whose fingerprint differs.
    """

    folder = Path(folder)
    if not folder.exists():
        raise LapeError(f"{folder} does not exist: run the step that writes the {kind or 'artifact'} first")
    if not folder.is_dir():
        raise LapeError(f"{folder} is a file: pass the folder that holds the {kind or 'artifact'}")
    kind = kind or kind_of(folder)
    if kind is None:
        for former, (now, command) in _FORMER_KINDS.items():
            if (folder / f"{former}.json").is_file():
                raise LapeError(f"{folder} holds a {former!r} result from an older lape (the kind is now {now!r}): "
                                f"re-run {command} with --out {folder} to rewrite it")
        raise LapeError(f"{folder} holds no lape artifact: pass a folder written by lape")
    if (folder / f"{kind}.json.new").exists() or (folder / f"{kind}.safetensors.new").exists():
        with _locked(folder, kind, wait=False) as mine:
            if mine:  # not while another process is writing
                try:
                    _finish_interrupted_swap(folder, kind)
                except OSError:
                    pass  # a read-only folder: load what is there
    with _locked(folder, kind, shared=True):
        return _load(folder, kind, model)


def _load(folder: Path, kind: str, model: torch.nn.Module | None) -> Artifact:
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    meta_path = folder / f"{kind}.json"
    if not meta_path.is_file():
        found = sorted(p.stem for p in folder.glob("*.json"))
        hint = f" (it holds {', '.join(found)})" if found else ""
        raise LapeError(f"{folder} holds no complete {kind} artifact{hint}: pass the {kind} folder, "
                        "or re-run the step that writes it")
    meta = read_json(meta_path)
    if not isinstance(meta, dict):
        raise LapeError(f"{meta_path} holds a JSON {type(meta).__name__}, not a lape sidecar: delete "
                        "the folder and re-run the step that writes it")
    if meta.get("format") != f"lape.{kind}":
        raise LapeError(f"{meta_path} is a {meta.get('format')} file, not lape.{kind}: pass the right folder")
    if meta.get("format_version") != FORMAT_VERSION:
        raise LapeError(f"{meta_path} has format version {meta.get('format_version')}, this lape reads "
                        f"{FORMAT_VERSION}: re-run the step with this lape version")
    cls = _artifact_type(kind)
    missing = [k for k in ("fingerprint", "files", *cls.REQUIRED) if k not in meta]
    if missing:
        raise LapeError(f"{meta_path} lacks {', '.join(repr(k) for k in missing)}: the sidecar was edited "
                        "or damaged; re-run the step that writes it")
    if model is not None:
        check_fingerprint(meta, model, what=str(folder))
    tensors: dict[str, torch.Tensor] = {}
    want = (meta.get("files") or {}).get(f"{kind}.safetensors")
    if want is not None or cls.TENSORS:
        path = folder / f"{kind}.safetensors"
        try:
            blob = path.read_bytes()
        except OSError as exc:
            raise LapeError(f"{path} is missing or unreadable ({exc.strerror}): re-run the step that "
                            "writes it") from None
        if want is None or bytes_hash(blob) != want:
            raise LapeError(f"{path} does not match the checksum in its sidecar (damaged or replaced): "
                            "re-run the step that writes it")
        try:
            tensors = st_load(blob)
        except (SafetensorError, ValueError) as exc:
            raise LapeError(f"{path} is damaged ({exc}): re-run the step that writes it") from None
    absent = [t for t in cls.TENSORS if t not in tensors]
    if absent:
        raise LapeError(f"{folder / (kind + '.safetensors')} lacks {', '.join(absent)} (tensors of another "
                        f"kind?): re-run the step that writes the {kind}")
    payload = meta.pop("result", None)
    try:
        artifact = cls._from_saved(tensors, meta, payload)
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
        raise LapeError(f"{meta_path} does not describe its {kind} ({type(exc).__name__}: {exc}): the "
                        "artifact was edited or damaged; re-run the step that writes it") from None
    artifact.validate()
    return artifact


def check_fingerprint(meta: Mapping[str, Any], model: torch.nn.Module, what: str) -> None:
    """Refuse an artifact made with another model, naming both models."""
    fp = fingerprint(model)
    theirs = meta.get("fingerprint") or {}
    note = dtype_note(theirs, fp)
    if note and same_model(theirs, fp):  # the same weights: allowed, but worth knowing
        logger.info("%s: the same model, %s", what, note)
    if not same_model(theirs, fp):
        raise LapeError(f"{what} was made with {meta.get('model_id')} [{describe_fingerprint(theirs)}], "
                        f"not this model [{describe_fingerprint(fp)}]: re-run it on this model or load "
                        "the model it was made with")


# --------------------------------------------------------------------------------------------
# Stages


def cached(cls: type[A], out: str | Path | None, key: str, model: torch.nn.Module | None = None) -> A | None:
    """The artifact of type ``cls`` in ``out`` if it was made with cache key ``key``, else ``None``
    (also when it is damaged: the stage then computes it again)."""
    if out is None or not exists(out, cls.KIND):
        return None
    try:  # the sidecar first: tensors (gigabytes for importance) are read only when the key matches
        if read_json(Path(out) / f"{cls.KIND}.json").get("cache_key") != key:
            return None
    except (LapeError, AttributeError):
        pass  # an unreadable or hand-broken sidecar: load() below says what is wrong
    try:
        art = cls.load(out, model=model)
    except LapeError as exc:
        logger.warning("recomputing %s: %s", out, exc)
        return None
    return art if art.meta.get("cache_key") == key else None


def reuse(cls: type[A], out: str | Path | None, key: str, model: torch.nn.Module | None = None) -> A | None:
    """The start of every stage: the artifact in ``out`` made with ``key`` (logged as skipped,
    ``from_cache`` set), or ``None`` once ``out`` is known to be writable, so that an output
    folder that cannot be made fails before the work, not after it."""
    hit = cached(cls, out, key, model)
    if hit is not None:
        logger.info("%s in %s is up to date for these inputs: skipped", cls.KIND, out)
        hit.from_cache = True  # type: ignore[attr-defined]
        return hit
    if out is not None:
        ensure_folder(out)
    return None


def run_stage(cls: type[A], out: str | Path | None, key: str, compute: Callable[[], A],
              model: torch.nn.Module | None = None) -> A:
    """Return the artifact in ``out`` when its cache key is ``key`` (:func:`reuse`); otherwise
    ``compute()`` it, stamp the key and save it into ``out`` (when given). ``artifact.from_cache``
    tells which."""
    hit = reuse(cls, out, key, model)
    if hit is not None:
        return hit
    t0 = time.perf_counter()
    art = compute()
    art.meta["cache_key"] = key
    art.meta.setdefault("seconds", round(time.perf_counter() - t0, 2))  # how long the stage took when it ran
    art.from_cache = False  # type: ignore[attr-defined]
    if out is not None:
        art.save(out)
    return art
