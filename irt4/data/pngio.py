"""8-bit grey PNGs of the RadioMapSeer layout: a cheap check, a full check, and reading.

Every problem comes back as text naming the file, which the loader raises as an InputError or, with
`skip_bad`, logs and counts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from irt4.errors import InputError

MAP_SIZE = 256  # RadioMapSeer maps are 256 x 256 px, 1 px = 1 m
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the last chunk of every complete PNG


def png_problem(path: Path, full: bool = False, size: int = MAP_SIZE) -> str | None:
    """None if `path` is a size x size 8-bit grey PNG, else what is wrong with it. The cheap check
    reads the header and the last 12 bytes (a cut file lacks its IEND chunk); `full` decodes it."""
    try:
        with open(path, "rb") as f:
            with Image.open(f) as image:
                if image.format != "PNG":
                    return f"{path}: not a PNG ({image.format})"
                if image.size != (size, size):
                    return f"{path}: is {image.size[0]}x{image.size[1]}, expected {size}x{size}"
                if image.mode != "L":
                    return f"{path}: has mode {image.mode}, expected 8-bit grey (L)"
                if full:
                    image.load()
            f.seek(-len(PNG_END), 2)
            if f.read() != PNG_END:
                return f"{path}: truncated (no IEND chunk at the end)"
    except FileNotFoundError:
        return f"{path}: missing"
    except Exception as error:  # PIL raises many types for a damaged file; all mean the same here
        return f"{path}: unreadable ({error})"
    return None


def read_grey(path: Path | str) -> np.ndarray:
    """(H, W) uint8 pixels of an 8-bit grey PNG; InputError naming the file if it cannot be read."""
    try:
        with Image.open(path) as image:
            if image.mode != "L":
                raise InputError(f"{path}: has mode {image.mode}, expected 8-bit grey (L)")
            return np.asarray(image)
    except FileNotFoundError:
        raise InputError(f"{path}: missing") from None
    except InputError:
        raise
    except Exception as error:
        raise InputError(f"{path}: unreadable ({error})") from None


def transmitter_image(shape: tuple[int, int], row: int, col: int) -> np.ndarray:
    """RadioMapSeer's antenna PNG as floats: 1 at the transmitter pixel, 0 elsewhere."""
    image = np.zeros(shape, dtype=np.float32)
    image[row, col] = 1.0
    return image
