"""Swin-B condition encoder: torchvision's Swin Transformer (v1) returning its four stage feature maps.

Spec: radiodiff-irt4.md, "Denoiser" (condition net). The reference wraps torchvision's `swin_b` and
returns the output of every stage (after its blocks, before patch merging) as NCHW: 128, 256, 512
and 1024 channels at 1/4 .. 1/32 of the input. The final norm and classification head are built by
the reference but never called; `keep_classifier=True` builds them so that parameter counts and
ImageNet state dicts line up with torchvision's.

Shifted-window semantics follow torchvision's `shifted_window_attention`: pad H and W to multiples
of the window; no shift along a dimension that holds a single window; cyclic shift; mask with -100
between tokens of different regions of a shifted window; reverse shift; unpad. Padded tokens are
zeros after the block's first LayerNorm and are not masked: they take part in attention as keys
(their key and value are the qkv bias), exactly as in torchvision.
"""

import re
from collections.abc import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from irt4.errors import InputError

# torchvision's value for "different region": large but finite, so it is reproduced, not -inf.
MASKED_LOGIT = -100.0


def window_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
    """Softmax(q k^T / sqrt(d) + bias) v over the tokens of each window.

    q, k, v: (..., heads, N, d) with N = window^2; bias: broadcastable to (..., heads, N, N).
    """
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def window_attention_reference(q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
    """Pure-PyTorch `window_attention` with an explicit softmax, in torchvision's order of operations."""
    logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1) + bias
    return logits.softmax(dim=-1) @ v


def window_partition(x: Tensor, window: int) -> Tensor:
    """(B, H, W, C) with H, W multiples of `window` -> (B, nW, window^2, C), windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // window) * (w // window), window * window, c)


def window_merge(windows: Tensor, height: int, width: int, window: int) -> Tensor:
    """Inverse of `window_partition`: (B, nW, window^2, C) -> (B, height, width, C)."""
    b, _, _, c = windows.shape
    x = windows.view(b, height // window, width // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, height, width, c)


def relative_position_index(window: int) -> Tensor:
    """(window^4,) index into the ((2 window - 1)^2, heads) bias table for every pair of window tokens."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)  # (N, N, 2)
    return (relative[..., 0] * (2 * window - 1) + relative[..., 1]).flatten()


def shifted_window_mask(
    padded_height: int, padded_width: int, window: int, shift: tuple[int, int], like: Tensor
) -> Tensor:
    """(nW, N, N) additive mask: MASKED_LOGIT between tokens that the cyclic shift brought together.

    Along each shifted dimension the rolled map has three regions, [0, size - window),
    [size - window, size - shift) and [size - shift, size), as torchvision slices them.
    """

    def regions(size: int, axis_shift: int) -> Tensor:
        # comparisons of a device arange, not slices assigned Python numbers (each makes a tensor from host
        # data): the CUDA-graph safety test allows none inside the network (tests/test_graphed.py)
        position = torch.arange(size, device=like.device)
        if axis_shift == 0:
            return torch.zeros_like(position)
        return (position >= size - window).long() + (position >= size - axis_shift).long()

    labels = regions(padded_height, shift[0])[:, None] * 3 + regions(padded_width, shift[1])[None, :]
    labels = window_partition(labels[None, :, :, None], window)[0, :, :, 0]  # (nW, N)
    different = labels[:, None, :] != labels[:, :, None]
    return torch.zeros(different.shape, dtype=like.dtype, device=like.device).masked_fill(
        different, MASKED_LOGIT
    )


def drop_path(x: Tensor, prob: float, training: bool) -> Tensor:
    """Stochastic depth in torchvision's "row" mode: drop the whole residual branch per sample."""
    if not training or prob == 0.0:
        return x
    keep = 1.0 - prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    if keep > 0.0:
        mask.div_(keep)
    return x * mask


class ShiftedWindowAttention(nn.Module):
    """Multi-head self-attention inside (shifted) windows with a learned relative position bias."""

    # irt4.kernels.attention.attention when `use_kernels(model, "triton")` set it; None: `window_attention`
    attention: Callable | None = None

    def __init__(self, dim: int, num_heads: int, window_size: int, shift_size: int):
        super().__init__()
        assert dim % num_heads == 0, f"dim {dim} is not divisible by {num_heads} heads"
        self.num_heads = num_heads
        self.window_size = window_size
        self.shift_size = shift_size
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        # Derived from window_size alone, so not saved; torchvision dicts that carry it are accepted.
        self.register_buffer(
            "relative_position_index", relative_position_index(window_size), persistent=False
        )
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        _, height, width, channels = x.shape
        window = self.window_size
        x = F.pad(x, (0, 0, 0, -width % window, 0, -height % window))
        padded_height, padded_width = x.shape[1], x.shape[2]
        # torchvision: no shift along a dimension that is a single window after padding.
        shift = (
            self.shift_size if padded_height > window else 0,
            self.shift_size if padded_width > window else 0,
        )
        shifted = shift != (0, 0)
        if shifted:
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))

        windows = window_partition(x, window)  # (B, nW, N, C)
        b, num_windows, n, _ = windows.shape
        qkv = self.qkv(windows).view(b, num_windows, n, 3, self.num_heads, channels // self.num_heads)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5)  # each (B, nW, heads, N, d)
        bias = self.relative_position_bias_table[self.relative_position_index]
        bias = bias.view(n, n, self.num_heads).permute(2, 0, 1)  # (heads, N, N)
        if shifted:
            mask = shifted_window_mask(padded_height, padded_width, window, shift, like=bias)
            bias = bias + mask[:, None]  # (nW, heads, N, N)
        attend = window_attention if self.attention is None else self.attention
        out = attend(q, k, v, bias)  # (B, nW, heads, N, d)
        out = self.proj(out.transpose(2, 3).reshape(b, num_windows, n, channels))

        x = window_merge(out, padded_height, padded_width, window)
        if shifted:
            x = torch.roll(x, shifts=shift, dims=(1, 2))
        return x[:, :height, :width, :].contiguous()


class SwinBlock(nn.Module):
    """Pre-norm transformer block: shifted-window attention, then an MLP, each with drop path."""

    def __init__(
        self, dim: int, num_heads: int, window_size: int, shift_size: int, mlp_ratio: float, drop_prob: float
    ):
        super().__init__()
        self.drop_prob = drop_prob
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ShiftedWindowAttention(dim, num_heads, window_size, shift_size)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_prob, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_prob, self.training)


class PatchMerging(nn.Module):
    """Halve the resolution and double the channels: pad to even, concat 2x2 neighbours, norm, project."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C)."""
        height, width = x.shape[1], x.shape[2]
        x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        # torchvision's order: (even row, even col), (odd, even), (even, odd), (odd, odd).
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class SwinBackbone(nn.Module):
    """Swin Transformer feature extractor; defaults are torchvision's swin_b.

    forward(x: (B, in_channels, H, W)) returns one NCHW map per stage, with `stage_channels[i]`
    channels at 1/(patch_size * 2^i) of the input (rounded up after the patch embedding).
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        patch_size: int = 4,
        embed_dim: int = 128,
        depths: tuple[int, ...] = (2, 2, 18, 2),
        num_heads: tuple[int, ...] = (4, 8, 16, 32),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        stochastic_depth: float = 0.5,
        keep_classifier: bool = False,
    ):
        super().__init__()
        assert len(depths) == len(num_heads), "one head count per stage"
        self.depths = tuple(depths)
        self.keep_classifier = keep_classifier
        self.stage_channels = tuple(embed_dim * 2**i for i in range(len(depths)))

        self.patch_conv = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.patch_norm = nn.LayerNorm(embed_dim)

        # Drop-path probability rises linearly from 0 at the first block to stochastic_depth at the last.
        total_blocks = sum(depths)
        block_id = 0
        self.stages = nn.ModuleList()
        for dim, depth, heads in zip(self.stage_channels, depths, num_heads):
            blocks = []
            for i in range(depth):
                drop_prob = stochastic_depth * block_id / max(total_blocks - 1, 1)
                shift = 0 if i % 2 == 0 else window_size // 2
                blocks.append(SwinBlock(dim, heads, window_size, shift, mlp_ratio, drop_prob))
                block_id += 1
            self.stages.append(nn.Sequential(*blocks))
        self.merges = nn.ModuleList(PatchMerging(dim) for dim in self.stage_channels[:-1])

        if keep_classifier:
            self.norm = nn.LayerNorm(self.stage_channels[-1])
            self.head = nn.Linear(self.stage_channels[-1], 1000)

        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> list[Tensor]:
        """(B, in_channels, H, W) -> [(B, stage_channels[i], H_i, W_i) for each stage]."""
        x = self.patch_norm(self.patch_conv(x).permute(0, 2, 3, 1))  # channels last: (B, H/4, W/4, C)
        features = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            features.append(x.permute(0, 3, 1, 2).contiguous())
            if i < len(self.merges):
                x = self.merges[i](x)
        return features


def _backbone_key(torchvision_key: str, keep_classifier: bool) -> str | None:
    """SwinBackbone's name for a torchvision Swin key; None if it is dropped, unchanged if unknown."""
    if torchvision_key.endswith(".relative_position_index"):
        return None  # a buffer that follows from the window size
    if torchvision_key.split(".")[0] in ("norm", "head"):
        return torchvision_key if keep_classifier else None
    match = re.fullmatch(r"features\.(\d+)\.(.+)", torchvision_key)
    if match is None:
        return torchvision_key
    index, rest = int(match.group(1)), match.group(2)
    if index == 0:
        patch_names = {"0.weight": "patch_conv.weight", "0.bias": "patch_conv.bias"}
        patch_names |= {"2.weight": "patch_norm.weight", "2.bias": "patch_norm.bias"}
        return patch_names.get(rest, torchvision_key)
    if index % 2 == 1:
        # torchvision's MLP is Sequential(Linear, GELU, Dropout, Linear, Dropout); ours has no dropouts.
        return f"stages.{(index - 1) // 2}." + re.sub(r"^(\d+)\.mlp\.3\.", r"\1.mlp.2.", rest)
    return f"merges.{index // 2 - 1}.{rest}"


def _torchvision_renames(keys: Iterable[str], keep_classifier: bool) -> dict[str, str]:
    """{SwinBackbone name: torchvision name} for the torchvision keys that are kept."""
    renames = {}
    for key in keys:
        new_key = _backbone_key(key, keep_classifier)
        if new_key is not None:
            renames[new_key] = key
    return renames


def remap_torchvision_keys(state_dict: Mapping[str, Tensor], keep_classifier: bool) -> dict[str, Tensor]:
    """Rename a torchvision SwinTransformer (v1) state dict to SwinBackbone's names.

    features.0.0 -> patch_conv, features.0.2 -> patch_norm, features.{2s+1}.{i} -> stages.{s}.{i}
    (mlp.3 -> mlp.2), features.{2s+2} -> merges.{s}; norm and head are kept only with
    keep_classifier; relative_position_index buffers are dropped. Keys outside that layout pass
    through unchanged (`load_torchvision_state_dict` rejects them).
    """
    renames = _torchvision_renames(state_dict, keep_classifier)
    return {new_key: state_dict[key] for new_key, key in renames.items()}


def load_torchvision_state_dict(module: SwinBackbone, state_dict: Mapping[str, Tensor]) -> None:
    """Load torchvision Swin weights (e.g. ImageNet swin_b) into `module`, strictly.

    Raises InputError naming unexpected keys (torchvision names), missing keys (SwinBackbone names)
    and misshaped tensors.
    """
    renames = _torchvision_renames(state_dict, module.keep_classifier)
    renamed = remap_torchvision_keys(state_dict, module.keep_classifier)
    expected = module.state_dict()
    unexpected = sorted(renames[key] for key in set(renamed) - set(expected))
    missing = sorted(set(expected) - set(renamed))
    misshaped = [
        f"{renames[key]} {tuple(renamed[key].shape)} (expected {tuple(expected[key].shape)})"
        for key in sorted(set(renamed) & set(expected))
        if renamed[key].shape != expected[key].shape
    ]
    problems = []
    for what, keys in (
        ("unexpected keys", unexpected),
        ("missing keys", missing),
        ("wrong shapes", misshaped),
    ):
        if keys:
            problems.append(f"{what}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}")
    if problems:
        raise InputError(f"torchvision Swin state dict does not fit this SwinBackbone: {'; '.join(problems)}")
    module.load_state_dict(renamed, strict=True)
