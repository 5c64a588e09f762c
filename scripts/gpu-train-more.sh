#!/usr/bin/env bash
# More training on the GPU machine that ran `scripts/gpu-run.sh OUT prepare`, while its checkpoints
# are still in WORK: the default model and its baseline get EXTRA_SECONDS more each (equal budgets);
# the bundles are rewritten and packed as prepare packs them. (On 2026-11-26 a resumed LDM run cached
# its latents with a random VAE; fixed since in irt4-train, tests/test_train.py.)
#
#   EXTRA_SECONDS=120 scripts/gpu-train-more.sh OUT [WORK]
set -u
OUT=${1:?usage: scripts/gpu-train-more.sh OUT [WORK]}
WORK=${2:-/tmp/irt4-gpu}
export PYTHONUNBUFFERED=1 RESUME=1 EXTRA_SECONDS=${EXTRA_SECONDS:-120}
# the same settings as `scripts/gpu-run.sh OUT prepare`: the budgets add up as they did there
export INIT_FROM=${INIT_FROM-irt4/assets}
export VAE_SECONDS=${VAE_SECONDS:-40} LDM_SECONDS=${LDM_SECONDS:-340} WORKERS=${WORKERS:-4}
export LDM_ARGS=${LDM_ARGS---cuda-graphs}
mkdir -p "$OUT"
log() { echo "[gpu-train-more $(date +%T)] $*" | tee -a "$OUT/run.log"; }
if [ ! -f "$WORK/train/ldm-run" ]; then
    log "no finished recipe in $WORK/train (this machine did not run gpu-run.sh prepare)"
    exit 1
fi
timeout "${TRAIN_TIMEOUT:-$((EXTRA_SECONDS + 90))}" bash scripts/train-default-model.sh "$WORK/train" \
    >"$WORK/train/continue.log" 2>&1
log "train exit $?"
(cd "$WORK" && tar czf - --exclude='*.pt' --exclude='*.onnx' --exclude='*.pt2' train |
    split -b 15M - "$OUT/train.tgz.part-") && log "train archive: $(ls "$OUT" | grep -c part-) part(s)"
log "done"
