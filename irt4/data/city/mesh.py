"""Footprints and heights -> one triangle mesh of extruded buildings (walls and flat roofs, no floor).

Each ring vertex appears once at z = 0 and once at the roof; walls and roof share the roof vertices,
so every vertical and roof edge is an edge of exactly two triangles: a proper wedge for diffraction.
Triangles are wound counter-clockwise seen from outside (Mitsuba's front): cross(v1 - v0, v2 - v0)
points out of the building.
"""

from __future__ import annotations

from collections.abc import Sequence

import mapbox_earcut
import numpy as np
import shapely
from shapely.geometry.polygon import orient

COLLINEAR_TOLERANCE = 1e-3  # m: a ring vertex this close to the line through its neighbours is flat


def extrude(polygons: Sequence[shapely.Polygon], heights: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(V, 3) float32 vertices (x, y, z) and (F, 3) uint32 faces of all buildings in one mesh."""
    vertex_blocks, face_blocks, offset = [], [], 0
    for polygon, height in zip(polygons, heights):
        vertices, faces = building_mesh(polygon, float(height))
        vertex_blocks.append(vertices)
        face_blocks.append(faces + offset)
        offset += len(vertices)
    if not vertex_blocks:
        return np.zeros((0, 3), dtype=np.float32), np.zeros((0, 3), dtype=np.uint32)
    return (
        np.concatenate(vertex_blocks).astype(np.float32),
        np.concatenate(face_blocks).astype(np.uint32),
    )


def building_mesh(polygon: shapely.Polygon, height: float) -> tuple[np.ndarray, np.ndarray]:
    """(2 N, 3) float64 vertices (N ring vertices at z = 0, then the same at the roof) and int64 faces
    of one building: two triangles per ring edge, then the roof."""
    rings = footprint_rings(polygon)
    ring_xy = np.concatenate(rings)  # (N, 2)
    count = len(ring_xy)
    ground = np.column_stack([ring_xy, np.zeros(count)])
    roof = np.column_stack([ring_xy, np.full(count, height)])
    vertices = np.concatenate([ground, roof])

    walls, start = [], 0
    for ring in rings:
        a = start + np.arange(len(ring))
        b = start + (np.arange(len(ring)) + 1) % len(ring)
        # wall a -> b: its outward normal is (b - a) x z, the right of the ring's direction
        walls += [np.stack([a, b, b + count], axis=1), np.stack([a, b + count, a + count], axis=1)]
        start += len(ring)
    faces = np.concatenate([*walls, roof_triangles(rings) + count])
    return vertices, faces


def footprint_rings(polygon: shapely.Polygon) -> list[np.ndarray]:
    """(n, 2) open rings, the exterior counter-clockwise then the holes clockwise, seen from +z: the
    building always lies on the left of a ring's direction."""
    polygon = orient(polygon, 1.0)
    return [np.asarray(ring.coords)[:-1, :2] for ring in (polygon.exterior, *polygon.interiors)]


def roof_triangles(rings: list[np.ndarray]) -> np.ndarray:
    """(T, 3) int64 triangles of the flat roof over the rings' vertices (numbered ring after ring),
    counter-clockwise seen from +z, using every ring vertex.

    Earcut drops vertices that lie on the line through their neighbours, and a roof without them would
    not share the wall's top edges; so the roof is triangulated over the corners alone and each of its
    boundary edges that passes flat vertices is then fanned from the opposite corner.
    """
    starts = np.cumsum([0] + [len(ring) for ring in rings[:-1]])
    corner_rings = [start + np.flatnonzero(~flat_vertices(ring)) for start, ring in zip(starts, rings)]
    corners = np.concatenate(corner_rings)
    ring_xy = np.concatenate(rings)
    ends = np.cumsum([len(ring) for ring in corner_rings]).astype(np.uint32)
    triangles = corners[mapbox_earcut.triangulate_float64(ring_xy[corners], ends).astype(np.int64)]
    triangles = triangles.reshape(-1, 3)
    a, b, c = (ring_xy[triangles[:, i]] for i in range(3))
    clockwise = (b - a)[:, 0] * (c - a)[:, 1] - (b - a)[:, 1] * (c - a)[:, 0] < 0
    triangles[clockwise] = triangles[clockwise][:, ::-1]

    flat_runs = {}  # (corner, next corner) along a ring -> the flat vertices between them
    for start, ring, ring_corners in zip(starts, rings, corner_rings):
        ring_index = np.arange(start, start + len(ring))
        for k, corner in enumerate(ring_corners):
            following = ring_corners[(k + 1) % len(ring_corners)]
            between = np.roll(ring_index, -(corner - start))[1 : (following - corner) % len(ring)]
            if len(between):
                flat_runs[(int(corner), int(following))] = [int(v) for v in between]
    return fan_flat_edges(triangles, flat_runs)


def flat_vertices(ring: np.ndarray) -> np.ndarray:
    """(n,) bool: ring vertices within COLLINEAR_TOLERANCE of the line through their two neighbours."""
    before, after = np.roll(ring, 1, axis=0), np.roll(ring, -1, axis=0)
    chord = after - before
    offset = ring - before
    cross = chord[:, 0] * offset[:, 1] - chord[:, 1] * offset[:, 0]
    return np.abs(cross) <= COLLINEAR_TOLERANCE * np.linalg.norm(chord, axis=1)


def fan_flat_edges(triangles: np.ndarray, flat_runs: dict[tuple[int, int], list[int]]) -> np.ndarray:
    """Triangles with each edge u -> v that has flat vertices m1..mk between u and v replaced by a fan
    (u, m1, w), (m1, m2, w), ..., (mk, v, w) from the opposite vertex w: same orientation, same area."""
    done, pending = [], [tuple(int(v) for v in triangle) for triangle in triangles]
    while pending:
        triangle = pending.pop()
        for i in range(3):
            u, v, w = triangle[i], triangle[(i + 1) % 3], triangle[(i + 2) % 3]
            if (u, v) in flat_runs:
                path = [u, *flat_runs[(u, v)], v]
                pending += [(path[j], path[j + 1], w) for j in range(len(path) - 1)]
                break
        else:
            done.append(triangle)
    return np.array(done, dtype=np.int64).reshape(-1, 3)
