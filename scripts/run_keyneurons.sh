#!/usr/bin/env bash
# The key-neuron experiments behind the README's key-neuron section (issue #17), on the built-in
# model (scripts/run_full.sh calls this after the LAPE and regions runs):
#   1. domains: MMLU dev+validation questions of the paper's six domains; integrated gradients on
#      the selection half (the paper's m=16, 3 templates), NA-ICA key neurons, then boost/suppress
#      on the held-out half against random sets (3 draws) and plain NA;
#   2. languages: cloze questions from each language's held-out text, the paper's six languages;
#   3. the three methods on one neuron space: LAPE's 13-language sets, the language clusters' key
#      neurons and the monolingual regions' neuron view, overlap and perplexity effect.
# Every step is cached, so re-running continues where it stopped. About 25 minutes on 2 CPU cores.
# Usage: bash scripts/run_keyneurons.sh [RUN_FOLDER] [QUESTIONS_PER_CLUSTER]
set -euo pipefail
RUN=${1:-runs/full}
PER=${2:-8}
for kind in domains languages; do
  if [ "$kind" = domains ]; then Q=(--questions builtin:domains); else Q=(--questions builtin:languages --clusters ar en fr ja ru zh); fi
  Q+=(--per-cluster "$PER")
  lape keyneurons attribute --model builtin "${Q[@]}" --steps 16 --templates 3 --out "$RUN/kn-$kind-scores"
  lape keyneurons select "$RUN/kn-$kind-scores" --out "$RUN/kn-$kind"
  lape keyneurons eval "$RUN/kn-$kind" --model builtin "${Q[@]}" --templates 3 --random-seeds 3 \
    --scores "$RUN/kn-$kind-scores" --out "$RUN/kn-$kind-eval"
done
lape keyneurons compare --neurons "$RUN/neurons13" --keyneurons "$RUN/kn-languages" --regions "$RUN/regions" \
  --model builtin --out "$RUN/method-comparison"
