"""GroupNorm(+scale-shift)(+SiLU): the Triton kernel vs plain PyTorch (eager) and torch.compile of
the same reference, at the shapes the models run (batch 32 at 80x80 and below). Run through
bench/kernels.py, which prints the table.

Rate = the minimal traffic over the time: the forward reads x and writes y (2 x bytes of x), the
backward reads x and dy and writes dx (3 x), so forward+backward moves 5 x bytes of x. The kernel
reads x twice in the forward (statistics, then normalization) and x, dy twice in the backward, so
its own traffic is 3 x and 7 x: 2/3 and 5/7 of the copy bandwidth are its ceilings on that count.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from irt4.kernels.group_norm import group_norm_silu, group_norm_silu_ref

# (name, shape, groups, eps, scale-shift): the UNet's ConvGroupNormSiLU per level, the VAE's widest block
CASES = [
    ("unet l1", (32, 128, 80, 80), 8, 1e-5, True),
    ("unet l2", (32, 256, 40, 40), 8, 1e-5, True),
    ("unet l3", (32, 512, 20, 20), 8, 1e-5, True),
    ("vae", (32, 512, 80, 80), 32, 1e-6, False),
]
QUICK_CASES = [("unet small", (4, 128, 20, 20), 8, 1e-5, True)]


def _plain_pytorch(x, weight, bias, num_groups, eps, scale, shift):
    return group_norm_silu_ref(x, weight, bias, num_groups, eps, scale, shift, upcast=False)


def run(harness) -> list:
    """harness: bench/kernels.py's Harness (device, quick, timer, measured copy bandwidth)."""
    dtypes = [torch.float32] if harness.quick else [torch.float32, torch.bfloat16]
    rows = []
    for name, shape, num_groups, eps, scale_shift in QUICK_CASES if harness.quick else CASES:
        for dtype in dtypes:
            case = f"{name} {tuple(shape)} g{num_groups}" + (" scale-shift" if scale_shift else "")
            # a fresh compile per case, static shapes: Dynamo's cache (and its recompile limit, past
            # which it silently runs eager) is per code object, shared by every torch.compile of it
            torch._dynamo.reset()
            providers: dict[str, Callable] = {
                "eager": _plain_pytorch,
                "compile": torch.compile(_plain_pytorch, fullgraph=True, dynamic=False),
            }
            if harness.run_triton:
                providers["triton"] = group_norm_silu
            rows.extend(_bench_case(harness, providers, case, shape, num_groups, eps, scale_shift, dtype))
            if harness.device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def _bench_case(harness, providers, case, shape, num_groups, eps, scale_shift, dtype) -> list:
    device = harness.device
    batch, channels = shape[:2]
    x = torch.randn(shape, device=device, dtype=dtype)
    weight = torch.randn(channels, device=device, dtype=dtype)
    bias = torch.randn(channels, device=device, dtype=dtype)
    scale = torch.randn(batch, channels, 1, 1, device=device, dtype=dtype) if scale_shift else None
    shift = torch.randn(batch, channels, 1, 1, device=device, dtype=dtype) if scale_shift else None
    grad_out = torch.randn_like(x)
    leaves = [t.requires_grad_() for t in (x, weight, bias, scale, shift) if t is not None]
    bytes_of_x = x.numel() * x.element_size()

    rows = []
    for provider, fn in providers.items():

        def forward(fn=fn):
            with torch.no_grad():
                return fn(x, weight, bias, num_groups, eps, scale, shift)

        def forward_backward(fn=fn):
            y = fn(x, weight, bias, num_groups, eps, scale, shift)
            return torch.autograd.grad(y, leaves, grad_out)

        for mode, step, traffic in (("fwd", forward, 2), ("fwd+bwd", forward_backward, 5)):
            median_ms, first_call_s = harness.time_ms(step)
            gbps = traffic * bytes_of_x / median_ms / 1e6
            rows.append(
                harness.record(
                    op="group_norm_silu",
                    case=case,
                    dtype=str(dtype).removeprefix("torch."),
                    provider=provider,
                    mode=mode,
                    median_ms=median_ms,
                    rate=gbps,
                    rate_unit="GB/s",
                    of_peak=gbps / harness.copy_gbps,
                    first_call_s=first_call_s,
                )
            )
    return rows
