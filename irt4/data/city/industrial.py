"""Style "industrial", held out of training as the out-of-distribution style: large low halls, round
tanks and silos in rows, wide roads and yards, all on one orthogonal plan."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely

from irt4.data.city.assemble import Building, assemble, drawn_until_coverage_fits
from irt4.data.city.layout import CityLayout
from irt4.data.city.materials import draw_material
from irt4.data.city.scatter import place_apart
from irt4.data.city.shapes import disc, place, rectangle
from irt4.data.city.streets import street, unit


@dataclass(frozen=True)
class IndustrialParams:
    """Ranges each tile draws from (m, m^2, shares); coverage and height are what the tiles show."""

    roads: tuple[int, int] = (1, 3)
    road: tuple[float, float] = (15.0, 30.0)
    road_setback: float = 4.0
    built: tuple[float, float] = (0.15, 0.4)  # share of the tile a tile's buildings aim to cover
    gap: tuple[float, float] = (6.0, 16.0)  # between halls and tank farms
    tank_farm: float = 0.3  # chance a placement is a farm of tanks rather than a hall
    hall_length: tuple[float, float] = (40.0, 120.0)
    hall_width: tuple[float, float] = (20.0, 50.0)
    hall_height: tuple[float, float] = (6.0, 15.0)
    tank_radius: tuple[float, float] = (4.0, 12.0)
    tank_height: tuple[float, float] = (8.0, 30.0)
    tank_rows: tuple[int, int] = (1, 2)
    tank_columns: tuple[int, int] = (2, 5)
    tank_spacing: tuple[float, float] = (2.0, 6.0)  # between neighbouring tanks
    attempts: int = 500
    height: tuple[float, float] = (6.0, 30.0)
    coverage: tuple[float, float] = (0.05, 0.35)


PARAMS = IndustrialParams()


def make_industrial(rng: np.random.Generator, size: int = 256) -> CityLayout:
    return drawn_until_coverage_fits(lambda: industrial_tile(rng, size), PARAMS.coverage, size)


def industrial_tile(rng: np.random.Generator, size: int) -> CityLayout:
    """One draw of the style, whatever its coverage."""
    params = PARAMS
    plan = rng.uniform(0, np.pi / 2)
    road_count = int(rng.integers(params.roads[0], params.roads[1] + 1))
    roads = [
        street(
            rng.uniform(0.15, 0.85, 2) * size,
            unit(plan + rng.integers(2) * np.pi / 2),
            rng.uniform(*params.road) + 2 * params.road_setback,
        )
        for _ in range(road_count)
    ]

    def make_group() -> list[Building]:
        centre = rng.uniform(0, size, 2)
        angle = plan + rng.integers(2) * np.pi / 2
        if rng.random() < params.tank_farm:
            return tank_farm(rng, params, centre, angle)
        outline = rectangle(rng.uniform(*params.hall_length), rng.uniform(*params.hall_width))
        return [(place(outline, centre, angle), rng.uniform(*params.hall_height), draw_material(rng, "hall"))]

    target = rng.uniform(*params.built) * size * size
    gap = rng.uniform(*params.gap)
    buildings = place_apart(make_group, shapely.union_all(roads), gap, target, params.attempts, size)
    return assemble(buildings, "industrial", size)


def tank_farm(
    rng: np.random.Generator, params: IndustrialParams, centre: np.ndarray, angle: float
) -> list[Building]:
    """Tanks of one size and height in a rows x columns grid around centre."""
    radius = rng.uniform(*params.tank_radius)
    pitch = 2 * radius + rng.uniform(*params.tank_spacing)
    rows = int(rng.integers(params.tank_rows[0], params.tank_rows[1] + 1))
    columns = int(rng.integers(params.tank_columns[0], params.tank_columns[1] + 1))
    height = rng.uniform(*params.tank_height)
    grid = np.stack(np.meshgrid(np.arange(columns), np.arange(rows)), axis=-1).reshape(-1, 2)
    offsets = (grid - (np.array([columns, rows]) - 1) / 2) * pitch
    axes = np.array([unit(angle), unit(angle + np.pi / 2)])
    return [(disc(centre + offset @ axes, radius), height, draw_material(rng, "tank")) for offset in offsets]
