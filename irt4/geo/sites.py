"""Transmitter sites from a CSV: `site_id,lon,lat` (WGS 84) or `site_id,x,y` (the footprints file's CRS).

Either way a site ends in the footprints' working CRS (irt4.geo.footprints), metres. A site id names
the site's output files, so it is restricted to letters, digits, `.`, `_` and `-`.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from irt4.errors import InputError

HEADERS = (("site_id", "lon", "lat"), ("site_id", "x", "y"))
SITE_ID = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Site:
    site_id: str
    x: float  # working CRS, m
    y: float


def read_sites(path: Path, file_crs, crs) -> list[Site]:
    """The sites of a CSV, in crs. file_crs: the CRS of x, y columns."""
    import pyproj

    path = Path(path)
    try:
        with open(path, newline="") as handle:
            rows = [row for row in csv.reader(handle) if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read the sites ({err})") from None
    if not rows:
        raise InputError(f"{path}: empty; expected a header site_id,lon,lat or site_id,x,y")
    header = tuple(cell.strip().lower() for cell in rows[0])
    if header not in HEADERS:
        raise InputError(f"{path}: header {','.join(header)!r}, expected site_id,lon,lat or site_id,x,y")
    if len(rows) == 1:
        raise InputError(f"{path}: no sites below the header")
    ids, coords = [], []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != 3:
            raise InputError(f"{path}, line {line}: expected 3 values, got {len(row)}")
        site_id = row[0].strip()
        if not SITE_ID.fullmatch(site_id):
            raise InputError(f"{path}, line {line}: site id {site_id!r} may hold only letters, digits, . _ -")
        if site_id in ids:
            raise InputError(f"{path}, line {line}: site id {site_id!r} given twice")
        try:
            a, b = float(row[1]), float(row[2])
        except ValueError:
            raise InputError(f"{path}, line {line}: {row[1]!r}, {row[2]!r} are not numbers") from None
        if not (np.isfinite(a) and np.isfinite(b)):
            raise InputError(f"{path}, line {line}: coordinates must be finite")
        if header[1] == "lon" and not (-180 <= a <= 180 and -90 <= b <= 90):
            raise InputError(f"{path}, line {line}: lon {a}, lat {b} out of range")
        ids.append(site_id)
        coords.append((a, b))
    source = pyproj.CRS.from_epsg(4326) if header[1] == "lon" else file_crs
    xy = np.array(coords, dtype=np.float64)
    if source != crs:
        transformer = pyproj.Transformer.from_crs(source, crs, always_xy=True)
        xy = np.column_stack(transformer.transform(xy[:, 0], xy[:, 1]))
        lost = np.flatnonzero(~np.isfinite(xy).all(axis=1))
        if len(lost):
            raise InputError(
                f"{path}, line {lost[0] + 2}: {coords[lost[0]]} does not map into {crs.name}; are the "
                f"{header[1]}, {header[2]} columns in {source.name}?"
            )
    return [Site(site_id, float(x), float(y)) for site_id, (x, y) in zip(ids, xy)]
