"""CityLayout: the buildings of one tile as footprint polygons, heights and materials.

World metres, x = column, y = row, the tile is [0, size]^2. Footprints are valid, their interiors are
pairwise disjoint (buildings may touch), and their coordinates lie on the JSON grid (1 mm), so a layout
read back from its JSON is the same layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely

from irt4.data.city.raster import rasterize

COORDINATE_DECIMALS = 3  # 1 mm
HEIGHT_DECIMALS = 2  # 1 cm


def on_coordinate_grid(coords: np.ndarray) -> np.ndarray:
    """Coordinates rounded to the JSON grid; rounding twice changes nothing."""
    return np.round(np.asarray(coords, dtype=np.float64), COORDINATE_DECIMALS)


@dataclass
class CityLayout:
    polygons: list[shapely.Polygon]
    heights: np.ndarray  # (B,) float64 m
    materials: list[str]  # (B,) ITU material names (irt4.data.city.materials)
    style: str

    def coverage(self, size: int = 256) -> float:
        """Fraction of the size x size raster's pixels that are building."""
        return float(rasterize(self.polygons, size).mean())

    def vertex_count(self) -> int:
        """Ring vertices of all footprints: each becomes a vertical wedge for the ray tracer."""
        return sum(len(ring.coords) - 1 for p in self.polygons for ring in (p.exterior, *p.interiors))

    def to_json(self) -> dict:
        buildings = []
        for polygon, height, material in zip(self.polygons, self.heights, self.materials):
            buildings.append(
                {
                    "exterior": _ring_to_json(polygon.exterior),
                    "interiors": [_ring_to_json(ring) for ring in polygon.interiors],
                    "height": round(float(height), HEIGHT_DECIMALS),
                    "material": material,
                }
            )
        return {"style": self.style, "buildings": buildings}

    @classmethod
    def from_json(cls, data: dict) -> CityLayout:
        buildings = data["buildings"]
        return cls(
            polygons=[shapely.Polygon(b["exterior"], b["interiors"]) for b in buildings],
            heights=np.array([b["height"] for b in buildings], dtype=np.float64),
            materials=[b["material"] for b in buildings],
            style=data["style"],
        )


def _ring_to_json(ring: shapely.LinearRing) -> list[list[float]]:
    """Open ring (no repeated first vertex) as [[x, y], ...] on the coordinate grid."""
    return on_coordinate_grid(np.asarray(ring.coords)[:-1]).tolist()
