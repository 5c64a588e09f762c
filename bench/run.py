"""irt4's speed, side by side with the eager fp32 reference, in one run; bench/README.md has the rows.

    python -m bench.run [--device cpu|cuda] [--preset small|irt4-radiodiff] [--quick]
                        [--only peak,flops,sampling,training,kernels,profile] [--batches 1,8,32] [--out DIR]

Sections, in order (`--only` picks some):
- peak:     TFLOP/s of a large matrix product (bf16 and fp32), the roofline of every row's TFLOP/s;
- flops:    FLOPs per map of the condition encoder, one UNet step and the VAE (FlopCounterMode);
- sampling: maps/s of the whole 50-step sampler + VAE decode of every backend (bench/sampling.py) at
            each batch, with the ratio to the reference, the maps' difference from the reference's
            for the same noise, peak memory and achieved TFLOP/s;
- training: samples/s of one AdamW step (bench/training.py);
- kernels:  the Triton kernels against PyTorch, SDPA and torch.compile (bench/kernels.py);
- profile:  one UNet step and one VAE decode under torch.profiler, time by operator group (bench/profile.py).

The result file, <out>/<date>-<device>.json, is rewritten after every row and every section, so a run
cut short keeps what it measured. Each section has a wall-clock cap (--section-timeout) and each
compiling row its own (--compile-timeout); a row or section that fails or runs past its cap becomes a
skipped row with the reason, and the run goes on. With the default --out, bench/RESULTS.md is
regenerated too (--regenerate alone only regenerates it). Timing is never asserted anywhere.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch

import irt4
from bench import sampling, training
from bench.kernels import KERNEL_BENCHMARKS, Harness, Row, add_ratios, device_description
from bench.measure import (
    PeakMemory,
    TimeLimitExceeded,
    add_reference_ratios,
    check_deadlines,
    failure_reason,
    release_memory,
    skipped_row,
    time_limit,
    timed_row,
)
from bench.report import RESULTS_DIR, RESULTS_MD, device_section, regenerate_results_md
from irt4.config import load_config
from irt4.models.bundle import save_bundle
from irt4.models.radiodiff import RadioDiff
from irt4.models.summary import build_on_meta, flop_counts, sampling_flops

SECTIONS = ("peak", "flops", "sampling", "training", "kernels", "profile")
CPU_NOTE = (
    "CPU numbers are noisy: the machine's cores may be shared with other work while this runs; "
    "compare ratios within one run, not absolute times across runs."
)
# a first guess of each row's time, printed beside the measurement: FLOPs / (this share of the peak)
ESTIMATE_EFFICIENCY = 0.35


@dataclass
class Settings:
    device: torch.device
    preset: str
    quick: bool
    steps: int
    batches: list[int]
    train_batch: int
    repeats: int
    warmup: int
    row_seconds: float  # timed calls per row: as many as fit in this (after the first call)
    paths: list[str]  # sampling backends, in order
    train_paths: list[str]
    cpu_batches: list[int]  # batches at which the CPU-only backends run when --device is cuda
    compile_batches: list[int]  # batches at which the compiling backends run
    compile_timeout: float
    section_timeouts: dict[str, float]
    onnx_dir: Path | None = None
    engine_dir: Path | None = None
    seed: int = 0
    # whether an eager row's slow first call may be its one timed run; None: in a GPU run only (in a
    # CPU run the first call at a shape also builds oneDNN's kernels, and the time is there to repeat)
    first_call_may_count: bool | None = None


@dataclass
class Run:
    """One run's result file: saved after every row and every section."""

    meta: dict
    path: Path
    notes: list[str] = field(default_factory=list)
    rows: list[tuple[str, Row]] = field(default_factory=list)  # (stage, row)
    sections: dict[str, dict] = field(default_factory=dict)
    peak_tflops: dict[str, float] = field(default_factory=dict)  # by dtype
    flops_per_map: dict[str, int] = field(default_factory=dict)
    profile: dict | None = None  # bench/profile.py's result for this run's preset and device
    profile_levers: dict | None = None  # the same with the speed levers (profile_section)
    regenerate_md: bool = False

    @property
    def roofline_tflops(self) -> float | None:
        return max(self.peak_tflops.values(), default=None)

    def add(self, row: Row, stage: str | None = None, estimate_s: float | None = None) -> None:
        self.rows.append((stage or row.op, row))
        what = f"{stage or row.op} {row.provider} {row.dtype} {row.case} {row.mode}"
        if row.skipped:
            print(f"  {what}: skipped: {row.skipped}", flush=True)
        else:
            estimate = "" if estimate_s is None else f" (estimate {estimate_s:.3g} s)"
            print(
                f"  {what}: {row.median_ms / 1e3:.4g} s{estimate}, {row.rate:.4g} {row.rate_unit}", flush=True
            )
        self.save()
        check_deadlines()  # a section whose cap passed while something swallowed it stops at its next row

    def result(self) -> dict:
        rows = [r for _, r in self.rows]
        add_reference_ratios(rows)
        add_ratios([r for stage, r in self.rows if stage == "kernels"])
        return {
            "meta": self.meta,
            "notes": self.notes,
            "sections": self.sections,
            "peak_tflops": self.peak_tflops,
            "roofline_tflops": self.roofline_tflops,
            "flops_per_map": self.flops_per_map,
            "profile": self.profile,
            "profile_levers": self.profile_levers,
            "records": [{"stage": stage, **asdict(r), **self.meta} for stage, r in self.rows],
        }

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.result(), indent=1) + "\n")
        tmp.replace(self.path)
        if self.regenerate_md:
            try:
                regenerate_results_md()
            except Exception as error:  # another result file that does not render: the run goes on
                print(f"warning: {RESULTS_MD} not regenerated: {failure_reason(error)}", flush=True)

    @contextlib.contextmanager
    def section(self, name: str, seconds: float | None) -> Iterator[None]:
        """Run a section under its cap; a failure or the cap ends it with a skipped row, not the run."""
        print(f"## {name} (cap {seconds or 'none'} s)", flush=True)
        self.sections[name] = {"status": "running", "seconds": None}
        self.save()
        start = time.monotonic()
        status = "ok"
        try:
            with time_limit(seconds, f"section {name}"):
                yield
        except Exception as error:  # one section's failure must not end the run
            reason = failure_reason(error)
            over = isinstance(error, TimeLimitExceeded) or (seconds and time.monotonic() - start >= seconds)
            status = "over its cap" if over else "failed"
            row = Row(name, "rest of the section", "", "*", "", None, None, "", skipped=reason)
            self.add(row, stage=name)
        finally:
            release_memory_quietly()
        self.sections[name] = {"status": status, "seconds": time.monotonic() - start}
        self.save()


def release_memory_quietly() -> None:
    with contextlib.suppress(Exception):
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def build_model(cfg, device: torch.device, seed: int = 0) -> RadioDiff:
    torch.manual_seed(seed)  # built on the CPU: the same weights whatever the device
    return RadioDiff(cfg).to(device).eval()


def peak_section(run: Run, s: Settings) -> None:
    n = 8192 if s.device.type == "cuda" else (1024 if s.quick else 2048)
    harness = Harness(s.device, s.quick, repeats=10, warmup=2)
    # CPUs without bf16 matrix units run bf16 products tens of times slower than fp32: fp32 there
    for dtype in (torch.bfloat16, torch.float32) if s.device.type == "cuda" else (torch.float32,):
        a = torch.randn(n, n, device=s.device, dtype=dtype)
        b = torch.randn(n, n, device=s.device, dtype=dtype)
        timing = harness.time_budgeted(lambda a=a, b=b: a @ b, s.row_seconds, first_call_may_count=False)
        del a, b
        config = {"preset": f"matmul {n}^3", "batch": 1, "flops": 2 * n**3}
        row = timed_row("peak", "matmul", dtype, "fwd", timing, 1, "products/s", config, None)
        run.peak_tflops[row.dtype] = config["tflop_per_s"]
        run.add(row)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    run.notes.append(
        f"peak: {', '.join(f'{d} {v:.3g}' for d, v in run.peak_tflops.items())} TFLOP/s (fp32 with TF32 "
        f"{'on' if tf32 else 'off'}); `of peak` is each row's TFLOP/s / the highest of these"
    )


def model_flops(run: Run, cfg) -> dict[str, int]:
    if not run.flops_per_map:
        run.flops_per_map = flop_counts(build_on_meta(cfg), 1)
    return run.flops_per_map


def flops_section(run: Run, s: Settings, cfg) -> None:
    per_map = model_flops(run, cfg)
    totals = sampling_flops(per_map, s.steps, cfg.diffusion.denoise)
    run.flops_per_map.update(totals)
    print("\n".join(f"  {k}: {v / 1e9:.2f} GFLOP" for k, v in run.flops_per_map.items()), flush=True)


def _estimate_s(run: Run, flops: int | None, dtype: torch.dtype, on_cpu_anyway: bool) -> float | None:
    peak = run.peak_tflops.get(str(dtype).removeprefix("torch."))
    if flops is None or not peak or on_cpu_anyway:
        return None
    return flops / (ESTIMATE_EFFICIENCY * peak * 1e12)


def sampling_section(run: Run, s: Settings, model: RadioDiff) -> None:
    cfg = model.cfg
    per_map = model_flops(run, cfg)
    hoisted, as_reference = sampling_flops(per_map, s.steps, cfg.diffusion.denoise).values()
    harness = Harness(s.device, s.quick, s.repeats, warmup=s.warmup)
    cpu_harness = Harness(torch.device("cpu"), s.quick, s.repeats, warmup=s.warmup)  # wall time, no events
    cache: dict = {}
    for batch in s.batches:
        ctx = sampling.sampling_context(
            model, s.device, batch, s.steps, s.seed, onnx_dir=s.onnx_dir, engine_dir=s.engine_dir, cache=cache
        )
        expected = None
        for name in s.paths:
            path = sampling.with_engine_precision(sampling.PATHS[name], s.engine_dir)
            if path.cpu_only and s.device.type != "cpu" and batch not in s.cpu_batches:
                continue
            if path.torch_compile and batch not in s.compile_batches:
                continue
            flops = batch * (as_reference if name == "reference" else hoisted)
            config = {"preset": cfg.name, "batch": batch, "steps": s.steps, "flops": flops}
            if path.cpu_only and s.device.type != "cpu":
                config["note"] = "on the CPU"
            estimate = _estimate_s(run, flops, path.dtype, path.cpu_only and s.device.type != "cpu")
            row = _measure(
                cpu_harness if path.cpu_only else harness,
                s,
                run,
                "sampling",
                name,
                path.dtype,
                "sample",
                lambda path=path, ctx=ctx: path.open(ctx),
                path.compiles,
                batch,
                "maps/s",
                config,
                device=torch.device("cpu") if path.cpu_only else s.device,
            )
            if row.skipped is None:
                output = row.config.pop("_output")
                if name == "reference":
                    expected = output.detach().float().cpu()
                elif expected is not None:
                    row.config.update(sampling.output_difference(output, expected))
                del output
            run.add(row, estimate_s=estimate)
            release_memory(s.device)


def _measure(harness, s, run, stage, name, dtype, mode, open_path, compiles, items, unit, config, device):
    """One row: open the backend, time it (first call, then what fits in --row-seconds), peak memory.
    A failure, a missing backend or a compile past --compile-timeout gives a skipped row."""
    cap = s.compile_timeout + 3 * s.row_seconds if compiles else None
    try:
        with time_limit(cap, f"{stage} {name} b{config['batch']}") as scope:
            with PeakMemory(device) as memory:
                start = time.perf_counter()
                with open_path() as fn:
                    config["setup_s"] = time.perf_counter() - start
                    counts = s.first_call_may_count
                    first_call_counts = not compiles and (
                        s.device.type == "cuda" if counts is None else counts
                    )
                    timing = harness.time_budgeted(
                        fn,
                        s.row_seconds,
                        first_call_may_count=first_call_counts,
                        after_first_call=memory.steady_state,
                    )
            config["peak_mib"] = memory.mib
            if memory.first_call_mib is not None:
                config["first_call_peak_mib"] = memory.first_call_mib
            config["_output"] = timing.first_output
        return timed_row(stage, name, dtype, mode, timing, items, unit, config, run.roofline_tflops)
    except TimeLimitExceeded as error:
        if error.scope is not scope:
            raise
        return skipped_row(stage, name, dtype, mode, config, failure_reason(error))
    except Exception as error:  # recorded, and the next row runs (unless the section's cap has passed)
        check_deadlines(scope)
        return skipped_row(stage, name, dtype, mode, config, failure_reason(error))


def training_section(run: Run, s: Settings, model: RadioDiff) -> None:
    image, cond = sampling.inputs(model.cfg, s.train_batch, s.device, s.seed)
    harness = Harness(s.device, s.quick, s.repeats, warmup=s.warmup)
    per_map = model_flops(run, model.cfg)
    for name in s.train_paths:
        path = training.PATHS[name]
        flops = training.step_flops(per_map, s.train_batch, path.cached)
        config = {"preset": model.cfg.name, "batch": s.train_batch, "flops": flops}

        @contextlib.contextmanager
        def open_path(path=path):
            with training.training_state(model):
                yield training.training_step(model, path, image, cond)

        row = _measure(
            harness, s, run, "training", name, path.dtype, "train-step", open_path, path.compiles,
            s.train_batch, "samples/s", config, s.device,
        )  # fmt: skip
        row.config.pop("_output", None)
        run.add(row, estimate_s=_estimate_s(run, flops, path.dtype, False))
        release_memory(s.device)


def kernels_section(run: Run, s: Settings) -> None:
    harness = Harness(
        s.device, s.quick or s.device.type == "cpu", repeats=5 if s.quick else 20, warmup=s.warmup,
        on_record=lambda row: run.add(row, stage="kernels"),
    )  # fmt: skip
    run.notes.append(f"kernels: measured copy bandwidth {harness.measure_copy_bandwidth():.1f} GB/s")
    if not harness.run_triton:
        run.notes.append("kernels: no CUDA, so no Triton rows (interpreter times mean nothing)")
    for module_name in KERNEL_BENCHMARKS.values():
        importlib.import_module(f"bench.{module_name}").run(harness)


def git_sha() -> str:
    bench = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=bench, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=bench, capture_output=True, text=True
        ).stdout
        return sha + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_metadata(device: torch.device, preset: str, quick: bool) -> dict:
    return {
        "device": device.type,
        "device_description": device_description(device),
        "machine": f"{platform.node()} ({os.cpu_count()} CPUs)",
        "preset": preset,
        "quick": quick,
        "torch_version": torch.__version__,
        "irt4_version": irt4.__version__,
        "git_sha": git_sha(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def run_sections(run: Run, s: Settings, sections: list[str]) -> None:
    cfg = load_config(s.preset)
    model = None
    for name in sections:
        with run.section(name, s.section_timeouts.get(name)):
            if name == "peak":
                peak_section(run, s)
            elif name == "flops":
                flops_section(run, s, cfg)
            elif name == "kernels":
                kernels_section(run, s)
            elif name == "profile":
                profile_section(run, s)
            else:
                if model is None:
                    model = build_model(cfg, s.device, s.seed)
                (sampling_section if name == "sampling" else training_section)(run, s, model)


def profile_section(run: Run, s: Settings) -> None:
    """bench/profile.py at the run's preset and device, at its largest sampling batch, in fp32 (and
    bf16 on CUDA, the serving precision there), before and after the levers (channels_last weights
    cast once; on CUDA also the Triton kernels); both tables go into RESULTS.md."""
    from bench.profile import run_profile

    precision = "bf16" if s.device.type == "cuda" else "fp32"
    run.profile = run_profile(s.preset, s.device.type, max(s.batches), precision, repeat=2)
    run.save()
    # after: the layout lever (and on CUDA the Triton kernels), at the same preset, batch and precision
    levers = ("nhwc", "triton") if s.device.type == "cuda" else ("nhwc",)
    batch = max(s.batches)
    run.profile_levers = run_profile(s.preset, s.device.type, batch, precision, repeat=2, levers=levers)
    run.save()


def default_notes(s: Settings, cfg) -> list[str]:
    calls = s.steps + 1 if cfg.diffusion.denoise else s.steps
    notes = [
        f"sampling: {s.steps} steps ({calls} network calls) per map, random weights (speed does not depend "
        f"on them); backends: {', '.join(s.paths)}; training batch {s.train_batch}",
        f"each row: the first call (compilation, capture), then up to {s.repeats} timed calls after "
        f"{s.warmup} warm-up call(s), as many as fit in {s.row_seconds:g} s; `runs` = timed calls "
        "(on a GPU, 1 and no spread: the first call itself, for an eager row slower than twice that)",
    ]
    if s.device.type == "cpu":
        notes.append("peak MiB on the CPU: growth of the process's resident high-water mark (a lower bound)")
        notes.append(CPU_NOTE)
    else:
        notes.append(
            f"the CPU-only backends (onnxruntime-cpu, engine-onnxruntime) run at batch "
            f"{','.join(map(str, s.cpu_batches))} on this machine's CPU: their ratio compares with the GPU "
            "reference; compiling backends run at batch " + ",".join(map(str, s.compile_batches))
        )
        notes.append(
            "peak MiB on a GPU: max allocated during the timed calls (steady state); the first call's "
            "peak, with one-off library workspaces, is `first_call_peak_mib` in the JSON"
        )
    return notes


def parse_timeouts(text: str | None, default: float | None) -> dict[str, float]:
    """ "120" (every section) or "sampling=170,training=60" (the rest: `default`)."""
    timeouts = dict.fromkeys(SECTIONS, default)
    for part in filter(None, (text or "").split(",")):
        if "=" not in part:
            timeouts = dict.fromkeys(SECTIONS, float(part))
            continue
        name, seconds = part.split("=", 1)
        if name not in SECTIONS:
            raise ValueError(f"--section-timeout: unknown section {name!r}; known: {', '.join(SECTIONS)}")
        timeouts[name] = float(seconds)
    return timeouts


def _csv(text: str) -> list[str]:
    return [p for p in text.split(",") if p]


def default_paths(device: torch.device, quick: bool, all_paths: bool) -> tuple[list[str], list[str]]:
    if device.type == "cuda" or all_paths:
        # the headline rows first (the reference, then the fastest paths), so that a section cut short
        # by its cap loses the least informative rows
        return (
            [
                "reference", "cudagraph-torch-bf16", "cudagraph-bf16", "cudagraph-nhwc-bf16",
                "engine-aoti-graph", "engine-aoti", "torch-bf16", "torch-nhwc-bf16", "triton-bf16",
                "triton-nhwc-bf16", "torch", "onnxruntime-cpu", "cudagraph-regional-bf16",
                "compile-regional-bf16", "compile-bf16",
            ],
            [
                "reference", "torch-bf16-cached", "cudagraph-bf16-cached", "triton-bf16-cached",
                "torch-cached", "compile-regional-bf16-cached", "compile-bf16-cached",
            ],
        )  # fmt: skip
    sampling_paths = ["reference", "torch", "onnxruntime-cpu", "engine-onnxruntime"]
    return sampling_paths + ([] if quick else ["compile"]), ["reference", "torch-cached"]


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Settings]:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available")
    parser.add_argument(
        "--preset", default=None, help="small, irt4-radiodiff, tiny (default: small if quick)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="small preset, batch 1 and 2, 10 steps, few repeats"
    )
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"sections, of {','.join(SECTIONS)}")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default 50, quick 10)")
    parser.add_argument("--batches", default=None, help="sampling batch sizes (default 1,8,32; quick 1,2)")
    parser.add_argument("--train-batch", type=int, default=None, help="default: the preset's; quick 2")
    parser.add_argument("--paths", default=None, help="sampling backends, in order (bench/sampling.py)")
    parser.add_argument("--train-paths", default=None, help="training recipes, in order (bench/training.py)")
    parser.add_argument(
        "--all-paths", action="store_true", help="the GPU's backends on any device (to test them on a CPU)"
    )
    parser.add_argument("--cpu-batches", default="1", help="batches of the CPU-only backends on a GPU run")
    parser.add_argument(
        "--compile-batches", default=None, help="batches of the compiling backends (default all)"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed calls per row at most (default 5, quick 3)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="warm-up calls per row after the first")
    parser.add_argument(
        "--row-seconds", type=float, default=None, help="time for a row's repeats (default 6)"
    )
    parser.add_argument("--compile-timeout", type=float, default=120, help="cap of a compiling row, s")
    parser.add_argument(
        "--section-timeout", default=None, help='cap of each section, s: "300" or "sampling=170,kernels=30"'
    )
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile rows")
    parser.add_argument(
        "--onnx-dir", type=Path, default=None, help="ONNX graphs of the bench model (exported if absent)"
    )
    parser.add_argument(
        "--engine-dir", type=Path, default=None, help="irt4-build-engine output for irt4.Engine"
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder of the JSON result")
    parser.add_argument("--seed", type=int, default=0, help="weights, inputs and noise")
    parser.add_argument(
        "--prepare", type=Path, default=None, metavar="DIR",
        help="only write the bench model as DIR/bench-model.safetensors and its ONNX graphs in DIR/onnx",
    )  # fmt: skip
    parser.add_argument("--regenerate", action="store_true", help="only regenerate bench/RESULTS.md")
    args = parser.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    preset = args.preset or ("small" if args.quick else "irt4-radiodiff")
    cfg = load_config(preset)
    paths, train_paths = default_paths(device, args.quick, args.all_paths)
    paths = _csv(args.paths) if args.paths else paths
    train_paths = _csv(args.train_paths) if args.train_paths else train_paths
    if args.no_compile:
        paths = [p for p in paths if not sampling.PATHS.get(p, sampling.PATHS["torch"]).torch_compile]
        train_paths = [
            p for p in train_paths if not training.PATHS.get(p, training.PATHS["reference"]).torch_compile
        ]
    unknown = sorted(set(paths) - set(sampling.PATHS)) + sorted(set(train_paths) - set(training.PATHS))
    if unknown:
        parser.error(
            f"unknown backend(s) {unknown}; known: {sorted(sampling.PATHS)} {sorted(training.PATHS)}"
        )
    sections = _csv(args.only)
    if set(sections) - set(SECTIONS):
        parser.error(f"--only: unknown section(s) {sorted(set(sections) - set(SECTIONS))}; known: {SECTIONS}")
    batches = [int(b) for b in _csv(args.batches or ("1,2" if args.quick else "1,8,32"))]
    try:
        # quick: under 5 minutes on 2 shared cores whatever else runs there (make bench)
        quick_caps = "peak=20,flops=30,sampling=140,training=60,kernels=30" if args.quick else None
        timeouts = parse_timeouts(args.section_timeout or quick_caps, None)
    except ValueError as error:
        parser.error(str(error))
    settings = Settings(
        device=device,
        preset=preset,
        quick=args.quick,
        steps=args.steps or (10 if args.quick else 50),
        batches=batches,
        train_batch=args.train_batch or (2 if args.quick else cfg.trainer.batch_size),
        repeats=args.repeats or (3 if args.quick else 5),
        warmup=args.warmup,
        row_seconds=args.row_seconds or 6.0,
        paths=paths,
        train_paths=train_paths,
        cpu_batches=[int(b) for b in _csv(args.cpu_batches)],
        compile_batches=[int(b) for b in _csv(args.compile_batches)] if args.compile_batches else batches,
        compile_timeout=args.compile_timeout,
        section_timeouts=timeouts,
        # exported once per preset and seed, then reused (bench/sampling.py checks its stamp)
        onnx_dir=args.onnx_dir or Path(tempfile.gettempdir()) / f"irt4-bench-onnx-{preset}-seed{args.seed}",
        engine_dir=args.engine_dir,
        seed=args.seed,
    )
    args.sections = sections
    return args, settings


def prepare(s: Settings, folder: Path) -> int:
    """The bench model as a bundle (for irt4-build-engine --checkpoint) and its ONNX graphs."""
    folder.mkdir(parents=True, exist_ok=True)
    model = build_model(load_config(s.preset), torch.device("cpu"), s.seed)
    save_bundle(folder / "bench-model.safetensors", model, weights="raw")
    (folder / "bundle.done").touch()  # bench/gpu.sh starts the engine build from the bundle meanwhile
    seconds = sampling.export_bench_onnx(model, folder / "onnx", s.seed)
    print(f"wrote {folder / 'bench-model.safetensors'} and {folder / 'onnx'} (export {seconds:.0f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args, s = parse_args(argv)
    if args.regenerate:
        regenerate_results_md()
        print(f"wrote {RESULTS_MD}")
        return 0
    if args.prepare is not None:
        return prepare(s, args.prepare)
    if s.device.type == "cuda":
        # the reference is fp32 without TF32 (contracts.md); the bf16 paths say so in their dtype
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    cfg = load_config(s.preset)
    meta = run_metadata(s.device, s.preset, s.quick)
    run = Run(
        meta,
        args.out / f"{meta['date'][:10]}-{s.device.type}.json",
        notes=default_notes(s, cfg),
        regenerate_md=args.out.resolve() == RESULTS_DIR,
    )
    print(f"# irt4 benchmarks, {meta['date']}: {meta['device_description']}, torch {torch.__version__}")
    print(f"preset {s.preset}, sections {args.sections}, sampling {s.steps} steps at batch {s.batches}")
    run_sections(run, s, args.sections)
    run.save()
    print()
    print(device_section(run.result()))
    print(f"wrote {run.path}" + (f" and {RESULTS_MD}" if run.regenerate_md else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
