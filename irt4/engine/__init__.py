"""The boundary to irt4's C++/CUDA engine, `irt4._C`; nothing else imports it.

The extension is imported lazily on first use. If it is missing (a source tree that was never built),
the failure is logged once, and callers fall back to the pure-PyTorch reference in
`irt4.diffusion.schedule`. `_C` checks names, dtypes, shapes and devices of its inputs and raises
TypeError / ValueError naming the offending tensor; this module adds what needs Python: contiguity and
the current CUDA stream.

The C++ sampling engine (csrc/engine.h) is reached through `cpp_engine`, `engine_sample_latents` and
`engine_decode`; `irt4.engine.build` writes the engine directories and `irt4.engine.runtime.Engine`
(exported as `irt4.Engine`) runs them.
"""

from __future__ import annotations

import logging
from types import ModuleType

import torch

_log = logging.getLogger("irt4")

_BUILD_HINT = "build it with `pip install -e . --no-build-isolation` (or `make install`)"

_extension: ModuleType | None = None
_import_error: ImportError | None = None


def _load() -> ModuleType | None:
    """irt4._C, or None if it cannot be imported; the failure is cached and logged only once."""
    global _extension, _import_error
    if _extension is None and _import_error is None:
        try:
            from irt4 import _C
        except ImportError as error:
            _import_error = error
            _log.warning(
                "irt4._C is not available (%s); the sampler falls back to the pure-PyTorch "
                "reference in irt4.diffusion.schedule; %s",
                error,
                _BUILD_HINT,
            )
        else:
            _extension = _C
    return _extension


def _require() -> ModuleType:
    extension = _load()
    if extension is None:
        raise RuntimeError(f"irt4._C is not available ({_import_error}); {_BUILD_HINT}")
    return extension


def available() -> bool:
    """Whether the compiled engine can be imported."""
    return _load() is not None


def built_with_cuda() -> bool:
    """Whether the engine was compiled with its CUDA kernels (False if it is not available at all)."""
    extension = _load()
    return extension is not None and extension.with_cuda()


def sampling_schedule(steps: int, eps: float = 1e-4, denoise: bool = True) -> list[tuple[float, float]]:
    """(t, s) for every network call, computed in double by the engine (see the reference)."""
    return _require().sampling_schedule(steps, eps, denoise)


def sampler_update(
    x: torch.Tensor, c_pred: torch.Tensor, noise_pred: torch.Tensor, t: float, s: float, z: torch.Tensor
) -> torch.Tensor:
    """One sampler step from t to t - s: float32 tensors of one shape on one device; returns a new tensor.

    Runs on the current CUDA stream for CUDA inputs. Non-contiguous inputs are copied first.
    """
    for name, value in (("x", x), ("c_pred", c_pred), ("noise_pred", noise_pred), ("z", z)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    extension = _require()
    stream = torch.cuda.current_stream(x.device).cuda_stream if x.is_cuda else 0
    return extension.sampler_update(
        x.contiguous(), c_pred.contiguous(), noise_pred.contiguous(), t, s, z.contiguous(), stream
    )


def built_with_tensorrt() -> bool:
    """Whether the engine was compiled with its TensorRT networks (False if it is not available at all)."""
    extension = _load()
    return extension is not None and extension.with_tensorrt()


def cpp_engine(backend: str, paths: list[str], graphs: list[dict] | None = None, device_index: int = 0):
    """The C++ sampling engine (csrc/engine.h) over three compiled networks in the order cond_encoder,
    unet_step, vae_decoder: AOTInductor packages (backend "aoti") or TensorRT plans ("tensorrt", with
    each graph's {"inputs": names, "outputs": names})."""
    extension = _require()
    if backend == "aoti":
        return extension.aoti_engine(*paths)
    if backend == "tensorrt":
        if not extension.with_tensorrt():
            raise RuntimeError(
                "irt4._C was built without TensorRT (CMake did not find it; see csrc/README.md)"
            )
        assert graphs is not None
        inputs = [g["inputs"] for g in graphs]
        outputs = [g["outputs"] for g in graphs]
        return extension.tensorrt_engine(paths, inputs, outputs, device_index)
    raise ValueError(f"no C++ engine for backend {backend!r}")


def _stream(tensor: torch.Tensor) -> int:
    return torch.cuda.current_stream(tensor.device).cuda_stream if tensor.is_cuda else 0


def engine_sample_latents(
    engine,
    cond: torch.Tensor,
    initial: torch.Tensor,
    step_noise: torch.Tensor,
    steps: int,
    eps: float,
    denoise: bool,
) -> torch.Tensor:
    """The whole sampler loop in C++ on the current CUDA stream (for CUDA inputs): float32 tensors on
    one device; non-contiguous ones are copied first. Returns the scaled latents at t = 0."""
    return engine.sample_latents(
        cond.contiguous(), initial.contiguous(), step_noise.contiguous(), steps, eps, denoise, _stream(cond)
    )


def engine_decode(engine, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents -> radio maps in [0, 1] (B, 1, H, W) through the engine's VAE decoder."""
    return engine.decode(latents.contiguous(), _stream(latents))
