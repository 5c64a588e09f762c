"""The N-step sampler of the decoupled diffusion (spec: "Sampler"), pure PyTorch reference.

All randomness (the initial x at t = 1 and every step's z) is drawn up front from one seeded CPU
generator (contracts.md: "Sampling, noise and backends"), so every backend given the same
`SamplerNoise` produces the same maps within tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from irt4.diffusion.schedule import sampler_update, sampling_schedule


@dataclass
class SamplerNoise:
    initial: torch.Tensor  # (B, C, h, w): x at t = 1
    steps: torch.Tensor  # (calls, B, C, h, w): z of each network call's update


def draw_sampler_noise(
    shape: tuple[int, ...], steps: int, denoise: bool = True, generator: torch.Generator | None = None
) -> SamplerNoise:
    """All the sampler's N(0, I) draws for a batch of latents of `shape`, on the CPU."""
    calls = steps + 1 if denoise else steps
    initial = torch.randn(shape, generator=generator)
    step_noise = torch.randn((calls, *shape), generator=generator)
    return SamplerNoise(initial, step_noise)


@torch.no_grad()
def sample_latents(
    unet: torch.nn.Module,
    cond: torch.Tensor,
    latent_shape: tuple[int, int, int],
    steps: int = 50,
    eps: float = 1e-4,
    denoise: bool = True,
    generator: torch.Generator | None = None,
    noise: SamplerNoise | None = None,
    recompute_condition: bool = False,
    schedule_dtype: str = "float64",
) -> torch.Tensor:
    """Run the sampler in latent space; returns scaled latents (B, C, h, w).

    The condition features are computed once per sample; `recompute_condition` runs the backbone
    at every call the way the reference code does (for baselines: the result is the same).
    """
    batch = cond.shape[0]
    schedule = sampling_schedule(steps, eps, denoise, schedule_dtype)
    if noise is None:
        noise = draw_sampler_noise((batch, *latent_shape), steps, denoise, generator)
    if noise.steps.shape[0] != len(schedule):
        raise ValueError(
            f"noise has {noise.steps.shape[0]} step draws, the schedule makes {len(schedule)} calls"
        )
    device, dtype = cond.device, cond.dtype
    x = noise.initial.to(device=device, dtype=dtype)
    cond_features = None if recompute_condition else unet.encode_condition(cond)
    for i, (t, s) in enumerate(schedule):
        time = torch.full((batch,), t, device=device, dtype=dtype)
        features = unet.encode_condition(cond) if recompute_condition else cond_features
        c_pred, noise_pred = unet.denoise(x, time, features)
        x = sampler_update(x, c_pred, noise_pred, t, s, noise.steps[i].to(device=device, dtype=dtype))
    return x
