"""Every Triton kernel of kernels/ compiles for real NVIDIA GPUs (sm_90 and sm_80), checked without a GPU.

The other kernel tests run the kernels in Triton's interpreter, which accepts what the GPU compiler rejects
(a global that is not a tl.constexpr, Python-only constructs, ...) and ignores resource limits. This test
compiles each kernel ahead of time, as a launch on a GPU would: the Python launchers (`_forward_triton`,
`_backward_triton`, `group_norm._forward`, `group_norm._backward`) run on "meta" tensors laid out as the
model lays them out, the kernel launches are recorded instead of run, Triton's own launch binder turns each
one into the signature, constexprs and specialization attributes a real launch would use, and
`triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))` runs every stage, frontend (ttir),
ttgir, llir, ptx and cubin (ptxas ships with triton). No driver is needed. Each kernel's shared memory must
also fit the target's per-block limit, which a launch would otherwise refuse (OutOfResources).

The compilation runs in a subprocess with TRITON_INTERPRET=0 because the flag is read when the kernels are
decorated (at import) and tests/conftest.py sets it to 1 for the rest of the suite; the subprocess is this
file run as a script (`TRITON_INTERPRET=0 python tests/kernels/test_gpu_compile.py`), which prints a table
(shared memory, and registers per thread and stack/spill bytes from cuobjdump, for tuning) or JSON.
Compiled kernels land in Triton's cache (TRITON_CACHE_DIR, by default ~/.triton/cache), keyed by the
kernel's source, its callees, the target and the Triton version, so a rerun recompiles only what changed.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ARCHS = (90, 80)
# Largest dynamic shared memory per block (cudaDevAttrMaxSharedMemoryPerBlockOptin): H100/H200, A100.
SHARED_LIMIT = {90: 232448, 80: 166912}
LIMIT_S = 600  # the whole compile run; cold cache on 2 busy cores: ~60 s for QUICK, 100-160 s for all
# IRT4_GPU_COMPILE=all: every case below; otherwise the QUICK subset (every kernel, both dtype families,
# the three attention tile configurations, the largest shared memory) and the other cases skip, saying so.
ALL_CASES = os.environ.get("IRT4_GPU_COMPILE") == "all"

# ---------------------------------------------------------------- the launches (model shapes and layouts)

# attention case -> dtypes; the shapes are built in `_attention_launches`
ATTENTION_CASES = {
    "swin_shifted_window_n49_d32": ("float32", "bfloat16", "float16"),
    "unet_mid_n100_d32": ("float32", "bfloat16"),
    "vae_mid_n6400_d512": ("float32", "bfloat16"),
    "small_vae_mid_n1024_d128": ("float32", "bfloat16"),
    "small_unet_mid_n16_d16": ("float32", "bfloat16"),
}
# group norm case -> ((B, C, H, W), groups, (scale, shift, silu), channels_last), in GROUP_NORM_DTYPES
GROUP_NORM_CASES = {
    "unet_level1_scale_shift_silu": ((2, 128, 80, 80), 8, (True, True, True), False),
    "unet_deepest_silu": ((2, 512, 10, 10), 8, (False, False, True), False),
    "vae_320_silu": ((1, 128, 320, 320), 32, (False, False, True), False),
    "vae_80_plain_channels_last": ((1, 512, 80, 80), 32, (False, False, False), True),
    # 4 channels x 1,024 pixels per group: the one-program forward (group_norm.ONE_PASS_ELEMENTS)
    "small_unet_one_pass_channels_last": ((2, 32, 32, 32), 8, (True, True, True), True),
}
GROUP_NORM_DTYPES = ("float32", "bfloat16")

CASES = [("attention", name, dtype) for name, dtypes in ATTENTION_CASES.items() for dtype in dtypes] + [
    ("group_norm", name, dtype) for name in GROUP_NORM_CASES for dtype in GROUP_NORM_DTYPES
]
QUICK = [
    ("attention", "swin_shifted_window_n49_d32", "float32"),
    ("attention", "swin_shifted_window_n49_d32", "bfloat16"),
    ("attention", "vae_mid_n6400_d512", "float32"),
    ("attention", "vae_mid_n6400_d512", "bfloat16"),
    ("attention", "small_vae_mid_n1024_d128", "bfloat16"),
    ("group_norm", "unet_level1_scale_shift_silu", "bfloat16"),
    ("group_norm", "vae_80_plain_channels_last", "float32"),
    ("group_norm", "small_unet_one_pass_channels_last", "bfloat16"),
]


def _attention_launches(name: str, dtype):
    """Run the attention launchers on meta tensors shaped as the model's call site makes them."""
    import torch
    from irt4.kernels import attention as module

    meta = dict(device="meta", dtype=dtype)
    bias, bias_grad = None, False
    if name.startswith("swin"):  # Swin: qkv (B, nW, N, 3, heads, d) permuted to (B, nW, heads, N, d)
        b, windows, heads, n, d = 2, 4, 4, 49, 32
        q = torch.empty(b, windows, n, 3, heads, d, **meta).permute(3, 0, 1, 4, 2, 5)[0]
        # fp32 relative position table + shifted-window mask, a parameter: its gradient is computed
        bias, bias_grad = torch.empty(windows, heads, n, n, device="meta"), True
        grad_out = torch.empty(b, windows, n, heads, d, **meta).transpose(2, 3)
    else:  # UNet / VAE mid attention: (B, heads, d, N) feature maps, transposed to (B, heads, N, d)
        b, heads, d, n = {
            "unet_mid_n100_d32": (2, 4, 32, 100),
            "vae_mid_n6400_d512": (1, 1, 512, 6400),
            "small_vae_mid_n1024_d128": (1, 1, 128, 1024),
            "small_unet_mid_n16_d16": (2, 4, 16, 16),
        }[name]
        q = torch.empty(b, heads, d, n, **meta).transpose(-2, -1)
        grad_out = torch.empty(b, heads, d, n, **meta).transpose(-2, -1)
    out, lse = module._forward_triton(q, q, q, bias, d**-0.5)
    module._backward_triton(grad_out, q, q, q, bias, out, lse, d**-0.5, bias_grad)


def _group_norm_launches(name: str, dtype):
    import torch
    from irt4.kernels import group_norm as module

    shape, groups, (has_scale, has_shift, silu), channels_last = GROUP_NORM_CASES[name]
    x = torch.empty(shape, device="meta", dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.empty(shape[1], device="meta")  # GroupNorm's fp32 parameters
    # the time embedding's scale/shift: halves of a (B, 2C) linear output in the input dtype, reshaped to
    # (B, C) by group_norm_silu as its op takes them
    scale_shift = torch.empty(shape[0], 2 * shape[1], device="meta", dtype=dtype).chunk(2, dim=1)
    scale = scale_shift[0] if has_scale else None
    shift = scale_shift[1] if has_shift else None
    y, mean, rstd = module._forward(x, weight, weight, scale, shift, groups, 1e-5, silu)
    module._backward(torch.empty_like(y), x, weight, weight, scale, shift, mean, rstd, groups, silu)


def _kernel_modules():
    import importlib
    import pkgutil

    import irt4.kernels

    return [
        importlib.import_module(f"irt4.kernels.{m.name}") for m in pkgutil.iter_modules(irt4.kernels.__path__)
    ]


def _jit_functions(module) -> dict:
    from triton.runtime.jit import JITFunction

    return {name: fn for name, fn in vars(module).items() if isinstance(fn, JITFunction)}


class _Recorder:
    """Stands in for a kernel: `kernel[grid](*args, **kwargs)` records the launch instead of running it."""

    def __init__(self, fn, launches: list):
        self.fn, self.launches = fn, launches

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((self.fn, args, kwargs))


def record_launches(kind: str, name: str, dtype_name: str) -> list:
    """[(JITFunction, args, kwargs)] of every kernel launch that one case makes."""
    import torch

    launches = []
    modules = _kernel_modules()
    saved = [(m, n, fn) for m in modules for n, fn in _jit_functions(m).items()]
    for module, attr, fn in saved:
        setattr(module, attr, _Recorder(fn, launches))
    try:
        run = _attention_launches if kind == "attention" else _group_norm_launches
        run(name, getattr(torch, dtype_name))
    finally:
        for module, attr, fn in saved:
            setattr(module, attr, fn)
    return launches


@functools.cache
def _backend(arch: int):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    target = GPUTarget("cuda", arch, 32)
    return target, make_backend(target)


def compile_launch(fn, args, kwargs, arch: int) -> dict:
    """Compile one recorded launch as JITFunction.run would on an sm_<arch> GPU; report, never raise."""
    import triton
    from triton.compiler import ASTSource
    from triton.runtime.jit import create_function_from_signature

    target, backend = _backend(arch)
    # Triton's launch path: bind the arguments, specialize them (ints equal to 1 become constexprs, pointers
    # and ints divisible by 16 get tt.divisibility), then pack signature, constexprs, attrs and options.
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    result = {
        "kernel": fn.__name__,
        "arch": arch,
        "constexprs": {fn.arg_names[path[0]]: repr(v) for path, v in constexprs.items() if len(path) == 1},
        "num_warps": options.num_warps,
        "num_stages": options.num_stages,
    }
    start = time.monotonic()
    try:
        kernel = triton.compile(
            ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__
        )
    except Exception as error:  # noqa: BLE001 - every failure is reported with its kernel and config
        result.update(ok=False, error=f"{type(error).__name__}: {error}")
    else:
        result.update(ok=True, shared=kernel.metadata.shared, stages=sorted(kernel.asm.keys()))
        result.update(_resource_usage(kernel.asm.get("cubin")))
    result["seconds"] = round(time.monotonic() - start, 2)
    return result


def _resource_usage(cubin: bytes | None) -> dict:
    """Registers per thread and stack (spill) bytes from cuobjdump (shipped with triton), for the report."""
    import re
    import tempfile

    try:
        from triton import knobs

        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(cubin)
            f.flush()
            usage = subprocess.run(
                [knobs.nvidia.cuobjdump.path, "--dump-resource-usage", f.name],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        regs, stack = re.search(r"REG:(\d+) STACK:(\d+)", usage).groups()
    except Exception:  # noqa: BLE001 - informative only
        return {}
    return {"regs": int(regs), "stack": int(stack)}


_WORK: list = []  # distinct (fn, args, kwargs, arch) to compile, set before the workers fork


def _compile_work_item(index: int) -> dict:
    return compile_launch(*_WORK[index])


def compile_all(cases, archs, jobs: int) -> dict:
    """Compile every distinct launch of `cases` for `archs`; -> {"results": [...], "kernels": [...]}."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import triton
    from triton.runtime.jit import create_function_from_signature

    keys, per_case = {}, []
    _WORK.clear()
    for case in cases:
        for fn, args, kwargs in record_launches(*case):
            for arch in archs:
                # a launch's specialization and options are Triton's own cache key: compile each once
                binder = create_function_from_signature(fn.signature, fn.params, _backend(arch)[1])
                _, specialization, options = binder(*args, **kwargs)
                key = (fn.__name__, arch, str(specialization), str(sorted(options.items())))
                if key not in keys:
                    keys[key] = len(_WORK)
                    _WORK.append((fn, args, kwargs, arch))
                per_case.append((case, keys[key]))
    if jobs > 1:
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
            compiled = list(pool.map(_compile_work_item, range(len(_WORK))))
    else:
        compiled = [_compile_work_item(i) for i in range(len(_WORK))]
    kernels = [f"{module.__name__}.{name}" for module in _kernel_modules() for name in _jit_functions(module)]
    results = [{"case": list(case), **compiled[index]} for case, index in per_case]
    return {"triton": triton.__version__, "results": results, "kernels": kernels}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Compile every kernel of kernels/ for NVIDIA GPUs, no GPU needed."
    )
    parser.add_argument(
        "--arch", type=int, nargs="+", default=list(ARCHS), help="compute capabilities, e.g. 90 80"
    )
    parser.add_argument("--case", nargs="*", help="only these case names (see --list)")
    parser.add_argument("--quick", action="store_true", help="only the QUICK cases (what pytest runs)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--json", action="store_true", help="print JSON (what the test reads), not a table")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    ns = parser.parse_args(argv)
    if ns.list:
        print("\n".join(" ".join(case) for case in CASES))
        return 0
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        parser.error("run with TRITON_INTERPRET=0: under the interpreter the kernels are not compiled")
    cases = [c for c in (QUICK if ns.quick else CASES) if not ns.case or c[1] in ns.case]
    report = compile_all(cases, ns.arch, ns.jobs)
    if ns.json:
        json.dump(report, sys.stdout)
        return 0
    print(f"triton {report['triton']}")
    for r in report["results"]:
        status = (
            f"shared {r['shared']:>6} B regs {r.get('regs')} stack {r.get('stack')}" if r["ok"] else "FAILED"
        )
        over = " OVER LIMIT" if r["ok"] and r["shared"] > SHARED_LIMIT.get(r["arch"], 1 << 30) else ""
        print(
            f"sm_{r['arch']} {r['case'][1]:<30} {r['case'][2]:<8} {r['kernel']:<28} warps {r['num_warps']} "
            f"stages {r['num_stages']} {status}{over} ({r['seconds']} s)"
        )
        if not r["ok"]:
            print("    " + r["error"].replace("\n", "\n    "))
    return 0 if all(r["ok"] for r in report["results"]) else 1


# ---------------------------------------------------------------- the tests (run under pytest)


def _nvidia_backend_missing() -> str | None:
    try:
        from triton.backends import backends
    except ImportError as error:
        return f"triton is not installed ({error})"
    if "nvidia" not in backends:
        return f"this triton has no CUDA backend (backends: {sorted(backends)})"
    return None


@pytest.fixture(scope="module")
def compile_report() -> dict:
    reason = _nvidia_backend_missing()
    if reason:
        pytest.skip(reason)
    env = dict(os.environ, TRITON_INTERPRET="0")
    env.pop("TRITON_ALLOW_NON_CONSTEXPR_GLOBALS", None)  # the escape hatch would hide the very errors
    done = subprocess.run(
        [sys.executable, __file__, "--json", *([] if ALL_CASES else ["--quick"])],
        env=env,
        capture_output=True,
        text=True,
        timeout=LIMIT_S,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, f"the compile run crashed:\n{done.stderr[-5000:]}"
    return json.loads(done.stdout)


_NOT_QUICK = pytest.mark.skip(reason="not in the QUICK cases: IRT4_GPU_COMPILE=all compiles every case")
_CASE_PARAMS = [
    pytest.param(*case, id="-".join(case), marks=() if ALL_CASES or case in QUICK else _NOT_QUICK)
    for case in CASES
]


@pytest.mark.parametrize("kind, name, dtype", _CASE_PARAMS)
@pytest.mark.parametrize("arch", ARCHS, ids=[f"sm{a}" for a in ARCHS])
def test_kernels_compile_for_gpu_and_fit_shared_memory(compile_report, kind, name, dtype, arch):
    results = [r for r in compile_report["results"] if r["case"] == [kind, name, dtype] and r["arch"] == arch]
    assert results, "the compile run made no launch for this case"
    failures = [f"{r['kernel']} {r['constexprs']}:\n{r['error']}" for r in results if not r["ok"]]
    assert not failures, f"triton {compile_report['triton']}, sm_{arch}:\n" + "\n\n".join(failures)
    too_big = [
        f"{r['kernel']} needs {r['shared']} B of shared memory, sm_{arch} allows {SHARED_LIMIT[arch]} "
        f"(num_warps {r['num_warps']}, num_stages {r['num_stages']}, {r['constexprs']})"
        for r in results
        if r["shared"] > SHARED_LIMIT[arch]
    ]
    assert not too_big, "\n".join(too_big)
    assert all("cubin" in r["stages"] for r in results)


def test_every_kernel_is_compiled_by_some_case(compile_report):
    compiled = {r["kernel"] for r in compile_report["results"]}
    entry_points = [name for name in compile_report["kernels"] if name.endswith("_kernel")]
    missing = [name for name in entry_points if name.rsplit(".", 1)[1] not in compiled]
    assert entry_points and not missing, f"kernels no case launches: {missing}"


if __name__ == "__main__":
    sys.exit(main())
