"""The whole model: the frozen first-stage VAE, the conditional UNet (with, under diffusion.prior,
its frozen regressor) and the latent scale.

Under diffusion.residual the diffusion runs on the residual over the regressor in latent space: the
target is (z(map) - z(prior map)) * scale_factor and a sample decodes z(prior map) + latents /
scale_factor, z the VAE posterior mean (`mean_latents`; None for the other models)."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from irt4.config import Config
from irt4.diffusion.ddm import training_loss
from irt4.diffusion.sampler import SamplerNoise, sample_latents
from irt4.models.kernel_switch import use_kernels
from irt4.models.unet import ConditionalUNet
from irt4.models.vae import AutoencoderKL


class RadioDiff(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.vae = AutoencoderKL(**dataclasses.asdict(cfg.vae))
        prior = None
        if cfg.diffusion.prior == "regressor":
            from irt4.baseline.regressor import RadioUNetRegressor  # irt4.baseline imports this module

            prior = RadioUNetRegressor(cfg)
        self.unet = ConditionalUNet(cfg.unet, cfg.swin, cfg.latent_size, prior)
        # 1 / std(z) of the first training batch when scale_by_std; saved with the weights
        self.register_buffer("scale_factor", torch.tensor(cfg.diffusion.scale_factor))
        use_kernels(self, cfg.kernels)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.cfg.unet.channels, self.cfg.latent_size, self.cfg.latent_size)

    @torch.no_grad()
    def encode_target(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Radio map in [-1, 1] (B, 1, H, W) -> scaled latent drawn from the VAE posterior."""
        return self.vae.encode(image).sample(generator=generator) * self.scale_factor

    @torch.no_grad()
    def mean_latents(self, cond: torch.Tensor) -> torch.Tensor | None:
        """diffusion.residual: the unscaled latents the residual is over, the VAE posterior mean of the
        frozen regressor's map for this condition; None for a model without the residual design."""
        if not self.cfg.diffusion.residual:
            return None
        prior_map = self.unet.prior_map(self.unet.adapt_condition(cond))
        return self.vae.encode(prior_map).mean

    @torch.no_grad()
    def set_scale_from_batch(
        self, image: torch.Tensor, generator: torch.Generator | None = None, cond: torch.Tensor | None = None
    ) -> float:
        """scale_by_std: scale_factor = 1 / std of the first batch's latents (spec: "Latent scaling"), of
        their residual over mean_latents(cond) under diffusion.residual."""
        z = self.vae.encode(image).sample(generator=generator)
        if self.cfg.diffusion.residual:
            z = z - self.mean_latents(cond)
        self.scale_factor.fill_(1.0 / z.flatten().std().item())
        return float(self.scale_factor)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, mean_latents: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled latents (plus the unscaled mean_latents of the residual design) -> radio maps in [0, 1]
        (B, 1, H, W)."""
        z = latents / self.scale_factor
        image = self.vae.decode(z if mean_latents is None else z + mean_latents.to(z.dtype))
        return ((image + 1) / 2).clamp(0.0, 1.0)

    def diffusion_loss(
        self, image: torch.Tensor, cond: torch.Tensor, generator: torch.Generator | None = None
    ):
        """Training loss of the UNet on a batch of radio maps in [-1, 1] and conditions in [-1, 1]."""
        x0 = self.encode_target(image, generator)
        if self.cfg.diffusion.residual:
            x0 = x0 - self.mean_latents(cond) * self.scale_factor
        return training_loss(self.unet, x0, cond, self.cfg.diffusion, generator)

    @torch.no_grad()
    def sample(
        self,
        cond: torch.Tensor,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        noise: SamplerNoise | None = None,
        recompute_condition: bool = False,
    ) -> torch.Tensor:
        """Condition images (B, 3, H, W) in [-1, 1] -> radio maps (B, 1, H, W) in [0, 1]."""
        d = self.cfg.diffusion
        latents = sample_latents(
            self.unet,
            cond,
            self.latent_shape,
            steps=steps or d.sampling_steps,
            eps=d.eps,
            denoise=d.denoise,
            generator=generator,
            noise=noise,
            recompute_condition=recompute_condition,
            schedule_dtype=d.schedule_dtype,
        )
        return self.decode_latents(latents, self.mean_latents(cond))
