"""Style "grid": rotated, jittered street grids in one to three districts, each at its own angle,
the districts parted by an avenue; blocks built over whole or in lots, some lots left open."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely

from irt4.data.city.assemble import Building, assemble, drawn_until_coverage_fits
from irt4.data.city.layout import CityLayout
from irt4.data.city.materials import draw_material
from irt4.data.city.parcels import clean, inset, split_by_line, subdivide
from irt4.data.city.streets import street, unit


@dataclass(frozen=True)
class GridParams:
    """Ranges each tile draws from (m, m^2, shares); coverage and height are what the tiles show."""

    districts: tuple[int, int] = (1, 3)
    block: tuple[float, float] = (30.0, 150.0)  # between the streets' edges
    side_street: tuple[float, float] = (5.0, 16.0)
    avenue: tuple[float, float] = (18.0, 40.0)
    avenue_chance: float = 0.7  # a district's grid has an avenue through its middle
    position_jitter: float = 0.15  # of the block size
    bent_street: float = 0.3  # chance a street deviates from its grid's angle
    bend: float = np.radians(4.0)
    setback: tuple[float, float] = (0.0, 6.0)
    lot_area: tuple[float, float] = (300.0, 3000.0)
    min_lot_area: float = 60.0
    apart: float = 0.4  # chance a block's buildings stand apart rather than wall to wall
    lot_gap: tuple[float, float] = (2.0, 8.0)
    open_lots: tuple[float, float] = (0.0, 0.25)  # share of a tile's lots left open
    park: float = 0.06  # chance a block is left empty
    inner_open: float = 0.6  # chance a lot off the streets, inside a big block, is left open
    height: tuple[float, float] = (8.0, 60.0)
    height_spread: float = 0.25  # a lot's height: its block's x U(1 -+ spread)
    tall: float = 40.0  # m: taller buildings take tower materials
    coverage: tuple[float, float] = (0.15, 0.55)


PARAMS = GridParams()


def make_grid(rng: np.random.Generator, size: int = 256) -> CityLayout:
    return drawn_until_coverage_fits(lambda: grid_tile(rng, size), PARAMS.coverage, size)


def grid_tile(rng: np.random.Generator, size: int) -> CityLayout:
    """One draw of the style, whatever its coverage."""
    params = PARAMS
    tile = shapely.box(0, 0, size, size)
    districts = split_into_districts(
        rng, tile, int(rng.integers(params.districts[0], params.districts[1] + 1))
    )
    avenue_width = rng.uniform(*params.avenue)
    borders = district_borders(districts, tile).buffer(avenue_width / 2, cap_style="flat", join_style="mitre")
    open_share = rng.uniform(*params.open_lots)
    buildings: list[Building] = []
    for district in districts:
        streets = shapely.union_all([borders, *district_streets(rng, district, params)])
        for block in clean(district.difference(streets), min_area=params.min_lot_area):
            buildings += fill_block(rng, block, params, open_share)
    return assemble(buildings, "grid", size)


def split_into_districts(
    rng: np.random.Generator, tile: shapely.Polygon, count: int
) -> list[shapely.Polygon]:
    """`count` districts that partition the tile: one line through its middle part for two, wedges
    around a point near its centre for three."""
    size = tile.bounds[2]
    centre = np.full(2, size / 2)
    if count == 2:
        point = centre + rng.uniform(-0.2, 0.2, 2) * size
        pieces = split_by_line(tile, point, unit(rng.uniform(0, np.pi)))
        if pieces is not None:
            return pieces
        count = 1
    if count == 1:
        return [tile]
    hub = centre + rng.uniform(-0.15, 0.15, 2) * size
    first = rng.uniform(0, 2 * np.pi)
    spokes = first + 2 * np.pi * (np.arange(count) + rng.uniform(-0.15, 0.15, count)) / count
    seeds = hub + rng.uniform(0.15, 0.3) * size * np.stack([np.cos(spokes), np.sin(spokes)], axis=1)
    cells = shapely.voronoi_polygons(shapely.multipoints(seeds), extend_to=tile, ordered=True)
    return [tile.intersection(cell) for cell in cells.geoms]


def district_borders(districts: list[shapely.Polygon], tile: shapely.Polygon) -> shapely.Geometry:
    """The lines where districts meet (the tile's own border left out)."""
    if len(districts) == 1:
        return shapely.LineString()
    lines = shapely.union_all([district.boundary for district in districts])
    return lines.difference(tile.exterior.buffer(1e-6))


def district_streets(
    rng: np.random.Generator, district: shapely.Polygon, params: GridParams
) -> list[shapely.Polygon]:
    """A jittered street grid at a random angle over the district: two families of streets, one of
    them with an avenue near the district's middle."""
    angle = rng.uniform(0, np.pi / 2)
    centre = np.asarray(district.centroid.coords[0])
    minx, miny, maxx, maxy = district.bounds
    reach = np.hypot(maxx - minx, maxy - miny) / 2 + 20.0
    avenue_family = int(rng.integers(2)) if rng.random() < params.avenue_chance else -1
    streets = []
    for family in range(2):
        along = unit(angle + family * np.pi / 2)
        across = np.array([-along[1], along[0]])
        block = np.exp(rng.uniform(*np.log(params.block)))  # log-uniform: as many small blocks as big
        width = rng.uniform(*params.side_street)
        pitch = block + width
        offsets = rng.uniform(-0.5, 0.5) * pitch + pitch * np.arange(
            -np.ceil(reach / pitch), np.ceil(reach / pitch) + 1
        )
        offsets = offsets + rng.uniform(-1, 1, len(offsets)) * params.position_jitter * block
        widths = width * rng.uniform(0.8, 1.2, len(offsets))
        if family == avenue_family:
            widths[np.argmin(np.abs(offsets))] = rng.uniform(*params.avenue)
        for offset, street_width in zip(offsets, widths):
            direction = along
            if rng.random() < params.bent_street:
                direction = unit(angle + family * np.pi / 2 + rng.uniform(-1, 1) * params.bend)
            streets.append(street(centre + offset * across, direction, street_width, reach))
    return streets


def fill_block(
    rng: np.random.Generator, block: shapely.Polygon, params: GridParams, open_share: float
) -> list[Building]:
    """The block's buildings: set back from the streets, in lots wall to wall or apart."""
    if rng.random() < params.park:
        return []
    block_height = rng.uniform(*params.height)
    setback = rng.uniform(*params.setback)
    gap = rng.uniform(*params.lot_gap) if rng.random() < params.apart else 0.0
    buildings = []
    for site in inset(block, setback, params.min_lot_area):
        lots = subdivide(site, rng, rng.uniform(*params.lot_area), params.min_lot_area)
        for lot in lots:
            inner = lot.exterior.intersection(site.exterior).length < 1.0
            if len(lots) > 1 and rng.random() < (params.inner_open if inner else open_share):
                continue
            for footprint in inset(lot, gap / 2, params.min_lot_area):
                spread = rng.uniform(1 - params.height_spread, 1 + params.height_spread)
                height = float(np.clip(block_height * spread, *params.height))
                material = draw_material(rng, "tower" if height > params.tall else "grid")
                buildings.append((footprint, height, material))
    return buildings
