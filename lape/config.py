"""The base of every stage's settings: a frozen dataclass that validates itself, round-trips
through JSON (``to_dict``/``from_dict``, unknown keys refused) and gives the CLI its options.

A field's ``metadata`` may carry bounds and flags, checked once in ``__post_init__``:

* ``min`` / ``max``: inclusive bounds; ``gt``: a strict lower bound (``gt=0`` for "positive");
* ``choices``: the allowed values;
* ``key=False``: the field does not change the result (a checkpoint interval, a progress
  setting), so it stays out of the stage's cache key (:meth:`StageConfig.key_dict`).

NaN and infinities are refused for every float field. Example::

    @dataclass(frozen=True)
    class RecordConfig(StageConfig):
        seq_len: int = field(default=512, metadata={"min": 2, "max": 1 << 16})
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from .errors import LapeError

C = TypeVar("C", bound="StageConfig")


def option(default: Any, *, key: bool = True, **bounds: Any) -> Any:
    """A config field with bounds (``min``, ``max``, ``gt``, ``choices``) and a cache-key flag."""
    return dataclasses.field(default=default, metadata={"key": key, **bounds})


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """Base of the stage configs (``RecordConfig``, ``IdentifyConfig``, ...)."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            self._check(f, getattr(self, f.name))

    def _check(self, f: dataclasses.Field, value: Any) -> None:
        meta, what = f.metadata, f"{type(self).__name__[:-6].lower() or 'stage'} setting {f.name} ({_flag(f.name)})"
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            if v is None:
                continue
            if isinstance(v, float) and not math.isfinite(v):
                raise LapeError(f"{what} is {v}: give a finite number")
            if "choices" in meta and v not in meta["choices"]:
                raise LapeError(f"{what} is {v!r}: use one of {', '.join(map(str, meta['choices']))}")
            if "gt" in meta and not v > meta["gt"]:
                raise LapeError(f"{what} is {v}: it must be greater than {meta['gt']}")
            if "min" in meta and v < meta["min"]:
                raise LapeError(f"{what} is {v}: it must be at least {meta['min']}")
            if "max" in meta and v > meta["max"]:
                raise LapeError(f"{what} is {v}: it must be at most {meta['max']}")

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready (tuples as lists)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def key_dict(self) -> dict[str, Any]:
        """The fields that change the result (those without ``key=False``)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)
                if f.metadata.get("key", True)}

    @classmethod
    def from_dict(cls: type[C], d: Mapping[str, Any]) -> C:
        """Build from a dict (a sidecar's ``config``); unknown keys are refused."""
        if not isinstance(d, Mapping):
            raise LapeError(f"{cls.__name__} settings must be a mapping, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise LapeError(f"unknown {cls.__name__} setting(s) {unknown}: allowed are {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def replace(self: C, **changes: Any) -> C:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


# --------------------------------------------------------------------------------------------
# CLI options from fields


def add_config_args(parser: argparse.ArgumentParser, cls: type[StageConfig], skip: Sequence[str] = ()) -> None:
    """Add one ``--option`` per field of a config dataclass (defaults from the dataclass)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag, default, hint = _flag(f.name), f.default, str(hints[f.name])
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif "tuple" in hint:
            item = _boolean if "bool" in hint else int if "int" in hint else float if "float" in hint else str
            parser.add_argument(flag, nargs="+", type=item, default=default, metavar="X")
        elif default is None:  # an optional single value (PerturbConfig.layer: int | None)
            item = int if "int" in hint else float if "float" in hint else str
            parser.add_argument(flag, type=item, default=None, metavar="X")
        else:
            parser.add_argument(flag, type=type(default), default=default, help=f"(default: {default})")


def _boolean(text: str) -> bool:
    if text.lower() in ("true", "yes", "1"):
        return True
    if text.lower() in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def config_from_args(cls: type[C], args: argparse.Namespace, **overrides: Any) -> C:
    """Build a config from parsed args (fields missing from ``args`` keep their default)."""
    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}
    kw.update(overrides)
    return cls(**kw)
