"""What every model-level row shares: wall-clock caps, peak memory, and the Row it becomes.

A cap is SIGALRM raising `TimeLimitExceeded` in the main thread, again every second until the block
is left: it lands between Python bytecodes, so a long C call (one big kernel, one ONNX Runtime call)
finishes first. Caps nest; the nearest deadline fires.
"""

from __future__ import annotations

import contextlib
import resource
import signal
import threading
import time
from collections.abc import Iterator

import torch

from bench.kernels import Row, Timing


class TimeLimitExceeded(Exception):
    def __init__(self, message: str, scope: object):
        super().__init__(message)
        self.scope = scope  # the time_limit block whose cap this is: an inner block re-raises the others


# the active caps, outermost first: (monotonic deadline, scope, message)
_DEADLINES: list[tuple[float, object, str]] = []


def check_deadlines(own_scope: object | None = None) -> None:
    """Raise the TimeLimitExceeded of an enclosing cap that has passed: code that wraps every exception
    (Inductor does) can turn a cap into another error, which a row's handler would otherwise swallow."""
    now = time.monotonic()
    for deadline, scope, message in _DEADLINES:
        if scope is not own_scope and now >= deadline:
            raise TimeLimitExceeded(message, scope)


@contextlib.contextmanager
def time_limit(seconds: float | None, what: str) -> Iterator[object]:
    """Raise TimeLimitExceeded in the block after `seconds` (None or <= 0: no cap). Yields the scope
    that the exception carries, so that a handler can tell its own cap from an enclosing one."""
    scope = object()
    if not seconds or seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield scope
        return
    outer_left, _ = signal.getitimer(signal.ITIMER_REAL)
    if outer_left and outer_left <= seconds:  # an enclosing cap fires first
        yield scope
        return
    outer_handler = signal.getsignal(signal.SIGALRM)

    message = f"{what} ran past its cap of {seconds:.0f} s"

    def handler(signum, frame):
        raise TimeLimitExceeded(message, scope)

    start = time.monotonic()
    _DEADLINES.append((start + seconds, scope, message))
    signal.signal(signal.SIGALRM, handler)
    # then every second: code that swallows the first (a benchmark that skips a failing case) gets more
    signal.setitimer(signal.ITIMER_REAL, seconds, 1.0)
    try:
        yield scope
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        _DEADLINES.pop()
        signal.signal(signal.SIGALRM, outer_handler)
        if outer_left:
            signal.setitimer(signal.ITIMER_REAL, max(outer_left - (time.monotonic() - start), 1e-3), 1.0)


class PeakMemory:
    """Peak memory of a block: torch.cuda.max_memory_allocated on a GPU; on a CPU the growth of the
    process's resident high-water mark (ru_maxrss), a lower bound: 0 when the block stayed under an
    earlier peak. On a GPU, `steady_state()` restarts the count after a first call, whose one-off
    allocations (library autotuning workspaces, compilation) are kept apart in `first_call_mib`."""

    def __init__(self, device: torch.device):
        self.device = device
        self.mib: float | None = None
        self.first_call_mib: float | None = None
        self.kind = "cuda max allocated" if device.type == "cuda" else "rss high-water growth"

    def steady_state(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.first_call_mib = torch.cuda.max_memory_allocated(self.device) / 2**20
            torch.cuda.reset_peak_memory_stats(self.device)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self.mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self._rss_kib) / 1024


def case_name(config: dict) -> str:
    return f"{config['preset']} b{config['batch']}" + (
        f" {config['steps']} steps" if config.get("steps") else ""
    )


def timed_row(
    stage: str,
    provider: str,
    dtype: torch.dtype,
    mode: str,
    timing: Timing,
    items: int,
    unit: str,
    config: dict,
    roofline_tflops: float | None,
) -> Row:
    """A measured row; config holds batch, steps, preset and, where known, the FLOPs of one call."""
    p20, p50, p80 = timing.quantiles_ms
    of_peak = None
    if config.get("flops") is not None:
        config["tflop_per_s"] = config["flops"] / p50 / 1e9
        if roofline_tflops:
            of_peak = config["tflop_per_s"] / roofline_tflops
    config["timed_runs"] = timing.runs
    return Row(
        op=stage,
        case=case_name(config),
        dtype=str(dtype).removeprefix("torch."),
        provider=provider,
        mode=mode,
        median_ms=p50,
        rate=items / p50 * 1e3,
        rate_unit=unit,
        of_peak=of_peak,
        first_call_s=timing.first_call_s,
        p20_ms=p20,
        p80_ms=p80,
        config=config,
    )


def skipped_row(stage: str, provider: str, dtype: torch.dtype, mode: str, config: dict, reason: str) -> Row:
    return Row(
        op=stage,
        case=case_name(config),
        dtype=str(dtype).removeprefix("torch."),
        provider=provider,
        mode=mode,
        median_ms=None,
        rate=None,
        rate_unit="",
        config=config,
        skipped=reason,
    )


def failure_reason(error: BaseException) -> str:
    """One line for a skipped row: a cap, a missing backend, or the failure's type and first line."""
    from bench.sampling import Skip

    if isinstance(error, TimeLimitExceeded | Skip):
        return str(error)
    cause = error.__cause__ or error.__context__
    for _ in range(20):  # a cap that compiling code wrapped in its own error (a chain, maybe a cycle)
        if cause is None:
            break
        if isinstance(cause, TimeLimitExceeded):
            return str(cause)
        cause = cause.__cause__ or cause.__context__
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return "failed: CUDA out of memory"
    first_line = (str(error).strip().splitlines() or [""])[0][:200]
    return f"failed: {type(error).__name__}: {first_line}"


def add_reference_ratios(rows: list[Row]) -> None:
    """vs_reference: the reference row's time of the same stage and case / each row's time."""
    reference = {(r.op, r.case): r for r in rows if r.provider == "reference" and r.median_ms}
    for r in rows:
        ref = reference.get((r.op, r.case))
        if ref is not None and r.median_ms:
            r.vs_reference = ref.median_ms / r.median_ms


def release_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
