#!/usr/bin/env bash
# One GPU run of irt4, in stages, each a single command that fits in under ten minutes:
#
#   scripts/gpu-run.sh OUT prepare   # ~450 s: train the default model and its baseline side by side
#                                    # with the benchmark preparation
#   scripts/gpu-run.sh OUT measure   # ~300 s, right after prepare on the same machine: the benchmarks
#                                    # alone on the GPU
#   scripts/gpu-run.sh OUT train     # ~570 s, all of it training the default model and its baseline
#   scripts/gpu-run.sh OUT v2        # ~540 s: default model v2 from scratch on datasets/city-train,
#                                    # with its ablation (scripts/train-v2.sh)
#
# prepare: side by side, train the default model and its baseline (scripts/train-default-model.sh)
#          and prepare the benchmarks (bench/gpu.sh --stage prepare: build the extension, GPU tests,
#          the bench model and the engine); pack the training results and the logs into OUT.
# train:   only the default model and its baseline, side by side, LDM_SECONDS [440] each (after the
#          latent cache and the CUDA-graph capture; TRAIN_TIMEOUT [570] caps the whole); pack as prepare
#          does. The LDM at 413 samples/s (H200, CUDA graphs) makes ~5,600 steps at batch 32.
# v2:      scripts/train-v2.sh (VAE, three regressors, two diffusion models, the ablation on city-val
#          and city-ood); packs its reports, the ablation and the bundles of the diffusion model with
#          the regressor prior and of that regressor (the others' numbers are in the ablation).
# measure: alone on the GPU, so that the timings are clean: bench/gpu.sh --stage measure; pack the
#          bench results into OUT/bench.tgz.
# Then: cat OUT/train.tgz.part-* | tar xz (bundles and reports), bench.tgz's *-cuda.json into
# bench/results/ and `python -m bench.run --regenerate`. WORK [/tmp/irt4-gpu] holds the work files on
# the GPU machine; prepare and measure share them when they run on the same machine.
#
# What the GPU runs of 2026-11-26 showed:
#   - Inductor needed over 3 minutes for the small LDM's first step: no --compile in training;
#   - the CUDA AOTInductor engine build of the irt4-radiodiff UNet was still compiling after 226 s
#     (sharing the machine with training and the GPU tests): it gets most of prepare here;
#   - the sampling section took 187 s of its 190 s cap at batches 32, 1 and 8 with no engine rows:
#     batch 8 is left out, for the engine rows.
set -u
OUT=${1:?usage: scripts/gpu-run.sh OUT prepare|measure|train|v2}
STAGE=${2:?usage: scripts/gpu-run.sh OUT prepare|measure|train|v2}
WORK=${WORK:-/tmp/irt4-gpu}
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=16
mkdir -p "$OUT" "$WORK/train" "$WORK/bench"
log() { echo "[gpu-run $STAGE $(date +%T)] $*" | tee -a "$OUT/run.log"; }

train_defaults() {
    # Training continues the shipped models (INIT_FROM=irt4/assets; INIT_FROM= starts from scratch with
    # a VAE stage of VAE_SECONDS): the LDM and the baseline each get LDM_SECONDS more, side by side.
    export INIT_FROM=${INIT_FROM-irt4/assets}
    export VAE_SECONDS=${VAE_SECONDS:-40} LDM_SECONDS=${LDM_SECONDS:-$1} WORKERS=${WORKERS:-4}
    # the small preset's eager LDM step is launch-bound on a GPU (~135 samples/s on an H200); in CUDA
    # graphs it did 413 (the recipe falls back to eager if the capture fails); LDM_ARGS= trains eager
    export LDM_ARGS=${LDM_ARGS---cuda-graphs}
    log "start: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1)"
    log "${PY:-python3} $("${PY:-python3}" -c 'import sys, torch; print(sys.version.split()[0], torch.__version__)')"
}

pack_training() {
    # Only what we keep: the bundles, the reports and logs; no optimizer checkpoints. The archive is
    # split into parts of 15 MB, small enough to copy back one by one (cat train.tgz.part-* | tar xz).
    (cd "$WORK" && tar czf - --exclude='*.pt' --exclude='*.onnx' --exclude='*.pt2' train |
        split -b 15M - "$OUT/train.tgz.part-") && log "train archive: $(ls "$OUT" | grep -c part-) part(s)"
}

train() {
    train_defaults 440
    timeout "${TRAIN_TIMEOUT:-570}" bash scripts/train-default-model.sh "$WORK/train" >"$WORK/train/train.log" 2>&1
    log "train exit $?"
    pack_training
}

v2() {
    log "start: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1)"
    rm -rf "$WORK/v2"
    timeout "${TRAIN_TIMEOUT:-560}" bash scripts/train-v2.sh "$WORK/v2"
    log "train-v2 exit $?"
    (cd "$WORK" && tar czf - --exclude='*.pt' --exclude='*.onnx' --exclude='*.pt2' --exclude='eval' \
        --exclude='ldm-plain.safetensors' --exclude='reg-reference.safetensors' \
        --exclude='reg-log-distance.safetensors' v2 | split -b 15M - "$OUT/v2.tgz.part-") &&
        log "v2 archive: $(ls "$OUT" | grep -c v2.tgz.part-) part(s)"
}

prepare() {
    # the CUDA AOTInductor tests are left out of the GPU tests (their builds are the engine's, again)
    export GPU_TEST_MARKERS=${GPU_TEST_MARKERS:-"gpu and not slow"} GPU_TESTS_LIMIT=${GPU_TESTS_LIMIT:-200}
    export ENGINE_LIMIT=${ENGINE_LIMIT:-400}
    train_defaults 340
    local limit=${PREPARE_TIMEOUT:-440}
    timeout "$limit" bash scripts/train-default-model.sh "$WORK/train" >"$WORK/train/train.log" 2>&1 &
    local train_pid=$!
    timeout "$limit" bash bench/gpu.sh "$WORK/bench" --stage prepare >"$WORK/bench/prepare.log" 2>&1 &
    local prepare_pid=$!
    wait "$prepare_pid"
    log "bench prepare exit $? ($(ls "$WORK/bench/engine" 2>/dev/null | tr '\n' ' '))"
    wait "$train_pid"
    log "train exit $?"
    pack_training
    cp "$WORK/bench/gpu.log" "$OUT/prepare-gpu.log" 2>/dev/null
}

measure() {
    # torch.compile's rows ran past their cap on the H200 (bench/RESULTS.md): their time goes to the
    # CUDA-graph and engine rows
    export BENCH_EXTRA=${BENCH_EXTRA---no-compile --batches 32,1}
    timeout "${MEASURE_TIMEOUT:-300}" bash bench/gpu.sh "$WORK/bench" --stage measure >"$WORK/bench/measure.log" 2>&1
    log "measure exit $?"
    (cd "$WORK" && tar czf "$OUT/bench.tgz" --exclude='engine' --exclude='model' bench) &&
        log "bench.tgz $(du -h "$OUT/bench.tgz" | cut -f1)"
}

case $STAGE in
    prepare) prepare ;;
    measure) measure ;;
    train) train ;;
    v2) v2 ;;
    *) echo "usage: scripts/gpu-run.sh OUT prepare|measure|train|v2" >&2; exit 2 ;;
esac
log "done"
