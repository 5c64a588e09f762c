"""The decoupled-diffusion process trained as `pred_KC` (spec: "Decoupled diffusion").

In the code that produced the reference run, the network predicts C and the noise n with C = -x0:
x_t = x0 + C t + sqrt(t) n, so x_1 = n. Continuous t in (eps, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from irt4.config import DiffusionConfig


def _per_sample(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Forward process: x_t = x0 + C t + sqrt(t) n with C = -x0."""
    time = _per_sample(t, x0)
    return x0 - x0 * time + torch.sqrt(time) * noise


def reconstruct_x0(
    x_t: torch.Tensor, t: torch.Tensor, c_pred: torch.Tensor, noise_pred: torch.Tensor
) -> torch.Tensor:
    """x0 = x_t - C t - sqrt(t) n, the inverse of `q_sample` given (C, n)."""
    time = _per_sample(t, x_t)
    return x_t - c_pred * time - torch.sqrt(time) * noise_pred


def sample_timesteps(
    batch: int, eps: float, generator: torch.Generator | None = None, device=None, power: float = 1.0
) -> torch.Tensor:
    """t = eps + (1 - eps) u^(1/power) per sample, u ~ U(0, 1): uniform on (eps, 1) for power 1 (the
    reference), density proportional to (t - eps)^(power - 1) otherwise."""
    u = torch.rand(batch, generator=generator, device=device if generator is None else generator.device)
    if power != 1.0:
        u = u ** (1.0 / power)
    return (u * (1.0 - eps) + eps).to(device)


def loss_weights(t: torch.Tensor, clamp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """w1 = 2 exp(1 - t) for C and w2 = exp(sqrt(t)) for the noise, clamped to [0, clamp]."""
    w_c = torch.clamp(2 * torch.exp(1 - t), 0.0, clamp)
    w_noise = torch.clamp(torch.exp(torch.sqrt(t)), 0.0, clamp)
    return w_c, w_noise


def pred_kc_loss(
    c_pred: torch.Tensor,
    noise_pred: torch.Tensor,
    c_target: torch.Tensor,
    noise_target: torch.Tensor,
    t: torch.Tensor,
    cfg: DiffusionConfig,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The reference's loss_simple: weighted L2 (+ L1, halved) on C and the noise, per sample, then mean.

    Returns the loss and its parts (per-batch means, detached) for logging.
    """
    dims = tuple(range(1, c_pred.dim()))
    if cfg.weighting_loss:
        w_c, w_noise = loss_weights(t.to(c_pred.dtype), cfg.weight_clamp)
    else:
        w_c = w_noise = torch.ones_like(t, dtype=c_pred.dtype)

    def distance(pred, target, kind):
        if kind == "l2":
            return F.mse_loss(pred, target, reduction="none").mean(dims)
        return (pred - target).abs().mean(dims)

    c_main = distance(c_pred, c_target, cfg.loss_type)
    noise_main = distance(noise_pred, noise_target, cfg.loss_type)
    per_sample = w_c * c_main + w_noise * noise_main
    parts = {
        "c_" + cfg.loss_type: c_main.mean().detach(),
        "noise_" + cfg.loss_type: noise_main.mean().detach(),
    }
    if cfg.use_l1:
        c_l1 = distance(c_pred, c_target, "l1")
        noise_l1 = distance(noise_pred, noise_target, "l1")
        per_sample = (per_sample + w_c * c_l1 + w_noise * noise_l1) / 2
        parts.update(c_l1=c_l1.mean().detach(), noise_l1=noise_l1.mean().detach())
    loss = torch.clamp(per_sample, max=cfg.loss_clamp).mean()
    parts["loss_simple"] = loss.detach()
    return loss, parts


def training_loss(
    unet: torch.nn.Module,
    x0: torch.Tensor,
    cond: torch.Tensor,
    cfg: DiffusionConfig,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One diffusion training loss on scaled latents x0 (B, C, h, w) and condition images."""
    t = sample_timesteps(x0.shape[0], cfg.eps, generator, x0.device, cfg.t_power)
    gen_device = x0.device if generator is None else generator.device
    noise = torch.randn(x0.shape, generator=generator, device=gen_device, dtype=x0.dtype).to(x0.device)
    x_t = q_sample(x0, t, noise)
    c_pred, noise_pred = unet(x_t, t, cond)
    loss, parts = pred_kc_loss(c_pred, noise_pred, -x0, noise, t, cfg)
    with torch.no_grad():
        parts["x0_l1"] = (reconstruct_x0(x_t, t, c_pred, noise_pred) - x0).abs().mean()
    return loss, parts
