"""Style "detached": buildings that stand apart along a few roads: houses, slabs, L, T and U shapes,
and towers on podiums; parks and squares up to about 100 m across left empty.

A tower on a podium is two buildings: the podium minus the tower's footprint at the podium's height,
and the tower at its own, so the footprints stay disjoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely

from irt4.data.city.assemble import Building, assemble, drawn_until_coverage_fits
from irt4.data.city.layout import CityLayout
from irt4.data.city.materials import draw_material
from irt4.data.city.scatter import place_apart
from irt4.data.city.shapes import disc, l_shape, place, rectangle, t_shape, u_shape
from irt4.data.city.streets import street, unit

KINDS = ("house", "slab", "l", "t", "u", "tower")


@dataclass(frozen=True)
class DetachedParams:
    """Ranges each tile draws from (m, m^2, shares); coverage and height are what the tiles show."""

    roads: tuple[int, int] = (1, 3)
    road: tuple[float, float] = (8.0, 20.0)
    road_setback: float = 3.0
    parks: tuple[int, int] = (1, 3)
    park: tuple[float, float] = (30.0, 100.0)  # across
    # a tile's density d ~ U(0, 1) sets the share of it its buildings aim to cover, and the gap
    # between them: the denser, the closer
    built: tuple[float, float] = (0.08, 0.26)
    gap: tuple[float, float] = (14.0, 3.0)
    on_road: float = 0.7  # chance a building faces a road rather than standing anywhere at any angle
    front_yard: tuple[float, float] = (0.0, 10.0)
    kinds: tuple[float, ...] = (0.4, 0.2, 0.1, 0.07, 0.08, 0.15)  # weights of KINDS
    house: tuple[float, float] = (8.0, 20.0)  # side
    house_height: tuple[float, float] = (4.0, 12.0)
    slab: tuple[float, float] = (25.0, 60.0)  # length
    slab_depth: tuple[float, float] = (10.0, 16.0)
    slab_height: tuple[float, float] = (10.0, 40.0)
    shaped: tuple[float, float] = (20.0, 45.0)  # side of an L, T or U
    wing: tuple[float, float] = (7.0, 12.0)
    shaped_height: tuple[float, float] = (8.0, 30.0)
    podium: tuple[float, float] = (24.0, 50.0)
    podium_height: tuple[float, float] = (4.0, 12.0)
    podium_chance: float = 0.6
    podium_margin: float = 2.0  # m, at least, between a tower and its podium's edge
    tower: tuple[float, float] = (12.0, 24.0)  # side or diameter
    round_tower: float = 0.2
    tower_height: tuple[float, float] = (30.0, 80.0)
    attempts: int = 1000
    height: tuple[float, float] = (4.0, 80.0)
    coverage: tuple[float, float] = (0.05, 0.25)


PARAMS = DetachedParams()


def make_detached(rng: np.random.Generator, size: int = 256) -> CityLayout:
    return drawn_until_coverage_fits(lambda: detached_tile(rng, size), PARAMS.coverage, size)


def detached_tile(rng: np.random.Generator, size: int) -> CityLayout:
    """One draw of the style, whatever its coverage."""
    params = PARAMS
    tile = shapely.box(0, 0, size, size)
    road_count = int(rng.integers(params.roads[0], params.roads[1] + 1))
    road_angles = rng.uniform(0, np.pi, road_count)
    road_points = rng.uniform(0.2, 0.8, (road_count, 2)) * size
    road_widths = rng.uniform(*params.road, road_count)
    roads = [
        street(point, unit(angle), width + 2 * params.road_setback)
        for point, angle, width in zip(road_points, road_angles, road_widths)
    ]
    centre_lines = [
        shapely.LineString([point - 2 * size * unit(angle), point + 2 * size * unit(angle)]).intersection(
            tile
        )
        for point, angle in zip(road_points, road_angles)
    ]
    parks = [park(rng, params, size) for _ in range(int(rng.integers(params.parks[0], params.parks[1] + 1)))]
    kind_weights = np.array(params.kinds) / sum(params.kinds)

    def make_group() -> list[Building]:
        kind = KINDS[rng.choice(len(KINDS), p=kind_weights)]
        if rng.random() < params.on_road:  # facing a road across a front yard
            road = int(rng.integers(road_count))
            across = unit(road_angles[road] + np.pi / 2)
            group = building_group(rng, params, kind, road_angles[road] + rng.integers(2) * np.pi / 2)
            reach = max(np.abs(shapely.get_coordinates(polygon) @ across).max() for polygon, _, _ in group)
            distance = road_widths[road] / 2 + params.road_setback + rng.uniform(*params.front_yard) + reach
            line = centre_lines[road]
            on_line = np.asarray(line.interpolate(rng.uniform(0, line.length)).coords[0])
            centre = on_line + rng.choice([-1.0, 1.0]) * distance * across
        else:
            centre = rng.uniform(0, size, 2)
            group = building_group(rng, params, kind, rng.uniform(0, np.pi))
        return [(shapely.transform(polygon, lambda xy: xy + centre), h, m) for polygon, h, m in group]

    density = rng.random()
    target = np.interp(density, [0, 1], params.built) * size * size
    gap = np.interp(density, [0, 1], params.gap) * rng.uniform(0.8, 1.2)
    forbidden = shapely.union_all([*roads, *parks])
    buildings = place_apart(make_group, forbidden, gap, target, params.attempts, size)
    return assemble(buildings, "detached", size)


def park(rng: np.random.Generator, params: DetachedParams, size: int) -> shapely.Polygon:
    """A round or rectangular park or square anywhere on the tile."""
    centre = rng.uniform(0, size, 2)
    if rng.random() < 0.5:
        return disc(centre, rng.uniform(*params.park) / 2)
    return place(rectangle(*rng.uniform(*params.park, 2)), centre, rng.uniform(0, np.pi / 2))


def building_group(
    rng: np.random.Generator, params: DetachedParams, kind: str, angle: float
) -> list[Building]:
    """One building, or a tower with its podium, of the given kind, around the origin."""
    if kind == "tower":
        return tower_group(rng, params, angle)
    if kind == "house":
        outline = rectangle(*rng.uniform(*params.house, 2))
        height = rng.uniform(*params.house_height)
    elif kind == "slab":
        outline = rectangle(rng.uniform(*params.slab), rng.uniform(*params.slab_depth))
        height = rng.uniform(*params.slab_height)
    else:
        shape = {"l": l_shape, "t": t_shape, "u": u_shape}[kind]
        wing = rng.uniform(*params.wing)
        width, depth = rng.uniform(*params.shaped, 2)
        outline = shape(max(width, 2.5 * wing + 4.0), max(depth, wing + 6.0), wing)
        height = rng.uniform(*params.shaped_height)
    material = draw_material(rng, "house")
    return [(place(outline, np.zeros(2), angle), height, material)]


def tower_group(rng: np.random.Generator, params: DetachedParams, angle: float) -> list[Building]:
    """A tower, square or round, around the origin: alone, or on a podium, at least
    params.podium_margin m from the podium's edges (a thinner strip of podium would be a sliver)."""
    centre = np.zeros(2)
    side = rng.uniform(*params.tower)
    round_tower = rng.random() < params.round_tower
    height = rng.uniform(*params.tower_height)
    material = draw_material(rng, "tower")
    if rng.random() >= params.podium_chance:
        return [(tower_outline(centre, side, angle, round_tower), height, material)]
    width, depth = np.maximum(rng.uniform(*params.podium, 2), side + 3 * params.podium_margin)
    podium = place(rectangle(width, depth), centre, angle)
    slack = np.array([width - side, depth - side]) / 2 - params.podium_margin
    shift = rng.uniform(-1, 1, 2) * slack @ np.array([unit(angle), unit(angle + np.pi / 2)])
    tower = tower_outline(centre + shift, side, angle, round_tower)
    podium_height = rng.uniform(*params.podium_height)
    return [(tower, height, material), (podium.difference(tower), podium_height, draw_material(rng, "house"))]


def tower_outline(centre: np.ndarray, side: float, angle: float, round_tower: bool) -> shapely.Polygon:
    return disc(centre, side / 2) if round_tower else place(rectangle(side, side), centre, angle)
