"""Straight streets as polygons."""

from __future__ import annotations

import numpy as np
import shapely


def street(point: np.ndarray, direction: np.ndarray, width: float, reach: float = 1000.0) -> shapely.Polygon:
    """A street `width` m wide along the line through point, reaching `reach` m each way."""
    direction = np.asarray(direction, dtype=np.float64) / np.linalg.norm(direction)
    axis = shapely.LineString([point - reach * direction, point + reach * direction])
    return axis.buffer(width / 2, cap_style="flat", join_style="mitre")


def unit(angle: float) -> np.ndarray:
    return np.array([np.cos(angle), np.sin(angle)])
