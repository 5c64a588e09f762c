#!/usr/bin/env bash
# The mixed-style data sets (datasets/README.md): an in-distribution validation root, an
# out-of-distribution one (the industrial style, which no training map has) and the training root.
# Resumable: rerun the same command and it continues after the last finished map. Each root is a
# seed of its own, so the three share no map. Each root is then packed (`irt4-data pack`: the gain
# PNG and raw .npy of each sample become one .npz, a quarter of their size, the PNG's pixels exact), so
# the three fit in the repository; `irt4-data unpack ROOT` gives the plain layout back.
#   scripts/make-city-datasets.sh [VAL_MAPS] [TRAIN_MAPS]     (defaults 50 and 600)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VAL_MAPS=${1:-50}
TRAIN_MAPS=${2:-600}
SYNTH=(.venv/bin/irt4-data synth --no-progress)
PACK=(.venv/bin/irt4-data pack --no-progress)
"${SYNTH[@]}" --out datasets/city-val --style mixed --seed 202 --maps "$VAL_MAPS"
"${PACK[@]}" datasets/city-val
"${SYNTH[@]}" --out datasets/city-ood --style industrial --seed 303 --maps "$VAL_MAPS"
"${PACK[@]}" datasets/city-ood
"${SYNTH[@]}" --out datasets/city-train --style mixed --seed 101 --maps "$TRAIN_MAPS"
"${PACK[@]}" datasets/city-train
