"""One way to open a Hugging Face ``datasets`` source named in a manifest, shared by the corpus
manifests (text) and the question manifests (multiple-choice questions).

``path`` is a folder written by ``save_to_disk`` (a ``Dataset`` or a ``DatasetDict``), a local
folder of data files, or a hub id; relative local paths resolve against the manifest's folder.
Every failure is one :class:`~lape.errors.LapeError` line that names the source and the fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import LapeError

_SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


def is_saved_dataset(folder: Path) -> bool:
    """Whether ``folder`` was written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return folder.is_dir() and any((folder / f).is_file() for f in _SAVED_MARKERS)


def open_dataset(path: str, local: Path, *, split: str | None, where: str, name: str | None = None,
                 revision: str | None = None, data_files: Any = None, streaming: bool = False,
                 columns: Sequence[str] = (), fix_columns: str = "set the source's '*_field' keys to its columns"
                 ) -> Any:
    """The rows of one split of a dataset, checked to hold ``columns``.

    Args:
        path: the source's ``path`` as written in the manifest (for messages and the hub).
        local: ``path`` resolved against the manifest's folder (used when it exists).
        split: the split to read; ``None`` picks the only split of a saved ``DatasetDict``
            (and ``train`` elsewhere).
        where: the source's place in its manifest, the start of every error message.
        name, revision, data_files, streaming: passed to ``datasets.load_dataset``.
        columns: fields the rows must have; only these are decoded when the dataset has more.
        fix_columns: what the error for a missing column tells the user to do.

    Raises:
        LapeError: the dataset cannot be opened, has no such split, or lacks a column.
    """
    import datasets

    try:
        if is_saved_dataset(local):
            ds = datasets.load_from_disk(str(local))
            if isinstance(ds, datasets.DatasetDict):
                chosen = split or (next(iter(ds)) if len(ds) == 1 else None)
                if chosen not in ds:
                    raise LapeError(f"{where}: dataset {local} has splits {', '.join(ds)}: set 'split:' to one of them")
                ds = ds[chosen]
        else:
            kwargs = {k: v for k, v in (("revision", revision), ("data_files", data_files)) if v is not None}
            ds = datasets.load_dataset(str(local) if local.is_dir() else path, name, split=split or "train",
                                       streaming=streaming, **kwargs)
    except LapeError:
        raise
    except Exception as exc:  # datasets raises many types; report one line
        first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise LapeError(f"{where}: dataset {path} could not be loaded ({first}): check the id, name and split, "
                        "or save it locally with save_to_disk and point 'path' at that folder") from None
    present = getattr(ds, "column_names", None)
    if present is not None:
        missing = [c for c in columns if c not in present]
        if missing:
            raise LapeError(f"{where}: dataset {path} has no field {', '.join(repr(c) for c in missing)} "
                            f"(fields: {', '.join(present)}): {fix_columns}")
        if columns and len(present) > len(set(columns)):
            ds = ds.select_columns(list(dict.fromkeys(columns)))  # decode only what is read
    return ds
