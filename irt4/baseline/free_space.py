"""Free-space gain masked by line of sight: a reference map that needs no training.

Friis' free-space path gain, G(d) = -20 log10(4 pi d f / c) dB + offset, at every outdoor pixel that
sees the transmitter along a straight ground-level line (transmitter and receivers at 1.5 m, below
every roof); buildings and shadowed pixels get grey 0 ("LO or weaker", the data's convention). The
dB values go to grey through the data's mapping, grey = 255 (G - LO) / (HI - LO) clipped, with
(LO, HI) = data.gain_db_range (irt4-synth.json: -147 .. -47 dB, 5.9 GHz, 1 m pixels). `offset_db`
absorbs what free space leaves out in line of sight (the ground reflection, antenna patterns):
`fit_offset_db` fits it as the median dB residual over the line-of-sight pixels of training maps.
It ignores reflection and diffraction into the shadow, so beating it proves little (contracts.md).
"""

from __future__ import annotations

import math

import torch

from irt4.data.condition import resize_maps

SPEED_OF_LIGHT = 299_792_458.0


def _batched(buildings: torch.Tensor, tx_rowcol: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    buildings = torch.as_tensor(buildings)
    tx_rowcol = torch.as_tensor(tx_rowcol)
    if buildings.dim() == 2:
        buildings, tx_rowcol = buildings[None], tx_rowcol.reshape(1, 2)
    return buildings.float() > 0.5, tx_rowcol.float().reshape(-1, 2).to(buildings.device)


def line_of_sight(buildings: torch.Tensor, tx_rowcol: torch.Tensor) -> torch.Tensor:
    """(B, H, W) bool: outdoor pixels whose straight line to the transmitter crosses no building.

    The line is sampled at max(H, W) evenly spaced points (at most one pixel apart along its major
    axis, like Bresenham's line) and each sample reads its nearest pixel."""
    blocked_map, tx = _batched(buildings, tx_rowcol)
    batch, height, width = blocked_map.shape
    device = blocked_map.device
    rows = torch.arange(height, device=device, dtype=torch.float32)[:, None]
    cols = torch.arange(width, device=device, dtype=torch.float32)[None, :]
    samples = max(height, width)
    steps = (torch.arange(1, samples, device=device, dtype=torch.float32) / samples)[:, None, None]
    visible = ~blocked_map
    for b in range(batch):
        row0, col0 = tx[b]
        flat = blocked_map[b].reshape(-1)
        for chunk in steps.split(32):  # (T, 1, 1) positions along the line, 32 at a time
            r = (row0 + chunk * (rows - row0)).round_().long().clamp_(0, height - 1)
            c = (col0 + chunk * (cols - col0)).round_().long().clamp_(0, width - 1)
            visible[b] &= ~flat[r * width + c].any(dim=0)
    return visible


def free_space_db(
    shape: tuple[int, int], tx_rowcol: torch.Tensor, pixel_m: float = 1.0, frequency_hz: float = 5.9e9
) -> torch.Tensor:
    """(B, H, W) free-space path gain in dB from the transmitter pixels (B, 2), at pixel centres."""
    tx = torch.as_tensor(tx_rowcol).float().reshape(-1, 2)
    rows = torch.arange(shape[0], dtype=torch.float32, device=tx.device)[None, :, None]
    cols = torch.arange(shape[1], dtype=torch.float32, device=tx.device)[None, None, :]
    distance = pixel_m * torch.hypot(rows - tx[:, 0, None, None], cols - tx[:, 1, None, None])
    distance = distance.clamp(min=pixel_m / 2)  # the transmitter's own pixel
    return -20 * torch.log10(4 * math.pi * distance * frequency_hz / SPEED_OF_LIGHT)


def free_space(
    buildings: torch.Tensor,
    tx_rowcol: torch.Tensor,
    image_size: int,
    *,
    pixel_m: float = 1.0,
    frequency_hz: float = 5.9e9,
    db_range: tuple[float, float] = (-147.0, -47.0),
    offset_db: float = 0.0,
) -> torch.Tensor:
    """Grey gain (B, 1, image_size, image_size) in [0, 1] from buildings (B, H, W) or (H, W) in
    {0, 1} on a grid of `pixel_m` pixels (the 256 x 256 disk maps: 1 m) and the transmitter's
    (row, col) pixel on it ((B, 2) or (2,)); computed on that grid, then resized as targets are."""
    visible = line_of_sight(buildings, tx_rowcol)
    gain_db = free_space_db(tuple(visible.shape[-2:]), tx_rowcol, pixel_m, frequency_hz) + offset_db
    low, high = db_range
    grey = ((gain_db.to(visible.device) - low) / (high - low)).clamp(0.0, 1.0) * visible
    return resize_maps(grey, image_size)[:, None].clamp(0.0, 1.0)


def fit_offset_db(
    buildings: torch.Tensor,
    tx_rowcol: torch.Tensor,
    gain: torch.Tensor,
    *,
    pixel_m: float = 1.0,
    frequency_hz: float = 5.9e9,
    db_range: tuple[float, float] = (-147.0, -47.0),
) -> float:
    """Median of (ray-traced - free-space) dB over the line-of-sight pixels with a signal (grey > 0)
    of training maps: buildings (B, H, W), tx_rowcol (B, 2), gain (B, H, W) grey in [0, 1]."""
    visible = line_of_sight(buildings, tx_rowcol)
    gain = torch.as_tensor(gain).float().reshape(visible.shape)
    low, high = db_range
    measured_db = low + (high - low) * gain
    residual = measured_db - free_space_db(tuple(visible.shape[-2:]), tx_rowcol, pixel_m, frequency_hz)
    usable = visible & (gain > 0)
    return float(residual[usable].median())


def transmitter_rowcol(cond: torch.Tensor, grid: int = 256) -> torch.Tensor:
    """(B, 2) transmitter pixel on a grid x grid map from conditions (B, 3, S, S) in [-1, 1] (the
    peak of the transmitter channel, scaled from S to `grid` pixel centres)."""
    size = cond.shape[-1]
    flat = cond[:, 1].reshape(cond.shape[0], -1).argmax(dim=1)
    rowcol = torch.stack([flat // size, flat % size], dim=1).float()
    return ((rowcol + 0.5) * grid / size - 0.5).round().long()
