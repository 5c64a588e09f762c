"""Building blocks of the conditional UNet (spec: "Denoiser"), pure PyTorch.

These are the reference versions; fast paths (Triton GroupNorm, folded weight standardization)
are compared against them in tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class WeightStandardizedConv2d(nn.Conv2d):
    """Conv2d whose weight is standardized per output channel at every call (arXiv:1903.10520).

    For inference the standardized weight can be computed once (`fold_weight_standardization`):
    the reference recomputes it for 83 M weights at every network call.
    """

    folded_weight: torch.Tensor | None = None

    def standardized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        eps = 1e-5 if dtype == torch.float32 else 1e-3  # the reference's eps per input dtype
        weight = self.weight
        mean = weight.mean(dim=(1, 2, 3), keepdim=True)
        var = weight.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
        return (weight - mean) * torch.rsqrt(var + eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.folded_weight is not None:
            weight = self.folded_weight
            if not torch.is_autocast_enabled(x.device.type):  # under autocast the conv casts both once
                weight = weight.to(x.dtype)
            return self._conv_forward(x, weight, self.bias)
        return self._conv_forward(x, self.standardized_weight(x.dtype), self.bias)


@torch.no_grad()
def fold_weight_standardization(module: nn.Module, dtype: torch.dtype = torch.float32) -> int:
    """Standardize every WeightStandardizedConv2d's weight once, for inference at `dtype` (whose eps it
    uses); returns how many convs were folded. Undo with `unfold_weight_standardization` before training."""
    convs = [m for m in module.modules() if isinstance(m, WeightStandardizedConv2d)]
    for conv in convs:
        conv.folded_weight = conv.standardized_weight(dtype).detach()
    return len(convs)


def unfold_weight_standardization(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, WeightStandardizedConv2d):
            m.folded_weight = None


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of an NCHW map with a gain and no bias."""

    def __init__(self, dim: int):
        super().__init__()
        self.g = nn.Parameter(torch.ones(1, dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eps = 1e-5 if x.dtype == torch.float32 else 1e-3
        var = x.var(dim=1, unbiased=False, keepdim=True)
        mean = x.mean(dim=1, keepdim=True)
        return (x - mean) * torch.rsqrt(var + eps) * self.g


class PreNormResidual(nn.Module):
    """x + fn(LayerNorm(x))."""

    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.norm = ChannelLayerNorm(dim)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fn(self.norm(x))


class ConvGroupNormSiLU(nn.Module):
    """Weight-standardized 3x3 conv -> GroupNorm -> optional time scale-shift -> SiLU."""

    # irt4.kernels.group_norm.group_norm_silu when `use_kernels(model, "triton")` set it; None: PyTorch ops
    group_norm_silu: Callable | None = None

    def __init__(self, dim: int, dim_out: int, groups: int):
        super().__init__()
        self.proj = WeightStandardizedConv2d(dim, dim_out, 3, padding=1)
        self.norm = nn.GroupNorm(groups, dim_out)

    def forward(
        self, x: torch.Tensor, scale_shift: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        x = self.proj(x)
        if self.group_norm_silu is not None:
            scale, shift = scale_shift if scale_shift is not None else (None, None)
            norm = self.norm
            return self.group_norm_silu(x, norm.weight, norm.bias, norm.num_groups, norm.eps, scale, shift)
        x = self.norm(x)
        if scale_shift is not None:
            scale, shift = scale_shift
            x = x * (scale + 1) + shift
        return F.silu(x)


class ResnetBlock(nn.Module):
    """Two conv blocks; the time embedding modulates the first with a scale and a shift."""

    def __init__(self, dim: int, dim_out: int, time_dim: int, groups: int):
        super().__init__()
        self.time_proj = nn.Linear(time_dim, dim_out * 2)
        self.block1 = ConvGroupNormSiLU(dim, dim_out, groups)
        self.block2 = ConvGroupNormSiLU(dim_out, dim_out, groups)
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor, time_emb: torch.Tensor) -> torch.Tensor:
        scale_shift = self.time_proj(F.silu(time_emb))[:, :, None, None].chunk(2, dim=1)
        h = self.block1(x, scale_shift)
        return self.block2(h) + self.res_conv(x)


def _split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, heads * d, H, W) -> (B, heads, d, H * W)."""
    b, c, h, w = t.shape
    return t.reshape(b, heads, c // heads, h * w)


class LinearAttention(nn.Module):
    """Softmax-kernel linear attention over the pixels of a map (cost linear in H * W)."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.scale = dim_head**-0.5
        self.heads = heads
        hidden = heads * dim_head
        self.to_qkv = nn.Conv2d(dim, hidden * 3, 1, bias=False)
        self.to_out = nn.Sequential(nn.Conv2d(hidden, dim, 1), ChannelLayerNorm(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q, k, v = (_split_heads(t, self.heads) for t in self.to_qkv(x).chunk(3, dim=1))
        q = q.softmax(dim=-2) * self.scale
        k = k.softmax(dim=-1)
        v = v / (h * w)
        context = torch.einsum("bhdn,bhen->bhde", k, v)
        out = torch.einsum("bhde,bhdn->bhen", context, q)
        return self.to_out(out.reshape(b, -1, h, w))


class Attention(nn.Module):
    """Full multi-head self-attention over the pixels of a map (the UNet mid block)."""

    # irt4.kernels.attention.attention when `use_kernels(model, "triton")` set it; None: PyTorch's SDPA
    attention: Callable | None = None

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads = heads
        hidden = heads * dim_head
        self.to_qkv = nn.Conv2d(dim, hidden * 3, 1, bias=False)
        self.to_out = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        # (B, heads, N, d) for scaled_dot_product_attention; its default scale is d^-0.5 as in the reference
        q, k, v = (_split_heads(t, self.heads).transpose(-2, -1) for t in self.to_qkv(x).chunk(3, dim=1))
        attend = F.scaled_dot_product_attention if self.attention is None else self.attention
        out = attend(q, k, v)  # (B, heads, N, d)
        return self.to_out(out.transpose(-2, -1).reshape(b, -1, h, w))


class SpectralFilter(nn.Module):
    """BlockFFT: rfft2, a learned complex weight per channel and frequency, irfft2 (orthonormal).

    The reference sizes the weight from a configured size that only fits an 8x8 map; here it is
    sized from the real map size (spec: "Resolution").
    """

    def __init__(self, dim: int, height: int, width: int):
        super().__init__()
        self.height, self.width = height, width
        self.complex_weight = nn.Parameter(torch.randn(dim, height, width // 2 + 1, 2) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if (h, w) != (self.height, self.width):
            raise ValueError(f"SpectralFilter was built for {self.height}x{self.width} maps, got {h}x{w}")
        spectrum = torch.fft.rfft2(x.float(), dim=(2, 3), norm="ortho")
        spectrum = spectrum * torch.view_as_complex(self.complex_weight.float().contiguous())
        return torch.fft.irfft2(spectrum, s=(h, w), dim=(2, 3), norm="ortho").to(x.dtype)


class FourierTimeEmbedding(nn.Module):
    """Gaussian Fourier features of log(t)/4 followed by Linear-GELU-Linear."""

    def __init__(self, num_frequencies: int, scale: float, time_dim: int):
        super().__init__()
        # frozen random frequencies: a parameter (as in the reference, so it is counted and saved)
        self.frequencies = nn.Parameter(torch.randn(num_frequencies) * scale, requires_grad=False)
        self.mlp = nn.Sequential(
            nn.Linear(2 * num_frequencies, time_dim), nn.GELU(), nn.Linear(time_dim, time_dim)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        x = torch.log(t) / 4
        phase = x[:, None] * self.frequencies[None, :] * (2 * math.pi)
        return self.mlp(torch.cat([phase.sin(), phase.cos()], dim=-1))
