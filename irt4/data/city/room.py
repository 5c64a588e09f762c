"""Room for transmitters: street pixels far enough from every wall, counted by the rule that
irt4.data.scene.transmitter_sites applies to the building mask, and made where a layout lacks it."""

from __future__ import annotations

import numpy as np

TX_CLEARANCE = 3.0  # m: transmitter_sites' default min_wall_distance
TX_ROOM = 40  # fit pixels every layout keeps: a data set draws a few transmitters per map among them


def tx_window(size: int) -> tuple[int, int]:
    """Rows and cols (inclusive) where transmitters go: (53, 202) on a 256 px tile, symmetric."""
    low = round(size * 53 / 256)
    return low, size - 1 - low


def clearance_radius(min_wall_distance: float = TX_CLEARANCE) -> int:
    """Half-side in px of the square around a pixel that must hold no building: a free (2r + 1)^2
    neighbourhood puts the nearest wall at least r + 0.5 m from the pixel centre."""
    return max(0, int(np.ceil(min_wall_distance - 0.5)))


def building_counts(buildings: np.ndarray, radius: int) -> np.ndarray:
    """(size, size) int: building pixels in each pixel's (2 radius + 1)^2 neighbourhood."""
    side = 2 * radius + 1
    padded = np.pad((np.asarray(buildings) > 0).astype(np.int64), radius)
    table = np.pad(padded.cumsum(axis=0).cumsum(axis=1), ((1, 0), (1, 0)))
    return table[side:, side:] - table[:-side, side:] - table[side:, :-side] + table[:-side, :-side]


def transmitter_room(buildings: np.ndarray, min_wall_distance: float = TX_CLEARANCE) -> int:
    """Pixels in the transmitter window whose centre is at least min_wall_distance from every wall."""
    low, high = tx_window(buildings.shape[0])
    counts = building_counts(buildings, clearance_radius(min_wall_distance))
    return int((counts[low : high + 1, low : high + 1] == 0).sum())


def clearing(buildings: np.ndarray) -> tuple[int, int, int]:
    """(row0, col0, side): the square of pixels in the window that, emptied, gives TX_ROOM fit
    pixels inside it, placed where it holds the fewest building pixels (the first such in row-major
    order)."""
    radius = clearance_radius()
    side = 2 * radius + int(np.ceil(np.sqrt(TX_ROOM))) + 2
    low, high = tx_window(buildings.shape[0])
    counts = building_counts(buildings, 0)
    table = np.pad(counts.cumsum(axis=0).cumsum(axis=1), ((1, 0), (1, 0)))
    inside = table[side:, side:] - table[:-side, side:] - table[side:, :-side] + table[:-side, :-side]
    inside = inside[low : high + 2 - side, low : high + 2 - side]  # squares that lie in the window
    row, col = np.unravel_index(int(np.argmin(inside)), inside.shape)
    return int(row) + low, int(col) + low, side
