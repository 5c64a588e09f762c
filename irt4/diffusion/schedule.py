"""The sampler's time schedule and its per-step update (spec: "Decoupled diffusion", sampler).

This is the pure-PyTorch reference; `irt4.engine` holds the C++/CUDA versions of the same math
and the tests compare the two.
"""

from __future__ import annotations

import math

import torch

SCHEDULE_DTYPES = ("float64", "float32")


def sampling_schedule(
    steps: int, eps: float = 1e-4, denoise: bool = True, dtype: str = "float64"
) -> list[tuple[float, float]]:
    """(t, s) for every network call: time before the step and the step size.

    The walk starts at t = 1 with steps of 1/steps. With `denoise` the last step is split into
    (1/steps - eps) and eps, so `steps` steps make steps + 1 calls. The last call always takes
    s = t, which lands exactly on t = 0 and makes its sigma zero.

    dtype "float64" walks in double precision. "float32" walks as the reference code does: the step
    sizes rounded to float32 and t = t - s in float32 arithmetic, so its error accumulates (at 50
    steps the last call sees t = 1.00387e-4 instead of 1e-4); the values are returned as floats.
    """
    if dtype not in SCHEDULE_DTYPES:
        raise ValueError(f"schedule dtype must be one of {SCHEDULE_DTYPES}, got {dtype!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    step = 1.0 / steps
    sizes = [step] * steps
    if denoise:
        if not 0.0 < eps < step:
            raise ValueError(f"eps must lie in (0, 1/steps) = (0, {step}), got {eps}")
        sizes = sizes[:-1] + [step - eps, eps]
    if dtype == "float32":
        return _float32_walk(sizes)
    schedule = []
    t = 1.0
    for i, s in enumerate(sizes):
        if i == len(sizes) - 1:
            s = t
        schedule.append((t, s))
        t = t - s
    return schedule


def _float32_walk(sizes: list[float]) -> list[tuple[float, float]]:
    import numpy as np

    schedule = []
    t = np.float32(1.0)
    for i, size in enumerate(sizes):
        s = t if i == len(sizes) - 1 else np.float32(size)
        schedule.append((float(t), float(s)))
        t = np.float32(t - s)
    return schedule


def step_sigma(t: float, s: float) -> float:
    """Standard deviation of the fresh noise added by a step from t to t - s."""
    return math.sqrt(max(s * (t - s) / t, 0.0))


def sampler_update(
    x: torch.Tensor, c_pred: torch.Tensor, noise_pred: torch.Tensor, t: float, s: float, z: torch.Tensor
) -> torch.Tensor:
    """One step from t to t - s given the network's (C, noise) at (x, t); z is the step's N(0, I) draw.

    x0 = x - C t - sqrt(t) n, then C is re-derived as -x0 (the reference's correction),
    mean = x - C s - (s / sqrt(t)) n, sigma = sqrt(s (t - s) / t).
    """
    sqrt_t = math.sqrt(t)
    x0 = x - c_pred * t - sqrt_t * noise_pred
    c_corrected = -x0
    mean = x - c_corrected * s - (s / sqrt_t) * noise_pred
    return mean + step_sigma(t, s) * z
