"""The conditional UNet of RadioDiff: Swin condition features, one encoder, two decoders (C, noise).

The API separates the two costs of a sampling run (spec: "The condition features do not depend on
x_t or t"): `encode_condition(cond)` runs the Swin backbone and its projections once per sample,
`denoise(x_t, t, cond_features)` runs one network call. `forward` does both, as the reference does.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from irt4.config import SwinConfig, UNetConfig
from irt4.models.layers import (
    Attention,
    FourierTimeEmbedding,
    LinearAttention,
    PreNormResidual,
    ResnetBlock,
    SpectralFilter,
)
from irt4.models.relation import RelationNet
from irt4.models.swin import SwinBackbone

# cond_features = (stage-1 backbone map, projected map per UNet level ...), all NCHW
CondFeatures = tuple[torch.Tensor, ...]


class DownLevel(nn.Module):
    def __init__(self, cfg: UNetConfig, dim_in: int, dim_out: int, time_dim: int, level: int, is_last: bool):
        super().__init__()
        self.block1 = ResnetBlock(dim_in, dim_in, time_dim, cfg.resnet_groups)
        self.relation = RelationNet(
            dim_in,
            dim_in,
            dim_in,
            cfg.relation_heads,
            cfg.window_sizes1[level],
            cfg.window_sizes2[level],
            cfg.relation_dropout,
        )
        self.block2 = ResnetBlock(dim_in, dim_in, time_dim, cfg.resnet_groups)
        self.attn = PreNormResidual(dim_in, LinearAttention(dim_in, cfg.attn_heads, cfg.attn_dim_head))
        # the deepest level keeps its resolution
        self.downsample = (
            nn.Conv2d(dim_in, dim_out, 3, padding=1)
            if is_last
            else nn.Conv2d(dim_in, dim_out, 4, stride=2, padding=1)
        )

    def forward(self, x, time_emb, cond, skips: list[torch.Tensor]):
        x = self.block1(x, time_emb)
        skips.append(x)
        x = self.relation(cond, x)
        x = self.attn(self.block2(x, time_emb))
        skips.append(x)
        return self.downsample(x)


class UpLevel(nn.Module):
    def __init__(
        self,
        cfg: UNetConfig,
        dim_in: int,
        dim_out: int,
        cond_dim: int,
        time_dim: int,
        level: int,
        is_last: bool,
    ):
        super().__init__()
        self.block1 = ResnetBlock(dim_out + dim_in, dim_out, time_dim, cfg.resnet_groups)
        self.relation = RelationNet(
            cond_dim,
            dim_out,
            dim_out,
            cfg.relation_heads,
            cfg.window_sizes1[level],
            cfg.window_sizes2[level],
            cfg.relation_dropout,
        )
        self.block2 = ResnetBlock(dim_out + dim_in, dim_out, time_dim, cfg.resnet_groups)
        self.attn = PreNormResidual(dim_out, LinearAttention(dim_out, cfg.attn_heads, cfg.attn_dim_head))
        self.upsample = (
            nn.Conv2d(dim_out, dim_in, 3, padding=1)
            if is_last
            else nn.Sequential(
                nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(dim_out, dim_in, 3, padding=1)
            )
        )

    def forward(self, x, time_emb, cond, skip_first, skip_second):
        x = self.block1(torch.cat((x, skip_first), dim=1), time_emb)
        x = self.relation(cond, x)
        x = self.block2(torch.cat((x, skip_second), dim=1), time_emb)
        return self.upsample(self.attn(x))


class Decoder(nn.Module):
    """One full decoder branch: up levels, a final ResnetBlock over [x, init features] and a 1x1 conv."""

    def __init__(self, cfg: UNetConfig, dims: list[int], time_dim: int):
        super().__init__()
        in_out = list(zip(dims[:-1], dims[1:]))
        levels = len(in_out)
        self.levels = nn.ModuleList(
            UpLevel(
                cfg,
                dim_in,
                dim_out,
                cond_dim=dims[levels - 1 - i],
                time_dim=time_dim,
                level=levels - 1 - i,
                is_last=i == levels - 1,
            )
            for i, (dim_in, dim_out) in enumerate(reversed(in_out))
        )
        self.final_block = ResnetBlock(cfg.dim * 2, cfg.dim, time_dim, cfg.resnet_groups)
        self.final_conv = nn.Conv2d(cfg.dim, cfg.channels, 1)

    def forward(self, x, time_emb, level_features, skips, init_map):
        for i, level in enumerate(self.levels):
            cond = level_features[len(self.levels) - 1 - i]
            x = level(x, time_emb, cond, skips[-1 - 2 * i], skips[-2 - 2 * i])
        x = self.final_block(torch.cat((x, init_map), dim=1), time_emb)
        return self.final_conv(x)


def _decouple_branch(dim: int, mid_size: int) -> nn.Sequential:
    return nn.Sequential(
        nn.GroupNorm(min(dim // 4, 8), dim),
        nn.Conv2d(dim, dim, 3, padding=1),
        SpectralFilter(dim, mid_size, mid_size),
    )


class ConditionalUNet(nn.Module):
    def __init__(self, cfg: UNetConfig, swin: SwinConfig, latent_size: int, prior: nn.Module | None = None):
        super().__init__()
        # a frozen regressor (diffusion.prior): its gain map joins the condition as a last channel
        self.prior = prior.requires_grad_(False) if prior is not None else None
        self.base_channels = swin.in_channels - (prior is not None)
        self.channels = cfg.channels
        dims = [cfg.dim, *(cfg.dim * m for m in cfg.dim_mults)]
        levels = len(cfg.dim_mults)
        time_dim = cfg.dim * 4

        self.cond_adapter = (
            nn.Conv2d(cfg.cond_adapter_channels, self.base_channels, 1) if cfg.cond_adapter_channels else None
        )
        self.cond_backbone = SwinBackbone(**dataclasses.asdict(swin))
        stage_channels = self.cond_backbone.stage_channels
        self.cond_projections = nn.ModuleList(nn.Conv2d(stage_channels[i], dims[i], 1) for i in range(levels))

        self.init_conv = nn.Sequential(
            nn.Conv2d(cfg.channels + stage_channels[0], cfg.dim, 7, padding=3),
            nn.GroupNorm(min(cfg.dim // 4, 8), cfg.dim),
        )
        self.time_embedding = FourierTimeEmbedding(cfg.fourier_features, cfg.fourier_scale, time_dim)

        self.down_levels = nn.ModuleList(
            DownLevel(cfg, dims[i], dims[i + 1], time_dim, level=i, is_last=i == levels - 1)
            for i in range(levels)
        )
        mid_dim = dims[-1]
        mid_size = latent_size // 2 ** (levels - 1)
        self.mid_block1 = ResnetBlock(mid_dim, mid_dim, time_dim, cfg.resnet_groups)
        self.mid_attn = PreNormResidual(mid_dim, Attention(mid_dim, cfg.attn_heads, cfg.attn_dim_head))
        self.mid_block2 = ResnetBlock(mid_dim, mid_dim, time_dim, cfg.resnet_groups)
        self.decouple_c = _decouple_branch(mid_dim, mid_size)
        self.decouple_noise = _decouple_branch(mid_dim, mid_size)
        self.c_decoder = Decoder(cfg, dims, time_dim)
        self.noise_decoder = Decoder(cfg, dims, time_dim)

    @torch.no_grad()
    def prior_map(self, cond: torch.Tensor) -> torch.Tensor:
        """The frozen regressor's radio map in [-1, 1], like the targets, from the (adapted) condition."""
        gain = torch.sigmoid(self.prior(cond).float()).to(cond.dtype)
        return gain * 2 - 1

    def adapt_condition(self, cond: torch.Tensor) -> torch.Tensor:
        """The condition as the backbone and the prior read it (cond_adapter applied where it fits)."""
        adapted = self.cond_adapter is not None and cond.shape[1] == self.cond_adapter.in_channels
        return self.cond_adapter(cond) if adapted and cond.shape[1] != self.base_channels else cond

    def encode_condition(self, cond: torch.Tensor) -> CondFeatures:
        """(B, C or cond_adapter_channels, H, W) condition image -> features reused by every step."""
        cond = self.adapt_condition(cond)
        if self.prior is not None:
            cond = torch.cat([cond, self.prior_map(cond)], dim=1)
        stages = self.cond_backbone(cond)
        return (stages[0], *(proj(stage) for proj, stage in zip(self.cond_projections, stages)))

    def denoise(
        self, x: torch.Tensor, t: torch.Tensor, cond_features: CondFeatures
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One network call: x_t (B, C, h, w), t (B,) in (0, 1] -> (C, noise), each like x_t."""
        init_cond, *level_features = cond_features
        if init_cond.shape[-2:] != x.shape[-2:]:
            init_cond = F.interpolate(init_cond, size=x.shape[-2:], mode="bilinear")
        h = self.init_conv(torch.cat([x, init_cond], dim=1))
        init_map = h
        time_emb = self.time_embedding(t)

        skips: list[torch.Tensor] = []
        for level, cond in zip(self.down_levels, level_features):
            h = level(h, time_emb, cond, skips)
        h = self.mid_block1(h, time_emb)
        h = self.mid_attn(h)
        h = self.mid_block2(h, time_emb)

        c_raw = self.c_decoder(h + self.decouple_c(h), time_emb, level_features, skips, init_map)
        noise_raw = self.noise_decoder(h + self.decouple_noise(h), time_emb, level_features, skips, init_map)

        # skip/output preconditioning of the reference: C ~ (1 - t) x_t, noise ~ sqrt(t) x_t
        sigma = t.reshape(-1, 1, 1, 1).to(x.dtype)
        out_scale = torch.rsqrt(sigma**2 + 1)
        c_pred = (1 - sigma) * x + sigma * out_scale * c_raw
        noise_pred = torch.sqrt(sigma) * x + torch.sqrt(1 - sigma) * out_scale * noise_raw
        return c_pred, noise_pred

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.denoise(x, t, self.encode_condition(cond))
