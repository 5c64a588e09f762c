"""Coverage over many sites: per pixel, the strongest site's gain (best server) and which site it is.

The windows share the integer-metre grid (irt4.geo.window), so each lands on whole pixels of the
mosaic. Held in memory: two 4-byte rasters over the sites' joint extent (a 10 km x 10 km extent is
2 x 400 MB).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from irt4.geo.geotiff import NODATA_SERVER
from irt4.geo.window import SIZE, Window


class Mosaic:
    def __init__(self, windows: list[Window]):
        self.left = min(w.left for w in windows)
        self.top = max(w.top for w in windows)
        width = int(max(w.left for w in windows) - self.left) + SIZE
        height = int(self.top - min(w.top for w in windows)) + SIZE
        self.gain_db = np.full((height, width), np.nan, dtype=np.float32)  # best-server gain
        self.server = np.full((height, width), NODATA_SERVER, dtype=np.int32)  # index of that site

    def add(self, index: int, window: Window, gain_db: np.ndarray) -> None:
        """Take site `index`'s window where it is stronger than what the mosaic holds (or holds none)."""
        row0, col0 = int(self.top - window.top), int(window.left - self.left)
        best = self.gain_db[row0 : row0 + SIZE, col0 : col0 + SIZE]
        server = self.server[row0 : row0 + SIZE, col0 : col0 + SIZE]
        stronger = ~np.isnan(gain_db) & ~(gain_db <= best)  # NaN in best compares False: taken
        best[stronger] = gain_db[stronger]
        server[stronger] = index

    def transform(self):
        return Window(self.left, self.top).transform()


def best_server(windows: list[Window], gains: Iterable[np.ndarray]) -> Mosaic:
    """The mosaic of the sites' windows and gain maps (in site order: a tie goes to the first)."""
    mosaic = Mosaic(windows)
    for index, (window, gain_db) in enumerate(zip(windows, gains)):
        mosaic.add(index, window, gain_db)
    return mosaic
