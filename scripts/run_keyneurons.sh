#!/usr/bin/env bash
# The key-neuron experiments behind the README's key-neuron section (issue #17), on the built-in
# model (scripts/run_full.sh calls this after the LAPE and regions runs):
#   1. domains: every MMLU dev+validation question of the paper's six domains (27 to 112 per domain;
#      half to select, half held out); integrated gradients on the selection half (the paper's m=16,
#      one template per question to fit 2 CPU cores; the mean-activation baseline, chosen because
#      Gemma 3 normalises its MLP output), NA-ICA key neurons, then boost/suppress on the held-out
#      half against random sets (3 draws), activation-matched random sets, the Activation baseline
#      and plain NA, each with its 95% interval;
#   2. languages: 50 cloze questions per language (25 + 25) from each language's held-out text, the
#      paper's six languages (data_manifests/keyneurons-languages50.yaml);
#   3. the three methods on one neuron space: LAPE's 13-language sets, the language clusters' key
#      neurons and the monolingual regions' neuron view, overlap and perplexity effect.
# Every step is cached, so re-running continues where it stopped. About 80 minutes on 2 CPU cores.
# Usage: bash scripts/run_keyneurons.sh [RUN_FOLDER] [TEMPLATES]
set -euo pipefail
RUN=${1:-runs/full}
T=${2:-1}
for kind in languages domains; do
  if [ "$kind" = domains ]; then Q=(--questions builtin:domains); else Q=(--questions data_manifests/keyneurons-languages50.yaml); fi
  lape keyneurons attribute --model builtin "${Q[@]}" --steps 16 --templates "$T" --out "$RUN/kn-$kind-scores"
  lape keyneurons select "$RUN/kn-$kind-scores" --out "$RUN/kn-$kind"
  lape keyneurons eval "$RUN/kn-$kind" --model builtin "${Q[@]}" --templates "$T" --random-seeds 3 \
    --scores "$RUN/kn-$kind-scores" --out "$RUN/kn-$kind-eval"
done
lape keyneurons compare --neurons "$RUN/neurons13" --keyneurons "$RUN/kn-languages" --regions "$RUN/regions" \
  --model builtin --out "$RUN/method-comparison"
