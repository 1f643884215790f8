"""Every ``benchmarks/bench_*.py --quick`` runs to exit status 0 and prints one line per figure.

Not a timing test: the figures are whatever this machine measures; only their reporting is
checked (a ``NAME: figure = value unit`` line for every figure written to ``--json``, and the
figures that carry each script's targets).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted((ROOT / "benchmarks").glob("bench_*.py"))
TIMEOUT = 900
LINE = re.compile(r"^(?P<name>[\w-]+): (?P<figure>.+?) = (?P<value>\S+) (?P<rest>.*)$")
# figures whose targets the scripts' docstrings promise (checked by their start)
KEY_FIGURES = {
    "bench_record.py": ["record / bare forward", "record / naive recorder", "peak RSS growth"],
    "bench_ppl.py": ["|NLL chunked - NLL full|", "peak RSS saved by chunking"],
    "bench_load.py": ["first load", "cached load"],
    "bench_steer.py": ["steered / plain tokens/s"],
    "bench_demo.py": ["total (with model load and report)", "second run (everything cached)"],
    "bench_regions.py": ["importance / plain forward+backward", "peak RSS growth", "peak RSS above model / bound",
                         "ablation apply+restore / forward", "restore bit-exact"],
    "bench_explain.py": ["explain pass / bare forward", "peak RSS growth 4x tokens / 1x"],
    "bench_keyneurons.py": ["released / lape speed-up", "max |scores difference| / max |score|",
                            "lape peak RSS growth 1 ->", "lape peak RSS growth ratio"],
}


def _param(script: Path):
    return pytest.param(script, id=script.name)


@pytest.mark.slow
@pytest.mark.parametrize("script", [_param(s) for s in SCRIPTS])
def test_benchmark_quick_run_reports_every_figure(script, tmp_path):
    figures_file = tmp_path / "figures.jsonl"
    proc = subprocess.run([sys.executable, str(script), "--quick", "--json", str(figures_file)], cwd=ROOT,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}, capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"{script.name} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    printed = [m.groupdict() for m in map(LINE.match, proc.stdout.splitlines()) if m]
    figures = [json.loads(line) for line in figures_file.read_text().splitlines()]
    assert figures, f"{script.name} reported no figures:\n{proc.stdout}"
    names = {f["benchmark"] for f in figures}
    assert len(names) == 1, names  # one Report per script
    for f in figures:
        lines = [p for p in printed if p["name"] == f["benchmark"] and p["figure"] == f["figure"]]
        assert len(lines) == 1, f"{script.name}: figure {f['figure']!r} printed {len(lines)} times:\n{proc.stdout}"
        assert float(lines[0]["value"]) == pytest.approx(f["value"], rel=1e-2, abs=1e-12)
        assert lines[0]["rest"].startswith(f["unit"])
    assert len(printed) == len(figures)
    for key in KEY_FIGURES.get(script.name, []):
        assert any(f["figure"].startswith(key) for f in figures), f"{script.name}: no figure {key!r}"


def test_peak_rss_of_a_child_is_its_own():
    """A benchmark child's peak-memory figure must not include the peak of the process that
    started it: here a parent touches 1.5 GiB, then runs a child that only imports the helper."""
    child = ("import sys; sys.path.insert(0, 'benchmarks'); from common import peak_rss_mb; "
             "print(peak_rss_mb())")
    parent = ("import subprocess, sys; big = b'x' * (3 << 29); del big; "
              f"print(subprocess.run([sys.executable, '-c', {child!r}], capture_output=True, text=True, "
              "check=True).stdout)")
    proc = subprocess.run([sys.executable, "-c", parent], cwd=ROOT, capture_output=True, text=True,
                          timeout=TIMEOUT, check=True)
    child_peak = float(proc.stdout.strip().splitlines()[-1])
    assert child_peak < 1024, f"the child reports a peak of {child_peak:.0f} MB (its parent's)"
