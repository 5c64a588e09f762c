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


def solid_cells(
    polygons: Sequence[shapely.Polygon], heights: Sequence[float], size: int = 256, margin: float = 0.02
) -> np.ndarray:
    """(size, size) float32: where the cell [col, col + 1] x [row, row + 1] lies inside one footprint,
    more than `margin` m from its walls, that building's height less `margin`; 0 elsewhere.

    A point of such a cell below that height is inside the building's solid, so a straight segment
    through it between two points outside the buildings crosses a wall or a roof: the ray tracer's
    shadow-ray test would find it blocked (irt4.data.candidate_culling uses this to skip such tests).
    Cells on a wall, or shared by two touching buildings, stay 0: the raster only ever says "blocked"
    where that is certain.
    """
    solid = np.zeros((size, size), dtype=np.float32)
    for polygon, height in zip(polygons, heights):
        inner = polygon.buffer(-margin)
        if inner.is_empty:
            continue
        shapely.prepare(inner)
        x0, y0, x1, y1 = inner.bounds
        c0, r0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
        c1, r1 = min(int(np.ceil(x1)), size), min(int(np.ceil(y1)), size)
        if c1 <= c0 or r1 <= r0:
            continue
        rows, cols = np.mgrid[r0:r1, c0:c1]
        cells = shapely.box(cols, rows, cols + 1, rows + 1)
        inside = shapely.contains(inner, cells)
        solid[rows[inside], cols[inside]] = max(float(height) - margin, 0.0)
    return solid
