"""GeoTIFF and PNG output of predicted radio maps: float32 path gain in dB, NaN (nodata) on buildings."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

NODATA_SERVER = -1  # the serving-site raster where no site's window reaches, or on buildings


def write_raster(path: Path, data: np.ndarray, crs, transform, nodata, tags: dict | None = None) -> None:
    """One-band GeoTIFF (deflate), written beside and renamed into place: a crash leaves no half file."""
    import rasterio

    path = Path(path)
    scratch = path.with_name(path.name + ".partial")
    profile = {
        "driver": "GTiff",
        "height": data.shape[0],
        "width": data.shape[1],
        "count": 1,
        "dtype": data.dtype.name,
        "crs": crs.to_wkt(),
        "transform": transform,
        "nodata": nodata,
        "compress": "deflate",
    }
    if data.shape[0] >= 256 and data.shape[1] >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(scratch, "w", **profile) as dataset:
        dataset.write(data, 1)
        if tags:
            dataset.update_tags(**{key: str(value) for key, value in tags.items()})
    os.replace(scratch, path)


def write_gain(path: Path, gain_db: np.ndarray, crs, transform, tags: dict | None = None) -> None:
    write_raster(path, gain_db.astype(np.float32), crs, transform, np.nan, {"units": "dB", **(tags or {})})


def read_gain(path: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as dataset:
        return dataset.read(1)


def write_preview(path: Path, gain_db: np.ndarray, gain_db_range: tuple[float, float], site_rc=None) -> None:
    """A PNG to look at: viridis over gain_db_range, buildings dark grey, the site as a red dot."""
    from matplotlib import colormaps
    from PIL import Image

    low, high = gain_db_range
    scaled = np.clip((np.nan_to_num(gain_db, nan=low) - low) / (high - low), 0, 1)
    rgb = (255 * colormaps["viridis"](scaled)[..., :3]).astype(np.uint8)
    rgb[np.isnan(gain_db)] = (60, 60, 60)
    if site_rc is not None:
        row, col = site_rc
        rgb[max(row - 2, 0) : row + 3, max(col - 2, 0) : col + 3] = (255, 0, 0)
    scratch = Path(path).with_name(Path(path).name + ".partial")
    Image.fromarray(rgb, mode="RGB").save(scratch, format="PNG")
    os.replace(scratch, path)
