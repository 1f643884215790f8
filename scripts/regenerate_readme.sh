#!/usr/bin/env bash
# Regenerate every result table and figure in README.md (and docs/figures/) from scratch, with one
# command, on the built-in model: the full 38-language run (scripts/run_full.sh), the default
# `lape demo` timed by benchmarks/bench_demo.py, then scripts/readme_results.py, which names the
# commit. About 3.5 hours on 2 CPU cores; every step is cached, so a re-run continues.
# Usage: bash scripts/regenerate_readme.sh [RUN_ROOT]   (default runs/readme; removed first with --fresh)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${1:-runs/readme}
if [[ "${2:-}" == "--fresh" ]]; then rm -rf "$ROOT"; fi
mkdir -p "$ROOT"
START=$(git rev-parse --short HEAD)
bash scripts/run_full.sh "$ROOT/full"
if [[ ! -f "$ROOT/demo/report.html" ]]; then
  rm -rf "$ROOT/demo"
  python benchmarks/bench_demo.py --out "$ROOT/demo" --json "$ROOT/bench_demo.jsonl"
else  # brings any stage whose inputs changed up to date (the timings stay those of the timed run)
  lape demo --out "$ROOT/demo"
fi
python scripts/readme_results.py --runs-from "$START" --demo "$ROOT/demo" --full "$ROOT/full" --bench-json "$ROOT/bench_demo.jsonl"
