"""City geometry for the ray tracer: building footprints -> one triangle mesh, sites on the tile.

Pure numpy, no Sionna. Conventions (sionna.md, "Conventions"): the tile is size x size m, 1 px = 1 m,
pixel (row, col) covers world x in [col, col + 1], y in [row, row + 1], so its centre is
(col + 0.5, row + 0.5); z is up, the ground at z = 0.

The boxes style (irt4.data.city.random_city) partitions its footprints into axis-aligned boxes (an
L-shape becomes two boxes); the other styles' polygons are extruded by irt4.data.city.extrude. Walls at
any angle need irt4.data.diffraction_fix, which the ray tracer applies (sionna.md, the diffraction bug).
"""

from __future__ import annotations

import numpy as np

from irt4.data.city import random_transmitter

# box corners: 0..3 counter-clockwise around the footprint at z = 0, 4..7 the same at the roof
_BOX_SIDES = [(i, (i + 1) % 4) for i in range(4)]
VERTICES_PER_BOX = 8
FACES_PER_BOX = 10  # 2 roof + 2 per wall; no floor (it sits on the ground)
TX_WINDOW = (53, 202)  # transmitter rows and cols, inclusive (RadioMapSeer-like, sionna.md)


def footprint_boxes(buildings: np.ndarray) -> np.ndarray:
    """(B, 4) int boxes [row0, col0, row1, col1) that partition the building pixels of a mask.

    Greedy: the first uncovered building pixel in row-major order grows right, then down, as far as
    the pixels are building and uncovered. The boxes are disjoint and cover the mask exactly.
    """
    mask = np.asarray(buildings) > 0
    covered = np.zeros_like(mask)
    boxes = []
    rows, cols = mask.shape
    for row, col in np.argwhere(mask):
        if covered[row, col]:
            continue
        col1 = col + 1
        while col1 < cols and mask[row, col1] and not covered[row, col1]:
            col1 += 1
        row1 = row + 1
        while row1 < rows and mask[row1, col:col1].all() and not covered[row1, col:col1].any():
            row1 += 1
        covered[row:row1, col:col1] = True
        boxes.append((row, col, row1, col1))
    return np.array(boxes, dtype=np.int64).reshape(-1, 4)


def boxes_mesh(boxes: np.ndarray, heights: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """One mesh of all boxes: (8 B, 3) float32 vertices (x, y, z) and (10 B, 3) uint32 faces.

    Each box has 8 shared vertices (so its vertical and roof edges are proper wedges for diffraction)
    and 10 triangles wound counter-clockwise seen from outside: cross(v1 - v0, v2 - v0) points out.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    heights = np.broadcast_to(np.asarray(heights, dtype=np.float64), (len(boxes),))
    row0, col0, row1, col1 = boxes.T
    # footprint corners counter-clockwise seen from +z (x right, y up): (x0,y0) (x1,y0) (x1,y1) (x0,y1)
    xs = np.stack([col0, col1, col1, col0], axis=1)  # (B, 4)
    ys = np.stack([row0, row0, row1, row1], axis=1)
    zs = np.zeros_like(xs)
    bottom = np.stack([xs, ys, zs], axis=-1)  # (B, 4, 3)
    top = np.stack([xs, ys, zs + heights[:, None]], axis=-1)
    vertices = np.concatenate([bottom, top], axis=1).reshape(-1, 3)

    local = [(4, 5, 6), (4, 6, 7)]  # roof, normal +z
    for a, b in _BOX_SIDES:  # wall from corner a to b; outward normal = (b - a) x z
        local += [(a, b, b + 4), (a, b + 4, a + 4)]
    local = np.array(local, dtype=np.int64)  # (10, 3)
    offsets = VERTICES_PER_BOX * np.arange(len(boxes))[:, None, None]
    faces = (local[None] + offsets).reshape(-1, 3)
    return vertices.astype(np.float32), faces.astype(np.uint32)


def ground_mesh(size: int) -> tuple[np.ndarray, np.ndarray]:
    """The ground plane under the tile: 4 vertices at z = 0, 2 triangles facing +z."""
    vertices = np.array([[0, 0, 0], [size, 0, 0], [size, size, 0], [0, size, 0]], dtype=np.float32)
    faces = np.array([[0, 1, 2], [0, 2, 3]], dtype=np.uint32)
    return vertices, faces


def face_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(F, 3) unit normals cross(v1 - v0, v2 - v0), Mitsuba's convention for a triangle's front."""
    v0, v1, v2 = (vertices[faces[:, i]].astype(np.float64) for i in range(3))
    normals = np.cross(v1 - v0, v2 - v0)
    return normals / np.linalg.norm(normals, axis=1, keepdims=True)


def pixel_to_world(rows: np.ndarray, cols: np.ndarray, z: float) -> np.ndarray:
    """(N, 3) world points at the centres of pixels (row, col), height z."""
    rows = np.asarray(rows, dtype=np.float64).ravel()
    cols = np.asarray(cols, dtype=np.float64).ravel()
    return np.stack([cols + 0.5, rows + 0.5, np.full_like(rows, z)], axis=1)


def near_buildings(buildings: np.ndarray, radius: int) -> np.ndarray:
    """Building mask dilated by `radius` px (Chebyshev): pixels whose centre is within radius + 0.5 m
    of a building pixel's edge in x and y."""
    mask = np.asarray(buildings) > 0
    padded = np.pad(mask, radius)
    size_r, size_c = mask.shape
    out = np.zeros_like(mask)
    for dr in range(2 * radius + 1):
        for dc in range(2 * radius + 1):
            out |= padded[dr : dr + size_r, dc : dc + size_c]
    return out


def transmitter_sites(
    buildings: np.ndarray,
    count: int,
    rng: np.random.Generator,
    min_wall_distance: float = 3.0,
    window: tuple[int, int] = TX_WINDOW,
) -> list[tuple[int, int]]:
    """`count` distinct (row, col) street pixels in window^2 whose centres are >= min_wall_distance m
    from every wall."""
    size = buildings.shape[0]
    low, high = window
    assert high == size - 1 - low, "random_transmitter's margin gives a window symmetric in the tile"
    # a free (2r+1)^2 neighbourhood puts the nearest wall >= r + 0.5 m away
    radius = max(0, int(np.ceil(min_wall_distance - 0.5)))
    blocked = near_buildings(buildings, radius).astype(np.float32)
    free = int((blocked[low : high + 1, low : high + 1] == 0).sum())
    if free < count:
        raise ValueError(f"the city has {free} street pixels fit for a transmitter, {count} needed")
    sites: list[tuple[int, int]] = []
    while len(sites) < count:
        site = random_transmitter(blocked, rng, margin=low)
        if site not in sites:
            sites.append(site)
    return sites
