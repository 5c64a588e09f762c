"""Benchmarks of the Triton kernels of irt4.kernels against PyTorch, at the model's real shapes.

    python bench/kernels.py [--quick] [--only group_norm[,attention]] [--repeats 50] [--csv PATH]

Each kernel has its own module here (`kernels_<kernel>.py`, listed in KERNEL_BENCHMARKS) with a
`run(harness)` that returns Rows (made by `harness.record`); this file holds what they share: the
timer (warm-up, repeats, median; CUDA events on a GPU), the measured copy bandwidth that
bandwidth-bound kernels are compared with, and the table. Every row is a time, a physical rate
(GB/s or TFLOP/s from an explicit formula) and its ratio to the eager and torch.compile rows of the
same case and mode, measured in the same run. Timing is never asserted anywhere.

On a machine without CUDA the Triton rows are skipped (Triton's CPU interpreter is for testing;
its times mean nothing) and only the PyTorch paths are timed; use --quick there.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import torch

# name -> module in bench/ with run(harness: Harness) -> list[Row]
KERNEL_BENCHMARKS = {
    "group_norm": "kernels_group_norm",
    "attention": "kernels_attention",
}


@dataclass
class Row:
    op: str  # kernel, e.g. "group_norm_silu"
    case: str  # shape and options, e.g. "unet (32,128,80,80) g8 scale-shift"
    dtype: str
    provider: str  # "triton", "eager", "compile"
    mode: str  # "fwd", "fwd+bwd"
    median_ms: float | None  # None: a skipped row (see `skipped`)
    rate: float | None  # in rate_unit
    rate_unit: str  # "GB/s" (bytes of the minimal traffic) or "TFLOP/s"
    of_peak: float | None = None  # rate / the measured copy bandwidth (bandwidth-bound kernels only)
    first_call_s: float | None = None  # the warm-up call: compilation (torch.compile, Triton JIT)
    vs_eager: float | None = field(default=None)  # eager time / this time
    vs_compile: float | None = field(default=None)  # compile time / this time
    # Fields the model-level runner (bench/run.py) fills; the kernel rows leave them empty.
    p20_ms: float | None = None
    p80_ms: float | None = None
    vs_reference: float | None = None  # the reference path's time / this time (same stage, batch)
    config: dict = field(default_factory=dict)  # batch, steps, preset, errors, FLOPs, memory ...
    skipped: str | None = None  # why the row has no time (a failure, a time cap, a missing backend)


@dataclass
class Timing:
    quantiles_ms: tuple[float, float, float]  # p20, p50, p80
    first_call_s: float
    runs: int  # timed calls
    first_output: object  # what the first call returned


def quantiles_ms(times: list[float]) -> tuple[float, float, float]:
    if len(times) < 2:
        return times[0], times[0], times[0]
    deciles = statistics.quantiles(times, n=10, method="inclusive")
    return deciles[1], statistics.median(times), deciles[7]


@dataclass
class Harness:
    device: torch.device
    quick: bool
    repeats: int
    copy_gbps: float = float("nan")
    warmup: int = 3
    # called with every Row that `record` makes, so a caller keeps the rows of a run cut short
    on_record: Callable[[Row], None] | None = None

    @property
    def run_triton(self) -> bool:
        return self.device.type == "cuda"

    def time_ms(self, fn: Callable[[], object]) -> tuple[float, float]:
        """(median ms over `repeats` calls after warm-up, seconds of the first call)."""
        (_, median_ms, _), first_call_s = self.time_quantiles_ms(fn)
        return median_ms, first_call_s

    def time_quantiles_ms(self, fn: Callable[[], object]) -> tuple[tuple[float, float, float], float]:
        """((p20, p50, p80) ms over `repeats` calls after warm-up, seconds of the first call)."""
        start = time.perf_counter()
        fn()
        self.synchronize()
        first_call_s = time.perf_counter() - start
        for _ in range(self.warmup):
            fn()
        return quantiles_ms(self.call_times_ms(fn, self.repeats)), first_call_s

    def time_budgeted(
        self,
        fn: Callable[[], object],
        budget_s: float,
        first_call_may_count: bool,
        after_first_call: Callable[[], None] | None = None,
    ) -> Timing:
        """Time `fn` in about `budget_s` after its first call: as many repeats (up to `repeats`, with up
        to `warmup` warm-up calls) as fit. Where even one repeat does not fit and the first call is a
        fair measurement (`first_call_may_count`: eager code, nothing compiled or captured in it), the
        first call is the one timed run. `after_first_call` runs between the first call and the rest
        (where the rest runs), e.g. to start measuring steady-state memory."""
        start = time.perf_counter()
        output = fn()
        self.synchronize()
        first_call_s = time.perf_counter() - start
        fit = int(budget_s // max(first_call_s, 1e-9))  # calls of the first call's length in the budget
        if fit == 0 and first_call_may_count and first_call_s > 2 * budget_s:
            ms = first_call_s * 1e3
            return Timing((ms, ms, ms), first_call_s, 1, output)
        if after_first_call is not None:
            after_first_call()
        runs = max(min(self.repeats, fit), 1)
        for _ in range(min(self.warmup, fit - runs)):  # warm-up where the budget has room for it
            fn()
        return Timing(quantiles_ms(self.call_times_ms(fn, runs)), first_call_s, runs, output)

    def call_times_ms(self, fn: Callable[[], object], calls: int) -> list[float]:
        times = []
        for _ in range(calls):
            if self.device.type == "cuda":
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record()
                fn()
                end.record()
                end.synchronize()
                times.append(begin.elapsed_time(end))
            else:
                begin_s = time.perf_counter()
                fn()
                times.append((time.perf_counter() - begin_s) * 1e3)
        return times

    def record(self, **fields) -> Row:
        """A Row: kernel modules build rows through the harness they are given, without importing
        this script."""
        row = Row(**fields)
        if self.on_record is not None:
            self.on_record(row)
        return row

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def measure_copy_bandwidth(self) -> float:
        """GB/s of a large device-to-device copy (read + write), the floor a bandwidth-bound kernel
        is compared with: measured here, not taken from a data sheet."""
        numel = (64 if self.quick else 1024) * 2**20 // 4
        source = torch.randn(numel, device=self.device)
        target = torch.empty_like(source)
        median_ms, _ = self.time_ms(lambda: target.copy_(source))
        self.copy_gbps = 2 * source.numel() * source.element_size() / median_ms / 1e6
        return self.copy_gbps


def add_ratios(rows: list[Row]) -> None:
    """vs_eager / vs_compile: each row against the eager and compile rows of its case, dtype and mode."""
    by_key = {(r.op, r.case, r.dtype, r.mode, r.provider): r for r in rows}
    for r in rows:
        for provider, attribute in (("eager", "vs_eager"), ("compile", "vs_compile")):
            other = by_key.get((r.op, r.case, r.dtype, r.mode, provider))
            if other is not None and other.median_ms and r.median_ms:
                setattr(r, attribute, other.median_ms / r.median_ms)


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def print_table(rows: list[Row]) -> None:
    def fmt(value: float | None, spec: str) -> str:
        return "" if value is None else format(value, spec)

    columns = "op case dtype provider mode median_ms rate of_copy_bw vs_eager vs_compile 1st_call_s"
    print("| " + " | ".join(columns.split()) + " |")
    print("|---|---|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r.op} | {r.case} | {r.dtype} | {r.provider} | {r.mode} | {r.median_ms:.3f} | "
            f"{r.rate:.3g} {r.rate_unit} | {fmt(r.of_peak, '.0%')} | {fmt(r.vs_eager, '.2f')}x | "
            f"{fmt(r.vs_compile, '.2f')}x | {fmt(r.first_call_s, '.1f')} |".replace("| x |", "|  |")
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes and few repeats (CPU, smoke runs)")
    parser.add_argument("--only", default=",".join(KERNEL_BENCHMARKS), help="comma-separated kernel names")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per row (default 50, quick 5)")
    parser.add_argument("--csv", type=Path, default=None, help="also write the rows as CSV")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.only.split(",")) - set(KERNEL_BENCHMARKS))
    if unknown:
        parser.error(f"--only: unknown kernel(s) {unknown}; known: {sorted(KERNEL_BENCHMARKS)}")

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    harness = Harness(device, args.quick, args.repeats or (5 if args.quick else 50))
    print(f"# irt4 kernel benchmarks, {datetime.now().isoformat(timespec='seconds')}")
    print(f"device: {device_description(device)}; torch {torch.__version__}", end="")
    try:
        import triton

        print(f", triton {triton.__version__}")
    except ImportError:
        print(", triton not installed")
    if not harness.run_triton:
        print("no CUDA: Triton rows skipped (interpreter times are meaningless); PyTorch paths only")
    print(f"measured copy bandwidth: {harness.measure_copy_bandwidth():.1f} GB/s (read + write)\n")

    rows: list[Row] = []
    for name in args.only.split(","):
        module = importlib.import_module(KERNEL_BENCHMARKS[name])
        rows.extend(module.run(harness))
    add_ratios(rows)
    print_table(rows)
    if args.csv is not None:
        with args.csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
            writer.writeheader()
            writer.writerows(asdict(r) for r in rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
