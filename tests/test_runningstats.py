"""The one tally loop: sums against a direct computation, resume after an interruption gives the
same sums and runs only the missing batches, checkpoints of other inputs are ignored, throughput
after a resume counts only the resumed part."""

from __future__ import annotations

import pytest
import torch

from lape.errors import LapeError
from lape.runningstats import RunningSums, shard, tally


class Moments(RunningSums):
    def __init__(self):
        super().__init__({"n": torch.zeros((), dtype=torch.int64), "s": torch.zeros(3, dtype=torch.float64),
                          "sq": torch.zeros(3, dtype=torch.float64)})

    def add(self, x: torch.Tensor) -> None:
        self.sums["n"] += x.shape[0]
        self.sums["s"] += x.sum(0)
        self.sums["sq"] += (x * x).sum(0)


DATA = {g: [torch.randn(4, 3, generator=torch.Generator().manual_seed(10 * k + i), dtype=torch.float64)
            for i in range(7)] for k, g in enumerate(["a", "b"])}


def _step(stat, x):
    stat.add(x)
    return x.shape[0]


def _run(tmp_path, key="k", every=2, fail_at=None):
    seen = []

    def batches(group):
        for i, x in enumerate(DATA[group]):
            seen.append((group, i))
            if fail_at is not None and (group, i) == fail_at:
                raise KeyboardInterrupt
            yield x

    out = tally(["a", "b"], lambda g: Moments(), batches, _step, key=key, checkpoint_dir=tmp_path,
                checkpoint_every=every, progress=False)
    return out, seen


def test_sums_equal_a_direct_computation(tmp_path):
    (states, report), _ = _run(None)
    for g, xs in DATA.items():
        x = torch.cat(xs)
        assert int(states[g]["n"]) == x.shape[0]
        torch.testing.assert_close(states[g]["s"], x.sum(0))
        torch.testing.assert_close(states[g]["sq"], (x * x).sum(0))
    assert report.units == 56 and report.resumed_groups == 0


def test_resume_runs_only_the_missing_batches_and_gives_the_same_sums(tmp_path):
    (reference, _), _ = _run(None)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, fail_at=("b", 5))  # "a" done; "b" check-pointed after its 4th batch
    (states, report), seen = _run(tmp_path)
    # "a" is finished (its batches are not even read); "b" skips its first 4 batches' work
    assert [s for s in seen if s[0] == "a"] == []
    assert report.units == 3 * 4 and report.resumed_groups == 2  # throughput counts the resumed part only
    for g in DATA:
        for name in ("n", "s", "sq"):
            assert torch.equal(states[g][name], reference[g][name]), (g, name)
    # another key ignores those checkpoints and counts everything again
    (_, report), _ = _run(tmp_path, key="other")
    assert report.units == 56 and report.resumed_groups == 0


def test_bad_settings_and_checkpoints_are_one_line_errors(tmp_path):
    with pytest.raises(LapeError, match="checkpoint_every must be at least 1"):
        _run(tmp_path, every=0)
    m = Moments()
    with pytest.raises(LapeError, match="checkpoint holds"):
        m.load_state_dict({"n": torch.zeros(())})


def test_shard_splits_by_index():
    items = list(range(11))
    parts = [list(shard(items, r, 3)) for r in range(3)]
    assert parts == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    assert sorted(sum(parts, [])) == items
