#!/usr/bin/env bash
# Everything one lent GPU session does, in one command (the device time is scarce: ~10 minutes):
#   1. side by side: train the default model and its baseline (scripts/train-default-model.sh) and
#      prepare the benchmarks (bench/gpu.sh --stage prepare: build the extension, GPU tests, engine);
#   2. alone on the GPU, so the timings are clean: bench/gpu.sh --stage measure;
#   3. pack the results into at most a few files under OUT (the device tool returns 8 files at most).
#
#   scripts/device-session.sh OUT [WORK]
set -u
OUT=${1:?usage: scripts/device-session.sh OUT [WORK]}
WORK=${2:-/tmp/irt4-device}
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=16
mkdir -p "$OUT" "$WORK/train" "$WORK/bench"
log() { echo "[device-session $(date +%T)] $*" | tee -a "$OUT/session.log"; }

log "start: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1)"
log "python3 $(python3 -c 'import sys, torch; print(sys.version.split()[0], torch.__version__)')"

timeout "${TRAIN_TIMEOUT:-300}" bash scripts/train-default-model.sh "$WORK/train" >"$WORK/train/train.log" 2>&1 &
train_pid=$!
timeout "${PREPARE_TIMEOUT:-300}" bash bench/gpu.sh "$WORK/bench" --stage prepare >"$WORK/bench/prepare.log" 2>&1 &
prepare_pid=$!
wait "$prepare_pid"
log "prepare exit $?"
wait "$train_pid"
log "train exit $?"

timeout "${MEASURE_TIMEOUT:-300}" bash bench/gpu.sh "$WORK/bench" --stage measure >"$WORK/bench/measure.log" 2>&1
log "measure exit $?"

# Only what we keep: the bundles, the reports and logs, the bench JSON; no optimizer checkpoints.
(cd "$WORK" && tar czf "$OUT/train.tgz" --exclude='*.pt' --exclude='*.onnx' --exclude='*.pt2' train) &&
    log "train.tgz $(du -h "$OUT/train.tgz" | cut -f1)"
(cd "$WORK" && tar czf "$OUT/bench.tgz" --exclude='engine' bench) && log "bench.tgz $(du -h "$OUT/bench.tgz" | cut -f1)"
log "done"
