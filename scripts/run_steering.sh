#!/usr/bin/env bash
# The steering experiments behind the README's steering section (issue #16), on the built-in
# model and the full run's stats (scripts/run_full.sh calls this after recording):
#   1. calibrate a steering profile per target language on the DEVELOPMENT prompts (builtin:dev);
#   2. then, once, the HELD-OUT TEST prompts (builtin:test) with every control, and the spent
#      first test round (builtin:test1, development data since its failures were read);
#   3. stability: LAPE on two disjoint halves of each language's training text;
#   4. a development evaluation of what the calibration does not vary: the settings' rule with
#      the first token edited too (the plain rule itself is the calibration's "replace x1.5").
# Every step is cached, so re-running continues where it stopped. About 1.5 hours on 2 CPU cores.
# Usage: bash scripts/run_steering.sh [RUN_FOLDER]
set -euo pipefail
RUN=${1:-runs/full}
TARGETS="fr de es ru zh ja ko ar vi it tr"
LANGS13="en zh fr es de ru ja ar ko vi it pt tr"
COMMON=(--stats "$RUN/stats" --to $TARGETS --batch-size 240)

# 1. the profile, chosen on builtin:dev only (saved beside the sets, where lape steer finds it)
lape steer-calibrate --neurons "$RUN/neurons13" "${COMMON[@]}" --prompts builtin:dev \
  --modes replace add --strengths 1 1.5 2 --layer-windows skip:3 skip:6 skip:9 --try-exclusive \
  --source-scales 0.5 1 --refine-below 0.9 --refine-top 3 \
  --polish-strengths 0.75 1 1.25 --polish-windows skip:4 skip:5 skip:6 skip:7 skip:8

# 2. the held-out test prompts, scored once the profile above is frozen
lape steer-eval --neurons "$RUN/neurons13" "${COMMON[@]}" --prompts builtin:test \
  --controls plain source_on source_off random no_ngram_ban --random-seeds 0 1 --out "$RUN/steer-test"
lape steer-eval --neurons "$RUN/neurons13" "${COMMON[@]}" --prompts builtin:test1 --out "$RUN/steer-test1"

# 3. stability: the 13 languages' sets from two disjoint halves of the training text
for k in 1 2; do
  lape record --model builtin --corpus builtin --languages $LANGS13 --tokens-per-language 6500 --part "$k/2" \
    --out "$RUN/stats-half$k"
  lape identify "$RUN/stats-half$k" --out "$RUN/neurons13-half$k"
done
lape compare "$RUN/neurons13-half1" "$RUN/neurons13-half2"

# 4. what else was tried, on builtin:dev (the calibration's candidates cover the rules, strengths,
#    layer windows, exclusive neurons and source scales): leaving the first token edited, and three
#    times as many neurons per language (top_rate 3%, as later papers use) with the settings' rule
lape steer-eval --neurons "$RUN/neurons13" "${COMMON[@]}" --prompts builtin:dev --no-profile --no-skip-first \
  --out "$RUN/steer-dev-noskip"
lape identify "$RUN/stats" --languages $LANGS13 --top-rate 0.03 --out "$RUN/neurons13-top3"
lape steer-eval --neurons "$RUN/neurons13-top3" "${COMMON[@]}" --prompts builtin:dev --no-profile --strengths 1 1.5 \
  --out "$RUN/steer-dev-top3"
