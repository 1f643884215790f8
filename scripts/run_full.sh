#!/usr/bin/env bash
# The full run behind the README's results: LAPE on all 38 built-in languages, the perplexity
# matrix, steering on 12 targets with the sets of the 13 languages of interest, and the
# linguistic-regions experiments. Every step is cached, so re-running continues where it stopped.
# About 1.5 hours on 2 CPU cores.
# Usage: bash scripts/run_full.sh [RUN_FOLDER]
set -euo pipefail
RUN=${1:-runs/full}
TARGETS="zh fr es de ru ja ar ko vi it pt tr"
LANGS13="en $TARGETS"

lape record --model builtin --corpus builtin --out "$RUN/stats" --tokens-per-language 13000
lape identify "$RUN/stats" --out "$RUN/neurons"                          # over all 38 languages
lape identify "$RUN/stats" --languages $LANGS13 --out "$RUN/neurons13"   # the languages of interest
lape plot "$RUN/neurons"
lape ppl --model builtin --neurons "$RUN/neurons" --languages $LANGS13 --tokens-per-language 256 \
  --out "$RUN/ppl"
# steering defaults are chosen on the UDHR openings (the corpus's parallel split) ...
lape steer-eval --neurons "$RUN/neurons13" --stats "$RUN/stats" --prompts builtin:parallel --limit 16 \
  --to $TARGETS --strengths 1 1.5 2 --out "$RUN/steer13-parallel-final"
lape steer-eval --neurons "$RUN/neurons13" --stats "$RUN/stats" --prompts builtin:parallel --limit 16 \
  --to $TARGETS --strengths 1 1.5 2 --no-repeat-ngram-size 0 --out "$RUN/steer13-parallel-nongram"
# ... and reported on held-out prompts that were not used to choose them
lape steer-eval --neurons "$RUN/neurons13" --stats "$RUN/stats" --prompts builtin:heldout \
  --to $TARGETS --strengths 1.5 1 --out "$RUN/steering13-final"
lape steer-eval --neurons "$RUN/neurons" --stats "$RUN/stats" --prompts builtin:heldout \
  --to $TARGETS --out "$RUN/steering"                                     # the 38-language sets
bash "$(dirname "$0")/run_regions.sh" "$RUN"   # linguistic regions (Zhang et al.)
lape report "$RUN"
