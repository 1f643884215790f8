"""Running statistics and the one loop that tallies them (in the spirit of baukit's runningstats).

A statistic (:class:`RunningSums`) holds named tensors on the model's device and knows
``add``, ``state_dict``, ``load_state_dict`` and ``to``. :func:`tally` runs the heavy passes of
lape (activation counts; gradient importance and attribution sums use the same loop) over
groups (languages, clusters):

* **resume**: each group's state is check-pointed into ``checkpoint_dir/GROUP`` every
  ``checkpoint_every`` batches and when the group ends, keyed by the pass's cache key; a re-run
  skips finished groups and continues an unfinished one after its last checkpoint. The result
  is identical to an uninterrupted run (same batches, same order of additions);
* **torchrun**: rank ``r`` of ``w`` takes items ``i`` with ``i % w == r`` (:func:`shard`) and the
  states are summed with one all-reduce per group, giving the same sums as one process (exactly
  for integer counts; float sums agree to rounding);
* **skip when cached**: :func:`from_rank0` lets rank 0 decide whether a finished artifact is
  reused and sends it to every rank, so ranks can never disagree and wait forever.

States are plain tensors saved as safetensors; nothing is pickled.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from . import artifacts
from .errors import LapeError

logger = logging.getLogger(__name__)
T = TypeVar("T")
S = TypeVar("S", bound="RunningSums")


class RunningSums:
    """Named running sums on one device. Subclasses add an ``add(...)`` method.

    Example:
        >>> class Count(RunningSums):
        ...     def add(self, x): self.sums["n"] += x.numel()
        >>> c = Count({"n": torch.zeros((), dtype=torch.int64)})
    """

    def __init__(self, sums: Mapping[str, torch.Tensor]) -> None:
        self.sums = dict(sums)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The sums (the tensors themselves; clone before changing them)."""
        return dict(self.sums)

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Overwrite the sums with a saved state of the same names and shapes."""
        if set(state) != set(self.sums):
            raise LapeError(f"checkpoint holds {sorted(state)}, expected {sorted(self.sums)}: delete the "
                            "partial/ folder and re-run")
        for k, v in state.items():
            self.sums[k].copy_(v.reshape(self.sums[k].shape))

    def reduce_ranks(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Combine the ranks' states of one group under torchrun: by default every tensor is summed
        (one all-reduce each); a statistic that is not a sum (a running top-k) overrides this."""
        for v in state.values():
            torch.distributed.all_reduce(v)
        return state

    def to(self: S, device: torch.device | str) -> S:
        """Move the sums to ``device`` (in place); returns ``self``."""
        self.sums = {k: v.to(device) for k, v in self.sums.items()}
        return self


# --------------------------------------------------------------------------------------------
# Processes


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` outside ``torchrun``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def shard(items: Iterable[T], rank: int, world: int) -> Iterator[T]:
    """Rank ``rank``'s share of ``items``: those with index ``i % world == rank``."""
    return (x for i, x in enumerate(items) if i % world == rank)


def from_rank0(art: artifacts.Artifact | None, cls: type[artifacts.A], device: torch.device
               ) -> artifacts.A | None:
    """Rank 0's artifact (or ``None``) on every rank, sent by broadcast (JSON sidecar as bytes,
    then each tensor), so that a rank whose ``out`` folder differs gets rank 0's decision."""
    dist = torch.distributed
    rank = dist.get_rank()
    flag = torch.tensor([int(art is not None)], device=device)
    dist.broadcast(flag, src=0)
    if not int(flag):
        return None
    if rank == 0:
        tensors = art.tensors()
        header = {"meta": art.meta, "payload": art.payload(),
                  "tensors": {k: [str(v.dtype).replace("torch.", ""), list(v.shape)] for k, v in tensors.items()}}
    blob = _broadcast_bytes(json.dumps(artifacts._standard(header)).encode() if rank == 0 else b"", device)
    header = json.loads(blob.decode("utf-8"))
    got = {}
    for name, (dtype, shape) in header["tensors"].items():
        t = (tensors[name].to(device) if rank == 0
             else torch.zeros(shape, dtype=getattr(torch, dtype), device=device))
        dist.broadcast(t, src=0)
        got[name] = t.cpu()
    out = cls._from_saved(got, header["meta"], header["payload"])
    out.from_cache = True  # type: ignore[attr-defined]
    # gloo may finish a send before the peer has received it: without a barrier, a rank 0 that
    # returns and tears the group down can abort a rank still receiving (seen as SIGABRT)
    dist.barrier()
    return out


def cached_on_rank0(cls: type[artifacts.A], out: str | Path | None, key: str, device: torch.device
                    ) -> artifacts.A | None:
    """The finished artifact in ``out`` made with ``key``, decided by rank 0 and sent to every rank
    (``None``: compute it). Outside ``torchrun`` this is :func:`lape.artifacts.reuse`."""
    rank, world = dist_info()
    done = artifacts.reuse(cls, out, key) if rank == 0 else None
    if world > 1:  # rank 0 decides for all: ranks that disagreed would wait forever in all_reduce
        done = from_rank0(done, cls, device)
    return done


def stage_cache(cls: type[artifacts.A], model: torch.nn.Module, config: Any, inputs: Mapping[str, Any],
                out: str | Path | None) -> tuple[str, artifacts.A | None]:
    """The cache key of a heavy pass over ``model`` (:func:`lape.artifacts.stage_key` of the
    model's fingerprint, ``config.key_dict()`` and ``inputs``) and the finished artifact in
    ``out`` made with it, decided by rank 0 (:func:`cached_on_rank0`), or ``None``."""
    from .fingerprint import fingerprint
    from .models import input_device

    key = artifacts.stage_key(cls.KIND, model_fingerprint=fingerprint(model), config=config.key_dict(),
                              inputs=inputs)
    return key, cached_on_rank0(cls, out, key, input_device(model))


def _broadcast_bytes(data: bytes, device: torch.device) -> bytes:
    dist = torch.distributed
    length = torch.tensor([len(data)], device=device)
    dist.broadcast(length, src=0)
    buf = torch.zeros(int(length), dtype=torch.uint8, device=device)
    if dist.get_rank() == 0:
        buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(buf, src=0)
    return bytes(buf.cpu().tolist())


# --------------------------------------------------------------------------------------------
# The tally loop


@dataclass
class TallyReport:
    """What one :func:`tally` call did: seconds spent and units (e.g. tokens) processed in this
    run, so throughput after a resume counts only the resumed part."""

    seconds: float = 0.0
    units: int = 0
    resumed_groups: int = 0

    @property
    def per_second(self) -> float:
        return self.units / self.seconds if self.seconds > 0 else 0.0


def tally(
    groups: Sequence[str],
    make: Callable[[str], RunningSums],
    batches: Callable[[str], Iterable[Any]],
    step: Callable[[RunningSums, Any], int],
    *,
    key: str,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 25,
    progress: bool = True,
    desc: str = "tally",
    unit: str = "tok",
    total: Callable[[str], int | None] | None = None,
    context: Callable[[RunningSums], Any] | None = None,
) -> tuple[dict[str, dict[str, torch.Tensor]], TallyReport]:
    """Run ``step(stat, batch)`` over every batch of every group; return the summed states.

    Args:
        groups: group names (languages, clusters), in order.
        make: a fresh statistic for a group (on the model's device).
        batches: this rank's batches of a group (deterministic, so a resume sees the same ones);
            under torchrun use :func:`shard`.
        step: adds one batch to the statistic; returns the units processed (for the progress bar
            and throughput).
        key: the pass's cache key; checkpoints made under another key are ignored.
        checkpoint_dir: where partial states go (``None``: no resume).
        checkpoint_every: batches between checkpoints.
        progress: show a progress bar (rank 0).
        desc: progress bar label.
        unit: what ``step`` counts, for the bar ("tok", "prompt").
        total: expected units of a group (for the bar).
        context: a context manager around each group's batches (e.g. hooks feeding ``stat``).

    Returns:
        ``({group: {name: tensor on CPU}}, TallyReport)``; states are summed over ranks.
    """
    from contextlib import nullcontext

    from tqdm.auto import tqdm

    if checkpoint_every < 1:
        raise LapeError(f"checkpoint_every must be at least 1, got {checkpoint_every}")
    rank, world = dist_info()
    report = TallyReport()
    results: dict[str, dict[str, torch.Tensor]] = {}
    t0 = time.perf_counter()
    for group in groups:
        stat = make(group)
        group_key = artifacts.content_hash({"key": key, "group": group, "world": world})
        partial = Path(checkpoint_dir) / (group if world == 1 else f"{group}.rank{rank}") if checkpoint_dir else None
        start, finished = _resume(partial, stat, group_key)
        if start:
            report.resumed_groups += 1
            logger.info("%s: resuming after %d batches%s", group, start, " (finished)" if finished else "")
        if not finished:
            bar = tqdm(desc=f"{desc} {group}", unit=unit, disable=not progress or rank != 0,
                       total=total(group) if total else None, leave=False)
            done_batches = start
            with context(stat) if context else nullcontext():
                for b, batch in enumerate(batches(group)):
                    if b < start:
                        continue
                    units = step(stat, batch)
                    report.units += units
                    done_batches = b + 1
                    bar.update(units * world)
                    if partial is not None and done_batches % checkpoint_every == 0:
                        _checkpoint(partial, stat, group_key, done_batches, finished=False)
            bar.close()
            if partial is not None:
                _checkpoint(partial, stat, group_key, done_batches, finished=True)
        state = {k: v.detach().clone() for k, v in stat.state_dict().items()}
        if world > 1:
            state = stat.reduce_ranks(state)
        results[group] = {k: v.cpu() for k, v in state.items()}
    report.seconds = time.perf_counter() - t0
    return results, report


@dataclass
class _Checkpoint(artifacts.Artifact):
    state: dict[str, torch.Tensor]
    meta: dict[str, Any]

    KIND = "partial"

    def tensors(self) -> dict[str, torch.Tensor]:
        return self.state

    @classmethod
    def _from_saved(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any], payload: Any) -> _Checkpoint:
        return cls(tensors, meta)


def _checkpoint(partial: Path, stat: RunningSums, key: str, batches: int, finished: bool) -> None:
    _Checkpoint(stat.state_dict(), {"key": key, "batches": batches, "finished": finished,
                                    "fingerprint": {}}).save(partial)


def _resume(partial: Path | None, stat: RunningSums, key: str) -> tuple[int, bool]:
    """Load a matching checkpoint into ``stat``; returns ``(batches done, finished)``."""
    if partial is None or not artifacts.exists(partial, _Checkpoint.KIND):
        return 0, False
    try:
        ck = _Checkpoint.load(partial)
    except LapeError as exc:
        logger.warning("ignoring checkpoint %s: %s", partial, exc)
        return 0, False
    if ck.meta.get("key") != key:
        return 0, False
    device = next(iter(stat.sums.values())).device
    stat.load_state_dict({k: v.to(device) for k, v in ck.state.items()})
    return int(ck.meta["batches"]), bool(ck.meta["finished"])
