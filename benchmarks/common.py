"""Shared helpers of the benchmark scripts: batches of the built-in corpus, timing, reporting.

Every script measures the things it compares side by side in one run, on the same batches,
interleaving repetitions so that a busy machine slows both sides alike, and prints ratios.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc)
    p.add_argument("--quick", action="store_true", help="small sizes, for CI")
    p.add_argument("--json", default=None, help="append the figures to this JSON-lines file")
    return p


def builtin_batches(tok, n_batches: int, batch: int = 8, seq_len: int = 256, lang: str = "en"):
    """``n_batches`` packed ``(input_ids, attention_mask)`` batches of the built-in corpus."""
    from lape.corpora import batches, load_corpus

    stream = load_corpus("builtin", tok, split="train", tokens_per_language=n_batches * batch * seq_len,
                         seq_len=seq_len, seed=0, languages=[lang])[lang]
    out = [(ids, mask) for ids, mask in batches(stream, batch)]
    return [b for b in out if b[0].shape[0] == batch][:n_batches]


class Seq:
    """One packed sequence, as a corpus stream yields it (what lape's passes iterate over)."""

    def __init__(self, ids: torch.Tensor, mask: torch.Tensor) -> None:
        self.input_ids, self.attention_mask = ids, mask


def sequences(data: list[tuple[torch.Tensor, torch.Tensor]]) -> list[Seq]:
    """The sequences of :func:`builtin_batches` batches, one by one: a corpus stream."""
    return [Seq(i, m) for ids, mask in data for i, m in zip(ids, mask)]


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best wall time of each function, calls interleaved (a, b, a, b, ...)."""
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


class Report:
    """Collects one summary line per figure; exit status 1 if any target was missed."""

    def __init__(self, name: str, json_path: str | None) -> None:
        self.name, self.json_path, self.failed = name, json_path, []

    def figure(self, label: str, value: float, unit: str, target: str | None = None, ok: bool = True,
               enforce: bool = True, **extra: object) -> None:
        """Print one figure; a missed target fails the script unless ``enforce`` is False (speed
        ratios in ``--quick`` mode, where batches are too few to time reliably)."""
        status = ""
        if target is not None:
            status = f"  target {target}: " + ("ok" if ok else "MISSED" if enforce else "missed (not enforced in --quick)")
        print(f"{self.name}: {label} = {value:.3g} {unit}{status}", flush=True)
        if not ok and enforce:
            self.failed.append(label)
        if self.json_path:
            with open(self.json_path, "a") as f:
                f.write(json.dumps({"benchmark": self.name, "figure": label, "value": value, "unit": unit,
                                    "target": target, "ok": ok, **extra}) + "\n")

    def exit(self) -> None:
        if self.failed:
            print(f"{self.name}: missed targets: {', '.join(self.failed)}", flush=True)
            raise SystemExit(1)


def reset_peak_rss(model: torch.nn.Module | None = None) -> None:
    """Count the peak from now on (Linux: reset ``VmHWM``), e.g. after loading the model.

    Given the model, first page in all of its weights: they are memory-mapped from safetensors,
    so otherwise the resident set grows with every embedding row a new token id reads (file
    pages, up to the whole embedding), and the peak would count the vocabulary seen, not the
    work done."""
    if model is not None:
        with torch.no_grad():
            for p in model.parameters():
                p.sum()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _status_mb(field: str) -> float | None:
    """A memory field of ``/proc/self/status`` (``VmHWM``, ``VmRSS``) in MB; None without /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident memory of this process (MB): Linux ``VmHWM``. Not ``ru_maxrss``: a child
    inherits its parent's ``ru_maxrss`` across fork and exec, so every child of a benchmark that
    already holds the model would report the parent's peak."""
    peak = _status_mb("VmHWM")
    if peak is not None:
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


torch.set_num_threads(2)


def rss_mb() -> float:
    """This process's current resident set size in MB (``VmRSS``; NaN where /proc is missing)."""
    rss = _status_mb("VmRSS")
    return float("nan") if rss is None else rss
