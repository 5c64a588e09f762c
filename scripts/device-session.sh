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
# Sized for one device call (at most 600 s) inside the 15 minutes of device time a session gets,
# start-up included (~30 s): prepare and training side by side (<= 270 s), then measuring (<= 290 s);
# run it as the session's first device call, with timeout_s 600. The CUDA AOTInductor tests are left
# out of the GPU tests; the engine build (AOTInductor packages only) gets 240 s.
# What the session of 2026-11-26 taught: Inductor needed over 3 minutes for the small LDM's first
# step (so no --compile here), and the engine build, after a second ONNX export, ran out of time.
export GPU_TEST_MARKERS=${GPU_TEST_MARKERS:-"gpu and not slow"} GPU_TESTS_LIMIT=${GPU_TESTS_LIMIT:-150}
export ENGINE_LIMIT=${ENGINE_LIMIT:-240}
# torch.compile's rows ran past their cap on the H200 (recorded in bench/RESULTS.md): their time goes to
# the CUDA-graph and engine rows this time
export BENCH_EXTRA=${BENCH_EXTRA---no-compile}
# Training continues the shipped models (INIT_FROM=irt4/assets; INIT_FROM= starts from scratch with a
# VAE stage of VAE_SECONDS): the LDM and the baseline each get LDM_SECONDS more.
export INIT_FROM=${INIT_FROM-irt4/assets}
export VAE_SECONDS=${VAE_SECONDS:-40} LDM_SECONDS=${LDM_SECONDS:-200} WORKERS=${WORKERS:-4}
# the small preset's eager LDM step is launch-bound on a GPU (~135 samples/s on an H200): its UNet is
# captured in CUDA graphs (the recipe falls back to eager if that fails); LDM_ARGS= (empty) trains eager
export LDM_ARGS=${LDM_ARGS---cuda-graphs}
mkdir -p "$OUT" "$WORK/train" "$WORK/bench"
log() { echo "[device-session $(date +%T)] $*" | tee -a "$OUT/session.log"; }

log "start: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1)"
log "${PY:-python3} $("${PY:-python3}" -c 'import sys, torch; print(sys.version.split()[0], torch.__version__)')"

timeout "${TRAIN_TIMEOUT:-270}" bash scripts/train-default-model.sh "$WORK/train" >"$WORK/train/train.log" 2>&1 &
train_pid=$!
timeout "${PREPARE_TIMEOUT:-270}" bash bench/gpu.sh "$WORK/bench" --stage prepare >"$WORK/bench/prepare.log" 2>&1 &
prepare_pid=$!
wait "$prepare_pid"
log "prepare exit $?"
wait "$train_pid"
log "train exit $?"

timeout "${MEASURE_TIMEOUT:-290}" bash bench/gpu.sh "$WORK/bench" --stage measure >"$WORK/bench/measure.log" 2>&1
log "measure exit $?"

# Only what we keep: the bundles, the reports and logs, the bench JSON; no optimizer checkpoints.
# the tool returns files of at most 16 MiB: the archive is split (cat train.tgz.part-* | tar xz)
(cd "$WORK" && tar czf - --exclude='*.pt' --exclude='*.onnx' --exclude='*.pt2' train |
    split -b 15M - "$OUT/train.tgz.part-") && log "train archive: $(ls "$OUT" | grep -c part-) part(s)"
(cd "$WORK" && tar czf "$OUT/bench.tgz" --exclude='engine' --exclude='model' bench) && log "bench.tgz $(du -h "$OUT/bench.tgz" | cut -f1)"
log "done"
