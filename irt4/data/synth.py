"""Generate a RadioMapSeer-layout data set by ray tracing procedural cities with Sionna RT.

Each map: a procedural city on a 256 x 256 m tile, 1 px = 1 m, in an urban style drawn from a mix
(irt4.data.city: rotated street grids, perimeter blocks, old town, detached buildings; `boxes` is the
first generator, axis-aligned boxes on a grid); its footprints extruded into one mesh per ITU material
(a height and a material per building) on a dry-ground plane; transmitters at 1.5 m on outdoor
pixels; receivers at 1.5 m on a GRID x GRID lattice over the outdoor cells, traced with
Sionna's PathSolver (up to MAX_DEPTH reflections, first-order diffraction, no refraction), the power
of all paths summed incoherently -> path gain in dB, interpolated in dB to 256 x 256, buildings set
to 0, dB -> grey with dB = LO + (HI - LO) p / 255 (radiomapseer.md; weaker than LO -> 0).

The maps are IRT4-like, not IRT4-equal: Sionna's diffraction is first order (one per path) where
WinProp's IRT4 allows four interactions of any kind. Needs `pip install 'irt4[sim]'` and libLLVM >= 19
(`apt-get install libllvm19`). Deterministic for a seed; resumable (finished maps are skipped, each
map's files appear by atomic renames); settings of a root are fixed by its irt4-synth.json.

Writes under ROOT:
  png/buildings_complete/{m}.png  255 = building        png/antennas/{m}_{k}.png  255 at the tx
  gain/IRT4/{m}_{k}.png           grey path gain        antenna/{m}.json          [[col, row], ...]
  gain_db/IRT4/{m}_{k}.npy        raw path gain in dB at GRID x GRID, float16 (NaN: cell centre in a
                                  building, no receiver; -inf: no path arrived)
  footprints/{m}.json.gz          the map's building polygons, heights, materials and style
                                  (irt4.data.city.CityLayout.to_json, gzip: a quarter of the text's
                                  size; roots written before hold plain {m}.json, read alike; not for
                                  the boxes style)
  irt4-synth.json                 generator version, seed, settings, sionna/mitsuba/drjit versions
`irt4-data pack ROOT` later replaces a sample's gain PNG and raw .npy by gain/IRT4/{m}_{k}.npz
(irt4.data.gainpack: the same pixels and raw, a quarter of the size); a root may hold both forms.

Throughput: a worker keeps one ray tracer for all its maps, with mesh sizes padded and device
positions opaque, so Dr.Jit's kernels compiled for the first map serve the next ones (raytrace.py).
Scale-out: `--shard i/n` traces the map ids m with m % n == i, so n machines or processes fill one
root (or n roots that `irt4-data merge` joins) without collisions.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from irt4.config import DataConfig
from irt4.data.city import (
    CityLayout,
    extrude,
    parse_style_mix,
    random_city,
    random_layout,
    rasterize,
    solid_cells,
    transmitter_image,
)
from irt4.data.city.materials import BUILDING_MATERIALS
from irt4.data.footprints import footprints_bytes, footprints_path, read_footprints
from irt4.data.gainpack import (  # noqa: F401  (fill_indoor_cells, upsample_db: synth's API too)
    PACK_SUFFIX,
    fill_indoor_cells,
    gain_db_to_grey,
    read_sample,
    receiver_pixels,
    upsample_db,
)
from irt4.data.scene import (
    boxes_mesh,
    footprint_boxes,
    ground_mesh,
    pixel_to_world,
    transmitter_sites,
)
from irt4.errors import InputError

SIZE = 256  # tile size in px = m (RadioMapSeer)
SIMULATION = "IRT4"  # the gain/ subfolder the maps go to
METADATA = "irt4-synth.json"
FORMAT_VERSION = 2  # 2: styles, materials and footprints/ (roots of version 1 read as style "boxes")
BOXES = "boxes"  # the first generator's style: irt4.data.city.random_city, concrete boxes
FOOTPRINTS = "footprints"  # windows of a user's footprints file (irt4.geo.own_city), not drawn
PARTIAL = ".partial"  # per-map scratch folder under ROOT; renamed into place when the map is done
HEIGHT_JITTER = (0.5, 1.5)  # --height-jitter: each box's height x U(0.5, 1.5)


@dataclass(frozen=True)
class SynthSettings:
    """Everything that decides a map's content besides the seed and the map id."""

    style: str = "mixed"  # a style mix (irt4.data.city.parse_style_mix), or "boxes"
    grid: int = 64
    max_depth: int = 4
    samples_per_src: int = 100_000
    tx_per_map: int = 2
    frequency: float = 5.9e9
    building_height: float = 25.0
    height_jitter: bool = False
    tx_height: float = 1.5
    rx_height: float = 1.5
    min_wall_distance: float = 3.0
    gain_db_range: tuple[float, float] = DataConfig().gain_db_range
    rx_per_call: int = 256
    paths_per_rx: int = 4_000


# a root written before styles existed has none of these keys: it was made with these values
LEGACY_SETTINGS = {"style": BOXES}


@dataclass
class City:
    buildings: np.ndarray  # (256, 256) uint8, 1 = building
    heights: np.ndarray  # (B,) m
    transmitters: list[tuple[int, int]]  # (row, col) per transmitter
    solver_seed: int
    boxes: np.ndarray | None = None  # (B, 4) [row0, col0, row1, col1) for the boxes style
    layout: CityLayout | None = None  # the footprints of the other styles

    def meshes(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """ITU material -> (vertices, faces) of the buildings made of it."""
        if self.layout is None:
            return {"concrete": boxes_mesh(self.boxes, self.heights)}
        by_material: dict[str, list[int]] = {}
        for index, material in enumerate(self.layout.materials):
            by_material.setdefault(material, []).append(index)
        return {
            material: extrude([self.layout.polygons[i] for i in indices], self.heights[indices])
            for material, indices in by_material.items()
        }

    def solid_cells(self) -> np.ndarray:
        """(256, 256) roof heights of the cells that lie inside a building (irt4.data.city.raster.
        solid_cells): what the candidate culling looks shadow rays up in."""
        import shapely

        if self.layout is None:
            row0, col0, row1, col1 = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4).T
            polygons = list(shapely.box(col0, row0, col1, row1))
            heights = np.broadcast_to(self.heights, (len(polygons),))
            return solid_cells(polygons, heights, SIZE)
        return solid_cells(self.layout.polygons, self.heights, SIZE)


def map_rng(seed: int, map_id: int) -> np.random.Generator:
    """The generator of one map: a function of (seed, map id) only, so maps do not depend on which
    other maps were generated, in which order, or by which worker."""
    return np.random.default_rng(np.random.SeedSequence([seed, map_id]))


def make_city(settings: SynthSettings, seed: int, map_id: int) -> City:
    rng = map_rng(seed, map_id)
    if settings.style == BOXES:
        buildings = random_city(SIZE, rng).astype(np.uint8)
        boxes = footprint_boxes(buildings)
        scale = (
            rng.uniform(*HEIGHT_JITTER, size=len(boxes)) if settings.height_jitter else np.ones(len(boxes))
        )
        transmitters = transmitter_sites(buildings, settings.tx_per_map, rng, settings.min_wall_distance)
        solver_seed = int(rng.integers(2**31 - 1))
        return City(buildings, settings.building_height * scale, transmitters, solver_seed, boxes=boxes)
    # a style uses a varying amount of randomness: it draws from a child generator of its own, so the
    # transmitters and the solver seed come from the same place of rng whatever the style did
    layout = random_layout(np.random.default_rng(rng.integers(2**63)), parse_style_mix(settings.style), SIZE)
    buildings = rasterize(layout.polygons, SIZE)
    # not in a closed courtyard: a site there lights the courtyard and leaves the rest of the map dark
    enclosed = ~open_to_the_border(buildings == 0)
    transmitters = transmitter_sites(
        buildings | enclosed, settings.tx_per_map, rng, settings.min_wall_distance
    )
    solver_seed = int(rng.integers(2**31 - 1))
    return City(buildings, np.asarray(layout.heights), transmitters, solver_seed, layout=layout)


def open_to_the_border(outdoor: np.ndarray) -> np.ndarray:
    """The outdoor pixels connected (4-neighbours) to the tile's border: the streets and squares,
    without the courtyards that buildings close off."""
    from scipy import ndimage

    labels, _ = ndimage.label(outdoor)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return np.isin(labels, border[border > 0])


def _same_file_content(path: Path, other: Path) -> bool:
    """Equal bytes; a plain and a compressed footprints file: equal JSON."""
    if path.name == other.name:
        return path.read_bytes() == other.read_bytes()
    return read_footprints(path) == read_footprints(other)


def _target_name(path: Path, root: Path, source: Path, map_id: int) -> Path:
    """A source file's path relative to its root, footprints always under their compressed name."""
    relative = path.relative_to(source)
    if relative.parent.name == "footprints":
        return footprints_path(root, map_id).relative_to(root)
    return relative


def _check_same_map(source: Path, root: Path, map_id: int, tx_per_map: int, footprints: bool) -> None:
    """InputError unless the map in root equals the map in source: its files alike, and each
    transmitter's grey and raw gain alike whether either root holds it plain or packed."""
    files = outputs(source, map_id, tx_per_map, footprints)
    common = files[: len(files) - 2 * tx_per_map]
    for path in common:
        target = root / _target_name(path, root, source, map_id)
        if not _same_file_content(path, target):
            raise InputError(f"{path} and {target} differ: map {map_id} is not the same map")
    for k in range(tx_per_map):
        (grey, raw), (other_grey, other_raw) = (read_sample(r, SIMULATION, map_id, k) for r in (source, root))
        if not (np.array_equal(grey, other_grey) and raw.tobytes() == other_raw.tobytes()):
            raise InputError(
                f"{source} and {root}: map {map_id} transmitter {k} has other gains: not the same map"
            )


def outputs(
    root: Path, map_id: int, tx_per_map: int, footprints: bool = False, packed: bool = False
) -> list[Path]:
    """The files of a finished map, the gain files last (the gain PNGs are renamed into place last).
    packed: the map's form after `irt4-data pack` (irt4.data.gainpack), one .npz per transmitter in
    place of its gain PNG and raw .npy."""
    files = [root / "png" / "buildings_complete" / f"{map_id}.png", root / "antenna" / f"{map_id}.json"]
    if footprints:
        files.append(footprints_path(root, map_id))
    files += [root / "png" / "antennas" / f"{map_id}_{k}.png" for k in range(tx_per_map)]
    if packed:
        return files + [root / "gain" / SIMULATION / f"{map_id}_{k}{PACK_SUFFIX}" for k in range(tx_per_map)]
    files += [root / "gain_db" / SIMULATION / f"{map_id}_{k}.npy" for k in range(tx_per_map)]
    return files + [root / "gain" / SIMULATION / f"{map_id}_{k}.png" for k in range(tx_per_map)]


def finished_form(root: Path, map_id: int, tx_per_map: int, footprints: bool = False) -> list[Path] | None:
    """The files of the map as they are on disk, each transmitter's gain plain (PNG + raw .npy, taken
    first) or packed (an interrupted `irt4-data pack` leaves some of each), or None if any is missing."""
    plain = outputs(root, map_id, tx_per_map, footprints)
    packed = outputs(root, map_id, tx_per_map, footprints, packed=True)
    common = plain[: len(plain) - 2 * tx_per_map]
    files = list(common)
    for k in range(tx_per_map):
        pair = [plain[len(common) + k], plain[len(common) + tx_per_map + k]]
        files += pair if all(path.is_file() for path in pair) else [packed[len(common) + k]]
    return files if all(path.is_file() for path in files) else None


def is_finished(root: Path, map_id: int, tx_per_map: int, footprints: bool = False) -> bool:
    """True when every final file of the map exists, plain or packed; scratch files under ROOT/.partial
    do not count."""
    return finished_form(root, map_id, tx_per_map, footprints) is not None


def _save_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), mode="L").save(path)


def write_map(root: Path, map_id: int, city: City, gain_grey: np.ndarray, gain_db: np.ndarray) -> None:
    """Write every file of a map into ROOT/.partial/{m}/, then rename each into place (gain PNGs last):
    an interrupted map never has all its files, so it is not taken as finished."""
    scratch = root / PARTIAL / str(map_id)
    shutil.rmtree(scratch, ignore_errors=True)
    final = outputs(root, map_id, len(city.transmitters), footprints=city.layout is not None)
    staged = [scratch / path.relative_to(root) for path in final]
    by_name = dict(zip(final, staged))
    _save_png(by_name[final[0]], 255 * city.buildings)
    by_name[final[1]].parent.mkdir(parents=True, exist_ok=True)
    by_name[final[1]].write_text(json.dumps([[col, row] for row, col in city.transmitters]) + "\n")
    if city.layout is not None:
        by_name[final[2]].parent.mkdir(parents=True, exist_ok=True)
        by_name[final[2]].write_bytes(footprints_bytes(city.layout.to_json()))
    for k, (row, col) in enumerate(city.transmitters):
        _save_png(
            scratch / "png" / "antennas" / f"{map_id}_{k}.png",
            255 * transmitter_image((SIZE, SIZE), row, col),
        )
        npy = scratch / "gain_db" / SIMULATION / f"{map_id}_{k}.npy"
        npy.parent.mkdir(parents=True, exist_ok=True)
        np.save(npy, gain_db[k].astype(np.float16))
        _save_png(scratch / "gain" / SIMULATION / f"{map_id}_{k}.png", gain_grey[k])
    for path, staged_path in by_name.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged_path, path)
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        scratch.parent.rmdir()  # ROOT/.partial, once no map (of any worker) is in flight
    except OSError:
        pass


_tracers: dict = {}  # (settings, threads) -> the RayTracer this process reuses for all its maps


def city_tracer(
    city: City,
    settings: SynthSettings,
    threads: int | None = None,
    keep_kernels: bool = True,
    cull_candidates: bool = True,
):
    """A RayTracer holding `city`: this process's persistent one, moved to the city (keep_kernels), or
    a fresh one built for it alone, as irt4 traced before (keep_kernels=False and
    cull_candidates=False: the benchmark's old path)."""
    from dataclasses import replace

    from irt4.data.raytrace import RayTracer, TraceSettings

    tx_rows, tx_cols = np.array(city.transmitters).T
    tx_points = pixel_to_world(tx_rows, tx_cols, settings.tx_height)
    trace = TraceSettings(
        frequency=settings.frequency,
        max_depth=settings.max_depth,
        samples_per_src=settings.samples_per_src,
        paths_per_rx=settings.paths_per_rx,
        seed=city.solver_seed,
    )
    key = (settings, threads)
    if keep_kernels and key in _tracers:
        tracer = _tracers[key]
        tracer.settings = replace(tracer.settings, seed=city.solver_seed)
        tracer.set_city(city.meshes(), tx_points, city.solid_cells() if cull_candidates else None)
        return tracer
    tracer = RayTracer(
        city.meshes(),
        ground_mesh(SIZE),
        tx_points,
        rx_per_call=min(settings.rx_per_call, settings.grid**2),
        settings=trace,
        threads=threads,
        keep_kernels=keep_kernels,
        materials=BUILDING_MATERIALS if keep_kernels else (),
        cull_candidates=cull_candidates,
        solid=city.solid_cells() if cull_candidates else None,
    )
    if keep_kernels:
        _tracers.clear()  # one tracer per process: its memory is reused from map to map
        _tracers[key] = tracer
    return tracer


def trace_map(
    city: City,
    settings: SynthSettings,
    threads: int | None = None,
    keep_kernels: bool = True,
    cull_candidates: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """(K, 256, 256) uint8 grey gain maps and (K, G, G) raw dB (NaN where the cell is a building)."""
    rx_pixels = receiver_pixels(SIZE, settings.grid)
    rows, cols = np.meshgrid(rx_pixels, rx_pixels, indexing="ij")  # (G, G)
    outdoor = city.buildings[rows, cols] == 0
    tracer = city_tracer(city, settings, threads, keep_kernels, cull_candidates)
    rx_db = tracer.path_gain_db(pixel_to_world(rows[outdoor], cols[outdoor], settings.rx_height))  # (K, N)
    gain_db = np.full((len(city.transmitters), settings.grid, settings.grid), np.nan)
    gain_db[:, outdoor] = rx_db
    grey = np.stack(
        [
            gain_db_to_grey(
                upsample_db(db, rx_pixels, SIZE, settings.gain_db_range[0]), settings.gain_db_range
            )
            for db in gain_db
        ]
    )
    grey[:, city.buildings > 0] = 0
    return grey, gain_db


def generate_map(
    root: Path,
    map_id: int,
    settings: SynthSettings,
    seed: int,
    threads: int | None = None,
    keep_kernels: bool = True,
    cities=None,
) -> tuple[float, float]:
    """Trace and write one map; returns its (wall, CPU) seconds (CPU: all threads of this process).
    cities: what makes map m's City, called as make_city is (default: make_city, procedural)."""
    start, start_cpu = time.perf_counter(), time.process_time()
    city = (cities or make_city)(settings, seed, map_id)
    grey, gain_db = trace_map(city, settings, threads, keep_kernels)
    write_map(root, map_id, city, grey, gain_db)
    return time.perf_counter() - start, time.process_time() - start_cpu


def _worker_init() -> None:
    from irt4.data.raytrace import pin_libllvm

    pin_libllvm()  # before the worker's first drjit import


def read_metadata(root: Path) -> dict:
    """ROOT/irt4-synth.json, with the settings a root of an earlier format version was made with."""
    path = root / METADATA
    if not path.is_file():
        raise InputError(f"{path}: missing; is {root} a root written by irt4-data synth?")
    try:
        metadata = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: unreadable ({error})") from error
    metadata["settings"] = {**LEGACY_SETTINGS, **metadata.get("settings", {})}
    return metadata


def settings_from_metadata(metadata: dict) -> SynthSettings:
    """The SynthSettings a root's metadata (read_metadata) records."""
    settings = dict(metadata["settings"])
    settings["gain_db_range"] = tuple(settings["gain_db_range"])
    return SynthSettings(**settings)


def finished_maps(root: Path, settings: SynthSettings) -> list[int]:
    """Sorted ids of the maps of root whose files are all in place."""
    folder = root / "png" / "buildings_complete"
    ids = sorted(int(path.stem) for path in folder.glob("*.png") if path.stem.isdigit())
    return [m for m in ids if is_finished(root, m, settings.tx_per_map, settings.style != BOXES)]


def merge_roots(sources: list[Path], root: Path) -> dict:
    """Copy the finished maps of shard roots into root. All roots (root too, if it has metadata) must
    have the same seed and settings; a map present in two roots must have identical files. A map's
    files are staged under ROOT/.partial and renamed into place, as synth writes them."""
    metadata = [read_metadata(source) for source in sources]
    for source, other in zip(sources[1:], metadata[1:]):
        for key in ("seed", "settings", FOOTPRINTS):
            if other.get(key) != metadata[0].get(key):
                raise InputError(
                    f"{source} was generated with {key} {other.get(key)}, {sources[0]} with "
                    f"{metadata[0].get(key)}: "
                    "only shards of one data set can be merged"
                )
    settings = settings_from_metadata(metadata[0])
    if (root / METADATA).is_file():
        check_metadata(root, settings, metadata[0]["seed"], metadata[0].get(FOOTPRINTS))
    else:
        root.mkdir(parents=True, exist_ok=True)
        (root / METADATA).write_text(json.dumps(metadata[0], indent=2) + "\n")
    copied = same = 0
    footprints = settings.style != BOXES
    for source in sources:
        for map_id in finished_maps(source, settings):
            files = finished_form(source, map_id, settings.tx_per_map, footprints)
            if is_finished(root, map_id, settings.tx_per_map, footprints):
                _check_same_map(source, root, map_id, settings.tx_per_map, footprints)
                same += 1
                continue
            targets = [root / _target_name(path, root, source, map_id) for path in files]
            scratch = root / PARTIAL / str(map_id)
            for path, target in zip(files, targets):
                staged = scratch / target.relative_to(root)
                staged.parent.mkdir(parents=True, exist_ok=True)
                if path.name == target.name:
                    shutil.copyfile(path, staged)
                else:  # a plain .json footprints file of an earlier root, compressed on the way
                    staged.write_bytes(footprints_bytes(read_footprints(path)))
            for target in targets:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(scratch / target.relative_to(root), target)
            shutil.rmtree(scratch, ignore_errors=True)
            copied += 1
    shutil.rmtree(root / PARTIAL, ignore_errors=True)
    return {"copied": copied, "already_there": same, "maps": len(finished_maps(root, settings))}


def check_metadata(root: Path, settings: SynthSettings, seed: int, footprints: dict | None = None) -> None:
    """Write ROOT/irt4-synth.json, or check that an existing root was made with the same settings (and,
    for maps of a footprints file, the same file and sites): one root never mixes maps of different
    settings."""
    from irt4 import __version__
    from irt4.data.raytrace import find_libllvm, sionna_versions

    path = root / METADATA
    wanted = {"seed": seed, "settings": json.loads(json.dumps(asdict(settings)))}
    if footprints is not None:
        wanted[FOOTPRINTS] = footprints
    if path.is_file():
        have = read_metadata(root)
        for key in ("seed", "settings", FOOTPRINTS):
            if have.get(key) != wanted.get(key):
                raise InputError(
                    f"{root} was generated with {key} {have.get(key)}, not {wanted.get(key)}: resume with "
                    "the same settings or use another --out"
                )
        return
    metadata = {
        "generator": "irt4.data.synth",
        "irt4_version": __version__,
        "format_version": FORMAT_VERSION,
        **wanted,
        "simulation": SIMULATION,
        "solver": "sionna.rt.PathSolver(deterministic=True): los, specular reflection, diffraction (first "
        "order, lit region), no refraction, no diffuse reflection; power summed incoherently over paths",
        "materials": {
            "buildings": "ITU concrete, 0.2 m"
            if settings.style in (BOXES, FOOTPRINTS)
            else f"one ITU material per building ({', '.join(BUILDING_MATERIALS)}), walls and roof, 0.2 m",
            "ground": "ITU medium_dry_ground",
        },
        "conventions": "pixel (row, col) centre = world (x, y) = (col + 0.5, row + 0.5) m; grey p -> dB = "
        "LO + (HI - LO) p / 255 with (LO, HI) = gain_db_range; 0 = LO or weaker, and buildings",
        "versions": sionna_versions(),
        "libllvm": os.environ.get("DRJIT_LIBLLVM_PATH") or find_libllvm(),
    }
    root.mkdir(parents=True, exist_ok=True)
    scratch = path.with_suffix(".json.tmp")
    scratch.write_text(json.dumps(metadata, indent=2) + "\n")
    os.replace(scratch, path)


def generate(
    root: Path,
    map_ids: list[int],
    settings: SynthSettings,
    seed: int,
    workers: int = 1,
    progress: bool = True,
    cities=None,
    footprints: dict | None = None,
) -> dict:
    """Generate the maps of map_ids not finished yet under root; returns counts and timings. cities and
    footprints: the maker of each map's City and the footprints record of a user's city
    (irt4.geo.own_city); default the procedural styles."""
    from tqdm import tqdm

    from irt4.data.raytrace import require_backend

    require_backend()
    check_metadata(root, settings, seed, footprints)
    todo = [m for m in map_ids if not is_finished(root, m, settings.tx_per_map, settings.style != BOXES)]
    seconds: list[tuple[float, float]] = []  # (wall, CPU) per map
    start = time.perf_counter()
    bar = tqdm(total=len(todo), unit="map", disable=not progress, desc="ray tracing")
    if workers == 1:
        for map_id in todo:
            seconds.append(generate_map(root, map_id, settings, seed, cities=cities))
            bar.update()
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # spawn: each worker starts clean, pins libLLVM and owns its Dr.Jit state; cores are shared out
        threads = max(1, (os.cpu_count() or 1) // workers)
        context = mp.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init) as pool:
            futures = [
                pool.submit(generate_map, root, m, settings, seed, threads, True, cities) for m in todo
            ]
            for future in as_completed(futures):
                seconds.append(future.result())
                bar.update()
    bar.close()
    return {
        "generated": len(todo),
        "skipped": len(map_ids) - len(todo),
        "wall_s": time.perf_counter() - start,
        "map_s": seconds,
    }


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(float(text)) if kind is int else kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if kind is int and float(text) != value:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `irt4-data synth`."""
    d = SynthSettings()
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--out", type=Path, required=True, metavar="ROOT", help="the root to write (created)")
    parser.add_argument(
        "--maps", type=_positive(int), metavar="N", help="number of maps (with --sites: default one per site)"
    )
    parser.add_argument(
        "--start-id",
        type=int,
        default=0,
        metavar="M",
        help="first map id; maps M .. M+N-1 (default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="data set seed; map m uses (seed, m) (default: %(default)s)"
    )
    parser.add_argument(
        "--style",
        default=d.style,
        metavar="MIX",
        help="urban style of each map, drawn per map from a weighted mix: one style (grid, perimeter, "
        "oldtown, detached, industrial), weights such as 'grid=2,oldtown=1', 'mixed' (the four training "
        f"styles alike; industrial is held out of it), or '{BOXES}' (the first generator: axis-aligned "
        "concrete boxes; --building-height and --height-jitter apply to it only) (default: %(default)s)",
    )
    parser.add_argument(
        "--shard",
        type=parse_shard,
        default=(0, 1),
        metavar="I/N",
        help="trace only the map ids m with m %% N == I (0 <= I < N): N machines or processes fill one "
        "root, or N roots that `irt4-data merge` joins, without collisions (default: 0/1, all)",
    )
    parser.add_argument(
        "--grid",
        type=_positive(int),
        default=d.grid,
        help="receivers per side of the lattice over the 256 m tile; the map is interpolated in dB to "
        "256 x 256 (64: ~4 m spacing; cost grows with GRID^2; default: %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=_positive(int),
        default=1,
        help="maps traced in parallel processes, the cores shared out as threads; each keeps its own ray "
        "tracer (up to ~5 GB at the default settings, bench/results/synth/). One process already runs "
        "the solver on all cores (measured: 1.9x with 2 threads on 2 cores), so more workers pay only "
        "where memory allows and "
        "cores are many (default: %(default)s)",
    )
    parser.add_argument(
        "--max-depth",
        type=_positive(int),
        default=d.max_depth,
        help="most interactions (reflections, plus one diffraction) per path (default: %(default)s)",
    )
    parser.add_argument(
        "--samples-per-src",
        type=_positive(int),
        default=d.samples_per_src,
        help="rays shot per transmitter to find path candidates; 1e6 changes coverage little and costs "
        "~10x (default: %(default)s)",
    )
    parser.add_argument(
        "--tx-per-map",
        type=_positive(int),
        default=d.tx_per_map,
        help="transmitters per map, on street pixels in [53, 202]^2 at least 3 m from walls "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--frequency", type=_positive(float), default=d.frequency, help="carrier in Hz (default: %(default)g)"
    )
    parser.add_argument(
        "--building-height",
        type=_positive(float),
        default=d.building_height,
        help="building height in m (default: %(default)s)",
    )
    parser.add_argument(
        "--height-jitter",
        action="store_true",
        help=f"scale each building box's height by U{HEIGHT_JITTER} (RadioMapSeer uses one height)",
    )
    parser.add_argument(
        "--gain-db-range",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        default=d.gain_db_range,
        help="dB of grey 0 and grey 255; weaker than LO -> 0 (default: %(default)s, radiomapseer.md)",
    )
    parser.add_argument(
        "--rx-per-call",
        type=_positive(int),
        default=d.rx_per_call,
        help="receivers per solver call; memory grows with it: ~15 GB at 512 with 2 transmitters "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--paths-per-rx",
        type=_positive(int),
        default=d.paths_per_rx,
        help="path buffer slots per receiver; the buffer overflows silently when too small "
        "(default: %(default)s)",
    )
    own = parser.add_argument_group(
        "your own city (instead of --style): windows of a footprints file, in the same layout and physics"
    )
    own.add_argument(
        "--footprints",
        type=Path,
        metavar="FILE",
        help="building footprints: a vector file GDAL reads or an OpenStreetMap extract (.osm, .osm.pbf); "
        "map m is a 256 m window of it, random (seeded by seed and m) unless --sites",
    )
    own.add_argument(
        "--sites",
        type=Path,
        metavar="CSV",
        help="with --footprints: site_id,lon,lat or site_id,x,y; map m is site m's window with the site as "
        "its one transmitter (--tx-per-map does not apply)",
    )
    own.add_argument(
        "--layer", help="with --footprints: the layer of a multi-layer file (default: the first)"
    )
    own.add_argument(
        "--height-attribute",
        metavar="NAME",
        help="with --footprints: the attribute holding building heights in m (default: 'height' where it "
        "exists; OpenStreetMap: height, else building:levels x 3 m); missing heights take --building-height",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not I/N, e.g. 0/4") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"{text!r}: needs 0 <= I < N")
    return index, count


def shard_ids(map_ids: list[int], shard: tuple[int, int]) -> list[int]:
    """The map ids of shard (I, N): those with m % N == I."""
    index, count = shard
    return [m for m in map_ids if m % count == index]


def settings_from_args(args: argparse.Namespace) -> SynthSettings:
    own_city = getattr(args, "footprints", None) is not None
    if own_city and args.style not in (SynthSettings.style, FOOTPRINTS):
        raise InputError(
            f"--footprints and --style {args.style}: a map is either drawn or of your footprints"
        )
    if getattr(args, "sites", None) is not None and not own_city:
        raise InputError("--sites goes with --footprints FILE")
    style = FOOTPRINTS if own_city else args.style
    if style not in (BOXES, FOOTPRINTS):
        parse_style_mix(style)  # an InputError naming the bad part
    lo, hi = args.gain_db_range
    if not lo < hi:
        raise InputError(f"--gain-db-range: LO {lo:g} must be below HI {hi:g}")
    if args.grid > SIZE:
        raise InputError(f"--grid {args.grid}: at most {SIZE} (one receiver per pixel)")
    if args.start_id < 0:
        raise InputError(f"--start-id {args.start_id}: must be >= 0")
    if args.building_height <= SynthSettings.tx_height:
        raise InputError(f"--building-height {args.building_height:g}: must exceed the 1.5 m antennas")
    if args.tx_per_map > 80:
        raise InputError(f"--tx-per-map {args.tx_per_map}: at most 80 (RadioMapSeer's count)")
    return SynthSettings(
        style=style,
        grid=args.grid,
        max_depth=args.max_depth,
        samples_per_src=args.samples_per_src,
        tx_per_map=1 if getattr(args, "sites", None) is not None else args.tx_per_map,
        frequency=args.frequency,
        building_height=args.building_height,
        height_jitter=args.height_jitter,
        gain_db_range=(lo, hi),
        rx_per_call=args.rx_per_call,
        paths_per_rx=args.paths_per_rx,
    )


def run(args: argparse.Namespace) -> int:
    """`irt4-data synth`: generate, then print seconds per map."""
    settings = settings_from_args(args)
    cities = record = None
    maps = args.maps
    if settings.style == FOOTPRINTS:
        cities, record, site_count = own_city_maps(args)
        if site_count is not None:
            maps = maps or site_count - args.start_id
            if args.start_id + maps > site_count:
                raise InputError(
                    f"--start-id {args.start_id} --maps {maps}: {args.sites} has {site_count} sites"
                )
    if maps is None:
        raise InputError("--maps N is needed (the number of maps to generate)")
    map_ids = shard_ids(list(range(args.start_id, args.start_id + maps)), args.shard)
    report = generate(
        args.out,
        map_ids,
        settings,
        args.seed,
        workers=args.workers,
        progress=not args.no_progress,
        cities=cities,
        footprints=record,
    )
    done = report["generated"]
    line = f"{args.out}: {done} maps generated, {report['skipped']} already there"
    if done:
        wall, cpu = np.mean(report["map_s"], axis=0)
        line += (
            f"; {wall:.1f} s per map ({cpu:.1f} CPU-s; {report['wall_s'] / done:.1f} s per map of total wall "
            f"time; grid {settings.grid}, workers {args.workers}, {os.cpu_count()} cores)"
        )
    print(line)
    return 0


def own_city_maps(args: argparse.Namespace):
    """(the City maker, the root's footprints record, the number of sites or None) of --footprints."""
    from irt4.geo.footprints import read_footprints
    from irt4.geo.own_city import FootprintCities
    from irt4.geo.sites import read_sites

    footprints = read_footprints(args.footprints, args.height_attribute, args.layer)
    sites = None if args.sites is None else read_sites(args.sites, footprints.file_crs, footprints.crs)
    cities = FootprintCities(footprints, sites)
    return cities, cities.describe(args.sites), None if sites is None else len(sites)
