"""Building materials: ITU-R P.2040 materials that Sionna RT 2.2 defines at 5.9 GHz, and how often each
kind of building is made of them.

One material per building, walls and roof alike: the roof edge is a wedge only when walls and roof are
in one mesh. Sionna's "floorboard" is left out (defined for 50-100 GHz only), and so are its interior
finishes (ceiling board, chipboard, tiles) and the grounds.
"""

from __future__ import annotations

import numpy as np

BUILDING_MATERIALS = ("concrete", "brick", "glass", "marble", "metal", "wood", "plasterboard")

# kind of building -> relative weight of each material
MATERIAL_WEIGHTS: dict[str, dict[str, float]] = {
    "grid": {"concrete": 0.45, "brick": 0.2, "glass": 0.2, "marble": 0.1, "metal": 0.05},
    "perimeter": {"brick": 0.45, "concrete": 0.35, "marble": 0.15, "plasterboard": 0.05},
    "oldtown": {"brick": 0.55, "marble": 0.2, "concrete": 0.1, "wood": 0.1, "plasterboard": 0.05},
    "house": {"brick": 0.35, "concrete": 0.3, "wood": 0.25, "plasterboard": 0.1},
    "tower": {"glass": 0.55, "concrete": 0.3, "metal": 0.15},
    "hall": {"metal": 0.65, "concrete": 0.3, "brick": 0.05},
    "tank": {"metal": 0.85, "concrete": 0.15},
}


def draw_material(rng: np.random.Generator, kind: str) -> str:
    """One material for a building of `kind` (a key of MATERIAL_WEIGHTS)."""
    weights = MATERIAL_WEIGHTS[kind]
    cumulative = np.cumsum(list(weights.values()))
    return list(weights)[int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))]
