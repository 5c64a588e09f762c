"""The training loop shared by both stages (issue 4; spec: "Training reference").

A stage (irt4.train.stages) says what is trained and how its loss is computed; this module does the
rest: AdamW (fused on CUDA) under the LR schedule, gradient accumulation, mixed precision (bf16
autocast, or fp16 with a grad scaler), EMA, DistributedDataParallel under torchrun (only rank 0
writes), torch.compile or CUDA graphs of the network (irt4.train.graphed), checkpoints every
`save_every` steps and on SIGINT/SIGTERM, the non-finite loss policy, a training-time budget,
metrics, sample grids, run.json and the final report.

Steps are counted from 1: "step s" is the s-th optimizer step, and a checkpoint named s holds the
state after it. The host syncs once per step (the loss, to act on a non-finite one, and the stop flags).

Training time (`train_time_s`) is the wall time spent in steps, summed over resumed sessions: it
leaves out startup (model build, latent caching, the loader's start), checkpoint writes and sample
grids. With `time_budget_s`, the run stops after the step that brings it to the budget, saves a
checkpoint and a sample grid, and ends with status "completed" and stop_reason "time_budget". The
budget is the same for every stage, which is how runs are compared "with the same compute budget".
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import random
import signal
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, default_collate
from tqdm import tqdm

from irt4 import __version__
from irt4.config import Config, TrainerConfig, config_to_dict, save_config
from irt4.errors import InputError
from irt4.train.checkpoint import list_checkpoints, save_checkpoint
from irt4.train.data import data_state, make_loader
from irt4.train.ema import EMA
from irt4.train.graphed import GraphedModule
from irt4.train.schedule import build_scheduler

log = logging.getLogger(__name__)

EXIT_STOPPED_NAN = 3
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Stage(Protocol):
    """What one training stage provides to the loop (irt4.train.stages: VAEStage, LDMStage)."""

    name: str  # "vae" or "ldm"
    trainer_cfg: TrainerConfig
    module: nn.Module  # the trained network; the loop wraps it (DDP, compile) and averages it (EMA)
    train_set: Dataset
    sample_set: Dataset  # the sample grids take their first maps from it

    def to(self, device: torch.device, memory_format: torch.memory_format) -> None: ...

    def first_batch(self, batch: dict, generator: torch.Generator) -> dict[str, float]: ...

    def loss(
        self, module: nn.Module, batch: dict, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...

    def predict(
        self, ema_module: nn.Module, batch: dict, steps: int, generator: torch.Generator
    ) -> torch.Tensor:
        """Radio maps (B, 1, H, W) in [0, 1] for the sample grid, from the EMA weights."""
        ...

    def model_state(self) -> dict[str, torch.Tensor]: ...

    def load_model_state(self, state: dict[str, torch.Tensor]) -> None: ...

    def scale_factor(self) -> float | None: ...


@dataclass
class Distributed:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str | None) -> Distributed:
    """Join the torchrun process group if there is one (NCCL on GPUs, gloo on CPUs)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    target = torch.device(device)
    if world_size > 1:
        if target.type == "cuda":
            target = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(target)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if target.type == "cuda" else "gloo")
        return Distributed(dist.get_rank(), world_size, target)
    return Distributed(0, 1, target)


def resolve_precision(requested: str | None, device: torch.device) -> str:
    """None = the fastest default that keeps the fp32 loss curve: bf16 autocast on GPUs with bf16,
    fp32 on CPUs (contracts.md: "Precision")."""
    if requested is not None:
        return requested
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class RunOptions:
    run_dir: Path
    precision: str  # resolved: fp32, bf16 or fp16
    compile: bool = False
    compile_regions: bool = False  # torch.compile each repeated block (irt4.models.regional), not the net
    cuda_graphs: bool = False  # the trained network's forward and backward replayed from CUDA graphs
    tensorboard: bool = True
    sample_steps: int = 5
    time_budget_s: float | None = None  # stop after this much training time (all sessions together)
    init_from: str | None = None  # the trained model this run started from (irt4-train --init-from)
    inject_nan_at: int | None = None  # testing aid: make the loss of this step NaN


def check_run_options(options: RunOptions, env: Distributed, tcfg: TrainerConfig) -> None:
    """InputError for a combination of options that the loop does not run."""
    if options.compile_regions and options.compile:
        raise InputError("--compile and --compile-regions do not combine: pass one of them")
    if options.compile_regions and options.cuda_graphs:
        raise InputError("--cuda-graphs and --compile-regions do not combine: pass one of them")
    if not options.cuda_graphs:
        return
    if env.device.type != "cuda":
        raise InputError(f"--cuda-graphs needs a CUDA device, this run is on {env.device}")
    if options.compile:
        raise InputError("--cuda-graphs and --compile do not combine: pass one of them")
    if env.active:
        raise InputError(
            f"--cuda-graphs does not work with DistributedDataParallel ({env.world_size} processes): "
            "run one process, or leave --cuda-graphs out"
        )
    if tcfg.gradient_accumulate_every > 1:
        # a replayed backward's gradients are views of the graph's memory (irt4.train.graphed)
        raise InputError(
            f"--cuda-graphs needs gradient_accumulate_every=1, this recipe accumulates "
            f"{tcfg.gradient_accumulate_every} micro-batches: raise batch_size instead"
        )


# ---- RNG state, as tensors and plain values so that checkpoints load with weights_only -------------


def rng_state(noise: torch.Generator) -> dict[str, Any]:
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, python_state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": [version, list(python_state), gauss_next],
        "noise": noise.get_state(),
    }


def set_rng_state(state: dict[str, Any], noise: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    version, python_state, gauss_next = state["python"]
    random.setstate((version, tuple(python_state), gauss_next))
    noise.set_state(state["noise"])


# ---- run.json --------------------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def hardware() -> dict[str, Any]:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {
        "cpu": f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)",
        "gpu": gpu,
        "torch": torch.__version__,
        "irt4": __version__,
    }


class _StopRequest:
    """SIGINT/SIGTERM set a flag that the loop reads at the end of each step; a second signal
    falls through to the default behaviour."""

    def __init__(self):
        self.signal: int | None = None
        self._previous = {}

    def install(self) -> None:
        for sig in EXIT_SIGNAL:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:
            self.restore()
            signal.raise_signal(signum)
            return
        self.signal = signum
        log.warning("received %s: saving a checkpoint after this step", signal.Signals(signum).name)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


# ---- the loop --------------------------------------------------------------------------------------


class Trainer:
    def __init__(
        self,
        stage: Stage,
        cfg: Config,
        options: RunOptions,
        env: Distributed,
        resume: tuple[Path, dict[str, Any]] | None = None,
    ):
        self.stage, self.cfg, self.options, self.env = stage, cfg, options, env
        self.tcfg = tcfg = stage.trainer_cfg
        check_run_options(options, env, tcfg)
        self.run_dir = options.run_dir
        device = env.device
        self.channels_last = device.type == "cuda"
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        stage.to(device, self.memory_format)
        module = stage.module
        params = [p for p in module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            params,
            lr=tcfg.lr,
            weight_decay=tcfg.weight_decay,
            fused=True if device.type == "cuda" else None,
        )
        self.scheduler = build_scheduler(self.optimizer, tcfg)
        self.scaler = torch.amp.GradScaler(device.type, enabled=options.precision == "fp16")
        self.ema = EMA(module, tcfg.ema_beta, tcfg.ema_update_after_step, tcfg.ema_update_every)
        # the noise of the losses (t, n, posterior samples); each rank has its own stream
        self.noise = torch.Generator(device=device).manual_seed(tcfg.seed + 7919 * env.rank)
        self.step = 0
        self.consumed = 0  # items of the global sample stream used so far
        self.train_time = 0.0  # seconds spent in training steps, all sessions together
        self.resumed = resume is not None
        if resume is not None:
            self._restore(*resume)

        wrapped: nn.Module = module
        if env.active:
            # static_graph: parameters unused by the loss (the 5-channel condition adapter) are fine
            wrapped = nn.parallel.DistributedDataParallel(
                module, device_ids=[device] if device.type == "cuda" else None, static_graph=True
            )
        self.ddp = wrapped if env.active else None
        if options.cuda_graphs:
            wrapped = GraphedModule(module)  # one process, not compiled: check_run_options
        self.wrapped = torch.compile(wrapped) if options.compile else wrapped
        if options.compile_regions:
            from irt4.models.regional import compile_regions

            log.info("--compile-regions: %d blocks compiled", compile_regions(module))
        if device.type == "cuda" and options.precision != "fp32":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True

        self.global_batch = tcfg.batch_size * env.world_size * tcfg.gradient_accumulate_every
        self.stop = _StopRequest()
        self.logger = None
        self.record: dict[str, Any] = {}

    # ---- state -----------------------------------------------------------------------------------

    def _restore(self, path: Path, checkpoint: dict[str, Any]) -> None:
        if checkpoint["stage"] != self.stage.name:
            raise AssertionError(f"{path} is a {checkpoint['stage']} checkpoint")
        self.stage.load_model_state(checkpoint["model"])
        self.ema.load_state_dict(checkpoint["ema"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        if checkpoint["scaler"]:
            self.scaler.load_state_dict(checkpoint["scaler"])
        states = checkpoint["rng"]
        if len(states) != self.env.world_size:
            log.warning(
                "%s was written by %d processes, this run has %d: random streams continue from rank 0's",
                path,
                len(states),
                self.env.world_size,
            )
        set_rng_state(states[self.env.rank % len(states)], self.noise)
        self.step = checkpoint["step"]
        self.consumed = checkpoint["data"]["consumed"]
        self.train_time = float(checkpoint.get("train_time_s", 0.0))
        log.info("resumed from %s at step %d", path, self.step)

    def _gather_rng(self) -> list[dict[str, Any]]:
        mine = rng_state(self.noise)
        if not self.env.active:
            return [mine]
        states: list[Any] = [None] * self.env.world_size
        dist.all_gather_object(states, mine)
        return states

    def save(self, step: int, consumed: int) -> Path | None:
        """Checkpoint (every rank joins the RNG gather; rank 0 writes)."""
        rng = self._gather_rng()
        if not self.env.is_main:
            return None
        state = {
            "stage": self.stage.name,
            "step": step,
            "model": {k: v.detach().cpu() for k, v in self.stage.model_state().items()},
            "ema": {k: v.detach().cpu() for k, v in self.ema.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            "data": data_state(consumed, len(self.stage.train_set), self.tcfg.seed),
            "config": config_to_dict(self.cfg),
            "irt4_version": __version__,
            "scale_factor": self.stage.scale_factor(),
            "world_size": self.env.world_size,
            "train_time_s": self.train_time,
        }
        path = save_checkpoint(self.run_dir, state, self.tcfg.keep_checkpoints)
        log.info("saved %s", path)
        self._update_record(checkpoints=[p.name for _, p in list_checkpoints(self.run_dir)])
        return path

    # ---- records ---------------------------------------------------------------------------------

    def _start_record(self) -> None:
        previous = {}
        run_json = self.run_dir / "run.json"
        if self.resumed and run_json.is_file():
            previous = json.loads(run_json.read_text())
        self._previous_duration = float(previous.get("duration_s", 0.0))
        self.record = {
            "stage": self.stage.name,
            "status": "running",
            "started": previous.get("started", _now()),
            "finished": None,
            "duration_s": self._previous_duration,
            "step": self.step,
            "total_steps": self.tcfg.train_num_steps,
            "batch_size": self.tcfg.batch_size,
            "grad_accum": self.tcfg.gradient_accumulate_every,
            "world_size": self.env.world_size,
            "precision": self.options.precision,
            "compile": self.options.compile,
            "compile_regions": self.options.compile_regions,
            "cuda_graphs": self.options.cuda_graphs,
            "device": str(self.env.device),
            "hardware": hardware(),
            "steps_per_s": None,
            "samples_per_s": None,
            "resumed_from": previous.get("resumed_from", []) + ([self.step] if self.resumed else []),
            "checkpoints": [p.name for _, p in list_checkpoints(self.run_dir)],
            "train_time_s": round(self.train_time, 3),
            "time_budget_s": self.options.time_budget_s,
            "init_from": previous.get("init_from", self.options.init_from),
            "stop_reason": None,
        }
        write_json_atomic(run_json, self.record)

    def _update_record(self, **fields: Any) -> None:
        if not self.env.is_main or not self.record:
            return
        elapsed = time.perf_counter() - self._session_start
        steps = self.step - self._session_first_step
        self.record.update(
            step=self.step,
            duration_s=round(self._previous_duration + elapsed, 3),
            steps_per_s=round(steps / elapsed, 4) if steps else None,
            samples_per_s=round(steps * self.global_batch / elapsed, 3) if steps else None,
            train_time_s=round(self.train_time, 3),
            **fields,
        )
        write_json_atomic(self.run_dir / "run.json", self.record)

    def _sample_grid(self, step: int) -> None:
        from irt4.data.condition import display_channels
        from irt4.train.logs import save_sample_grid

        count = min(self.tcfg.sample_maps, len(self.stage.sample_set))
        batch = self._to_device(default_collate([self.stage.sample_set[i] for i in range(count)]))
        # the grid must not move the training's random streams (a resumed run would not repeat it)
        devices = [self.env.device] if self.env.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad(), self._autocast():
            generator = torch.Generator().manual_seed(self.tcfg.seed)  # the sampler draws on the CPU
            predicted = self.stage.predict(self.ema.shadow, batch, self.options.sample_steps, generator)
        path = self.run_dir / "samples" / f"step-{step:07d}.png"
        path.parent.mkdir(exist_ok=True)
        shown = display_channels(batch["cond"], self.cfg.data.condition)
        save_sample_grid(
            path, predicted.float().cpu(), ((batch["image"] + 1) / 2).cpu(), ((shown + 1) / 2).cpu()
        )

    # ---- the step --------------------------------------------------------------------------------

    def _autocast(self):
        dtype = AUTOCAST_DTYPES.get(self.options.precision)
        if dtype is None:
            return contextlib.nullcontext()
        # a CUDA graph must hold the weight casts, not autocast's cached copies (irt4.train.graphed)
        return torch.autocast(self.env.device.type, dtype=dtype, cache_enabled=not self.options.cuda_graphs)

    def _to_device(self, batch: dict) -> dict:
        moved = {}
        for key, value in batch.items():
            if isinstance(value, torch.Tensor):
                value = value.to(self.env.device, non_blocking=True)
                if value.dim() == 4:
                    value = value.contiguous(memory_format=self.memory_format)
            moved[key] = value
        return moved

    def _over_budget(self, extra_s: float = 0.0) -> bool:
        budget = self.options.time_budget_s
        return budget is not None and self.train_time + extra_s >= budget

    def _train_step(
        self, batches, metrics_sum: dict[str, torch.Tensor], step_start: float
    ) -> tuple[float, bool, bool]:
        """Forward and backward over the accumulated micro-batches; returns (loss, stop requested,
        time budget spent) after the step's one host sync (rank 0's clock decides the budget)."""
        accumulate = self.tcfg.gradient_accumulate_every
        step_loss = torch.zeros((), device=self.env.device)
        for micro in range(accumulate):
            batch = self._to_device(next(batches))
            if self.step == 0 and micro == 0 and not self.resumed:
                for key, value in self.stage.first_batch(batch, self.noise).items():
                    log.info("first batch: %s = %.6g", key, value)
                    self.record[key] = value
            last_micro = micro == accumulate - 1
            sync = contextlib.nullcontext() if self.ddp is None or last_micro else self.ddp.no_sync()
            with sync:
                with self._autocast():
                    loss, parts = self.stage.loss(self.wrapped, batch, self.noise)
                if self.options.inject_nan_at == self.step + 1:
                    loss = loss * float("nan")
                self.scaler.scale(loss / accumulate).backward()
            step_loss += loss.detach().float() / accumulate
            for key, value in parts.items():
                metrics_sum[key] = metrics_sum.get(key, 0.0) + value.detach().float() / accumulate
        self.consumed += self.tcfg.batch_size * self.env.world_size * accumulate
        over_budget = self.env.is_main and self._over_budget(time.perf_counter() - step_start)
        flags = torch.tensor(
            [float(self.stop.signal is not None), float(over_budget)], device=step_loss.device
        )
        status = torch.cat([step_loss[None], flags])
        if self.env.active:
            dist.all_reduce(status)
            status[0] /= self.env.world_size
        loss_value, stop_flag, budget_flag = status.tolist()
        return loss_value, stop_flag > 0, budget_flag > 0

    def run(self) -> int:
        """Train to train_num_steps; returns the exit code (0, 130/143 after a signal, 3 on a stopped NaN)."""
        tcfg, env = self.tcfg, self.env
        total = tcfg.train_num_steps
        if env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.run_dir / "config.yaml")
            from irt4.train.logs import MetricsLogger

            self.logger = MetricsLogger(
                self.run_dir,
                resume_step=self.step if self.resumed else None,
                tensorboard=self.options.tensorboard,
            )
        self._session_start = time.perf_counter()
        self._session_first_step = self.step
        if env.is_main:
            self._start_record()
        self.stop.install()
        status, code = "running", 0
        try:
            status, code = self._loop(total)
        except BaseException:
            status = "interrupted" if self.stop.signal is not None else "failed"
            raise
        finally:
            self.stop.restore()
            self._finish(status)
        return code

    def _loop(self, total: int) -> tuple[str, int]:
        tcfg, env = self.tcfg, self.env
        loader = make_loader(
            self.stage.train_set,
            tcfg.batch_size,
            tcfg.seed,
            self.consumed,
            env.rank,
            env.world_size,
            self.cfg.data.num_workers,
            pin_memory=env.device.type == "cuda",
        )
        batches = iter(loader)
        progress = tqdm(
            total=total, initial=self.step, disable=not env.is_main, dynamic_ncols=True, mininterval=1.0
        )
        metrics_sum: dict[str, torch.Tensor] = {}
        window_losses: list[float] = []
        window_start, window_steps, skipped = time.perf_counter(), 0, 0
        last_saved = self.step if self.resumed else None
        budget_spent = self._over_budget()  # a resumed run that had used its budget already
        try:
            while self.step < total and not budget_spent:
                step_start = time.perf_counter()
                self.optimizer.zero_grad(set_to_none=True)
                loss_value, stop_requested, budget_spent = self._train_step(batches, metrics_sum, step_start)
                lr = self.optimizer.param_groups[0]["lr"]
                if not math.isfinite(loss_value):
                    self.optimizer.zero_grad(set_to_none=True)
                    skipped += 1
                    if env.is_main:
                        log.warning(
                            "non-finite loss %s at step %d (%s)", loss_value, self.step + 1, tcfg.nan_policy
                        )
                        self.logger.log(
                            self.step + 1, {"nonfinite_loss": 1.0, "skipped_steps": float(skipped)}
                        )
                    if tcfg.nan_policy == "stop":
                        # nothing of this step reached the weights: save the state after the last good one
                        self.consumed -= tcfg.batch_size * env.world_size * tcfg.gradient_accumulate_every
                        self.save(self.step, self.consumed)
                        return "stopped_nan", EXIT_STOPPED_NAN
                else:
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    window_losses.append(loss_value)
                self.scheduler.step()
                self.step += 1
                self.ema.update(self.step)
                self.train_time += time.perf_counter() - step_start
                last_step = self.step == total or budget_spent
                window_steps += 1
                elapsed = time.perf_counter() - window_start
                samples_per_s = window_steps * self.global_batch / elapsed
                progress.update(1)
                progress.set_postfix(
                    loss=f"{loss_value:.4f}", lr=f"{lr:.3g}", samples_s=f"{samples_per_s:.1f}", refresh=False
                )

                if env.is_main and (self.step % tcfg.log_every == 0 or last_step or self.step == 1):
                    metrics = {k: v.item() / window_steps for k, v in metrics_sum.items()}
                    if window_losses:
                        metrics["loss"] = sum(window_losses) / len(window_losses)
                    metrics.update(lr=lr, samples_per_s=samples_per_s, steps_per_s=window_steps / elapsed)
                    metrics["train_time_s"] = self.train_time
                    self.logger.log(self.step, metrics)
                    self._update_record()
                if self.step % tcfg.log_every == 0 or self.step == 1:
                    metrics_sum, window_losses = {}, []
                    window_start, window_steps = time.perf_counter(), 0

                if stop_requested:
                    self.save(self.step, self.consumed)
                    signum = self.stop.signal or signal.SIGTERM  # another rank got the signal
                    return "interrupted", EXIT_SIGNAL[signum]
                if self.step % tcfg.save_every == 0 or last_step:
                    self.save(self.step, self.consumed)
                    last_saved = self.step
                    if env.is_main:
                        self._sample_grid(self.step)
            if last_saved != self.step:  # resumed at the end already
                self.save(self.step, self.consumed)
            if budget_spent:
                log.info(
                    "time budget of %.0f s spent: stopped after step %d (%.1f s of training)",
                    self.options.time_budget_s,
                    self.step,
                    self.train_time,
                )
            self.record["stop_reason"] = "time_budget" if budget_spent else "steps"
            return "completed", 0
        finally:
            progress.close()
            del batches

    def _finish(self, status: str) -> None:
        if self.env.active and status != "failed":  # a failed rank would never reach the barrier
            dist.barrier()
        if not self.env.is_main:
            return
        self._update_record(status=status, finished=_now())
        if self.logger is not None:
            self.logger.close()
        from irt4.train.report import write_report

        try:
            log.info("report: %s", write_report(self.run_dir))
        except Exception:
            log.exception("the training report could not be written (the run itself is saved)")
