"""The model's condition image: its named channels (data.condition) in [-1, 1] (spec: "Data").

The reference's condition is [buildings, transmitter, buildings]; `condition_image` builds any list
of irt4.data.channels' names, the same way in training, irt4-infer and the demo.

`tx_field="log_distance"` (irt4's option, off in the reference presets) puts the transmitter's
log-distance field in the third channel instead of the buildings' copy: the same position, seen by
every token of the conditioning network instead of only the few around the one-pixel dot.

Resizing (model resolution != 256) is bilinear (align_corners=False) for targets and conditions
alike, as the spec asks; when downsizing it is antialiased, so every disk pixel contributes. The
one-pixel transmitter would then fade to about 1/f^2 of its height (f = 256/S), so after a
downsizing resize its channel is rescaled to peak at 1 again.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from irt4.config import TX_FIELDS


def log_distance_field(shape: tuple[int, int], row: int, col: int) -> np.ndarray:
    """(H, W) float32 in [0, 1]: 1 at pixel (row, col), falling linearly in log(1 + distance in pixels)
    to 0 at the length of the map's diagonal. Free-space pathloss is affine in log distance, so this is
    the transmitter's position as the smooth field a free-space model would draw (no buildings in it)."""
    rows = np.arange(shape[0], dtype=np.float64)[:, None] - row
    cols = np.arange(shape[1], dtype=np.float64)[None, :] - col
    field = 1 - np.log1p(np.hypot(rows, cols)) / np.log1p(np.hypot(*shape))
    return field.astype(np.float32)


def third_channel(buildings: np.ndarray, row: int, col: int, tx_field: str) -> np.ndarray:
    """The condition's third channel for `tx_field` (TX_FIELDS): the buildings again, or the field."""
    if tx_field == "none":
        return buildings
    if tx_field == "log_distance":
        return log_distance_field(buildings.shape, row, col)
    raise ValueError(f"tx_field must be one of {TX_FIELDS}, got {tx_field!r}")


def resize_maps(maps: torch.Tensor, size: int) -> torch.Tensor:
    """(C, H, W) -> (C, size, size): bilinear, antialiased when downsizing."""
    if maps.shape[-1] == size and maps.shape[-2] == size:
        return maps
    downsizing = size < maps.shape[-1]
    return F.interpolate(
        maps[None], size=(size, size), mode="bilinear", align_corners=False, antialias=downsizing
    )[0]


def condition_image(
    buildings: np.ndarray,
    transmitter: np.ndarray,
    row: int,
    col: int,
    names,
    image_size: int,
    gain_db_range: tuple[float, float] = (-147.0, -47.0),
    cars: np.ndarray | None = None,
) -> torch.Tensor:
    """(C, image_size, image_size) in [-1, 1]: the channels `names` (irt4.data.channels) of a map.

    buildings (H, W) in [0, 1]; transmitter (H, W) the transmitter image (1 at its pixel) and (row, col)
    its pixel; cars (H, W) replaces the third channel (the cars simulations, reference condition only).
    With the reference names this is condition_tensor exactly."""
    from irt4.data.channels import channel_maps

    names = tuple(names)
    maps = channel_maps(buildings, (row, col), names, gain_db_range=gain_db_range)[0]
    for k, name in enumerate(names):
        if name == "transmitter":
            maps[k] = torch.from_numpy(np.asarray(transmitter, dtype=np.float32))
    if cars is not None:
        maps[2] = torch.from_numpy(np.asarray(cars, dtype=np.float32))
    downsizing = image_size < maps.shape[-1]
    maps = resize_maps(maps, image_size)
    if downsizing:
        for k, name in enumerate(names):
            peak = maps[k].max()
            if name == "transmitter" and peak > 0:
                maps[k] = maps[k] / peak
    return maps * 2 - 1


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


def display_channels(cond: torch.Tensor, names) -> torch.Tensor:
    """(B, 2, h, w): the buildings and transmitter channels of conditions (B, C, h, w) whose channels
    are `names`, for pictures (the sample grids); a channel the list lacks stays at cond's minimum."""
    names = tuple(names)
    picked = []
    for name in ("buildings", "transmitter"):
        if name in names:
            picked.append(cond[:, names.index(name)])
        else:
            picked.append(torch.full_like(cond[:, 0], float(cond.min())))
    return torch.stack(picked, dim=1)
