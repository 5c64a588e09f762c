"""The 256 m window around a site: its georeference, and the footprints in it as the model's raster.

Windows sit on the integer-metre grid of the working CRS, so the windows of all sites share one grid
and a mosaic needs no resampling. The site lies in the window's pixel (CENTRE, CENTRE), within half a
metre of that pixel's centre.

Inside the window, footprints are moved to tile coordinates (x = column, y = row, the tile is
[0, 256]^2, as irt4.data.city.CityLayout) and rasterized by irt4.data.city.rasterize, exactly as the
training rasters are made. Going from map coordinates (y north) to rows (down) mirrors the geometry;
ray propagation does not change under a mirror.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import shapely

from irt4.geo.footprints import Footprints, polygon_parts
from irt4.geo.sites import Site

SIZE = 256  # px = m
CENTRE = SIZE // 2
STYLE = "footprints"  # the style a layout of real footprints is recorded with
MATERIAL = "concrete"  # footprint files carry no material: ITU concrete, as RadioMapSeer's buildings
DEFAULT_HEIGHT = 25.0  # m, where the file gives none (irt4-data synth's --building-height default)


@dataclass(frozen=True)
class Window:
    left: float  # working-CRS x of the window's west edge
    top: float  # working-CRS y of its north edge

    @classmethod
    def around(cls, site: Site) -> Window:
        return cls(left=math.floor(site.x) - CENTRE, top=math.ceil(site.y) + CENTRE)

    def transform(self):
        """The GeoTIFF's affine transform: 1 m pixels, north up."""
        from affine import Affine

        return Affine(1.0, 0.0, self.left, 0.0, -1.0, self.top)

    def box(self) -> shapely.Polygon:
        return shapely.box(self.left, self.top - SIZE, self.left + SIZE, self.top)

    def pixel(self, x: float, y: float) -> tuple[int, int]:
        """(row, col) of the pixel holding the point (x, y)."""
        return math.floor(self.top - y), math.floor(x - self.left)

    def to_tile(self, geometry):
        """geometry moved from the working CRS to tile coordinates (x = col, y = row)."""

        def move(coords: np.ndarray) -> np.ndarray:
            return np.column_stack([coords[:, 0] - self.left, self.top - coords[:, 1]])

        return shapely.transform(geometry, move)


def window_footprints(footprints: Footprints, window: Window) -> tuple[list[shapely.Polygon], np.ndarray]:
    """The footprints reaching into the window, in tile coordinates, and their heights (NaN: none)."""
    indices = footprints.within(window.box())
    polygons = [window.to_tile(footprints.polygons[i]) for i in indices]
    return polygons, footprints.heights[indices]


def window_layout(footprints: Footprints, window: Window, default_height: float = DEFAULT_HEIGHT):
    """The window's buildings as a CityLayout, made as the procedural styles' are (clipped to the tile,
    slivers dropped, shared walls noded, on the 1 mm grid: irt4.data.city.assemble), after overlapping
    footprints are merged (real files have duplicates and building parts; assemble would keep only the
    first of two that overlap). A building that the window's edge cuts keeps only its parts of at least
    12 m^2 (irt4.data.city.parcels.MIN_AREA) in the window. Heights: the file's, else default_height;
    material: ITU concrete."""
    from irt4.data.city.assemble import assemble

    polygons, heights = dissolve_overlaps(*window_footprints(footprints, window))
    heights = np.where(np.isnan(heights), default_height, heights)
    buildings = [(polygon, float(height), MATERIAL) for polygon, height in zip(polygons, heights)]
    return assemble(buildings, STYLE, SIZE, clear_room=False)


def dissolve_overlaps(polygons: list[shapely.Polygon], heights: np.ndarray):
    """Footprints whose interiors overlap merged into one (the highest height); touching ones are kept
    apart."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(polygons) < 2:
        return polygons, heights
    left, right = shapely.STRtree(polygons).query(polygons, predicate="overlaps")
    if len(left) == 0:
        return polygons, heights
    links = coo_matrix((np.ones(len(left)), (left, right)), shape=(len(polygons),) * 2)
    _, group = connected_components(links, directed=False)
    merged, merged_heights = [], []
    for label in np.unique(group):
        members = np.flatnonzero(group == label)
        union = (
            shapely.union_all([polygons[i] for i in members]) if len(members) > 1 else polygons[members[0]]
        )
        for part in polygon_parts(union):
            merged.append(part)
            merged_heights.append(
                np.nanmax(heights[members]) if not np.isnan(heights[members]).all() else np.nan
            )
    return merged, np.array(merged_heights, dtype=np.float64)


def building_raster(footprints: Footprints, window: Window) -> np.ndarray:
    """(256, 256) uint8, 1 = building: the model's building map of the window, the raster a training map
    of the same window (irt4-data synth --footprints) has."""
    from irt4.data.city import rasterize

    return rasterize(window_layout(footprints, window).polygons, SIZE)


def outside_fraction(footprints: Footprints, window: Window) -> float:
    """The share of the window outside the footprints' bounding box: there the raster shows open ground
    whether or not buildings stand."""
    xmin, ymin, xmax, ymax = footprints.bounds()
    inside = window.box().intersection(shapely.box(xmin, ymin, xmax, ymax)).area
    return 1.0 - inside / SIZE**2
