"""A user's own city as training data: the maps of `irt4-data synth --footprints FILE`.

Map m is a 256 m window of the footprints made into a CityLayout as the procedural styles are
(irt4.geo.window.window_layout, whose raster is also what inference sees) and ray-traced like any
generated map. With sites, map m is the window of site m with that site as its one transmitter;
without, map m's window is centred on a point drawn from (seed, m) over the footprints' extent and its
transmitters are drawn as the generator draws them. Heights come from the file, else the generator's
--building-height; the material is ITU concrete (footprint files carry none).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from irt4.errors import InputError
from irt4.geo.footprints import Footprints
from irt4.geo.sites import Site
from irt4.geo.window import CENTRE, SIZE, Window, window_layout

WINDOW_TRIES = 50  # random windows drawn for a map before giving up on finding room for transmitters


class FootprintCities:
    """Map id -> City over a user's footprints (picklable: synth's worker processes build maps from it)."""

    def __init__(self, footprints: Footprints, sites: list[Site] | None = None):
        self.footprints = footprints
        self.sites = sites

    def describe(self, sites_path: Path | None) -> dict:
        """What a root made from these footprints records, so that a resume uses the same input."""
        record = {"file": Path(self.footprints.source).name, "sha256": file_sha256(self.footprints.source)}
        record["sites"] = "random" if sites_path is None else file_sha256(sites_path)
        return record

    def __call__(self, settings, seed: int, map_id: int):
        from irt4.data.synth import City, map_rng

        rng = map_rng(seed, map_id)
        if self.sites is not None:
            site = self.sites[map_id]
            window = Window.around(site)
            layout, buildings = self.layout(window, settings.building_height)
            row, col = window.pixel(site.x, site.y)
            if buildings[row, col]:
                raise InputError(f"site {site.site_id} stands inside a building of {self.footprints.source}")
            transmitters = [(row, col)]
        else:
            window, layout, buildings, transmitters = self.random_window(settings, rng)
        solver_seed = int(rng.integers(2**31 - 1))
        return City(buildings, np.asarray(layout.heights), transmitters, solver_seed, layout=layout)

    def layout(self, window: Window, default_height: float):
        from irt4.data.city import rasterize

        layout = window_layout(self.footprints, window, default_height)
        return layout, rasterize(layout.polygons, SIZE)

    def random_window(self, settings, rng: np.random.Generator):
        """A window over the footprints with room for the map's transmitters."""
        from irt4.data.scene import transmitter_sites
        from irt4.data.synth import open_to_the_border

        xmin, ymin, xmax, ymax = self.footprints.bounds()
        for _ in range(WINDOW_TRIES):
            x = rng.uniform(*_inner(xmin, xmax))
            y = rng.uniform(*_inner(ymin, ymax))
            window = Window.around(Site("", x, y))
            layout, buildings = self.layout(window, settings.building_height)
            enclosed = ~open_to_the_border(buildings == 0)
            try:
                transmitters = transmitter_sites(
                    buildings | enclosed, settings.tx_per_map, rng, settings.min_wall_distance
                )
            except ValueError:
                continue
            return window, layout, buildings, transmitters
        raise InputError(
            f"{self.footprints.source}: no room for {settings.tx_per_map} transmitters in {WINDOW_TRIES} "
            "random windows; are the footprints a closed area?"
        )


def _inner(low: float, high: float) -> tuple[float, float]:
    """Centres whose windows stay inside [low, high] where the extent allows, else its middle."""
    if high - low <= SIZE:
        middle = (low + high) / 2
        return middle, middle
    return low + CENTRE, high - CENTRE


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
