"""Building outlines: rectangles, L, T and U shapes, discs, placed at a centre and an angle."""

from __future__ import annotations

import numpy as np
import shapely


def rotation(angle: float) -> np.ndarray:
    """(2, 2) counter-clockwise rotation by angle (rad)."""
    cos, sin = np.cos(angle), np.sin(angle)
    return np.array([[cos, -sin], [sin, cos]])


def place(outline: np.ndarray, centre: np.ndarray, angle: float) -> shapely.Polygon:
    """The outline (n, 2), given around its own bounding-box centre, rotated by angle and moved to centre."""
    outline = np.asarray(outline, dtype=np.float64)
    outline = outline - (outline.min(axis=0) + outline.max(axis=0)) / 2
    return shapely.Polygon(outline @ rotation(angle).T + np.asarray(centre))


def rectangle(width: float, depth: float) -> np.ndarray:
    return np.array([[0, 0], [width, 0], [width, depth], [0, depth]], dtype=np.float64)


def l_shape(width: float, depth: float, wing: float) -> np.ndarray:
    """Two wings `wing` m thick along the bottom and the left of a width x depth box."""
    return np.array([[0, 0], [width, 0], [width, wing], [wing, wing], [wing, depth], [0, depth]], dtype=float)


def t_shape(width: float, depth: float, wing: float) -> np.ndarray:
    """A bar `wing` m thick along the bottom, and a stem as thick up the middle."""
    left, right = (width - wing) / 2, (width + wing) / 2
    return np.array(
        [
            [0, 0],
            [width, 0],
            [width, wing],
            [right, wing],
            [right, depth],
            [left, depth],
            [left, wing],
            [0, wing],
        ],
        dtype=float,
    )


def u_shape(width: float, depth: float, wing: float) -> np.ndarray:
    """Three wings `wing` m thick: bottom, left and right, open at the top."""
    inner = width - wing
    return np.array(
        [
            [0, 0],
            [width, 0],
            [width, depth],
            [inner, depth],
            [inner, wing],
            [wing, wing],
            [wing, depth],
            [0, depth],
        ],
        dtype=float,
    )


def disc(centre: np.ndarray, radius: float, edge: float = 3.0) -> shapely.Polygon:
    """A circle as a polygon with edges about `edge` m long (at least 8 of them)."""
    quarter_segments = int(np.clip(np.round(np.pi * radius / (2 * edge)), 2, 8))
    return shapely.Point(*centre).buffer(radius, quad_segs=quarter_segments)
