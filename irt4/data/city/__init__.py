"""Procedural city maps on a size x size m tile (256 by default, 1 px = 1 m).

Building footprints as shapely polygons in five urban styles, each in its own module:

  grid        rotated, jittered street grids in one to three districts at their own angles
  perimeter   perimeter blocks around courtyards, closed or open on one side
  oldtown     a dense old town of narrow, curved lanes, small squares and small buildings
  detached    buildings standing apart along roads: houses, slabs, L/T/U shapes, towers on podiums
  industrial  large low halls and tank farms; held out of training (the out-of-distribution style)

A style makes a CityLayout (footprints, heights, ITU materials); rasterize() turns footprints into the
building mask, extrude() into the ray tracer's mesh, solid_cells() into the raster of building
interiors that the candidate culling looks shadow rays up in; random_layout() draws a style from a mix that
parse_style_mix() reads. random_city() is the first generator (axis-aligned boxes on a grid), kept
as it was: committed data sets were made from it.
"""

from irt4.data.city.boxes import random_city, random_transmitter
from irt4.data.city.layout import CityLayout
from irt4.data.city.mesh import extrude
from irt4.data.city.mix import STYLES, TRAINING_STYLES, parse_style_mix, random_layout
from irt4.data.city.raster import rasterize, solid_cells
from irt4.data.pngio import transmitter_image

__all__ = [
    "STYLES",
    "TRAINING_STYLES",
    "CityLayout",
    "extrude",
    "parse_style_mix",
    "random_city",
    "random_layout",
    "random_transmitter",
    "rasterize",
    "solid_cells",
    "transmitter_image",
]
