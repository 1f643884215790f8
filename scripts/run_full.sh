#!/usr/bin/env bash
# The full run behind the README's results: LAPE on all 38 built-in languages, the perplexity
# matrix and steering on 12 of them. Every step is cached, so re-running continues where it stopped.
# Takes about an hour on 2 CPU cores. Usage: bash scripts/run_full.sh [RUN_FOLDER]
set -euo pipefail
RUN=${1:-runs/full}
TARGETS="zh fr es de ru ja ar ko vi it pt tr"
PPL_LANGS="en $TARGETS"

lape record --model builtin --corpus builtin --out "$RUN/stats" --tokens-per-language 13000
lape identify "$RUN/stats" --out "$RUN/neurons"
lape plot "$RUN/neurons"
# defaults are chosen on the UDHR openings (the corpus's parallel split) ...
lape steer-eval --neurons "$RUN/neurons" --stats "$RUN/stats" --prompts builtin:parallel --limit 8 \
  --to $TARGETS --strengths 1 1.5 --out "$RUN/steer-parallel"
# ... and reported on held-out prompts that were not used to choose them
lape steer-eval --neurons "$RUN/neurons" --stats "$RUN/stats" --prompts builtin:heldout --limit 16 \
  --to $TARGETS --out "$RUN/steering"
lape ppl --model builtin --neurons "$RUN/neurons" --languages $PPL_LANGS --tokens-per-language 256 \
  --out "$RUN/ppl"
lape report "$RUN"
