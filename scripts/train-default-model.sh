#!/usr/bin/env bash
# The recipe of irt4's default model (issue 9): the `small` preset's VAE, then its latent diffusion model,
# and beside them the RadioUNet-style baseline regressor with the same compute budget (the same wall-clock
# window on the same device), all on one generated set (DATA).
#
#   scripts/train-default-model.sh RUN_DIR
#
# Environment (defaults in brackets): PY [python3], DEVICE [cuda], DATA [datasets/city-train; the shipped
# models were trained on datasets/synth-irt4-train, out of the tree since commit ec8669c],
# VAE_SECONDS [60], LDM_SECONDS [150], WORKERS [2], LDM_ARGS [] (extra irt4-train ldm options, e.g.
# --cuda-graphs: this preset's eager LDM step is launch-bound, ~135 samples/s on an H200; if the run with
# LDM_ARGS fails, an eager run follows), BASELINE_ARGS [] (extra options of the baseline run),
# T_POWER [3] (the LDM's diffusion.t_power: more training steps near t = 1, where the map must come from the
# condition alone; 1 is the reference's uniform t; irt4/assets/README.md, phase 4), TX_FIELD [log_distance]
# (both models' data.tx_field: the transmitter's log-distance field in the condition's third channel,
# where the reference repeats the buildings; `none` is the reference; irt4/assets/README.md, phase 5),
# CONDITION [] (both models' data.condition, a comma-separated list of irt4.data.channels names, e.g.
# "buildings, transmitter, log_distance, los, free_space, walls, building_metres"; replaces
# TX_FIELD when set), PRIOR [0] (1: the diffusion model builds on the baseline regressor, `irt4-train ldm
# --prior`: the VAE trains side by side with the baseline, and the LDM starts once the baseline is done,
# for LDM_SECONDS; each model still gets its own budget, the diffusion model reads the regressor's).
# The baseline trains for VAE_SECONDS + LDM_SECONDS, side by side with the two diffusion stages. At the
# end the EMA weights are written as fp16 bundles: RUN_DIR/default-small.safetensors and
# RUN_DIR/baseline-small.safetensors (with PRIOR=1 the first links the second as its prior instead of
# holding a copy: keep the two files together).
# Each stage is an ordinary `irt4-train` run: rerun a stage with --resume to continue it; RESUME=1
# EXTRA_SECONDS=N does that for the finished recipe (the LDM and the baseline each get N more seconds,
# so their budgets stay equal). INIT_FROM=DIR (e.g. irt4/assets) continues the shipped models instead
# of starting from scratch: no VAE stage, the LDM starts from DIR/default-small.safetensors and the
# baseline from DIR/baseline-small.safetensors (`irt4-train --init-from`), both for LDM_SECONDS.
# With INIT_FROM, RETRAIN_VAE=1 continues DIR's VAE on DATA for VAE_SECONDS first, and the LDM continues
# DIR's UNet on that VAE's latents (`irt4-train ldm --init-from ... --vae`); the baseline gets
# VAE_SECONDS + LDM_SECONDS as without INIT_FROM.
# On the 2-core CPU machine: DEVICE=cpu WORKERS=0 OMP_NUM_THREADS=1 (the two runs side by side, one core
# each; irt4/assets/README.md, phase 2).
set -u
RUN=${1:?usage: scripts/train-default-model.sh RUN_DIR}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
DATA=${DATA:-datasets/city-train}
VAE_SECONDS=${VAE_SECONDS:-60}
LDM_SECONDS=${LDM_SECONDS:-150}
WORKERS=${WORKERS:-2}
T_POWER=${T_POWER:-3}
TX_FIELD=${TX_FIELD:-log_distance}
CONDITION=${CONDITION:-}
PRIOR=${PRIOR:-0}
EXTRA_SECONDS=${EXTRA_SECONDS:-0}
RESUME=${RESUME:-0}
INIT_FROM=${INIT_FROM:-}
RETRAIN_VAE=${RETRAIN_VAE:-0}
if [ -n "$INIT_FROM" ]; then
    [ "$RETRAIN_VAE" = 1 ] || VAE_SECONDS=0 # the VAE comes with the model it continues
    # a continuation starts a fresh Adam: without a warm-up its first steps undo part of the previous
    # phase (in both LDM runs of phase 4 the C loss tripled over the first 25 steps)
    WARMUP=(--set trainer.warmup_steps=50)
    LDM_START=(--init-from "$INIT_FROM/default-small.safetensors" "${WARMUP[@]}")
    BASELINE_START=(--init-from "$INIT_FROM/baseline-small.safetensors" "${WARMUP[@]}")
    VAE_START=(--init-from "$INIT_FROM/default-small.safetensors" --set vae_trainer.warmup_steps=50)
    [ "$RETRAIN_VAE" = 1 ] && LDM_START+=(--vae "$RUN/vae/last.pt")
else
    LDM_START=(--vae "$RUN/vae/last.pt")
    BASELINE_START=()
    VAE_START=()
fi
STEPS=1000000 # the time budget ends each run; the step count only has to be out of reach
mkdir -p "$RUN"
if [ -n "$CONDITION" ]; then INPUTS=(--set "data.condition=[$CONDITION]"); else INPUTS=(--set data.tx_field="$TX_FIELD"); fi
COMMON=(--config small --data "$DATA" --device "$DEVICE" --workers "$WORKERS" --no-tensorboard
    --set data.augment=dihedral "${INPUTS[@]}" --steps "$STEPS")
if [ "$PRIOR" = 1 ]; then
    # with INIT_FROM the continued UNet gains the prior's channel at zero weight (irt4-train ldm --help)
    LDM_START+=(--prior "$RUN/baseline/last.pt")
fi

ldm() { # ldm OUT_NAME [extra options]: the diffusion UNet on the VAE's cached latents
    local name=$1
    shift
    [ "$RESUME" = 1 ] && local LDM_START=() # a resumed run has its weights
    "$PY" -m irt4.cli.train ldm "${COMMON[@]}" --out "$RUN/$name" "${LDM_START[@]}" --cache-latents \
        --time-budget "$((LDM_SECONDS + EXTRA_SECONDS))" --set trainer.batch_size=32 --set trainer.save_every=1000 \
        --set diffusion.t_power="$T_POWER" "$@"
}

diffusion() {
    if [ "$RESUME" = 1 ]; then # continue the LDM run the recipe finished with
        local name
        name=$(cat "$RUN/ldm-run") || return 1
        if [ "$name" = ldm ]; then ldm ldm --resume ${LDM_ARGS:-}; else ldm "$name" --resume; fi
        return
    fi
    if [ -z "$INIT_FROM" ] || [ "$RETRAIN_VAE" = 1 ]; then
        "$PY" -m irt4.cli.train vae "${COMMON[@]}" --out "$RUN/vae" --time-budget "$VAE_SECONDS" \
            --set vae_trainer.batch_size=16 --set vae_trainer.save_every=500 "${VAE_START[@]}" || return 1
    fi
    if [ "$PRIOR" = 1 ]; then # the LDM reads the finished regressor
        while [ ! -e "$RUN/baseline.done" ]; do sleep 5; done
        [ -e "$RUN/baseline/last.pt" ] || { echo "PRIOR=1: the baseline run left no checkpoint" >&2; return 1; }
    fi
    # with extra options (say --compile) a failure falls back to the plain eager run
    if [ -n "${LDM_ARGS:-}" ] && ldm ldm ${LDM_ARGS}; then
        echo ldm >"$RUN/ldm-run"
    elif ldm ldm-eager; then
        echo ldm-eager >"$RUN/ldm-run"
    else
        return 1
    fi
}

baseline() {
    "$PY" -m irt4.cli.train baseline "${COMMON[@]}" --out "$RUN/baseline" \
        --time-budget "$((VAE_SECONDS + LDM_SECONDS + EXTRA_SECONDS))" --set trainer.batch_size=32 \
        --set trainer.save_every=1000 $([ "$RESUME" = 1 ] && echo --resume || echo "${BASELINE_START[@]}") \
        ${BASELINE_ARGS:-}
}

rm -f "$RUN/baseline.done"
diffusion >"$RUN/diffusion.log" 2>&1 &
diffusion_pid=$!
{
    baseline
    status=$?
    touch "$RUN/baseline.done" # PRIOR=1: the LDM may start
    exit $status
} >"$RUN/baseline.log" 2>&1 &
baseline_pid=$!
wait "$diffusion_pid"
diffusion_rc=$?
wait "$baseline_pid"
baseline_rc=$?
echo "diffusion exit $diffusion_rc, baseline exit $baseline_rc"

# fp16 bundles of the EMA weights (the shipped files); fp32 stays in the checkpoints
"$PY" - "$RUN" <<'PYEOF' || diffusion_rc=1
import sys
from pathlib import Path

import torch

from irt4.baseline.bundle import load_baseline, save_baseline
from irt4.errors import InputError
from irt4.models.bundle import load_model, save_bundle

run = Path(sys.argv[1])
if (run / "baseline/last.pt").exists():
    model, _ = load_baseline(run / "baseline/last.pt")
    save_baseline(run / "baseline-small.safetensors", model, weights="ema", dtype=torch.float16)
    print("wrote", run / "baseline-small.safetensors")
ldm_run = run / (run / "ldm-run").read_text().strip() if (run / "ldm-run").exists() else None
if ldm_run is not None:
    model, _ = load_model(ldm_run / "last.pt")
    # PRIOR=1: where the prior is the finished baseline, the bundle links that file instead of a copy
    # (after RESUME=1 the baseline has trained on, and the bundle holds its own prior)
    bundle, link = run / "default-small.safetensors", run / "baseline-small.safetensors"
    linked = model.unet.prior is not None and link.exists()
    try:
        save_bundle(bundle, model, weights="ema", dtype=torch.float16, prior_file=link if linked else None)
    except InputError:  # the baseline is not the prior
        linked = False
        save_bundle(bundle, model, weights="ema", dtype=torch.float16)
    print("wrote", bundle, f"(its prior linked to {link.name})" if linked else "")
PYEOF
exit $((diffusion_rc || baseline_rc))
