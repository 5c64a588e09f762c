"""From a style's candidate buildings to a CityLayout that keeps the layout's promises.

Styles build footprints that are disjoint by construction; here they are clipped to the tile, noded
(buildings that share a wall get the same vertices along it) and put on the JSON coordinate grid.
Noding first matters: a vertex of one building on another's wall would round to either side of it,
and the two would overlap by a sliver. Finally, a tile without room for transmitters gets a square
cleared of buildings. A style redraws a tile whose coverage falls outside the style's range.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import shapely

from irt4.data.city.layout import HEIGHT_DECIMALS, CityLayout, on_coordinate_grid
from irt4.data.city.parcels import MIN_AREA, clean
from irt4.data.city.raster import rasterize
from irt4.data.city.room import TX_ROOM, clearing, transmitter_room

NODE_TOLERANCE = 1e-6  # m: a vertex this close to another building's edge lies on it
OVERLAP_TOLERANCE = 1e-4  # m^2: more than rounding can make; a building overlapping more is dropped

Building = tuple[shapely.Polygon, float, str]  # footprint, height (m), material


def assemble(buildings: list[Building], style: str, size: int = 256, clear_room: bool = True) -> CityLayout:
    """The layout of the candidate buildings, earlier ones first when two overlap. clear_room=False
    keeps every building (real footprints: the transmitters go where there is room, not the reverse)."""
    parts = [
        (part, height, material) for polygon, height, material in buildings for part in clip(polygon, size)
    ]
    polygons = on_grid(node_shared_edges([part for part, _, _ in parts]))
    keep = kept_buildings(polygons)
    layout = CityLayout(
        polygons=[polygon for polygon, k in zip(polygons, keep) if k],
        heights=np.round(
            np.array([h for (_, h, _), k in zip(parts, keep) if k], dtype=np.float64), HEIGHT_DECIMALS
        ),
        materials=[material for (_, _, material), k in zip(parts, keep) if k],
        style=style,
    )
    return with_transmitter_room(layout, size) if clear_room else layout


def clip(polygon: shapely.Polygon, size: int) -> list[shapely.Polygon]:
    """The polygon's parts inside the tile; cleaned only where clipping changed them."""
    tile = shapely.box(0, 0, size, size)
    if tile.contains(polygon):
        return [polygon]
    return clean(polygon.intersection(tile))


def node_shared_edges(polygons: list[shapely.Polygon]) -> list[shapely.Polygon]:
    """Each polygon with the vertices of the buildings it touches inserted where they lie on its edges.

    In order: each polygon snaps to its neighbours as they already are, so two nearly equal vertices
    end up equal in both rather than swapped."""
    polygons = list(polygons)
    if not polygons:
        return polygons
    tree = shapely.STRtree(polygons)
    for i, polygon in enumerate(polygons):
        neighbours = [
            int(j) for j in tree.query(polygon, predicate="dwithin", distance=NODE_TOLERANCE) if j != i
        ]
        if neighbours:
            points = shapely.multipoints(
                np.concatenate([shapely.get_coordinates(polygons[j]) for j in neighbours])
            )
            polygons[i] = shapely.snap(polygon, points, NODE_TOLERANCE)
    return polygons


def on_grid(polygons: list[shapely.Polygon]) -> list[shapely.Polygon]:
    """The polygons with their coordinates on the JSON grid (vertices that met there merged)."""
    return [shapely.remove_repeated_points(shapely.transform(p, on_coordinate_grid)) for p in polygons]


def kept_buildings(polygons: list[shapely.Polygon]) -> np.ndarray:
    """(B,) bool: valid polygons of at least MIN_AREA that overlap no earlier kept one."""
    keep = np.array([p.is_valid and isinstance(p, shapely.Polygon) and p.area >= MIN_AREA for p in polygons])
    if not keep.any():
        return keep
    tree = shapely.STRtree(polygons)
    for i, polygon in enumerate(polygons):
        if not keep[i]:
            continue
        earlier = [int(j) for j in tree.query(polygon, predicate="intersects") if j < i and keep[j]]
        if any(polygon.intersection(polygons[j]).area > OVERLAP_TOLERANCE for j in earlier):
            keep[i] = False
    return keep


def with_transmitter_room(layout: CityLayout, size: int) -> CityLayout:
    """The layout, or, when it has fewer than TX_ROOM pixels fit for a transmitter, the layout
    without the buildings over a square where clearing costs the least."""
    buildings = rasterize(layout.polygons, size)
    if transmitter_room(buildings) >= TX_ROOM:
        return layout
    row0, col0, side = clearing(buildings)
    # the square's pixel centres lie in it, 0.5 px inside its border
    square = shapely.box(col0 + 0.25, row0 + 0.25, col0 + side - 0.25, row0 + side - 0.25)
    keep = ~shapely.intersects(np.array(layout.polygons, dtype=object), square)
    cleared = CityLayout(
        polygons=[p for p, k in zip(layout.polygons, keep) if k],
        heights=layout.heights[keep],
        materials=[m for m, k in zip(layout.materials, keep) if k],
        style=layout.style,
    )
    assert transmitter_room(rasterize(cleared.polygons, size)) >= TX_ROOM
    return cleared


def drawn_until_coverage_fits(
    make_once: Callable[[], CityLayout], coverage: tuple[float, float], size: int, tries: int = 10
) -> CityLayout:
    """The first of up to `tries` layouts made by make_once() (each from where the last left the
    rng) whose coverage lies in the range; the last one if none does. A few tiles in a thousand
    need a second draw."""
    for _ in range(tries):
        layout = make_once()
        if coverage[0] <= layout.coverage(size) <= coverage[1]:
            break
    return layout
