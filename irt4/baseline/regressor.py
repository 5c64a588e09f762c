"""The RadioUNet-style baseline: a one-pass conv UNet from the condition image to the radio map.

RadioUNet (Levie et al. 2021) regresses the gain map from the building and transmitter images with
a plain convolutional UNet and an MSE loss. This one takes the diffusion model's own condition
tensor (irt4.data.condition: [buildings, transmitter, buildings] in [-1, 1], (B, 3, S, S)) and
returns the gain in [0, 1] through a sigmoid, at the same resolution S. Each level is a block of
`convs_per_level` 3x3 conv + GroupNorm + SiLU; the encoder halves the resolution between levels
(strided conv), the decoder doubles it (nearest upsampling + conv) and concatenates the encoder's
feature map of the same level (the skip connection).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from irt4.config import Config


class ConvBlock(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, convs: int, groups: int):
        layers: list[nn.Module] = []
        for i in range(convs):
            layers += [
                nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1),
                nn.GroupNorm(groups, out_channels),
                nn.SiLU(),
            ]
        super().__init__(*layers)


class RadioUNetRegressor(nn.Module):
    """(B, 3, S, S) condition in [-1, 1] -> (B, 1, S, S) gain logits; `cfg.baseline` sizes it."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        arch = cfg.baseline
        widths = [arch.dim * m for m in arch.dim_mults]
        convs, groups = arch.convs_per_level, arch.groups
        self.encoder = nn.ModuleList()
        self.downsample = nn.ModuleList()
        previous = len(cfg.data.condition)  # the condition's channels
        for level, width in enumerate(widths):
            self.encoder.append(ConvBlock(previous, width, convs, groups))
            if level < len(widths) - 1:
                self.downsample.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
            previous = width
        self.upsample = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for width in reversed(widths[:-1]):
            self.upsample.append(nn.Conv2d(previous, width, 3, padding=1))
            self.decoder.append(ConvBlock(2 * width, width, convs, groups))
            previous = width
        self.head = nn.Conv2d(previous, 1, 1)

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        skips = []
        x = cond
        for level, block in enumerate(self.encoder):
            x = block(x)
            if level < len(self.downsample):
                skips.append(x)
                x = self.downsample[level](x)
        for upsample, block in zip(self.upsample, self.decoder):
            x = upsample(F.interpolate(x, scale_factor=2.0, mode="nearest"))
            x = block(torch.cat([x, skips.pop()], dim=1))
        return self.head(x)


def predict(model: RadioUNetRegressor, cond: torch.Tensor) -> torch.Tensor:
    """Gain maps (B, 1, S, S) in [0, 1] from conditions (B, 3, S, S) in [-1, 1], at model resolution."""
    return torch.sigmoid(model(cond).float())


def regression_loss(model: nn.Module, cond: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE between the predicted and the true gain, both in [0, 1] ((B, 1, S, S))."""
    return F.mse_loss(torch.sigmoid(model(cond).float()), target.float())
