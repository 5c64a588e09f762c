"""RelationNet: windowed cross-attention from the condition features to the UNet features.

Both maps are average-pooled into windows (query windows from the condition, key/value windows
from the UNet map), sine position encodings are added, and the pooled query attends to the pooled
keys (spec: "Per level down ... a RelationNet").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def sine_position_encoding(height: int, width: int, dim: int, device: torch.device, temperature: float = 1e4):
    """(H, W, dim) DETR-style sine/cosine encoding of the 1-based row (first half) and column."""
    half = dim // 2
    rows = torch.arange(1, height + 1, dtype=torch.float32, device=device)
    cols = torch.arange(1, width + 1, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * torch.div(torch.arange(half, device=device), 2, rounding_mode="floor") / half)

    def encode(positions: torch.Tensor) -> torch.Tensor:  # (L,) -> (L, half), sin and cos interleaved
        angles = positions[:, None] / dim_t
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)

    pos_y = encode(rows)[:, None, :].expand(height, width, half)
    pos_x = encode(cols)[None, :, :].expand(height, width, half)
    return torch.cat((pos_y, pos_x), dim=-1)


def _pad_to_multiple(x: torch.Tensor, window: int) -> torch.Tensor:
    pad_b = (window - x.shape[-2] % window) % window
    pad_r = (window - x.shape[-1] % window) % window
    return F.pad(x, (0, pad_r, 0, pad_b))


def _pooled_tokens(x: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool into windows; returns the pooled map (B, C, h, w) and its tokens with positions."""
    pooled = F.avg_pool2d(_pad_to_multiple(x, window), window)
    b, c, h, w = pooled.shape
    tokens = pooled.permute(0, 2, 3, 1) + sine_position_encoding(h, w, c, x.device).to(x.dtype)
    return pooled, tokens.reshape(b, h * w, c)


class WindowCrossAttention(nn.Module):
    """One cross-attention layer: query = condition windows, key/value = feature windows."""

    def __init__(
        self, dim: int, heads: int, ffn_dim: int, query_window: int, key_window: int, dropout: float
    ):
        super().__init__()
        self.heads = heads
        self.query_window, self.key_window = query_window, key_window
        self.q_lin = nn.Linear(dim, dim)
        self.k_lin = nn.Linear(dim, dim)
        self.v_lin = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(
            nn.Conv2d(dim, ffn_dim, 1),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Conv2d(ffn_dim, dim, 1),
            nn.Dropout(dropout),
        )
        self.concat_conv = nn.Conv2d(2 * dim, dim, 1)
        self.norm = nn.GroupNorm(8, dim)
        self.out_conv = nn.Conv2d(dim, dim, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> (B, heads, N, C/heads)
        b, n, c = t.shape
        return t.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, cond: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        b, c, h, w = feat.shape
        cond_resized = F.interpolate(cond, size=(h, w), mode="bilinear", align_corners=True)
        shortcut = self.norm(feat + self.concat_conv(torch.cat([cond_resized, feat], dim=1)))

        query_map, query = _pooled_tokens(cond, self.query_window)
        _, keys = _pooled_tokens(feat, self.key_window)
        q, k, v = self._heads(self.q_lin(query)), self._heads(self.k_lin(keys)), self._heads(self.v_lin(keys))
        # the reference applies no 1/sqrt(d) scaling: scale=1 keeps its logits
        attended = F.scaled_dot_product_attention(q, k, v, scale=1.0)  # (B, heads, Nq, d)
        attended = attended.transpose(1, 2).reshape(b, -1, c).transpose(1, 2).reshape(query_map.shape)

        x = query_map + attended
        x = x + self.mlp(x)
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=True)
        return shortcut + self.out_conv(x)


class RelationNet(nn.Module):
    """Projects both inputs (1x1 conv + BatchNorm) and applies the cross-attention layer(s)."""

    def __init__(
        self,
        cond_channels: int,
        feat_channels: int,
        dim: int,
        heads: int,
        query_window: int,
        key_window: int,
        dropout: float,
        layers: int = 1,
    ):
        super().__init__()
        self.cond_proj = nn.Sequential(
            nn.Conv2d(cond_channels, dim, 1), nn.BatchNorm2d(dim, momentum=0.03, eps=1e-3)
        )
        self.feat_proj = nn.Sequential(
            nn.Conv2d(feat_channels, dim, 1), nn.BatchNorm2d(dim, momentum=0.03, eps=1e-3)
        )
        self.layers = nn.ModuleList(
            WindowCrossAttention(dim, heads, dim * 2, query_window, key_window, dropout)
            for _ in range(layers)
        )

    def forward(self, cond: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        cond = self.cond_proj(cond)
        feat = self.feat_proj(feat)
        for layer in self.layers:
            feat = layer(cond, feat)
        return feat


def relation_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Explicit unscaled softmax attention, the reference's formula (used by the tests)."""
    return torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v
