"""A city's building footprints from a file: any vector format GDAL reads, or an OpenStreetMap extract.

Footprints are held in a projected CRS in metres, the one every later step works in: the file's own
CRS where it is projected in metres, else the local UTM zone (a file in lon/lat, or in feet). The
file's CRS is kept too: sites given as x, y are in it.

Heights: an attribute of the file where one is named (or a `height` attribute exists); from an
OpenStreetMap extract the `height` tag, else `building:levels` x LEVEL_HEIGHT. NaN where none is given.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely

from irt4.errors import InputError

log = logging.getLogger(__name__)

OSM_SUFFIXES = (".osm", ".pbf", ".o5m", ".osm.bz2", ".osm.gz")
LEVEL_HEIGHT = 3.0  # m per storey, for OpenStreetMap buildings tagged only with building:levels
HEIGHT_ATTRIBUTE = "height"  # looked for when no --height-attribute is given


@dataclass
class Footprints:
    polygons: list[shapely.Polygon]  # in crs, metres
    heights: np.ndarray  # (B,) m, NaN where the file gives none
    crs: object  # pyproj.CRS: projected, metres
    file_crs: object  # pyproj.CRS of the file (sites as x, y are in it)
    source: Path
    _tree: shapely.STRtree | None = field(default=None, repr=False)

    def bounds(self) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) of all footprints in crs."""
        return tuple(shapely.total_bounds(np.array(self.polygons, dtype=object)).tolist())

    def within(self, box: shapely.Polygon) -> np.ndarray:
        """Indices of the footprints that intersect box (crs coordinates)."""
        if self._tree is None:
            self._tree = shapely.STRtree(self.polygons)
        return np.sort(self._tree.query(box, predicate="intersects"))


def is_osm(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(suffix) for suffix in OSM_SUFFIXES)


def read_footprints(path: Path, height_attribute: str | None = None, layer: str | None = None) -> Footprints:
    """The building footprints of a vector file or an OpenStreetMap extract, in a metric CRS."""
    import pyproj

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such footprints file")
    if is_osm(path):
        geometries, heights = _read_osm(path)
        file_crs = pyproj.CRS.from_epsg(4326)
    else:
        geometries, heights, file_crs = _read_vector(path, height_attribute, layer)
    polygons, polygon_heights = [], []
    for geometry, height in zip(geometries, heights):
        for polygon in polygon_parts(geometry):
            polygons.append(polygon)
            polygon_heights.append(height)
    if not polygons:
        raise InputError(f"{path}: holds no building polygons")
    try:
        crs = working_crs(file_crs, polygons)
        if crs != file_crs:
            polygons = to_crs(polygons, file_crs, crs)
    except pyproj.exceptions.ProjError as err:
        raise InputError(
            f"{path}: unknown coordinate reference system {file_crs.name!r}: it cannot be placed on earth "
            f"({err}); give the file a geographic or projected CRS"
        ) from None
    return Footprints(polygons, np.array(polygon_heights, dtype=np.float64), crs, file_crs, path)


def polygon_parts(geometry) -> list[shapely.Polygon]:
    """The polygons of a (multi)polygon, repaired where invalid (self-touching rings and the like);
    lines and points are no footprints and give none."""
    if geometry is None or geometry.is_empty:
        return []
    if not geometry.is_valid:
        geometry = shapely.make_valid(geometry)
    parts = shapely.get_parts(geometry)
    polygons = []
    for part in parts:
        if isinstance(part, shapely.Polygon) and part.area > 0:
            polygons.append(part)
        elif isinstance(part, (shapely.MultiPolygon, shapely.GeometryCollection)):
            polygons += polygon_parts(part)
    return polygons


def _read_vector(path: Path, height_attribute: str | None, layer: str | None):
    import pyogrio
    import pyproj

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            meta, _, wkb, field_data = pyogrio.raw.read(path, layer=layer)
        except Exception as err:  # pyogrio raises its own DataSourceError, DataLayerError, FieldError, ...
            raise InputError(f"{path}: not a vector file GDAL reads ({err})") from None
    gdal_says = [str(w.message) for w in caught]
    for message in gdal_says:
        log.warning("%s: GDAL: %s", path, message)
    if meta.get("crs") is None:
        raise InputError(
            f"{path}: has no coordinate reference system; set one (e.g. ogr2ogr -a_srs EPSG:...)"
        )
    try:
        file_crs = pyproj.CRS.from_user_input(meta["crs"])
    except pyproj.exceptions.CRSError as err:
        raise InputError(f"{path}: unknown coordinate reference system {meta['crs']!r} ({err})") from None
    geometries = []
    for index, blob in enumerate(wkb):
        try:
            geometries.append(None if blob is None else shapely.from_wkb(blob))
        except shapely.errors.GEOSException as err:
            raise InputError(f"{path}: feature {index}: the geometry does not parse ({err})") from None
    unparsed = [i for i, g in enumerate(geometries) if g is None]
    if unparsed:
        hint = f" (GDAL: {gdal_says[0]})" if gdal_says else ""
        raise InputError(f"{path}: feature {unparsed[0]}: the geometry does not parse or is missing{hint}")
    fields = list(meta["fields"])
    heights = np.full(len(geometries), np.nan)
    name = height_attribute or (HEIGHT_ATTRIBUTE if HEIGHT_ATTRIBUTE in fields else None)
    if name is not None:
        if name not in fields:
            raise InputError(f"{path}: no attribute {name!r} for heights (has {', '.join(fields) or 'none'})")
        heights = np.array([parse_height(v) for v in field_data[fields.index(name)]], dtype=np.float64)
    return geometries, heights, file_crs


def _read_osm(path: Path):
    """Buildings of an OpenStreetMap extract: closed ways and multipolygon relations tagged building."""
    import osmium

    wkb = osmium.geom.WKBFactory()
    geometries, heights = [], []
    try:
        processor = (
            osmium.FileProcessor(str(path)).with_areas().with_filter(osmium.filter.KeyFilter("building"))
        )
        for obj in processor:
            if not obj.is_area():
                continue
            try:
                geometries.append(shapely.from_wkb(wkb.create_multipolygon(obj)))
            except (RuntimeError, shapely.errors.GEOSException) as err:
                kind = "way" if obj.from_way() else "relation"
                log.warning(
                    "%s: building %s %d skipped: its polygon does not close (%s)",
                    path,
                    kind,
                    obj.orig_id(),
                    err,
                )
                continue
            heights.append(osm_height(obj.tags))
    except RuntimeError as err:
        raise InputError(f"{path}: not an OpenStreetMap file osmium reads ({err})") from None
    return geometries, heights


def osm_height(tags) -> float:
    height = parse_height(tags.get("height"))
    if np.isnan(height):
        height = parse_height(tags.get("building:levels")) * LEVEL_HEIGHT
    return height


def parse_height(value) -> float:
    """A height in m from an attribute value: a number, or text such as '12', '12.5 m'; NaN if none."""
    if value is None:
        return np.nan
    if isinstance(value, (int, float, np.number)):
        height = float(value)
    else:
        match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*(m|meters?|metres?)?\s*", str(value))
        height = float(match.group(1)) if match else np.nan
    return height if np.isfinite(height) and height > 0 else np.nan


def working_crs(file_crs, polygons: list[shapely.Polygon]):
    """file_crs where it is projected in metres, else the UTM zone of the footprints' centre."""
    import pyproj
    from pyproj.aoi import AreaOfInterest
    from pyproj.database import query_utm_crs_info

    if file_crs.is_projected and _in_metres(file_crs):
        return file_crs
    to_lonlat = pyproj.Transformer.from_crs(file_crs, "EPSG:4326", always_xy=True)
    xmin, ymin, xmax, ymax = shapely.total_bounds(np.array(polygons, dtype=object))
    lon, lat = to_lonlat.transform((xmin + xmax) / 2, (ymin + ymax) / 2)
    if not (np.isfinite(lon) and -180 <= lon <= 180 and -90 <= lat <= 90):
        raise pyproj.exceptions.ProjError(f"the footprints lie outside the earth in {file_crs.name}")
    zones = query_utm_crs_info(datum_name="WGS 84", area_of_interest=AreaOfInterest(lon, lat, lon, lat))
    return pyproj.CRS.from_epsg(int(zones[0].code))


def _in_metres(crs) -> bool:
    return all(axis.unit_name in ("metre", "meter") for axis in crs.axis_info[:2])


def to_crs(geometries: list, source, target) -> list:
    import pyproj

    transformer = pyproj.Transformer.from_crs(source, target, always_xy=True)

    def project(coords: np.ndarray) -> np.ndarray:
        return np.column_stack(transformer.transform(coords[:, 0], coords[:, 1]))

    return [shapely.transform(geometry, project) for geometry in geometries]
