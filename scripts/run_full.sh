#!/usr/bin/env bash
# The full run behind the README's results: LAPE on all 38 built-in languages, the perplexity
# matrix, steering on 11 targets with the sets of the 13 languages of interest, and the
# linguistic-regions experiments. Every step is cached, so re-running continues where it stopped.
# About 3 hours on 2 CPU cores.
# Usage: bash scripts/run_full.sh [RUN_FOLDER]
set -euo pipefail
RUN=${1:-runs/full}
TARGETS="zh fr es de ru ja ar ko vi it pt tr"
LANGS13="en $TARGETS"

lape record --model builtin --corpus builtin --out "$RUN/stats" --tokens-per-language 13000
lape identify "$RUN/stats" --out "$RUN/neurons"                          # over all 38 languages
lape identify "$RUN/stats" --languages $LANGS13 --out "$RUN/neurons13"   # the languages of interest
lape plot "$RUN/neurons"
lape ppl --model builtin --neurons "$RUN/neurons" --languages $LANGS13 --tokens-per-language 256 --random-baseline diagonal \
  --out "$RUN/ppl"
bash "$(dirname "$0")/run_steering.sh" "$RUN"   # steering: calibrated on builtin:dev, reported on builtin:test
bash "$(dirname "$0")/run_regions.sh" "$RUN"   # linguistic regions (Zhang et al.)
bash "$(dirname "$0")/run_keyneurons.sh" "$RUN"   # key neurons (Chen et al.) and the three methods compared
lape report "$RUN"
