"""Building footprints -> the building mask: a pixel is a building where its centre is inside one."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import shapely


def rasterize(polygons: Sequence[shapely.Polygon], size: int = 256) -> np.ndarray:
    """(size, size) uint8 mask, 1 where the pixel centre (col + 0.5, row + 0.5) lies inside a footprint.

    The footprints' union is tested, so a centre on the wall two touching buildings share counts as
    inside: a vertical ray cast there into the extruded mesh hits a roof, as it does at any centre
    inside one footprint. A centre on an outer wall is outside.
    """
    mask = np.zeros((size, size), dtype=np.uint8)
    if len(polygons) == 0:
        return mask
    built = shapely.union_all(list(polygons))
    shapely.prepare(built)
    rows, cols = np.mgrid[0:size, 0:size]
    mask[shapely.contains_xy(built, cols + 0.5, rows + 0.5)] = 1
    return mask
