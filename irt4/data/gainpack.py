"""Grey gain maps from raw path gain, and the packed form of a generated sample that stores only the raw.

A generated sample (map m, transmitter k) is, in the RadioMapSeer layout, two files: the 256 x 256 grey
gain PNG (~13 kB) and the raw GRID x GRID path gain in dB (float16 .npy, 8 kB). The PNG is a function of
the raw (`render_grey`: bilinear in dB, buildings zeroed, dB -> grey) up to a grey level at bin edges
where float16 rounding of the raw moved a value across one (about 1.5 % of the pixels of a 4 m root).
The packed form keeps the raw and that difference, so the PNG's pixels come back exactly:

  gain/{SIM}/{m}_{k}.npz   a zip of deflated .npy members (np.load reads it):
      gain_db    (G, G) float16, the raw, as gain_db/{SIM}/{m}_{k}.npy holds it
      fix        (256, 256) int8 (int16 where needed), grey - render_grey(gain_db, buildings): mostly 0
      gain_db_range, version, grey_sha256 (of the PNG's pixel bytes, checked on every read)

about 5 kB against 21 kB. The rendering zeroes the pixels of the map's png/buildings_complete/{m}.png
that are not 0, as the generator does, so a pack is read together with that PNG. The members are
written with a fixed timestamp, so packing the same sample twice gives the same bytes. `convert_root`
packs or unpacks a root in place (resumable: a sample is switched over only after its round trip is
verified); the loader reads either form.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

import numpy as np

from irt4.data.pngio import MAP_SIZE, read_grey
from irt4.errors import InputError

PACK_VERSION = 1
PACK_SUFFIX = ".npz"
ZIP_END = b"PK\x05\x06"  # end-of-central-directory record: the last 22 bytes of a zip without comment
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


# ---- rendering: raw dB on the receiver lattice -> grey PNG pixels --------------------------------


def receiver_pixels(size: int, grid: int) -> np.ndarray:
    """(grid,) pixel index of each lattice cell's receiver along one axis: the pixel holding the cell
    centre. Receivers sit at pixel centres, so never on a wall (walls run along pixel edges)."""
    return np.floor((np.arange(grid) + 0.5) * size / grid).astype(np.int64)


def gain_db_to_grey(gain_db: np.ndarray, gain_db_range: tuple[float, float]) -> np.ndarray:
    """uint8 grey of radiomapseer.md: p = 255 (dB - LO) / (HI - LO), rounded; weaker than LO (and NaN,
    -inf) -> 0, stronger than HI -> 255."""
    lo, hi = gain_db_range
    grey = np.round(255.0 * (np.asarray(gain_db, dtype=np.float64) - lo) / (hi - lo))
    grey = np.nan_to_num(grey, nan=0.0, neginf=0.0, posinf=255.0)
    return np.clip(grey, 0, 255).astype(np.uint8)


def fill_indoor_cells(grid_db: np.ndarray) -> np.ndarray:
    """NaN cells (no receiver: centre inside a building) take the mean of their filled 8-neighbours,
    ring by ring, so interpolation next to a wall is not pulled towards an arbitrary value."""
    filled = np.array(grid_db, dtype=np.float64)
    if np.isnan(filled).all():
        raise ValueError("no outdoor receiver cell to interpolate from")
    while np.isnan(filled).any():
        known = ~np.isnan(filled)
        padded_val = np.pad(np.where(known, filled, 0.0), 1)
        padded_known = np.pad(known, 1).astype(np.float64)
        total = np.zeros_like(filled)
        count = np.zeros_like(filled)
        rows, cols = filled.shape
        for dr in range(3):
            for dc in range(3):
                total += padded_val[dr : dr + rows, dc : dc + cols]
                count += padded_known[dr : dr + rows, dc : dc + cols]
        grow = ~known & (count > 0)
        filled[grow] = total[grow] / count[grow]
    return filled


def upsample_db(grid_db: np.ndarray, rx_pixels: np.ndarray, size: int, floor_db: float) -> np.ndarray:
    """(size, size) dB map from the (G, G) lattice whose receivers sit at pixels rx_pixels x rx_pixels:
    bilinear in dB between receiver pixels, constant beyond the outermost ones. Values weaker than
    floor_db (and -inf, no path) are raised to it first: the grey mapping truncates them all alike,
    and a -inf cell must not darken its neighbours."""
    grid = fill_indoor_cells(np.maximum(grid_db, floor_db))
    pixels = np.arange(size)
    along_cols = np.stack([np.interp(pixels, rx_pixels, row) for row in grid])  # (G, size)
    return np.stack([np.interp(pixels, rx_pixels, col) for col in along_cols.T], axis=1)  # (size, size)


def render_grey(gain_db: np.ndarray, zeroed: np.ndarray, gain_db_range: tuple[float, float]) -> np.ndarray:
    """(256, 256) uint8 grey gain from the (G, G) raw dB, pixels of `zeroed` (buildings) set to 0: what
    the generator writes as the gain PNG (from its float64 raw; from the stored float16 raw a pixel
    can land one grey level off at a bin edge)."""
    rx_pixels = receiver_pixels(MAP_SIZE, gain_db.shape[-1])
    grey = gain_db_to_grey(upsample_db(gain_db, rx_pixels, MAP_SIZE, gain_db_range[0]), gain_db_range)
    grey[zeroed] = 0
    return grey


# ---- the packed sample -------------------------------------------------------------------------


def _sha256(grey: np.ndarray) -> np.ndarray:
    digest = hashlib.sha256(np.ascontiguousarray(grey, dtype=np.uint8).tobytes()).digest()
    return np.frombuffer(digest, np.uint8)


def pack_bytes(grey: np.ndarray, gain_db: np.ndarray, zeroed: np.ndarray, gain_db_range) -> bytes:
    """The .npz bytes of one sample: grey (256, 256) uint8 PNG pixels, gain_db (G, G) raw, zeroed the
    (256, 256) bool mask of pixels the generator set to 0 (buildings)."""
    raw = np.asarray(gain_db, dtype=np.float16)
    fix = grey.astype(np.int16) - render_grey(raw, np.asarray(zeroed, dtype=bool), gain_db_range)
    small = np.abs(fix).max() <= 127  # always, for grey the generator wrote; int16 keeps any other exact
    members = {
        "version": np.array(PACK_VERSION, dtype=np.int64),
        "gain_db_range": np.asarray(gain_db_range, dtype=np.float64),
        "gain_db": raw,
        "fix": fix.astype(np.int8) if small else fix,
        "grey_sha256": _sha256(grey),
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, array in members.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(array, order="C"), allow_pickle=False)
            archive.writestr(info, member.getvalue(), compresslevel=9)
    return buffer.getvalue()


def read_pack(path: Path, zeroed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(grey (256, 256) uint8, gain_db (G, G) float16) of a packed sample, zeroed its map's building
    mask; InputError naming the file when it is missing, unreadable, of another version or does not
    reproduce its grey's checksum."""
    try:
        with np.load(path, allow_pickle=False) as members:
            version = int(members["version"])
            if version != PACK_VERSION:
                raise InputError(f"{path}: packed sample version {version}, this irt4 reads {PACK_VERSION}")
            raw = members["gain_db"]
            rendered = render_grey(raw, np.asarray(zeroed, dtype=bool), tuple(members["gain_db_range"]))
            grey = rendered.astype(np.int16) + members["fix"]
            checksum = members["grey_sha256"]
    except FileNotFoundError:
        raise InputError(f"{path}: missing") from None
    except InputError:
        raise
    except Exception as error:  # zip, npy header and shape errors all mean a damaged file here
        raise InputError(f"{path}: unreadable packed sample ({error})") from None
    if grey.min() < 0 or grey.max() > 255 or not np.array_equal(_sha256(grey.astype(np.uint8)), checksum):
        raise InputError(
            f"{path}: the grey map it decodes to does not match its checksum (a changed file, or a "
            "changed png/buildings_complete PNG of its map)"
        )
    return grey.astype(np.uint8), raw


def pack_problem(path: Path, zeroed: np.ndarray | None = None) -> str | None:
    """None if `path` looks like a packed sample (cheap), or decodes to one with the building mask
    `zeroed` (full, when given), else what is wrong."""
    if zeroed is not None:
        try:
            read_pack(path, zeroed)
        except InputError as error:
            return str(error)
        return None
    try:
        with open(path, "rb") as f:
            f.seek(-22, 2)
            if f.read(4) != ZIP_END:
                return f"{path}: truncated (no zip directory at the end)"
    except FileNotFoundError:
        return f"{path}: missing"
    except OSError as error:
        return f"{path}: unreadable ({error})"
    return None


# ---- a root's samples in either form -----------------------------------------------------------


def sample_paths(root: Path, simulation: str, map_id: int, tx_index: int) -> tuple[Path, Path, Path]:
    """(gain PNG, raw .npy, packed .npz) paths of a sample."""
    name = f"{map_id}_{tx_index}"
    return (
        root / "gain" / simulation / f"{name}.png",
        root / "gain_db" / simulation / f"{name}.npy",
        root / "gain" / simulation / f"{name}{PACK_SUFFIX}",
    )


def read_sample(root: Path, simulation: str, map_id: int, tx_index: int) -> tuple[np.ndarray, np.ndarray]:
    """(grey, raw dB) of a generated sample, plain (PNG + .npy) or packed; plain wins if both exist."""
    png, npy, packed = sample_paths(root, simulation, map_id, tx_index)
    if png.is_file() and npy.is_file():
        return read_grey(png), np.load(npy, allow_pickle=False)
    return read_pack(packed, building_mask(root, map_id))


def building_mask(root: Path, map_id: int) -> np.ndarray:
    """The pixels a generated map's gain is zeroed on: its buildings PNG's non-zero pixels."""
    return read_grey(root / "png" / "buildings_complete" / f"{map_id}.png") > 0


def _write_atomically(path: Path, data: bytes) -> None:
    scratch = path.with_name(f".{path.name}.tmp")
    scratch.write_bytes(data)
    os.replace(scratch, path)


def _npy_bytes(raw: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(raw, dtype=np.float16))
    return buffer.getvalue()


def pack_sample(
    root: Path, simulation: str, map_id: int, tx_index: int, zeroed: np.ndarray, gain_db_range
) -> bool:
    """Replace a plain sample by its packed form once the pack decodes to the same grey and raw; True
    if it was plain. A sample found in both forms (an interrupted pack) is packed again and finished."""
    png, npy, packed = sample_paths(root, simulation, map_id, tx_index)
    if not (png.is_file() and npy.is_file()):
        return False
    grey, raw = read_grey(png), np.load(npy, allow_pickle=False)
    if raw.dtype != np.float16 or raw.ndim != 2:
        raise InputError(f"{npy}: expected a 2-D float16 raw gain, found {raw.dtype} {raw.shape}")
    _write_atomically(packed, pack_bytes(grey, raw, zeroed, gain_db_range))
    try:
        back_grey, back_raw = read_pack(packed, zeroed)
        if not (np.array_equal(back_grey, grey) and back_raw.tobytes() == raw.tobytes()):
            raise InputError(f"{packed}: does not reproduce {png} and {npy}")
    except InputError as error:
        packed.unlink()
        raise InputError(f"{error}; left the plain files as they were") from None
    npy.unlink()
    png.unlink()
    return True


def unpack_sample(root: Path, simulation: str, map_id: int, tx_index: int) -> bool:
    """Write a packed sample back as gain PNG + raw .npy (the PNG's pixels and the .npy's bytes as the
    generator wrote them), then remove the pack; True if it was packed."""
    from PIL import Image

    png, npy, packed = sample_paths(root, simulation, map_id, tx_index)
    if not packed.is_file():
        return False
    grey, raw = read_pack(packed, building_mask(root, map_id))
    npy.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(npy, _npy_bytes(raw))
    image = io.BytesIO()
    Image.fromarray(grey, mode="L").save(image, format="PNG")
    _write_atomically(png, image.getvalue())
    packed.unlink()
    return True


def convert_root(root: Path, pack: bool, progress: bool = True) -> dict:
    """Pack (or unpack) every finished map of a generated root in place; returns counts. Maps still
    being written (files under ROOT/.partial, gain PNG not yet in place) are left alone."""
    from tqdm import tqdm

    from irt4.data.synth import SIMULATION, finished_maps, read_metadata, settings_from_metadata

    settings = settings_from_metadata(read_metadata(root))
    maps = finished_maps(root, settings)
    gain_db_range = tuple(float(v) for v in settings.gain_db_range)
    changed = 0
    for map_id in tqdm(maps, unit="map", disable=not progress, desc="packing" if pack else "unpacking"):
        if pack:
            zeroed = building_mask(root, map_id)
        for k in range(settings.tx_per_map):
            if pack:
                changed += pack_sample(root, SIMULATION, map_id, k, zeroed, gain_db_range)
            else:
                changed += unpack_sample(root, SIMULATION, map_id, k)
    return {"maps": len(maps), "samples_converted": changed}
