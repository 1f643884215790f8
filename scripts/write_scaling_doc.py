"""(Re)generate ``docs/scaling.md``: how to run lape at scale, and the benchmark figures of this machine.

Runs every ``benchmarks/bench_*.py`` (full sizes by default, ``--quick`` passes through) with
``--json`` into a temporary JSON-lines file, then writes the guide (GPU, several GPUs or nodes
with ``torchrun``, large models with ``--device-map``, what scales with what) followed by a table
of the measured figures with the date, git commit and machine. A benchmark that misses a target
exits 1; its figures still go into the table, marked.

Usage::

    python scripts/write_scaling_doc.py                 # full benchmarks (slow), rewrites the doc
    python scripts/write_scaling_doc.py --quick         # small sizes, a few minutes
    python scripts/write_scaling_doc.py --from-json figures.jsonl --mode full   # no benchmarks
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lape.artifacts import atomic_write_text  # noqa: E402

logger = logging.getLogger("write_scaling_doc")

BENCH_DIR = REPO / "benchmarks"
DOC = REPO / "docs" / "scaling.md"
COUNTER_BYTES = 8 + 8 + 8  # per (language, layer, neuron): fire count int64, two float64 sums
# (name, layers, MLP neurons per layer) for the memory examples
MODELS = [("Gemma 3 270M (built-in)", 18, 2048), ("LLaMA-2-7B", 32, 11008), ("Mistral-7B", 32, 14336),
          ("LLaMA-2-13B", 40, 13824), ("LLaMA-2-70B", 80, 28672)]
EXAMPLE_LANGUAGES = 7  # the number of languages of Tang et al. (2024)


@dataclass
class Run:
    """One benchmark script's run: its exit status and wall time."""

    script: str
    returncode: int
    seconds: float


def benchmark_scripts() -> list[Path]:
    return sorted(BENCH_DIR.glob("bench_*.py"))


def run_benchmark(script: Path, json_path: Path, quick: bool, timeout: float, extra: list[str] = ()) -> Run:
    """Run one benchmark script, appending its figures to ``json_path``."""
    cmd = [sys.executable, str(script), "--json", str(json_path)] + (["--quick"] if quick else []) + list(extra)
    logger.info("running %s", " ".join(cmd[1:]))
    t0 = time.perf_counter()
    try:
        code = subprocess.run(cmd, cwd=REPO, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        logger.error("%s did not finish within %.0f s", script.name, timeout)
        code = -1
    run = Run(script.name, code, time.perf_counter() - t0)
    logger.info("%s: exit status %d after %.0f s", script.name, code, run.seconds)
    return run


def read_figures(json_path: Path) -> list[dict]:
    if not json_path.is_file():
        return []
    return [json.loads(line) for line in json_path.read_text().splitlines() if line.strip()]


def describe(script: Path) -> str:
    """The first line of a benchmark script's docstring."""
    doc = ast.get_docstring(ast.parse(script.read_text())) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + (" (with uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else "")


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{os.cpu_count()} CPU cores ({cpu}), {gpu}, torch {torch.__version__}, "
            f"Python {platform.python_version()}, {platform.system()} {platform.machine()}")


def _value(v: float) -> str:
    return f"{v:.3g}"


def _cell(text: object) -> str:
    """Text for a markdown table cell (``|NLL a - NLL b|`` must not split the row)."""
    return str(text).replace("|", "\\|")


def _status(fig: dict, exit_codes: dict[str, int]) -> str:
    if fig.get("target") is None:
        return ""
    if fig.get("ok", True):
        return "ok"
    code = exit_codes.get(fig["benchmark"])
    if code is None:  # figures read from a file: whether the target was enforced is unknown
        return "missed"
    # a missed target that did not fail its script was not enforced (speed ratios in --quick)
    return "missed (not enforced in --quick)" if code == 0 else "**MISSED**"


def memory_table(languages: int = EXAMPLE_LANGUAGES) -> str:
    rows = ["| Model | layers × neurons | counters, one language (on the device) | "
            f"counters, {languages} languages (host) |", "|---|---|---|---|"]
    for name, layers, neurons in MODELS:
        one = layers * neurons * COUNTER_BYTES
        rows.append(f"| {name} | {layers} × {neurons:,} | {one / 1e6:.1f} MB | {one * languages / 1e6:.0f} MB |")
    return "\n".join(rows)


def figures_table(figures: list[dict], exit_codes: dict[str, int]) -> str:
    rows = ["| Benchmark | Figure | Value | Unit | Target | Status |", "|---|---|---|---|---|---|"]
    for f in figures:
        cells = [f["benchmark"], f["figure"], _value(f["value"]), f["unit"], f.get("target") or "",
                 _status(f, exit_codes)]
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(rows)


def render(figures: list[dict], runs: list[Run], mode: str, when: str, commit: str, host: str) -> str:
    # figures carry the script that printed them (its Report name may differ: bench_ppl.py
    # reports as "perplexity")
    code_of = {r.script: r.returncode for r in runs}
    exit_codes = {f["benchmark"]: code_of[f["_script"]] for f in figures if f.get("_script") in code_of}
    descriptions = "\n".join(f"- `benchmarks/{s.name}`: {describe(s)}" for s in benchmark_scripts())
    if runs:
        run_lines = "\n".join(f"| `{r.script}` | {r.returncode} | {r.seconds:.0f} s |" for r in runs)
        run_table = f"| Script | Exit status | Wall time |\n|---|---|---|\n{run_lines}\n"
    else:
        run_table = "(figures read from a saved JSON-lines file; exit statuses not recorded)\n"
    quick_note = ("\n**These are `--quick` figures** (few batches, small sizes): speed ratios are noisy\n"
                  "and their targets are not enforced. Regenerate in full mode\n"
                  "(`python scripts/write_scaling_doc.py`) for the figures to quote.\n"
                  if mode == "quick" else "")
    example = dict(zip(("layers", "neurons"), MODELS[1][1:]))
    example_mb = example["layers"] * example["neurons"] * EXAMPLE_LANGUAGES * COUNTER_BYTES / 1e6
    return f"""# Scaling lape: GPUs, several processes, large models

<!-- generated by scripts/write_scaling_doc.py; edit that script, not this file -->

lape's defaults are sized for a laptop CPU and the built-in Gemma 3 270M. Everything below uses
the same commands on bigger hardware; only the options change. Recording (`lape record`) is the
step whose cost grows with the corpus, so this page is mostly about it.

## One GPU

```bash
lape record --model meta-llama/Llama-2-7b-hf --device cuda --dtype bfloat16 \\
    --corpus data_manifests/my-wikipedia.yaml --tokens-per-language 100000000 \\
    --seq-len 2048 --batch-size 16 --out runs/llama2/stats
```

- `--dtype bfloat16` halves weight memory and runs faster than float32 on recent GPUs. Activations are
  summed per batch in float32 and accumulated in float64, so the statistics do not lose precision
  over 100M tokens; `fire_counts` are exact integers.
- Raise `--batch-size` and `--seq-len` until the GPU is busy (the CPU defaults, 8 × 512, are far
  too small for a GPU). Peak memory is weights + one forward pass of `batch × seq_len` tokens (no
  KV cache, no vocabulary logits: the LM head never runs).
- The counters stay on the GPU until a language is finished; there is no host synchronisation
  per batch.

## Several GPUs or nodes (`torchrun`)

```bash
# one node, 8 GPUs: one process per GPU, each with a full copy of the model
torchrun --nproc-per-node 8 -m lape record --model meta-llama/Llama-2-7b-hf \\
    --device cuda --dtype bfloat16 --corpus my.yaml --out runs/llama2/stats

# two nodes with 8 GPUs each: run the same command on both (c10d rendezvous numbers the nodes)
torchrun --nnodes 2 --nproc-per-node 8 \\
    --rdzv-backend c10d --rdzv-endpoint head-node:29500 --rdzv-id lape-record \\
    -m lape record --model meta-llama/Llama-2-7b-hf --device cuda --dtype bfloat16 \\
    --corpus my.yaml --out /shared/runs/llama2/stats
```

- When `WORLD_SIZE > 1` the CLI joins a process group (NCCL with `--device cuda`, each rank on
  `cuda:LOCAL_RANK`; gloo on CPU, where the ranks split the cores between them).
- Every rank streams the same deterministic sequence of packed sequences and keeps every N-th one
  (rank `r` of `N` takes sequences `i` with `i % N == r`), so no data is copied or pre-split.
  Tokenisation is repeated on each rank, which is cheap next to a large model's forward pass.
- When a language is done the counters are all-reduced (sums of integers and float64 sums), and
  rank 0 writes the artifact. The files hold the same counts as one process: `fire_counts` and
  `token_counts` are identical, the float sums equal up to the order of additions
  (`tests/test_distributed.py` checks this with two CPU ranks).
- Each rank check-points its own shard (`OUT/partial/LANG.rankR`); re-running the same command
  with the same number of processes resumes; put `--out` on a filesystem every node sees so that
  every rank finds its check-points. Whether the whole recording is already finished is decided
  by rank 0 and broadcast (with the stats) to the other ranks, so ranks cannot disagree and wait
  for each other.
- Throughput grows with the number of processes (each rank does `1/N` of the forward passes); the
  only communication is one all-reduce of the counters per language.

## Models larger than one GPU (`--device-map`)

```bash
lape record --model meta-llama/Llama-2-70b-hf --device-map auto --dtype bfloat16 \\
    --corpus my.yaml --batch-size 4 --seq-len 2048 --out runs/llama2-70b/stats
```

- `--device-map auto` (accelerate) spreads the layers over the visible GPUs (and CPU if needed).
  The hooks sit on each layer's MLP activation, wherever it lives; each layer's contribution is
  moved to the counters, which live on the device of the input embeddings.
- Use either `torchrun` (data parallel, a model copy per GPU) or `--device-map` (one model over
  several GPUs) per process, not both on the same GPUs.

## What scales with what

- **Time** ∝ tokens × the model's FLOPs per token (≈ 2 × parameters). Counting adds a few
  element-wise operations per MLP activation, a few percent of the forward pass whatever the
  number of neurons (benchmark figure `record / bare forward`, target ≥ 0.95).
- **Memory of the counters** = languages × layers × neurons × {COUNTER_BYTES} bytes (an int64 count and
  two float64 sums). For example LLaMA-2-7B, {example['layers']} × {example['neurons']:,} neurons × {EXAMPLE_LANGUAGES} languages
  ≈ {example_mb:.0f} MB. Only the current language's counters are on the device; finished languages
  wait on the host.
- **The corpus is streamed**: documents are read, shuffled in a bounded buffer and packed on the
  fly, so memory does not grow with the number of tokens (benchmark figure `peak RSS growth`,
  target ≤ 1.10 for 4× the tokens).
- **Skipping the LM head** is where lape beats the usual research recorder (full-logit forward,
  activations copied to numpy): Gemma 3 270M's 262k x 640 head costs more FLOPs per token than
  its whole decoder, and its logits (1 MB per token in float32) must be written and read (figure
  `record / naive recorder`, ~3x on this machine). The gain shrinks for 7B models, whose decoder
  dwarfs the head.
- **Loading**: the first load of the built-in model assembles and de-quantises the GGUF (about a
  minute); later loads read the cached safetensors and `tokenizer.json` in ~1.5 s
  (`cached load (load_model)`). A fresh Python process also spends ~4.5 s importing torch and
  transformers' Gemma 3 code before that (`imports of torch + transformers`), which no loader
  can avoid.
- Per batch, counting needs a few activation-sized temporaries for the layer being counted (the
  real-token rows, their positive part), `batch × seq_len × neurons` values each, freed before
  the next layer runs.

{memory_table()}

## Measured on this machine

- Mode: **{mode}** ({'benchmarks run with `--quick`' if mode == 'quick' else 'full benchmark sizes'})
- Date: {when}
- Commit: `{commit}`
- Machine: {host}
{quick_note}
The benchmarks (each prints its figures and exits 1 on a missed target):

{descriptions}

{figures_table(figures, exit_codes)}

{run_table}"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="run the benchmarks with --quick (small sizes)")
    p.add_argument("--from-json", default=None, help="write the doc from this JSON-lines file instead "
                   "of running the benchmarks")
    p.add_argument("--mode", choices=("quick", "full"), default=None, help="the mode to state with "
                   "--from-json (default: quick with --quick, else full)")
    p.add_argument("--out", default=str(DOC), help="the markdown file to write")
    p.add_argument("--keep-json", default=None, help="also copy the figures to this JSON-lines file")
    p.add_argument("--timeout", type=float, default=7200, help="seconds allowed per benchmark script")
    p.add_argument("--demo-out", default=None, help="keep the demo benchmark's run in this new folder "
                   "(scripts/readme_results.py --demo reads it)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    mode = args.mode or ("quick" if args.quick else "full")
    runs: list[Run] = []
    if args.from_json:
        figures = read_figures(Path(args.from_json))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "figures.jsonl"
            figures = []
            for script in benchmark_scripts():  # the new lines of the file are this script's
                extra = ["--out", args.demo_out] if args.demo_out and script.name == "bench_demo.py" else []
                runs.append(run_benchmark(script, path, args.quick, args.timeout, extra))
                figures += [{**f, "_script": script.name} for f in read_figures(path)[len(figures):]]
    if not figures:
        logger.error("no figures were measured: see the benchmark output above")
        return 1
    if args.keep_json:
        atomic_write_text(args.keep_json, "".join(
            json.dumps({k: v for k, v in f.items() if k != "_script"}) + "\n" for f in figures))
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    text = render(figures, runs, mode, when, git_commit(), machine())
    atomic_write_text(args.out, text)
    logger.info("wrote %s (%d figures, %s mode)", args.out, len(figures), mode)
    failed = [r.script for r in runs if r.returncode != 0]
    if failed:
        logger.warning("benchmarks that missed a target or failed: %s", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
