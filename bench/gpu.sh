#!/usr/bin/env bash
# Everything of irt4 that needs a GPU, in one go, on a machine with python3, torch (CUDA), Triton,
# onnx, onnxruntime, pytest, scikit-build-core, pybind11, cmake and ninja, and no internet:
#
#   bench/gpu.sh OUTDIR [--stage prepare|measure|all]
#
# prepare: build and install irt4 in place (the C++/CUDA extension), check that irt4._C imports and was
#          built with CUDA, run the GPU tests (pytest -m gpu), write the bench model (random weights,
#          seed 0) as a bundle with its ONNX graphs, and build an irt4 engine from it where
#          irt4-build-engine exists;
# measure: python -m bench.run on the GPU with the irt4-radiodiff preset, every section capped so that
#          the stage ends in about 5 minutes; its JSON and a RESULTS.md preview land in OUTDIR.
#
# Everything is logged to OUTDIR/gpu.log; a failing step is logged and the script goes on. Copy
# OUTDIR/*-cuda.json into bench/results/ and run `python -m bench.run --regenerate` for RESULTS.md.
# Limits (s) of the slow prepare steps: GPU_TESTS_LIMIT [240], ENGINE_LIMIT [420]; GPU_TEST_MARKERS
# [gpu] selects the GPU tests (e.g. "gpu and not slow" leaves out the CUDA AOTInductor builds).
# BENCH_EXTRA: more bench.run options for the measure stage (e.g. --no-compile).
# IRT4_BENCH_DRY=1: the same steps on the CPU with the tiny preset and small caps (no install, no GPU
# tests, no engine build), to check the Python side of the GPU run anywhere.
set -u

usage() { echo "usage: bench/gpu.sh OUTDIR [--stage prepare|measure|all]" >&2; exit 2; }
[ $# -ge 1 ] || usage
OUT=$1
shift
STAGE=all
while [ $# -gt 0 ]; do
    case $1 in
        --stage) [ $# -ge 2 ] || usage; STAGE=$2; shift 2 ;;
        --stage=*) STAGE=${1#--stage=}; shift ;;
        *) usage ;;
    esac
done
case $STAGE in prepare|measure|all) ;; *) usage ;; esac

ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG=$OUT/gpu.log
cd "$ROOT"
DRY=${IRT4_BENCH_DRY:-0}
if [ "$DRY" = 1 ] && [ -x "$ROOT/.venv/bin/python" ]; then PY=${PYTHON:-$ROOT/.venv/bin/python}; else PY=${PYTHON:-python3}; fi

log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$LOG"; }

# step NAME LIMIT_S COMMAND...: runs COMMAND under a time limit, logs its output and exit status, never fails
step() {
    local name=$1 limit=$2
    shift 2
    log "== $name: limit ${limit} s: $*"
    local start=$SECONDS
    timeout --kill-after=20 "$limit" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    local note=""
    [ "$rc" = 124 ] && note=" (time limit)"
    log "== $name: exit $rc$note after $((SECONDS - start)) s"
    return 0
}

if [ "$DRY" = 1 ]; then
    DEVICE=cpu
    PRESET=tiny
    BENCH_ARGS=(--all-paths --steps 2 --batches 1,2 --train-batch 2 --repeats 1 --warmup 0 --row-seconds 1
        --compile-batches 2 --compile-timeout 20 --cpu-batches 1
        --section-timeout peak=20,flops=20,sampling=150,training=60,kernels=15)
    MEASURE_LIMIT=400
else
    DEVICE=cuda
    PRESET=irt4-radiodiff
    # Caps (s) sized for one H100/H200 so that the stage ends in about 5 minutes. Estimates, from the
    # FLOPs (reference call ~230 GFLOP per map incl. the Swin, hoisted step ~150, decode ~1,080; 51 calls):
    # fp32 eager (TF32 off, ~25-30 TFLOP/s): reference 1 / 8 / 32 maps ~0.8 / 4 / 13 s per batch, the
    # hoisted fp32 path ~0.6 / 3 / 10 s; bf16 paths ~0.3-1 / 0.4 / 1.2 s; ONNX Runtime on 16 CPU cores
    # ~10 s per map (batch 1 only); compile (batch 32 only) 60+ s. Each row times what fits in
    # --row-seconds after its first call, a slow eager row its first call only: sampling ~40 s at batch
    # 1, ~35 s at 8, ~45 s at 32 plus the compile cap; training ~30 s plus its compile row.
    # bench/run.py prints the estimate (from the measured peak) and the actual time of every row.
    # Batch 32 first: it carries the headline numbers, and a section cut by its cap loses its last rows.
    # (The first H200 run, 2026-11-26: peak 1 s, flops 4 s, sampling 178 s with the Triton and engine
    # rows failing fast; training and kernels ran to their caps.)
    BENCH_ARGS=(--batches 32,1,8 --repeats 5 --warmup 1 --row-seconds 4
        --compile-batches 32 --compile-timeout 60 --cpu-batches 1
        --section-timeout peak=15,flops=15,sampling=190,training=50,kernels=20)
    MEASURE_LIMIT=380
fi

log "# bench/gpu.sh stage $STAGE into $OUT (dry run: $DRY; python: $PY; device $DEVICE; preset $PRESET)"
log "# git $(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"

prepare() {
    log "# prepare: estimates: install ~35 s; then side by side: GPU tests <= 4 min, bench model + ONNX export ~80 s, engine (AOTInductor, CUDA) <= 7 min"
    if [ "$DRY" = 1 ]; then
        log "dry run: install, GPU tests and engine build skipped"
    else
        step nvidia-smi 30 nvidia-smi
        step install 600 env CMAKE_BUILD_PARALLEL_LEVEL=16 PIP_BREAK_SYSTEM_PACKAGES=1 \
            "$PY" -m pip install --no-build-isolation --no-deps --no-index -e .
        step check-extension 60 "$PY" -c \
            "import torch, irt4._C as c; print('irt4._C', c.__file__, 'with_cuda', c.with_cuda(), 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
    fi
    # the bench model's bundle comes first, its ONNX export (minutes at irt4-radiodiff) goes on while
    # the engine is built from the bundle and the GPU tests run: three independent steps side by side
    rm -f "$OUT/model/bundle.done"
    step bench-model 300 "$PY" -m bench.run --device cpu --preset "$PRESET" --prepare "$OUT/model" &
    local model_pid=$! waited=0
    [ "$DRY" = 1 ] || gpu_tests &
    local tests_pid=$!
    while [ ! -f "$OUT/model/bundle.done" ] && kill -0 "$model_pid" 2>/dev/null && [ $waited -lt 120 ]; do
        sleep 1
        waited=$((waited + 1))
    done
    if [ "$DRY" = 1 ]; then
        :
    elif [ ! -f "$OUT/model/bundle.done" ]; then
        log "the bench model's bundle was not written: no engine"
    elif command -v irt4-build-engine >/dev/null 2>&1; then
        # the options that this irt4-build-engine has, of those the bench wants; only the AOTInductor
        # packages (the GPU's engine rows), not the ONNX Runtime files (CPU rows) nor a second export
        local help options=(--checkpoint "$OUT/model/bench-model.safetensors" --out "$OUT/engine")
        help=$(irt4-build-engine --help 2>&1)
        for option in "--device cuda" "--precision bf16" "--min-batch 1" "--opt-batch 8" "--max-batch 32" \
            "--backends aoti" "--compile-workers $(nproc)"; do
            grep -q -- "${option% *}" <<<"$help" && options+=($option)
        done
        step build-engine "${ENGINE_LIMIT:-420}" irt4-build-engine "${options[@]}"
    else
        log "irt4-build-engine is not installed: the engine rows will say so"
    fi
    wait "$model_pid"
    [ "$DRY" = 1 ] || wait "$tests_pid"
}

gpu_tests() {
    # tests/conftest.py defaults TRITON_INTERPRET to 1 (for CPU runs); here the kernels run compiled.
    # No -x: on a GPU run every failure is worth seeing
    step gpu-tests "${GPU_TESTS_LIMIT:-240}" env TRITON_INTERPRET=0 "$PY" -m pytest -m "${GPU_TEST_MARKERS:-gpu}" \
        -q -p no:cacheprovider -rfE tests
}

measure() {
    log "# measure: estimate <= $MEASURE_LIMIT s (the sum of the section caps plus start-up)"
    step bench "$MEASURE_LIMIT" "$PY" -m bench.run --device "$DEVICE" --preset "$PRESET" --out "$OUT" \
        --onnx-dir "$OUT/model/onnx" --engine-dir "$OUT/engine" "${BENCH_ARGS[@]}" ${BENCH_EXTRA:-}
    step results-preview 60 "$PY" -c \
        "import sys; from pathlib import Path; from bench.report import regenerate_results_md as r; o = Path(sys.argv[1]); r(o, o / 'RESULTS.md')" \
        "$OUT"
}

case $STAGE in
    prepare) prepare ;;
    measure) measure ;;
    all) prepare; measure ;;
esac
log "# done: $(ls "$OUT" | tr '\n' ' ')"
