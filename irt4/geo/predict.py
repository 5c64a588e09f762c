"""Radio maps for real sites: footprints and sites in, one GeoTIFF per site and a coverage mosaic out.

Every site is checked before any prediction (inside the footprints' extent, not on a building), so a
bad site costs nothing. Each site's GeoTIFF is written as soon as its batch is done and kept on a
rerun (unless overwrite), so an interrupted run continues where it stopped; the mosaic is made last,
from all sites' files.

Writes under OUT: {site}.tif (float32 dB, NaN = buildings), {site}.png (a preview), mosaic_gain.tif
(best-server gain), mosaic_server.tif (int32 index of the serving site, -1 where none),
sites.json (index, id, coordinates, window, files).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from irt4.errors import InputError
from irt4.geo.footprints import Footprints
from irt4.geo.geotiff import NODATA_SERVER, read_gain, write_gain, write_preview, write_raster
from irt4.geo.mosaic import best_server
from irt4.geo.sites import Site
from irt4.geo.window import Window, building_raster, outside_fraction

log = logging.getLogger(__name__)

OUTSIDE_WARNING = 0.25  # warn when this much of a window lies beyond the footprints' extent


@dataclass
class SiteOptions:
    out: Path
    steps: int | None = None
    seed: int = 0
    batch_size: int = 8
    overwrite: bool = False
    progress: bool = True


@dataclass
class PreparedSite:
    index: int
    site: Site
    window: Window
    buildings: np.ndarray  # (256, 256) uint8
    pixel: tuple[int, int]  # the site's (row, col) in its window
    outside: float  # share of the window beyond the footprints' extent


def prepare_sites(footprints: Footprints, sites: list[Site]) -> list[PreparedSite]:
    """Each site's window and building raster; an InputError for a site the model cannot serve."""
    xmin, ymin, xmax, ymax = footprints.bounds()
    prepared = []
    for index, site in enumerate(sites):
        if not (xmin <= site.x <= xmax and ymin <= site.y <= ymax):
            raise InputError(
                f"site {site.site_id} at ({site.x:.1f}, {site.y:.1f}) in {footprints.crs.name} lies outside "
                f"the footprints' extent x {xmin:.1f}..{xmax:.1f}, y {ymin:.1f}..{ymax:.1f} of "
                f"{footprints.source}"
            )
        window = Window.around(site)
        buildings = building_raster(footprints, window)
        row, col = window.pixel(site.x, site.y)
        if buildings[row, col]:
            raise InputError(
                f"site {site.site_id} at ({site.x:.1f}, {site.y:.1f}) stands inside a building of "
                f"{footprints.source}: move it to the street or open ground"
            )
        outside = outside_fraction(footprints, window)
        if outside > OUTSIDE_WARNING:
            log.warning(
                "site %s: %.0f%% of its 256 m window lies beyond the footprints' extent and shows as open "
                "ground",
                site.site_id,
                100 * outside,
            )
        prepared.append(PreparedSite(index, site, window, buildings, (row, col), outside))
    return prepared


def predict_sites(model, footprints: Footprints, sites: list[Site], options: SiteOptions) -> dict:
    """Predict and write every site's map, then the mosaic; returns what sites.json holds."""
    from tqdm import tqdm

    prepared = prepare_sites(footprints, sites)
    out = Path(options.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; it names the output folder")
    out.mkdir(parents=True, exist_ok=True)
    todo = [p for p in prepared if options.overwrite or not site_file(out, p).is_file()]
    low_high = tuple(model.cfg.data.gain_db_range)
    bar = tqdm(total=len(todo), unit="site", disable=not options.progress, desc="predicting")
    for start in range(0, len(todo), options.batch_size):
        batch = todo[start : start + options.batch_size]
        gains = model.predict(
            np.stack([p.buildings for p in batch]),
            [p.pixel for p in batch],
            steps=options.steps,
            seed=options.seed,
            batch_size=options.batch_size,
            noise_ids=[site_noise_id(p.site.site_id) for p in batch],
        )
        for p, gain_db in zip(batch, gains):
            tags = {"site_id": p.site.site_id, "x": p.site.x, "y": p.site.y, "model": model.source}
            write_gain(site_file(out, p), gain_db, footprints.crs, p.window.transform(), tags)
            write_preview(out / f"{p.site.site_id}.png", gain_db, low_high, p.pixel)
        bar.update(len(batch))
    bar.close()
    mosaic = best_server([p.window for p in prepared], (read_gain(site_file(out, p)) for p in prepared))
    served = {str(p.index): p.site.site_id for p in prepared}
    write_gain(
        out / "mosaic_gain.tif", mosaic.gain_db, footprints.crs, mosaic.transform(), {"sites": len(prepared)}
    )
    write_raster(
        out / "mosaic_server.tif",
        mosaic.server,
        footprints.crs,
        mosaic.transform(),
        NODATA_SERVER,
        {"meaning": "index of the best-serving site (sites.json)", **served},
    )
    summary = {
        "footprints": str(footprints.source),
        "crs": footprints.crs.to_string(),
        "model": model.source,
        "steps": options.steps,
        "seed": options.seed,
        "predicted": len(todo),
        "kept": len(prepared) - len(todo),
        "sites": [
            {
                "index": p.index,
                "site_id": p.site.site_id,
                "x": p.site.x,
                "y": p.site.y,
                "window_left": p.window.left,
                "window_top": p.window.top,
                "row": p.pixel[0],
                "col": p.pixel[1],
                "outside_extent": round(p.outside, 4),
                "file": site_file(out, p).name,
            }
            for p in prepared
        ],
    }
    scratch = out / "sites.json.partial"
    scratch.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(scratch, out / "sites.json")
    return summary


def site_noise_id(site_id: str) -> int:
    """The sampler noise's id of a site: from its id alone, so a site's map does not depend on the other
    sites of the file or their order."""
    return int.from_bytes(hashlib.sha256(site_id.encode()).digest()[:4], "little") % 2**31


def site_file(out: Path, prepared: PreparedSite) -> Path:
    return out / f"{prepared.site.site_id}.tif"
