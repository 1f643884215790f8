#!/usr/bin/env bash
# The linguistic-regions experiments behind the README (Zhang et al.): importance on the paper's six
# languages, the regions, dimension dependence, removal and the single-parameter perturbation
# evaluated on the 13 languages of interest, frozen further pre-training on Arabic, and the bridge
# to the LAPE sets of RUN/neurons13 (written by run_full.sh, which calls this script). Every step
# is cached. About 40 minutes on 2 CPU cores, plus about an hour for the training (3 seeds x 4 settings).
# Usage: bash scripts/run_regions.sh [RUN_FOLDER]
set -euo pipefail
RUN=${1:-runs/full}
LANGS13="en zh fr es de ru ja ar ko vi it pt tr"
REGION_LANGS="ar es ru zh ko vi"
lape regions importance --model builtin --languages $REGION_LANGS --tokens-per-language 4096 --seq-len 512 \
  --batch-size 4 --out "$RUN/importance"
lape regions select "$RUN/importance" --out "$RUN/regions"
# split-half stability: the regions again from two disjoint halves of each language's text (2 x 2048 tokens)
lape regions stability --model builtin --languages $REGION_LANGS --tokens-per-language 2048 --seq-len 512 \
  --batch-size 4 --out "$RUN/region-stability"
lape regions dims "$RUN/regions" --model builtin --languages $LANGS13 --tokens-per-language 512 --out "$RUN/region-dims"
lape regions ablate "$RUN/regions" --model builtin --keep-massive --languages $LANGS13 --tokens-per-language 512 \
  --out "$RUN/region-ppl"
lape regions perturb --model builtin --importance "$RUN/importance" --languages $LANGS13 --tokens-per-language 512 \
  --out "$RUN/region-perturb"
# frozen further pre-training: 3 seeds x 4 settings, small steps at a low lr so that Arabic's own held-out NLL
# falls (lr 2e-4 only damaged the model); about an hour on 2 CPU cores (see lape/regions/train.py)
lape regions train --model builtin --regions "$RUN/regions" --train-language ar --freeze none core random magnitude \
  --seeds 0 1 2 --steps 12 --batch-size 2 --seq-len 128 --lr 1e-5 --warmup-steps 2 --languages en ar es ru zh \
  --eval-tokens-per-language 1024 --out "$RUN/region-train"
lape regions bridge "$RUN/regions" --neurons "$RUN/neurons13" --out "$RUN/region-bridge"
