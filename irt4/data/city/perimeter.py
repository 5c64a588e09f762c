"""Style "perimeter": perimeter blocks, wings along the streets around an inner courtyard.

Blocks are skewed quadrilaterals of a jittered lattice or Voronoi cells, shrunk by half a street on
every side. A block is one building with a courtyard (a polygon with a hole), or a ring of touching
buildings of different heights, closed or open on one side; a block too small for a courtyard is
built over in one to three buildings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from shapely.geometry.polygon import orient

from irt4.data.city.assemble import Building, assemble, drawn_until_coverage_fits
from irt4.data.city.layout import CityLayout
from irt4.data.city.materials import draw_material
from irt4.data.city.parcels import clean, inset, split_by_segments, subdivide
from irt4.data.city.shapes import rotation
from irt4.data.city.streets import street


@dataclass(frozen=True)
class PerimeterParams:
    """Ranges each tile draws from (m, m^2, shares); coverage and height are what the tiles show."""

    spacing: tuple[float, float] = (60.0, 110.0)  # between block centres
    jitter: float = 0.2  # of the spacing: how far lattice nodes stray
    voronoi: float = 0.5  # chance the blocks are Voronoi cells rather than lattice quadrilaterals
    street: tuple[float, float] = (8.0, 20.0)
    depth: tuple[float, float] = (10.0, 18.0)  # wings, from the street front to the courtyard
    frontage: tuple[float, float] = (12.0, 35.0)  # a ring building's length along the street
    min_courtyard: float = 150.0  # m^2
    min_building: float = 40.0  # m^2
    one_building: float = 0.3  # chance a closed block is one building around its courtyard
    open_side: float = 0.35  # chance a block's ring is open on one side
    opening: tuple[float, float] = (0.3, 0.7)  # share of that side left open
    height: tuple[float, float] = (12.0, 30.0)
    height_spread: float = 0.2
    coverage: tuple[float, float] = (0.3, 0.55)


PARAMS = PerimeterParams()


def make_perimeter(rng: np.random.Generator, size: int = 256) -> CityLayout:
    return drawn_until_coverage_fits(lambda: perimeter_tile(rng, size), PARAMS.coverage, size)


def perimeter_tile(rng: np.random.Generator, size: int) -> CityLayout:
    """One draw of the style, whatever its coverage."""
    params = PARAMS
    tile = shapely.box(0, 0, size, size)
    buildings: list[Building] = []
    for cell in block_cells(rng, params, size):
        half_street = rng.uniform(*params.street) / 2
        for block in clean(
            cell.buffer(-half_street, join_style="mitre").intersection(tile), params.min_courtyard
        ):
            buildings += build_block(rng, block, params)
    return assemble(buildings, "perimeter", size)


def block_cells(rng: np.random.Generator, params: PerimeterParams, size: int) -> list[shapely.Polygon]:
    """Cells that partition the plane around the tile, street centre lines on their borders: the
    quadrilaterals of a jittered, rotated lattice, or the Voronoi cells of its nodes."""
    spacing = rng.uniform(*params.spacing)
    reach = int(np.ceil(0.75 * size / spacing)) + 1
    steps = np.arange(-reach, reach + 1)
    lattice = np.stack(np.meshgrid(steps, steps, indexing="ij"), axis=-1) * spacing  # (n, n, 2)
    lattice = lattice + rng.uniform(-params.jitter, params.jitter, lattice.shape) * spacing
    nodes = lattice @ rotation(rng.uniform(0, np.pi / 2)).T + size / 2
    tile = shapely.box(0, 0, size, size)
    if rng.random() < params.voronoi:
        cells = shapely.voronoi_polygons(shapely.multipoints(nodes.reshape(-1, 2)), ordered=True).geoms
    else:
        corners = [nodes[:-1, :-1], nodes[1:, :-1], nodes[1:, 1:], nodes[:-1, 1:]]
        cells = [shapely.Polygon(quad) for quad in np.stack(corners, axis=2).reshape(-1, 4, 2)]
    return [cell for cell in cells if cell.is_valid and cell.intersects(tile)]


def build_block(rng: np.random.Generator, block: shapely.Polygon, params: PerimeterParams) -> list[Building]:
    """The block's buildings: wings `depth` m deep along its sides, or, too small for a courtyard,
    the whole block in one to three buildings."""
    depth = rng.uniform(*params.depth)
    block_height = rng.uniform(*params.height)
    courtyards = inset(block, depth, params.min_courtyard)
    if not courtyards:  # too small for a courtyard: built over
        pieces = subdivide(block, rng, block.area / rng.uniform(1, 3), params.min_building)
    else:
        ring = clean(block.difference(shapely.union_all(courtyards)), params.min_building)
        opened = rng.random() < params.open_side
        if opened:
            ring = [piece for part in ring for piece in open_one_side(rng, part, block, depth, params)]
        if not opened and len(ring) == 1 and rng.random() < params.one_building:
            pieces = ring
        else:
            pieces = [piece for part in ring for piece in split_ring(rng, part, block, depth, params)]
    buildings = []
    for piece in pieces:
        height = float(
            np.clip(
                block_height * rng.uniform(1 - params.height_spread, 1 + params.height_spread), *params.height
            )
        )
        buildings.append((piece, height, draw_material(rng, "perimeter")))
    return buildings


def street_fronts(block: shapely.Polygon) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """(start, inward unit normal, length) of each side of the block's counter-clockwise exterior."""
    ring = np.asarray(orient(block, 1.0).exterior.coords)
    fronts = []
    for start, end in zip(ring[:-1], ring[1:]):
        length = float(np.linalg.norm(end - start))
        along = (end - start) / length
        fronts.append((start, np.array([-along[1], along[0]]), length))
    return fronts


def split_ring(
    rng: np.random.Generator,
    ring: shapely.Polygon,
    block: shapely.Polygon,
    depth: float,
    params: PerimeterParams,
) -> list[shapely.Polygon]:
    """The ring cut across its wings into buildings about a frontage long. Cuts keep clear of the
    corners (where they would run along a wing) and are kept only while every piece stays big enough
    and without short edges."""
    frontage = rng.uniform(*params.frontage)
    clearance = 1.5 * depth + 1.0
    cuts = []
    for start, inward, length in street_fronts(block):
        along = np.array([inward[1], -inward[0]])
        for offset in np.arange(clearance, length - clearance, frontage) + rng.uniform(0, frontage / 2):
            if offset <= length - clearance:
                point = start + offset * along
                cuts.append(shapely.LineString([point - inward, point + (depth + 1.0) * inward]))
    pieces = [ring]
    accepted = []
    for cut in cuts:
        # all cuts at once: an annulus needs two before it falls apart
        candidate = split_by_segments(ring, [*accepted, cut], params.min_building)
        if candidate is not None:
            pieces, accepted = candidate, [*accepted, cut]
    return pieces


def open_one_side(
    rng: np.random.Generator,
    ring: shapely.Polygon,
    block: shapely.Polygon,
    depth: float,
    params: PerimeterParams,
) -> list[shapely.Polygon]:
    """The ring with a gap in the middle of its longest street side, the courtyard open to the street."""
    start, inward, length = max(street_fronts(block), key=lambda front: front[2])
    along = np.array([inward[1], -inward[0]])
    share = rng.uniform(*params.opening)
    middle = start + (0.5 * length) * along + (depth / 2) * inward
    gap = street(middle, along, depth + 3.0, reach=share * length / 2)
    return clean(ring.difference(gap), params.min_building)
