"""Where the time of one UNet step and one VAE decode goes, grouped by what it is spent on.

    python -m bench.profile [--preset irt4-radiodiff] [--device cpu|cuda] [--batch N]
                            [--precision fp32|bf16] [--repeat 3] [--no-fold] [--levers nhwc,triton]
                            [--out bench/results/profile]

Each network runs under torch.profiler (shapes and FLOPs recorded) after a warm-up, as the sampler
of irt4-infer runs it (the UNet step with the condition features computed once beforehand and its
weight standardization folded, unless --no-fold shows the reference's per-call cost; bf16 through
autocast).
Every operator's self time (device time on CUDA, CPU time otherwise) goes to one group:
convolutions, matrix products, norms, attention (softmax, SDPA), FFT, elementwise, copies and
layout, other; "outside operators" is the wall time of the call (measured without the profiler) less
the operators' time: launch gaps and Python on CUDA (on the CPU the profiler's own overhead makes the
operators' times add up to more than the wall time, so shares are of the operators' time). FLOPs are the
profiler's (convolutions and matrix products only), and GB/s is an estimate: the bytes of each
operator's input tensors, read once, and one output of its first input's size, over its time.

Writes <out>/<date>-profile-<device>.json and .md; bench/RESULTS.md shows the newest table of each
device (python -m bench.run --regenerate). Timing is measured, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

GROUPS = (
    "convolutions",
    "matrix products",
    "norms",
    "attention",
    "FFT",
    "elementwise",
    "copies and layout",
    "other",
)
_GROUP_WORDS = (  # the first group whose words occur in an operator's name
    ("convolutions", ("conv",)),
    ("matrix products", ("mm", "matmul", "linear", "addmm", "bmm")),
    ("norms", ("group_norm", "layer_norm", "batch_norm", "native_norm")),
    ("attention", ("softmax", "scaled_dot_product", "flash", "efficient_attention")),
    ("FFT", ("fft",)),
    (
        "copies and layout",
        (
            "copy",
            "contiguous",
            "clone",
            "cat",
            "_to_",
            "to_dtype",
            "pad",
            "upsample",
            "interpolate",
            "roll",
            "index",
            "gather",
            "scatter",
            "stack",
            "repeat",
            "expand_as",
            "fill",
            "empty",
            "zeros",
        ),
    ),  # fmt: skip
    (
        "elementwise",
        (
            "add",
            "mul",
            "sub",
            "div",
            "silu",
            "gelu",
            "sigmoid",
            "exp",
            "log",
            "sqrt",
            "rsqrt",
            "clamp",
            "where",
            "neg",
            "pow",
            "mean",
            "sum",
            "var",
            "std",
            "max",
            "min",
            "abs",
            "tanh",
            "sin",
            "cos",
            "softsign",
            "relu",
            "lerp",
            "addcmul",
            "addcdiv",
            "erf",
        ),
    ),  # fmt: skip
)
_VIEWS = ("view", "reshape", "permute", "transpose", "unsqueeze", "squeeze", "flatten", "unflatten",
          "slice", "select", "expand", "as_strided", "chunk", "split", "narrow", "detach", "t", "alias",
          "unbind", "view_as_complex", "view_as_real", "_unsafe_view", "empty_like", "resolve")  # fmt: skip
_BYTES = {torch.float32: 4, torch.bfloat16: 2, torch.float16: 2}


def op_group(name: str) -> str | None:
    """The group of an operator (aten::convolution -> convolutions); None for views, which cost nothing."""
    short = name.split("::")[-1].lower()
    if short.strip("_") in _VIEWS:
        return None
    for group, words in _GROUP_WORDS:
        if any(word in short for word in words):
            return group
    return "other"


@dataclass
class GroupTotal:
    ms: float = 0.0
    calls: int = 0
    flops: float = 0.0
    bytes: float = 0.0


def _event_bytes(event, element_bytes: int) -> float:
    shapes = [s for s in (event.input_shapes or []) if isinstance(s, (list, tuple)) and s]
    numels = [float(torch.Size(s).numel()) for s in shapes if all(isinstance(d, int) for d in s)]
    if not numels:
        return 0.0
    return (sum(numels) + numels[0]) * element_bytes * event.count


def group_events(events, on_device: bool, element_bytes: int) -> dict[str, GroupTotal]:
    """Per group: self time (ms), calls, FLOPs and estimated bytes of the profiler's averaged events."""
    totals = {group: GroupTotal() for group in GROUPS}
    for event in events:
        group = op_group(event.key)
        if group is None:
            continue
        self_us = event.self_device_time_total if on_device else event.self_cpu_time_total
        if self_us <= 0:
            continue
        total = totals[group]
        total.ms += self_us / 1e3
        total.calls += event.count
        total.flops += float(event.flops or 0)
        total.bytes += _event_bytes(event, element_bytes)
    return totals


def _autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def profile_call(fn, device: torch.device, precision: str, repeat: int) -> dict:
    """Profile `repeat` calls of fn (after two warm-up calls): per-group table rows and the wall time."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), _autocast(device, precision):
        for _ in range(2):
            fn()
        _sync(device)
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        _sync(device)
        wall_ms = (time.perf_counter() - start) * 1e3 / repeat
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities, record_shapes=True, with_flops=True) as prof:
            for _ in range(repeat):
                fn()
            _sync(device)
    events = prof.key_averages(group_by_input_shape=True)
    element_bytes = _BYTES[torch.bfloat16 if precision == "bf16" else torch.float32]
    totals = group_events(events, device.type == "cuda", element_bytes)
    rows = []
    busy = 0.0
    for group, total in totals.items():
        ms = total.ms / repeat
        busy += ms
        rows.append(
            {
                "group": group,
                "ms": ms,
                "calls": total.calls // repeat,
                "gflop": total.flops / repeat / 1e9,
                "tflops": total.flops / repeat / (ms * 1e-3) / 1e12 if total.flops and ms else None,
                "gbps": total.bytes / repeat / (ms * 1e-3) / 1e9 if total.bytes and ms else None,
            }
        )
    rows.append(
        {"group": "outside operators", "ms": max(wall_ms - busy, 0.0), "calls": None, "gflop": 0.0}
        | {"tflops": None, "gbps": None}
    )
    return {"wall_ms": wall_ms, "operators_ms": busy, "rows": rows}


LEVERS = ("nhwc", "triton")


def build_calls(
    preset: str,
    device: torch.device,
    batch: int,
    precision: str = "fp32",
    fold: bool = True,
    seed: int = 0,
    levers: tuple[str, ...] = (),
):
    """(UNet step, VAE decode) closures on random weights and inputs of the preset. `levers`: "nhwc"
    stores the conv and linear weights in the run's precision once, channels_last, and feeds
    channels_last inputs (irt4.models.precision); "triton" runs irt4's Triton kernels (use_kernels)."""
    from irt4.config import load_config
    from irt4.models.kernel_switch import use_kernels
    from irt4.models.layers import fold_weight_standardization
    from irt4.models.precision import cast_inference_weights
    from irt4.models.radiodiff import RadioDiff

    unknown = set(levers) - set(LEVERS)
    if unknown:
        raise ValueError(f"unknown levers {sorted(unknown)}; known: {list(LEVERS)}")
    torch.manual_seed(seed)
    cfg = load_config(preset)
    model = RadioDiff(cfg).to(device).eval()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    if fold:
        fold_weight_standardization(model.unet, dtype)
    layout = torch.channels_last if "nhwc" in levers else torch.contiguous_format
    if "nhwc" in levers:
        cast_inference_weights(model, dtype, channels_last=True)  # for the model's lifetime
    if "triton" in levers:
        use_kernels(model, "triton")
    latent = (batch, *model.latent_shape)
    cond = torch.rand(batch, len(cfg.data.condition), cfg.image_size, cfg.image_size, device=device) * 2 - 1
    cond = cond.contiguous(memory_format=layout)
    x = torch.randn(latent, device=device).contiguous(memory_format=layout)
    t = torch.full((batch,), 0.5, device=device)
    with torch.no_grad(), contextlib.ExitStack() as stack:
        if precision == "bf16":
            stack.enter_context(torch.autocast(device.type, dtype=torch.bfloat16))
        features = model.unet.encode_condition(cond)

    def unet_step():
        return model.unet.denoise(x, t, features)

    def vae_decode():
        return model.decode_latents(x)

    return {"UNet step": unet_step, "VAE decode": vae_decode}, cfg


def markdown(result: dict) -> str:
    levers = result.get("levers") or []
    lines = [
        f"Profile of {result['preset']}, batch {result['batch']}, {result['precision']}"
        f"{'' if result.get('fold', True) else ', weight standardization per call'}"
        f"{', levers: ' + ' + '.join(levers) if levers else ''}, "
        f"{result['device_description']}, {result['date']} (`python -m bench.profile`; GB/s estimated)",
    ]
    for name, part in result["networks"].items():
        lines += [
            "",
            f"{name}: {part['wall_ms']:.1f} ms per call ({part['operators_ms']:.1f} ms in operators)",
            "",
            "| group | ms | share of operators | calls | GFLOP | TFLOP/s | GB/s |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for row in part["rows"]:
            share = row["ms"] / part["operators_ms"] if part["operators_ms"] else 0.0
            calls = "" if row["calls"] is None else str(row["calls"])
            tflops = "" if row["tflops"] is None else f"{row['tflops']:.2f}"
            gbps = "" if row["gbps"] is None else f"{row['gbps']:.0f}"
            cells = [
                row["group"],
                f"{row['ms']:.2f}",
                f"{share:.0%}",
                calls,
                f"{row['gflop']:.1f}",
                tflops,
                gbps,
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_profile(
    preset: str,
    device: str,
    batch: int,
    precision: str,
    repeat: int,
    fold: bool = True,
    levers: tuple[str, ...] = (),
) -> dict:
    from bench.kernels import device_description

    torch_device = torch.device(device)
    calls, _ = build_calls(preset, torch_device, batch, precision, fold, levers=levers)
    result = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": platform.processor(),
        "device": torch_device.type,
        "device_description": device_description(torch_device),
        "torch_version": torch.__version__,
        "preset": preset,
        "batch": batch,
        "precision": precision,
        "fold": fold,
        "levers": list(levers),
        "repeat": repeat,
        "networks": {name: profile_call(fn, torch_device, precision, repeat) for name, fn in calls.items()},
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="irt4-radiodiff", help="model preset (default: %(default)s)")
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda"
    )
    parser.add_argument("--batch", type=int, default=None, help="batch (default: 32 on CUDA, 1 on the CPU)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="(default: fp32)")
    parser.add_argument("--repeat", type=int, default=3, help="profiled calls per network (default: 3)")
    parser.add_argument(
        "--no-fold", action="store_true", help="standardize the conv weights at every call, as the reference"
    )
    parser.add_argument(
        "--levers",
        default="",
        help=f"comma-separated speed levers to profile with: {', '.join(LEVERS)} (nhwc: weights cast to the "
        "precision once and channels_last, channels_last inputs; triton: irt4's Triton kernels)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/profile"), help="results folder")
    args = parser.parse_args(argv)
    levers = tuple(lever for lever in args.levers.split(",") if lever)
    if set(levers) - set(LEVERS):
        parser.error(f"--levers: unknown {sorted(set(levers) - set(LEVERS))}; known: {', '.join(LEVERS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    batch = args.batch or (32 if args.device == "cuda" else 1)
    fold = not args.no_fold
    result = run_profile(args.preset, args.device, batch, args.precision, args.repeat, fold, levers)
    from bench.report import write_dated

    write_dated(args.out, f"profile-{result['device']}", result, markdown(result))
    return 0


def newest_tables(folder: Path) -> dict[str, str]:
    """device (with its levers, if any) -> the markdown table of its newest profile in `folder`."""
    newest: dict[str, tuple[str, str]] = {}
    for path in sorted(folder.glob("*-profile-*.json")):
        result = json.loads(path.read_text())
        levers = result.get("levers") or []
        device = result.get("device", "?") + (f" ({' + '.join(levers)})" if levers else "")
        if device not in newest or result["date"] >= newest[device][0]:
            newest[device] = (result["date"], markdown(result))
    return {device: table for device, (_, table) in newest.items()}


if __name__ == "__main__":
    raise SystemExit(main())
