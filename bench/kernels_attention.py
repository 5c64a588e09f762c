"""Time the Triton attention against PyTorch at the model's real attention shapes, forward and fwd+bwd.

    python bench/kernels_attention.py [--dtypes bf16,fp32] [--repeats 30] [--quick]

Shapes (batch as trained, 320 x 320 maps, 80 x 80 latents):
  swin  Swin window attention, batch 32: 80 x 80 padded to 84 x 84 = 144 windows of 7 x 7 = 49 tokens,
        4 heads of 32, relative position bias + shifted-window mask (144, 4, 49, 49) with its gradient;
  unet  UNet mid attention, batch 32, 4 heads of 32 over 10 x 10 = 100 tokens, no bias;
  vae   VAE mid attention, batch 2 (the VAE trainer's), one head of 512 over 80 x 80 = 6,400 tokens.
Providers: `triton` (kernels.attention), each PyTorch SDPA backend that accepts the inputs (flash where
there is no bias and d <= 256, memory-efficient, cuDNN; the fastest is "SDPA's best"), SDPA's math path,
the eager reference (`attention_ref`) and torch.compile of it. TFLOP/s use `attention_flops` (forward
4 N^2 d per head; forward+backward 3.5x that). Times: median (p20, p80) over --repeats after warm-up,
CUDA events on a GPU. On a CPU only a quick fp32 run of the eager PyTorch paths at batch 1 and a 40 x 40 VAE
latent (the Triton kernels would run in the interpreter, whose timings mean nothing). Timing is never
asserted anywhere.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from datetime import datetime

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from kernels.attention import attention, attention_flops, attention_ref

MASKED_LOGIT = -100.0
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
SDPA_BACKENDS = {
    "sdpa_flash": SDPBackend.FLASH_ATTENTION,
    "sdpa_mem_efficient": SDPBackend.EFFICIENT_ATTENTION,
    "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
}


def attention_shapes(quick: bool = False) -> dict[str, dict]:
    """name -> q shape (..., N, d) and bias shape (or None): the model's real sizes, or batch 1 (and a
    40 x 40 VAE latent) for a quick run."""
    windows = (84 // 7) ** 2
    return {
        "swin": dict(shape=(1 if quick else 32, windows, 4, 49, 32), bias=(windows, 4, 49, 49)),
        "unet": dict(shape=(1 if quick else 32, 4, 100, 32), bias=None),
        "vae": dict(shape=(1, 1, 1600, 512) if quick else (2, 1, 6400, 512), bias=None),
    }


def make_inputs(shape, bias_shape, dtype, device) -> tuple[torch.Tensor, ...]:
    q, k, v = (torch.randn(shape, dtype=dtype, device=device, requires_grad=True) for _ in range(3))
    if bias_shape is None:
        return q, k, v, None
    # Swin's: a learned bias with a -100 mask on a third of the pairs, as a shifted window has.
    bias = torch.randn(bias_shape, dtype=dtype, device=device)
    mask = torch.rand(bias_shape, device=device) < 1 / 3
    bias = bias.masked_fill(mask, MASKED_LOGIT).requires_grad_()
    return q, k, v, bias


def sdpa_with(backend: SDPBackend) -> Callable:
    def run(q, k, v, bias, scale=None):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)

    return run


def providers(device: str, quick: bool) -> dict[str, Callable]:
    def reference(q, k, v, bias, scale=None):
        return attention_ref(q, k, v, bias, scale, upcast=False)

    found: dict[str, Callable] = {}
    if device == "cuda":
        found["triton"] = attention
        found.update({name: sdpa_with(backend) for name, backend in SDPA_BACKENDS.items()})
    found["sdpa_math"] = sdpa_with(SDPBackend.MATH)
    found["eager_ref"] = reference
    if not quick:
        found["compiled_ref"] = torch.compile(reference, fullgraph=True)
    return found


def make_step(fn: Callable, mode: str, inputs: tuple, grad_out: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        if mode == "fwd":
            with torch.no_grad():
                fn(*inputs)
        else:
            fn(*inputs).backward(grad_out)
            for t in inputs:
                if t is not None:
                    t.grad = None

    return step


def timings_ms(step: Callable[[], None], device: str, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            start_s = time.perf_counter()
            step()
            times.append((time.perf_counter() - start_s) * 1e3)
    return times


def bench_attention(device: str, dtypes: list[str], repeats: int, quick: bool) -> list[dict]:
    """One row per (shape, dtype, mode, provider): median/p20/p80 ms, TFLOP/s; unsupported inputs skipped."""
    rows = []
    for dtype_name in dtypes:
        dtype = DTYPES[dtype_name]
        for shape_name, spec in attention_shapes(quick).items():
            inputs = make_inputs(spec["shape"], spec["bias"], dtype, device)
            grad_out = torch.randn_like(inputs[0])
            for provider, fn in providers(device, quick).items():
                for mode in ("fwd", "fwd_bwd"):
                    step = make_step(fn, mode, inputs, grad_out)
                    try:
                        with warnings.catch_warnings():  # SDPA warns why a backend declines, then raises
                            warnings.simplefilter("ignore")
                            # The first call, reported apart: it holds torch.compile's and Triton's compile.
                            first_ms = timings_ms(step, device, warmup=0, repeats=1)[0]
                    except RuntimeError as error:
                        first_line = str(error).strip().splitlines()[0] if str(error).strip() else "error"
                        print(f"  skip {shape_name} {dtype_name} {provider} {mode}: {first_line[:100]}")
                        continue
                    times = sorted(timings_ms(step, device, warmup=1 if quick else 10, repeats=repeats))
                    median = statistics.median(times)
                    rows.append(
                        dict(
                            op="attention",
                            shape=shape_name,
                            config=f"q={tuple(spec['shape'])} bias={spec['bias']}",
                            dtype=dtype_name,
                            mode=mode,
                            provider=provider,
                            p20_ms=times[len(times) // 5],
                            p50_ms=median,
                            p80_ms=times[(4 * len(times)) // 5],
                            tflops=attention_flops(spec["shape"], mode) / (median * 1e-3) / 1e12,
                            first_call_ms=first_ms,
                        )
                    )
            del inputs, grad_out
            if device == "cuda":
                torch.cuda.empty_cache()
    return rows


def print_table(rows: list[dict], baseline: str) -> None:
    """Markdown table; "x baseline": provider median / baseline median (> 1: the baseline is faster)."""
    base = {(r["shape"], r["dtype"], r["mode"]): r["p50_ms"] for r in rows if r["provider"] == baseline}
    print(
        f"| shape | dtype | mode | provider | median ms (p20-p80) | TFLOP/s | x {baseline} | first call ms |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        reference = base.get((r["shape"], r["dtype"], r["mode"]))
        ratio = f"{r['p50_ms'] / reference:.2f}" if reference else "-"
        print(
            f"| {r['shape']} | {r['dtype']} | {r['mode']} | {r['provider']} | {r['p50_ms']:.3f} "
            f"({r['p20_ms']:.3f}-{r['p80_ms']:.3f}) | {r['tflops']:.3g} | {ratio} "
            f"| {r['first_call_ms']:.0f} |"
        )


def device_description(device: str) -> str:
    if device == "cuda":
        return f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dtypes", help="comma-separated, of bf16, fp16, fp32 (default bf16,fp32; CPU: fp32)"
    )
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="batch 1, few repeats, no torch.compile")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    quick = args.quick or device == "cpu"
    repeats = min(args.repeats, 3) if quick else args.repeats
    stamp = f"{datetime.now():%Y-%m-%d %H:%M}"
    print(f"# attention, {device_description(device)}, torch {torch.__version__}, {stamp}")
    if device == "cpu":
        print("# CPU: PyTorch paths only, quick (the Triton kernels would run in the interpreter)")
    dtypes = (args.dtypes or ("bf16,fp32" if device == "cuda" else "fp32")).split(",")
    rows = bench_attention(device, dtypes, repeats, quick)
    print_table(rows, baseline="triton" if device == "cuda" else "eager_ref")


if __name__ == "__main__":
    main()
