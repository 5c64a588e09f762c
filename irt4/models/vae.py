"""First stage: the KL autoencoder that maps a pathloss map to the diffusion latent.

Spec: radiodiff-irt4.md, "First stage: KL autoencoder (VAE)". The architecture is the reference
code's `AutoencoderKL` (taming/LDM layout): at the reference config (base 128, multipliers 1, 2, 4)
a 1 x 320 x 320 map becomes a 3 x 80 x 80 latent and the model has 55,307,453 parameters
(encoder + decoder + quant/post-quant convs). Submodule and parameter names follow the reference so
that its state dict (minus the `loss.*` keys) loads as it is.

Only the pixel and KL terms of the reference loss live here (`vae_loss`); its perceptual (LPIPS)
term and patch discriminator are out of scope for this module.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from irt4.errors import ConfigError, InputError

GROUP_NORM_GROUPS = 32


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(GROUP_NORM_GROUPS, channels, eps=1e-6, affine=True)


def _norm_silu(norm: nn.GroupNorm, x: torch.Tensor, group_norm_silu: Callable | None) -> torch.Tensor:
    """SiLU(norm(x)): with the fused kernel where `use_kernels` set one, else with PyTorch's two ops."""
    if group_norm_silu is None:
        return F.silu(norm(x))
    return group_norm_silu(x, norm.weight, norm.bias, norm.num_groups, norm.eps)


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with a residual; no time embedding in the autoencoder."""

    # irt4.kernels.group_norm.group_norm_silu when `use_kernels(model, "triton")` set it; None: PyTorch ops
    group_norm_silu: Callable | None = None

    def __init__(self, in_channels: int, out_channels: int, dropout: float):
        super().__init__()
        self.norm1 = _group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        # A 1x1 conv matches the widths on the skip path only where they differ.
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_norm_silu(self.norm1, x, self.group_norm_silu))
        h = self.conv2(self.dropout(_norm_silu(self.norm2, h, self.group_norm_silu)))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


def _attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(C)) v with the N x N weights in memory, as the reference computes it."""
    weights = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)  # (B, N, N)
    return weights @ v


class AttnBlock(nn.Module):
    """Single-head self-attention over all H*W positions, head dimension = channels."""

    # irt4.kernels.attention.attention when `use_kernels(model, "triton")` set it; None: PyTorch's SDPA
    attention: Callable | None = None

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        h = self.norm(x)

        def tokens(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(batch, 1, channels, height * width).transpose(-1, -2)  # (B, 1, HW, C)

        # SDPA's default scale is C^-0.5, as in the reference; its fused kernels never hold the
        # (HW)^2 weights (6,400^2 floats per image at 80 x 80).
        attend = F.scaled_dot_product_attention if self.attention is None else self.attention
        out = attend(tokens(self.q(h)), tokens(self.k(h)), tokens(self.v(h)))
        out = out.transpose(-1, -2).reshape(batch, channels, height, width)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Pad right and bottom only (the reference's asymmetric padding) so that 2H -> H exactly.
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _mid_block(channels: int, dropout: float) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(channels, channels, dropout)
    mid.attn_1 = AttnBlock(channels)  # the one attention the reference config keeps
    mid.block_2 = ResnetBlock(channels, channels, dropout)
    return mid


def _run_mid_block(mid: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return mid.block_2(mid.attn_1(mid.block_1(h)))


def _run_level(level: nn.Module, h: torch.Tensor) -> torch.Tensor:
    for i, block in enumerate(level.block):
        h = block(h)
        if len(level.attn) > 0:
            h = level.attn[i](h)
    return h


def _make_level(blocks: list[ResnetBlock], with_attention: bool) -> nn.Module:
    level = nn.Module()
    level.block = nn.ModuleList(blocks)
    level.attn = nn.ModuleList([AttnBlock(b.conv2.out_channels) for b in blocks] if with_attention else [])
    return level


class Encoder(nn.Module):
    """Image (B, in_channels, H, W) -> moments (B, 2 z_channels, H/f, W/f), f = 2^(levels - 1)."""

    # set by `use_kernels`, as ResnetBlock's
    group_norm_silu: Callable | None = None

    def __init__(
        self,
        in_channels: int,
        base_channels: int,
        channel_mults: tuple[int, ...],
        num_res_blocks: int,
        attn_resolutions: tuple[int, ...],
        z_channels: int,
        dropout: float,
        resolution: int,
    ):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        self.down = nn.ModuleList()
        side = resolution
        block_in = base_channels
        for i_level, mult in enumerate(channel_mults):
            block_out = base_channels * mult
            blocks = []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
            level = _make_level(blocks, side in attn_resolutions)
            # The deepest level keeps its resolution; Identity has no parameters, so no state-dict keys.
            is_deepest = i_level == len(channel_mults) - 1
            level.downsample = nn.Identity() if is_deepest else Downsample(block_in)
            side = side if is_deepest else side // 2
            self.down.append(level)
        self.mid = _mid_block(block_in, dropout)
        self.norm_out = _group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * z_channels, 3, padding=1)  # mean and logvar

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level.downsample(_run_level(level, h))
        h = _run_mid_block(self.mid, h)
        return self.conv_out(_norm_silu(self.norm_out, h, self.group_norm_silu))


class Decoder(nn.Module):
    """Latent (B, z_channels, h, w) -> image (B, out_channels, h f, w f)."""

    # set by `use_kernels`, as ResnetBlock's
    group_norm_silu: Callable | None = None

    def __init__(
        self,
        out_channels: int,
        base_channels: int,
        channel_mults: tuple[int, ...],
        num_res_blocks: int,
        attn_resolutions: tuple[int, ...],
        z_channels: int,
        dropout: float,
        resolution: int,
    ):
        super().__init__()
        block_in = base_channels * channel_mults[-1]
        side = resolution // 2 ** (len(channel_mults) - 1)
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = _mid_block(block_in, dropout)
        # Built deepest level first but stored shallow-first: up[i] mirrors encoder.down[i].
        levels = []
        for i_level in reversed(range(len(channel_mults))):
            block_out = base_channels * channel_mults[i_level]
            blocks = []
            for _ in range(num_res_blocks + 1):  # one more than the encoder, as in the reference
                blocks.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
            level = _make_level(blocks, side in attn_resolutions)
            level.upsample = nn.Identity() if i_level == 0 else Upsample(block_in)
            side = side if i_level == 0 else side * 2
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.norm_out = _group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = _run_mid_block(self.mid, self.conv_in(z))
        for level in reversed(self.up):
            h = level.upsample(_run_level(level, h))
        return self.conv_out(_norm_silu(self.norm_out, h, self.group_norm_silu))


class DiagonalGaussian:
    """Posterior N(mean, diag(exp(logvar))) from the encoder's moments (B, 2 embed_dim, h, w)."""

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = torch.chunk(moments, 2, dim=1)
        # The reference's clamp keeps exp() finite early in training.
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        # Noise is drawn where the generator lives (a seeded CPU generator gives the same draw on
        # every device), then moved next to the mean.
        noise_device = generator.device if generator is not None else self.mean.device
        noise = torch.randn(self.mean.shape, generator=generator, device=noise_device, dtype=self.mean.dtype)
        return self.mean + self.std * noise.to(self.mean.device)

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(posterior || N(0, I)) per sample, summed over C, H, W: shape (B,)."""
        return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=(1, 2, 3))


class AutoencoderKL(nn.Module):
    """KL-regularised autoencoder; encode -> posterior over (B, embed_dim, H/f, W/f), f = 4 by default."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        base_channels: int = 128,
        channel_mults: tuple[int, ...] = (1, 2, 4),
        num_res_blocks: int = 2,
        attn_resolutions: tuple[int, ...] = (),
        z_channels: int = 3,
        embed_dim: int = 3,
        double_z: bool = True,
        dropout: float = 0.0,
        resolution: int = 320,
    ):
        super().__init__()
        if not double_z:
            raise ConfigError("vae.double_z must be true: the KL posterior needs both mean and logvar")
        widths = [base_channels * m for m in channel_mults]
        if any(w % GROUP_NORM_GROUPS for w in widths):
            raise ConfigError(
                f"vae widths {widths} (base_channels x channel_mults) must be multiples of "
                f"{GROUP_NORM_GROUPS}, the GroupNorm group count"
            )
        channel_mults, attn_resolutions = tuple(channel_mults), tuple(attn_resolutions)
        shared = dict(
            base_channels=base_channels,
            channel_mults=channel_mults,
            num_res_blocks=num_res_blocks,
            attn_resolutions=attn_resolutions,
            z_channels=z_channels,
            dropout=dropout,
            resolution=resolution,
        )
        self.encoder = Encoder(in_channels=in_channels, **shared)
        self.decoder = Decoder(out_channels=out_channels, **shared)
        self.quant_conv = nn.Conv2d(2 * z_channels, 2 * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)
        self.embed_dim = embed_dim
        self._num_levels = len(channel_mults)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (self._num_levels - 1)

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        height, width = x.shape[-2:]
        factor = self.downsample_factor
        if height % factor or width % factor:
            raise InputError(
                f"VAE input is {height}x{width}, expected both sides to be multiples of {factor}"
            )
        return DiagonalGaussian(self.quant_conv(self.encoder(x)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))

    def forward(
        self, x: torch.Tensor, sample_posterior: bool = True, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, DiagonalGaussian]:
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z), posterior


def vae_loss(
    x: torch.Tensor, recon: torch.Tensor, posterior: DiagonalGaussian, kl_weight: float = 1e-6
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The reference's first-stage generator loss without LPIPS and the discriminator.

    The reference's pixel term is |x - recon| + (x - recon)^2 per pixel; its learned logvar starts at
    0 and is not in the optimizer, so nll = rec / exp(0) + 0 = rec.
    """
    # Reference reduction (LPIPSWithDiscriminator): rec summed over C,H,W and KL summed per sample, both / B.
    batch = x.shape[0]
    rec_loss = (x - recon).abs() + (x - recon).pow(2)  # (B, C, H, W)
    nll_loss = rec_loss.sum() / batch
    kl_loss = posterior.kl().sum() / batch
    loss = nll_loss + kl_weight * kl_loss
    parts = {
        "nll_loss": nll_loss.detach(),
        "rec_loss": rec_loss.detach().mean(),  # per pixel, for logging as the reference does
        "kl_loss": kl_loss.detach(),
    }
    return loss, parts
