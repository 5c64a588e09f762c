"""Style "oldtown": a dense old town of narrow, curved lanes around small irregular blocks, a few
small squares, every block divided into many small buildings wall to wall with a few backyards.

Lanes follow the edges of a Voronoi diagram, each bent sideways by a smooth random bulge (both blocks
along an edge see the same curve) and given its own width.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely

from irt4.data.city.assemble import Building, assemble, drawn_until_coverage_fits
from irt4.data.city.layout import CityLayout
from irt4.data.city.materials import draw_material
from irt4.data.city.parcels import clean, inset, long_axis, subdivide
from irt4.data.city.room import tx_window
from irt4.data.city.shapes import place, rectangle


@dataclass(frozen=True)
class OldtownParams:
    """Ranges each tile draws from (m, m^2, shares); coverage and height are what the tiles show."""

    spacing: tuple[float, float] = (32.0, 60.0)  # between the lane network's Voronoi seeds
    jitter: float = 0.35  # of the spacing
    lane: tuple[float, float] = (3.0, 10.0)
    bulge: float = 0.12  # a lane's largest sideways bend, as a share of its length
    squares: tuple[int, int] = (2, 4)  # the first lies in the transmitter window
    square: tuple[float, float] = (16.0, 36.0)
    backyards: tuple[float, float] = (0.8, 1.0)  # share of a tile's blocks with an open yard inside
    backyard_depth: tuple[float, float] = (0.15, 0.25)  # of the ring, as a share of the block's width
    ring_depth: tuple[float, float] = (4.0, 12.0)  # m, whatever the share says
    min_backyard: float = 30.0  # m^2
    lot_area: tuple[float, float] = (60.0, 260.0)
    min_lot_area: float = 25.0
    yards: tuple[float, float] = (0.25, 0.55)  # share of a tile's inner lots left open
    height: tuple[float, float] = (6.0, 20.0)
    coverage: tuple[float, float] = (0.35, 0.55)


PARAMS = OldtownParams()


def make_oldtown(rng: np.random.Generator, size: int = 256) -> CityLayout:
    return drawn_until_coverage_fits(lambda: oldtown_tile(rng, size), PARAMS.coverage, size)


def oldtown_tile(rng: np.random.Generator, size: int) -> CityLayout:
    """One draw of the style, whatever its coverage."""
    params = PARAMS
    tile = shapely.box(0, 0, size, size)
    open_space = shapely.union_all([*lanes(rng, params, size), *squares(rng, params, size)])
    yard_share = rng.uniform(*params.yards)
    backyard_share = rng.uniform(*params.backyards)
    buildings: list[Building] = []
    for block in clean(tile.difference(open_space), params.min_lot_area):
        lot_area = rng.uniform(*params.lot_area)
        for part in built_ring(rng, block, params, backyard_share):
            for lot in subdivide(part, rng, lot_area, params.min_lot_area):
                # a lot off the lanes is a yard now and then
                inner = lot.exterior.intersection(block.exterior).length < 1.0
                if inner and rng.random() < yard_share:
                    continue
                buildings.append((lot, rng.uniform(*params.height), draw_material(rng, "oldtown")))
    return assemble(buildings, "oldtown", size)


def built_ring(
    rng: np.random.Generator, block: shapely.Polygon, params: OldtownParams, backyard_share: float
) -> list[shapely.Polygon]:
    """The block, or now and then the ring of it along the lanes around an open backyard."""
    if rng.random() >= backyard_share:
        return [block]
    depth = np.clip(rng.uniform(*params.backyard_depth) * long_axis(block)[3], *params.ring_depth)
    backyards = inset(block, depth, params.min_backyard)
    if not backyards:
        return [block]
    return clean(block.difference(shapely.union_all(backyards)), params.min_lot_area)


def lanes(rng: np.random.Generator, params: OldtownParams, size: int) -> list[shapely.Polygon]:
    """Each Voronoi edge near the tile as a curved lane of its own width."""
    spacing = rng.uniform(*params.spacing)
    steps = np.arange(-1.0, size / spacing + 1.0)
    seeds = np.stack(np.meshgrid(steps, steps, indexing="ij"), axis=-1).reshape(-1, 2) * spacing
    seeds = seeds + rng.uniform(-params.jitter, params.jitter, seeds.shape) * spacing
    margin = 2 * spacing
    frame = shapely.box(-margin, -margin, size + margin, size + margin)
    edges = shapely.voronoi_polygons(shapely.multipoints(seeds), extend_to=frame, only_edges=True)
    near_tile = shapely.box(-spacing, -spacing, size + spacing, size + spacing)
    result = []
    for edge in shapely.get_parts(edges):
        start, end = np.asarray(edge.coords)[[0, -1]]
        width = rng.uniform(*params.lane)
        bend = rng.uniform(-1, 1, 2) * params.bulge
        if edge.intersects(near_tile):
            result.append(curved(start, end, bend).buffer(width / 2, quad_segs=2))
    return result


def curved(start: np.ndarray, end: np.ndarray, bend: np.ndarray, points: int = 7) -> shapely.LineString:
    """The segment bent sideways by bend[0] x length x sin(pi t) + bend[1] x length x sin(2 pi t) / 2: a
    smooth curve through both ends."""
    t = np.linspace(0.0, 1.0, points)[:, None]
    chord = end - start
    normal = np.array([-chord[1], chord[0]])
    offset = bend[0] * np.sin(np.pi * t) + 0.5 * bend[1] * np.sin(2 * np.pi * t)
    return shapely.LineString(start + t * chord + offset * normal)


def squares(rng: np.random.Generator, params: OldtownParams, size: int) -> list[shapely.Polygon]:
    """Small squares, rotated rectangles; the first in the middle of the transmitter window."""
    low, high = tx_window(size)
    quarter = (high - low) / 4
    count = int(rng.integers(params.squares[0], params.squares[1] + 1))
    centres = [rng.uniform(low + quarter, high - quarter, 2)] + [
        rng.uniform(0, size, 2) for _ in range(count - 1)
    ]
    return [
        place(rectangle(*rng.uniform(*params.square, 2)), centre, rng.uniform(0, np.pi / 2))
        for centre in centres
    ]
