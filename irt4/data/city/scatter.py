"""Buildings that stand apart: groups of footprints dropped at random spots, kept where they fit."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import shapely

from irt4.data.city.assemble import Building


def place_apart(
    make_group: Callable[[], list[Building]],
    forbidden: shapely.Geometry,
    gap: float,
    target_area: float,
    attempts: int,
    size: int,
) -> list[Building]:
    """Groups of buildings made by make_group() (each drawing its own spot), kept where the group lies
    in the tile, clear of `forbidden` and at least `gap` m from the groups kept before, until their
    footprints add up to target_area m^2 or the attempts run out."""
    inner_tile = shapely.box(1.0, 1.0, size - 1.0, size - 1.0)
    shapely.prepare(forbidden)
    outlines, buildings, area = [], [], 0.0
    for _ in range(attempts):
        if area >= target_area:
            break
        group = make_group()
        outline = group[0][0] if len(group) == 1 else shapely.union_all([polygon for polygon, _, _ in group])
        if not inner_tile.contains(outline) or forbidden.intersects(outline):
            continue
        if outlines and shapely.dwithin(outline, np.array(outlines, dtype=object), gap).any():
            continue
        outlines.append(outline)
        buildings += group
        area += outline.area
    return buildings
