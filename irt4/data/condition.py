"""The model's condition image: [buildings, transmitter, buildings] in [-1, 1] (spec: "Data").

Resizing (model resolution != 256) is bilinear (align_corners=False) for targets and conditions
alike, as the spec asks; when downsizing it is antialiased, so every disk pixel contributes. The
one-pixel transmitter would then fade to about 1/f^2 of its height (f = 256/S), so after a
downsizing resize its channel is rescaled to peak at 1 again.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def resize_maps(maps: torch.Tensor, size: int) -> torch.Tensor:
    """(C, H, W) -> (C, size, size): bilinear, antialiased when downsizing."""
    if maps.shape[-1] == size and maps.shape[-2] == size:
        return maps
    downsizing = size < maps.shape[-1]
    return F.interpolate(
        maps[None], size=(size, size), mode="bilinear", align_corners=False, antialias=downsizing
    )[0]


def condition_tensor(
    buildings: np.ndarray, transmitter: np.ndarray, image_size: int, third: np.ndarray | None = None
) -> torch.Tensor:
    """(H, W) maps in [0, 1] -> (3, image_size, image_size) in [-1, 1].

    The channels are [buildings, transmitter, buildings], or [buildings, transmitter, third] for the
    cars simulations (the reference's cars loader puts the cars map third)."""
    third = buildings if third is None else third
    stacked = torch.from_numpy(np.stack([buildings, transmitter, third]).astype(np.float32))
    downsizing = image_size < stacked.shape[-1]
    stacked = resize_maps(stacked, image_size)
    if downsizing:
        peak = stacked[1].max()
        if peak > 0:
            stacked[1] = stacked[1] / peak
    return stacked * 2 - 1
