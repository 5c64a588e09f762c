"""The footprints files of a generated root: footprints/{m}.json.gz, the JSON of
irt4.data.city.CityLayout.to_json (building polygons, heights, materials and the map's style),
gzip-compressed to a quarter of the text. Roots written before hold plain {m}.json, read alike.

Reading needs no geometry library, so the tools that only score or train (per-style tables) run where
shapely is not installed.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from irt4.errors import InputError

FOLDER = "footprints"


def footprints_path(root: Path, map_id: int) -> Path:
    """footprints/{m}.json.gz, or the plain {m}.json that roots written before hold, where it exists."""
    plain = Path(root) / FOLDER / f"{map_id}.json"
    return plain if plain.is_file() else Path(root) / FOLDER / f"{map_id}.json.gz"


def footprints_bytes(layout_json: dict) -> bytes:
    """A footprints file's bytes: the JSON gzip-compressed reproducibly (no time stamp), so that the same
    map always gives the same file (merge compares bytes)."""
    text = json.dumps(layout_json) + "\n"
    return gzip.compress(text.encode(), compresslevel=9, mtime=0)


def read_footprints(path: Path) -> dict:
    """A footprints file (.json.gz or plain .json) as the JSON of CityLayout.to_json."""
    path = Path(path)
    try:
        data = path.read_bytes()
        return json.loads(gzip.decompress(data) if path.suffix == ".gz" else data)
    except (OSError, EOFError, ValueError) as err:  # JSONDecodeError and gzip.BadGzipFile are ValueErrors
        raise InputError(f"{path}: not a footprints file ({err})") from None


def map_styles(root: Path) -> dict[int, str]:
    """{map id: style} from a root's footprints files (roots of the boxes style have none: {})."""
    styles = {}
    folder = Path(root) / FOLDER
    for path in sorted([*folder.glob("*.json"), *folder.glob("*.json.gz")]):
        stem = path.name.split(".")[0]
        if not stem.isdigit():
            raise InputError(f"{path}: not a footprints file (expected {{map id}}.json.gz)")
        styles[int(stem)] = read_footprints(path).get("style", "unknown")
    return styles
