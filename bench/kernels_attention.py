"""Attention: the Triton kernel vs PyTorch at the model's real attention shapes, forward and
forward+backward. Run through bench/kernels.py, which prints the table.

Shapes (batch as trained, 320 x 320 maps, 80 x 80 latents):
  swin  Swin window attention, batch 32: 80 x 80 padded to 84 x 84 = 144 windows of 7 x 7 = 49 tokens,
        4 heads of 32, relative position bias + shifted-window mask (144, 4, 49, 49) with its gradient;
  unet  UNet mid attention, batch 32, 4 heads of 32 over 10 x 10 = 100 tokens, no bias;
  vae   VAE mid attention, batch 2 (the VAE trainer's), one head of 512 over 80 x 80 = 6,400 tokens.
--quick: batch 1 and a 40 x 40 VAE latent.
Providers: `triton` (irt4.kernels.attention, CUDA only), `sdpa_best` (SDPA's flash backend without a
bias, its memory-efficient backend with one), `sdpa_math`, `eager` (the reference `attention_ref` in
the input dtype) and `compile` (torch.compile of it). A backend that declines the inputs (SDPA's
fused backends on a CPU, say) is skipped with a line saying why. Rate: TFLOP/s of `attention_flops`
(forward 4 N^2 d per head; forward+backward 3.5x that).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from irt4.kernels.attention import attention, attention_flops, attention_ref
from torch.nn.attention import SDPBackend, sdpa_kernel

MASKED_LOGIT = -100.0  # the Swin shifted-window mask value (irt4.models.swin.MASKED_LOGIT)
WINDOWS = (84 // 7) ** 2


def attention_shapes(quick: bool) -> dict[str, tuple[tuple[int, ...], tuple[int, ...] | None]]:
    """name -> (q shape (..., N, d), bias shape or None)."""
    batch = 1 if quick else 32
    return {
        "swin": ((batch, WINDOWS, 4, 49, 32), (WINDOWS, 4, 49, 49)),
        "unet": ((batch, 4, 100, 32), None),
        "vae": ((1, 1, 1600, 512) if quick else (2, 1, 6400, 512), None),
    }


def _inputs(shape, bias_shape, dtype, device) -> tuple[torch.Tensor, ...]:
    q, k, v = (torch.randn(shape, dtype=dtype, device=device, requires_grad=True) for _ in range(3))
    if bias_shape is None:
        return q, k, v, None
    # Swin's: a learned bias with a -100 mask on a third of the pairs, as a shifted window has.
    bias = torch.randn(bias_shape, dtype=dtype, device=device)
    mask = torch.rand(bias_shape, device=device) < 1 / 3
    return q, k, v, bias.masked_fill(mask, MASKED_LOGIT).requires_grad_()


def _sdpa(backend: SDPBackend) -> Callable:
    def run(q, k, v, bias):
        shape = q.shape
        # SDPA's fused backends take 4-D inputs only: Swin's (B, nW, heads, N, d) as (B, nW heads, N, d)
        # and its bias (nW, heads, N, N) as (1, nW heads, N, N), both views
        if q.ndim == 5:
            q, k, v = (t.flatten(1, 2) for t in (q, k, v))
            bias = bias.flatten(0, 1)[None]
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias).view(shape)

    return run


def _plain_pytorch(q, k, v, bias):
    return attention_ref(q, k, v, bias, upcast=False)


def run(harness) -> list:
    """harness: bench/kernels.py's Harness (device, quick, timer)."""
    dtypes = [torch.float32] if harness.quick else [torch.bfloat16, torch.float32]
    rows = []
    for dtype in dtypes:
        for name, (shape, bias_shape) in attention_shapes(harness.quick).items():
            torch._dynamo.reset()  # a fresh compile per case (see kernels_group_norm.py)
            best = SDPBackend.FLASH_ATTENTION if bias_shape is None else SDPBackend.EFFICIENT_ATTENTION
            providers: dict[str, Callable] = {
                "sdpa_best": _sdpa(best),
                "sdpa_math": _sdpa(SDPBackend.MATH),
                "eager": _plain_pytorch,
                "compile": torch.compile(_plain_pytorch, fullgraph=True, dynamic=False),
            }
            if harness.run_triton:
                providers = {"triton": attention, **providers}
            case = f"{name} q{tuple(shape)}" + ("" if bias_shape is None else f" bias{tuple(bias_shape)}")
            rows.extend(_bench_case(harness, providers, case, shape, bias_shape, dtype))
            if harness.device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def _bench_case(harness, providers, case, shape, bias_shape, dtype) -> list:
    inputs = _inputs(shape, bias_shape, dtype, harness.device)
    leaves = [t for t in inputs if t is not None]
    grad_out = torch.randn_like(inputs[0])
    rows = []
    for provider, fn in providers.items():

        def forward(fn=fn):
            with torch.no_grad():
                return fn(*inputs)

        def forward_backward(fn=fn):
            return torch.autograd.grad(fn(*inputs), leaves, grad_out)

        for mode, step, flops_mode in (("fwd", forward, "fwd"), ("fwd+bwd", forward_backward, "fwd_bwd")):
            try:
                with warnings.catch_warnings():  # SDPA warns why a backend declines, then raises
                    warnings.simplefilter("ignore")
                    median_ms, first_call_s = harness.time_ms(step)
            except RuntimeError as error:
                reason = (str(error).strip().splitlines() or ["error"])[0]
                print(f"skip attention {case} {provider} {mode}: {reason[:100]}")
                continue
            rows.append(
                harness.record(
                    op="attention",
                    case=case,
                    dtype=str(dtype).removeprefix("torch."),
                    provider=provider,
                    mode=mode,
                    median_ms=median_ms,
                    rate=attention_flops(shape, flops_mode) / median_ms / 1e9,
                    rate_unit="TFLOP/s",
                    first_call_s=first_call_s,
                )
            )
    return rows
