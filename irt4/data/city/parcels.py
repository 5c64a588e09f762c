"""Blocks and lots: clean outlines, cut them along lines, subdivide them into building lots.

Every wall edge becomes a diffracting wedge for the ray tracer, so outlines are simplified (curves
cost few vertices) and keep no edge shorter than MIN_EDGE; a cut that would leave one is not made.
"""

from __future__ import annotations

import numpy as np
import shapely
from shapely.ops import split

SIMPLIFY_TOLERANCE = 0.3  # m
MIN_EDGE = 0.5  # m
MIN_AREA = 12.0  # m^2: the smallest footprint and the smallest courtyard


def polygons_of(geometry: shapely.Geometry) -> list[shapely.Polygon]:
    """The polygons among a geometry's parts (lines and points of a collection are dropped)."""
    if isinstance(geometry, shapely.Polygon):
        return [] if geometry.is_empty else [geometry]
    if isinstance(geometry, shapely.MultiPolygon | shapely.GeometryCollection):
        return [p for part in geometry.geoms for p in polygons_of(part)]
    return []


def shortest_edge(polygon: shapely.Polygon) -> float:
    """Length of the shortest edge over all the polygon's rings."""
    lengths = [np.linalg.norm(np.diff(np.asarray(r.coords), axis=0), axis=1).min() for r in _rings(polygon)]
    return float(min(lengths))


def clean(geometry: shapely.Geometry, min_area: float = MIN_AREA) -> list[shapely.Polygon]:
    """Valid polygons of the geometry, simplified, with no edge under MIN_EDGE and no part or courtyard
    under min_area. Outlines move by at most about SIMPLIFY_TOLERANCE + MIN_EDGE."""
    cleaned = []
    for polygon in polygons_of(shapely.make_valid(geometry)):
        cleaned += _clean_polygon(polygon.simplify(SIMPLIFY_TOLERANCE), min_area, retries=2)
    return cleaned


def _clean_polygon(polygon: shapely.Polygon, min_area: float, retries: int) -> list[shapely.Polygon]:
    if polygon.area < min_area:
        return []
    exterior = _without_short_edges(np.asarray(polygon.exterior.coords)[:-1])
    holes = [_without_short_edges(np.asarray(ring.coords)[:-1]) for ring in polygon.interiors]
    holes = [hole for hole in holes if len(hole) >= 3 and shapely.Polygon(hole).area >= min_area]
    if len(exterior) < 3:
        return []
    candidate = shapely.Polygon(exterior, holes)
    if candidate.is_valid:
        return [candidate] if candidate.area >= min_area else []
    if retries == 0:  # dropping vertices made the outline touch itself, again and again: give it up
        return []
    parts = polygons_of(shapely.make_valid(candidate))
    return [p for part in parts for p in _clean_polygon(part, min_area, retries - 1)]


def _without_short_edges(ring: np.ndarray) -> np.ndarray:
    """(n, 2) open ring with each vertex closer than MIN_EDGE to the last one kept dropped."""
    kept = [ring[0]]
    for point in ring[1:]:
        if np.linalg.norm(point - kept[-1]) >= MIN_EDGE:
            kept.append(point)
    while len(kept) > 2 and np.linalg.norm(kept[-1] - kept[0]) < MIN_EDGE:
        kept.pop()
    return np.array(kept)


def _rings(polygon: shapely.Polygon) -> list[shapely.LinearRing]:
    return [polygon.exterior, *polygon.interiors]


def long_axis(polygon: shapely.Polygon) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Centre (2,), unit direction (2,) of the longer side, and the long and short side lengths of
    the polygon's minimum rotated rectangle."""
    corners = np.asarray(shapely.oriented_envelope(polygon).exterior.coords)[:4]
    side_a, side_b = corners[1] - corners[0], corners[2] - corners[1]
    length_a, length_b = np.linalg.norm(side_a), np.linalg.norm(side_b)
    if length_a < length_b:
        side_a, side_b, length_a, length_b = side_b, side_a, length_b, length_a
    return corners.mean(axis=0), side_a / length_a, float(length_a), float(length_b)


def line_across(polygon: shapely.Polygon, point: np.ndarray, direction: np.ndarray) -> shapely.LineString:
    """The line through point along direction, long enough to cross the whole polygon."""
    minx, miny, maxx, maxy = polygon.bounds
    reach = 2.0 * np.hypot(maxx - minx, maxy - miny) + 1.0
    direction = np.asarray(direction, dtype=np.float64) / np.linalg.norm(direction)
    return shapely.LineString([point - reach * direction, point + reach * direction])


def split_by_line(
    polygon: shapely.Polygon, point: np.ndarray, direction: np.ndarray, min_area: float = MIN_AREA
) -> list[shapely.Polygon] | None:
    """The pieces of the polygon on both sides of the line through point along direction; None when
    the line misses it or a piece would be under min_area or have an edge under MIN_EDGE."""
    pieces = split_by_segments(polygon, [line_across(polygon, point, direction)], min_area)
    return pieces if pieces is not None and len(pieces) >= 2 else None


def split_by_segments(
    polygon: shapely.Polygon, segments: list[shapely.LineString], min_area: float = MIN_AREA
) -> list[shapely.Polygon] | None:
    """The pieces the segments cut the polygon into (just the polygon where they do not cut through
    it), or None when a piece would be under min_area or have an edge under MIN_EDGE."""
    pieces = polygons_of(split(polygon, shapely.MultiLineString(segments)))
    if any(piece.area < min_area or shortest_edge(piece) < MIN_EDGE for piece in pieces):
        return None
    return pieces


def subdivide(
    block: shapely.Polygon, rng: np.random.Generator, max_area: float, min_area: float = MIN_AREA
) -> list[shapely.Polygon]:
    """Lots that partition the block: each piece over max_area is cut across its long axis, near the
    middle, until all are under it or cannot be cut further.

    A cut's ends must also keep MIN_EDGE from every vertex of the other pieces: where a cut ends on an
    earlier cut, the piece beyond gets its end as a vertex too (irt4.data.city.assemble nodes them)."""
    pending, lots = [block], []
    vertices = shapely.get_coordinates(block)  # (n, 2) of all pieces so far
    while pending:
        piece = pending.pop()
        cut = None if piece.area <= max_area else _halve(piece, rng, min_area, vertices)
        if cut is None:
            lots.append(piece)
        else:
            pieces, made = cut
            pending += pieces
            vertices = np.concatenate([vertices, made])
    return lots


def _halve(
    piece: shapely.Polygon, rng: np.random.Generator, min_area: float, vertices: np.ndarray
) -> tuple[list[shapely.Polygon], np.ndarray] | None:
    """The piece cut across its long axis: (pieces, the vertices the cut made), or None."""
    centre, axis, length, _ = long_axis(piece)
    across = np.array([-axis[1], axis[0]])
    low, high = np.asarray(piece.bounds).reshape(2, 2) + [[-MIN_EDGE], [MIN_EDGE]]
    near = vertices[((vertices >= low) & (vertices <= high)).all(axis=1)]
    for _ in range(3):
        line = line_across(piece, centre + rng.uniform(-0.15, 0.15) * length * axis, across)
        made = shapely.get_coordinates(line.intersection(piece.boundary))
        if len(made) < 2 or np.linalg.norm(made[:, None, :] - near[None, :, :], axis=-1).min() < MIN_EDGE:
            continue
        pieces = split_by_segments(piece, [line], min_area)
        if pieces is not None and len(pieces) >= 2:
            return pieces, made
    return None


def inset(polygon: shapely.Polygon, distance: float, min_area: float = MIN_AREA) -> list[shapely.Polygon]:
    """The polygon shrunk by `distance` m with mitred corners, cleaned (a narrow part may vanish)."""
    if distance <= 0:
        return [polygon]
    return clean(polygon.buffer(-distance, join_style="mitre", mitre_limit=3.0), min_area)
