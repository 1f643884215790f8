"""Writing files and folders so that a reader never sees half of one.

Every file lape writes goes to a temporary name in the same folder and is then ``os.replace``d
into place; a folder (a model cache, the built-in corpus) is built under a temporary name beside
its destination and renamed when complete. A failure (a full disk, a killed process) leaves
the previous file or folder as it was. Errors of the file system become one-line
:class:`~lape.errors.LapeError` messages naming the path.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from .errors import LapeError


def write_error(path: Path, exc: OSError) -> LapeError:
    reason = exc.strerror or type(exc).__name__
    return LapeError(f"cannot write {path} ({reason}): choose a writable output folder (--out) "
                     "with free space")


def ensure_folder(folder: str | Path) -> Path:
    """Create ``folder`` (and its parents), with a one-line error when that is impossible."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise LapeError(f"output {folder} is a file, not a folder: choose another --out")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(folder, exc) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise LapeError(f"output folder {folder} is not writable: choose another --out")
    return folder


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    ensure_folder(path.parent)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are ordinary files
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise write_error(path, exc) from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


@contextmanager
def atomic_folder(folder: str | Path, marker: str) -> Iterator[Path]:
    """Build a folder under a temporary name beside ``folder``; on success it replaces ``folder``.

    Args:
        folder: the destination.
        marker: a file the finished folder holds (written last by the caller); a concurrent
            build that finished first is kept.

    Yields:
        The temporary folder to fill. On an exception it is removed and ``folder`` is untouched.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
    try:
        yield tmp
        old = None
        if folder.exists():
            old = folder.with_name(f"{folder.name}.old-{os.getpid()}-{time.time_ns()}")
            os.replace(folder, old)
        try:
            os.replace(tmp, folder)
        except OSError:
            if not (folder / marker).is_file():  # not a concurrent build that just finished
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_json(path: str | Path, fix: str = "delete it and re-run the step that writes it",
              obj: bool = False) -> Any:
    """Read a JSON file, with a one-line error naming the file, the problem and ``fix`` when it is
    missing, unreadable or malformed (or, with ``obj``, not a JSON object)."""
    path = Path(path)
    if path.is_dir():
        raise LapeError(f"{path} is a folder, not a JSON file: pass the file")
    if not path.is_file():
        raise LapeError(f"{path} does not exist: run the step that writes it first")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise LapeError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}): "
                        f"{fix}") from None
    except UnicodeDecodeError:
        raise LapeError(f"{path} is not a UTF-8 text file: {fix}") from None
    except OSError as exc:
        raise LapeError(f"{path} cannot be read ({exc.strerror or type(exc).__name__}): check its "
                        "permissions") from None
    if obj and not isinstance(data, dict):
        raise LapeError(f"{path} holds a JSON {type(data).__name__}, not an object: {fix}")
    return data


@functools.cache
def yaml_loader() -> Any:
    """A YAML SafeLoader where only true/false are booleans (``no:`` is Norwegian, not False)
    and a repeated key (a copied entry whose code was not changed) is an error."""
    class Loader(yaml.SafeLoader):
        pass

    bool_tag = "tag:yaml.org,2002:bool"
    Loader.yaml_implicit_resolvers = {
        key: [(tag, rx) for tag, rx in resolvers if tag != bool_tag]
        for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    Loader.add_implicit_resolver(bool_tag, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                 list("tTfF"))

    def mapping(loader: Any, node: Any) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}",
                                                        key_node.start_mark)
            seen.add(key)
        return loader.construct_mapping(node, deep=True)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return Loader


def read_yaml(path: str | Path, what: str = "YAML file") -> Any:
    """Read a YAML file with :func:`yaml_loader`; a one-line :class:`LapeError` naming ``what``,
    the file, the problem and its line when it is not valid YAML, not UTF-8 or unreadable.
    The one YAML reader of lape (corpus and question manifests)."""
    path = Path(path)
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=yaml_loader())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise LapeError(f"{what} {path} is not valid YAML ({problem}{where}): fix the syntax") from None
    except UnicodeDecodeError:
        raise LapeError(f"{what} {path} is not UTF-8 text: save it as UTF-8") from None
    except OSError as exc:
        raise LapeError(f"{what} {path} cannot be read ({exc.strerror or exc})") from None
