"""The first procedural city maps: axis-aligned boxes on a street grid, transmitters in the streets.

Used by the demo (and the data generator) to make inputs without downloading anything. Maps use
RadioMapSeer's conventions: 1 px = 1 m, building pixels = 1 (255 in the PNG), streets = 0. Committed
data sets were made from these functions: their output for a given rng must never change.
"""

from __future__ import annotations

import numpy as np


def random_city(size: int = 256, rng: np.random.Generator | None = None, block: int = 48, street: int = 10):
    """(size, size) float32 building mask: boxes and L-shapes in a jittered street grid."""
    rng = rng or np.random.default_rng()
    buildings = np.zeros((size, size), dtype=np.float32)
    for top in range(street // 2, size, block):
        for left in range(street // 2, size, block):
            # each block holds one or two buildings inset from the streets by a random margin
            for _ in range(rng.integers(1, 3)):
                h, w = rng.integers(block // 4, block - street, size=2)
                y = top + rng.integers(0, max(1, block - street - h))
                x = left + rng.integers(0, max(1, block - street - w))
                buildings[y : y + h, x : x + w] = 1.0
                if rng.random() < 0.4:  # an L-shape: a wing along one side
                    wing_h, wing_w = max(2, h // 2), max(2, w // 2)
                    buildings[y : y + wing_h, x : min(size, x + w + wing_w)] = 1.0
    return buildings


def random_transmitter(buildings: np.ndarray, rng: np.random.Generator | None = None, margin: int = 8):
    """(row, col) of a street pixel at least `margin` px from the border."""
    rng = rng or np.random.default_rng()
    size = buildings.shape[0]
    free = np.argwhere(buildings[margin : size - margin, margin : size - margin] == 0) + margin
    if len(free) == 0:
        raise ValueError("the map has no street pixel to place a transmitter on")
    row, col = free[rng.integers(len(free))]
    return int(row), int(col)
