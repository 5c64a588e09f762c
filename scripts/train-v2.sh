#!/usr/bin/env bash
# Default model v2 and its ablation, from scratch on the mixed-style training root, in two phases:
#
#   phase 1, side by side: the VAE (VAE_SECONDS) and three regressors of REG_SECONDS each, which differ
#            only in their condition channels: all physics channels (CHANNELS; the one the diffusion
#            model builds on), the reference's [buildings, transmitter, buildings], and
#            [buildings, transmitter, log_distance];
#   phase 2, side by side: three diffusion models of LDM_SECONDS each on the VAE's cached latents, all
#            on CHANNELS: one conditioned on the frozen all-channels regressor (`--prior`), one that
#            also diffuses only the residual over it (`diffusion.residual`, CorrDiff's design in latent
#            space), one without a regressor;
#   then:    fp16 EMA bundles of all six, and `python -m bench.ablation` on the validation roots
#            (EVAL_PAIRS pairs of each; diffusion at 3 and 50 steps) into RUN/ablation.
#
#   scripts/train-v2.sh RUN_DIR
#
# Environment (defaults in brackets): PY [python3], DEVICE [cuda], DATA [datasets/city-train],
# EVAL_ROOTS [datasets/city-val datasets/city-ood], WORKERS [3] (DataLoader workers per run),
# VAE_SECONDS [90], REG_SECONDS [240], LDM_SECONDS [180], EVAL_PAIRS [32],
# CHANNELS [buildings, transmitter, log_distance, los, free_space, walls, building_metres],
# LDM_ARGS [--cuda-graphs on cuda] (extra options of both diffusion runs; if a run fails with them, it
# runs again without), RESUME [0] (1: every run continues its checkpoint with --resume; raise the
# *_SECONDS to give each the same extra time, budgets count from each run's start).
# Budgets are wall-clock windows: runs of one phase share the device equally, so the regressors are
# compared with each other and the two diffusion models with each other at equal budgets; the steps
# each made are in its report (RUN/*/report.md). On one H200 the whole takes about 9 minutes.
# On a CPU (a dry run): DEVICE=cpu WORKERS=0 OMP_NUM_THREADS=1 and budgets of a few seconds.
set -u
RUN=${1:?usage: scripts/train-v2.sh RUN_DIR}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
DATA=${DATA:-datasets/city-train}
EVAL_ROOTS=${EVAL_ROOTS:-datasets/city-val datasets/city-ood}
WORKERS=${WORKERS:-3}
VAE_SECONDS=${VAE_SECONDS:-90}
REG_SECONDS=${REG_SECONDS:-240}
LDM_SECONDS=${LDM_SECONDS:-180}
EVAL_PAIRS=${EVAL_PAIRS:-32}
CHANNELS=${CHANNELS:-buildings, transmitter, log_distance, los, free_space, walls, building_metres}
RESUME=${RESUME:-0}
if [ "$DEVICE" = cuda ]; then LDM_ARGS=${LDM_ARGS---cuda-graphs}; else LDM_ARGS=${LDM_ARGS:-}; fi
mkdir -p "$RUN"
log() { echo "[train-v2 $(date +%T)] $*" | tee -a "$RUN/train-v2.log"; }
COMMON=(--config small --data "$DATA" --device "$DEVICE" --workers "$WORKERS" --no-tensorboard
    --set data.augment=dihedral --steps 1000000) # the time budget ends each run
[ "$RESUME" = 1 ] && COMMON+=(--resume)

train() { # train STAGE NAME SECONDS [options]: one irt4-train run into RUN/NAME, its log beside it
    local stage=$1 name=$2 seconds=$3
    shift 3
    "$PY" -m irt4.cli.train "$stage" "${COMMON[@]}" --out "$RUN/$name" --time-budget "$seconds" "$@" \
        >"$RUN/$name.log" 2>&1
    local rc=$?
    log "$name exit $rc"
    return $rc
}

regressor() { # regressor NAME "CHANNEL, ...": a baseline regressor on these condition channels
    train baseline "$1" "$REG_SECONDS" --set "data.condition=[$2]" --set trainer.batch_size=32 \
        --set trainer.save_every=1000
}

ldm() { # ldm NAME [options]: a diffusion model on CHANNELS, the phase-1 VAE's cached latents
    local name=$1
    shift
    [ "$RESUME" = 1 ] && set -- # a resumed run holds its VAE and its prior
    local start=(--vae "$RUN/vae/last.pt")
    [ "$RESUME" = 1 ] && start=()
    local options=("${start[@]}" --cache-latents --set "data.condition=[$CHANNELS]"
        --set trainer.batch_size=32 --set trainer.save_every=1000 --set diffusion.t_power=3 "$@")
    if [ -n "$LDM_ARGS" ] && train ldm "$name" "$LDM_SECONDS" "${options[@]}" $LDM_ARGS; then
        return 0
    fi
    [ -n "$LDM_ARGS" ] && log "$name: again without $LDM_ARGS" && rm -rf "${RUN:?}/$name"
    train ldm "$name" "$LDM_SECONDS" "${options[@]}"
}

log "phase 1: VAE ${VAE_SECONDS} s, three regressors ${REG_SECONDS} s each, on $DATA ($DEVICE)"
train vae vae "$VAE_SECONDS" --set "data.condition=[$CHANNELS]" --set vae_trainer.batch_size=16 \
    --set vae_trainer.save_every=500 &
vae_pid=$!
regressor reg-all "$CHANNELS" &
prior_pid=$!
regressor reg-reference "buildings, transmitter, buildings" &
regressor reg-log-distance "buildings, transmitter, log_distance" &
wait
[ -e "$RUN/vae/last.pt" ] && [ -e "$RUN/reg-all/last.pt" ] || {
    log "phase 1 left no VAE or no all-channels regressor checkpoint: stop"
    exit 1
}

log "phase 2: three diffusion models ${LDM_SECONDS} s each: regressor prior, prior + residual, neither"
ldm ldm-prior --prior "$RUN/reg-all/last.pt" &
ldm ldm-residual --prior "$RUN/reg-all/last.pt" --set diffusion.residual=true &
ldm ldm-plain &
wait

log "bundles"
"$PY" - "$RUN" <<'PYEOF' || exit 1
import sys
from pathlib import Path

import torch

from irt4.baseline.bundle import load_baseline, save_baseline
from irt4.models.bundle import load_model, save_bundle

run = Path(sys.argv[1])
for name in ("ldm-prior", "ldm-residual", "ldm-plain"):
    if (run / name / "last.pt").exists():
        model, _ = load_model(run / name / "last.pt")
        save_bundle(run / f"{name}.safetensors", model, weights="ema", dtype=torch.float16)
for name in ("reg-all", "reg-reference", "reg-log-distance"):
    if (run / name / "last.pt").exists():
        model, _ = load_baseline(run / name / "last.pt")
        save_baseline(run / f"{name}.safetensors", model, weights="ema", dtype=torch.float16)
PYEOF

MODELS=()
for name in ldm-prior ldm-residual ldm-plain reg-all reg-reference reg-log-distance; do
    [ -e "$RUN/$name.safetensors" ] && MODELS+=(--model "$name=$RUN/$name.safetensors")
done
ROOTS=()
for root in $EVAL_ROOTS; do ROOTS+=(--root "$root"); done
log "ablation on $EVAL_ROOTS"
"$PY" -m bench.ablation "${MODELS[@]}" "${ROOTS[@]}" --pairs "$EVAL_PAIRS" --device "$DEVICE" \
    --work "$RUN/eval" --out "$RUN/ablation" >"$RUN/ablation.log" 2>&1
log "ablation exit $? ($RUN/ablation)"
