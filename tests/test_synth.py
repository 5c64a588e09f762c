import argparse
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from irt4.cli.data import main
from irt4.data import footprints, synth
from irt4.data.city import CityLayout, random_city, rasterize
from irt4.data.city.materials import BUILDING_MATERIALS
from irt4.data.gainpack import receiver_pixels
from irt4.data.scene import (
    FACES_PER_BOX,
    VERTICES_PER_BOX,
    boxes_mesh,
    face_normals,
    footprint_boxes,
    ground_mesh,
    pixel_to_world,
    transmitter_sites,
)
from irt4.errors import InputError

L_SHAPE_AND_BOX = np.zeros((32, 32), dtype=np.uint8)
L_SHAPE_AND_BOX[4:12, 4:10] = 1  # main wing
L_SHAPE_AND_BOX[4:7, 10:16] = 1  # side wing: an L
L_SHAPE_AND_BOX[20:28, 18:30] = 1  # a plain box


def rasterize_boxes(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    counts = np.zeros(shape, dtype=np.int64)
    for row0, col0, row1, col1 in boxes:
        counts[row0:row1, col0:col1] += 1
    return counts


def test_footprint_boxes_partition_the_mask_exactly():
    for seed in range(3):
        mask = random_city(256, np.random.default_rng(seed))
        boxes = footprint_boxes(mask)
        np.testing.assert_array_equal(
            rasterize_boxes(boxes, mask.shape), mask.astype(np.int64)
        )  # no overlap, no gap
    assert len(footprint_boxes(L_SHAPE_AND_BOX)) == 3  # the L becomes two boxes


def test_box_mesh_has_8_shared_vertices_and_10_faces_per_box_within_the_footprint_bounds():
    boxes = footprint_boxes(L_SHAPE_AND_BOX)
    vertices, faces = boxes_mesh(boxes, np.array([25.0, 25.0, 10.0]))
    assert vertices.shape == (VERTICES_PER_BOX * 3, 3) and faces.shape == (FACES_PER_BOX * 3, 3)
    assert vertices.dtype == np.float32 and faces.dtype == np.uint32
    assert faces.max() == len(vertices) - 1 and len(np.unique(faces)) == len(vertices)  # all vertices shared
    # x spans the building columns, y the rows, z the ground to the roof
    np.testing.assert_array_equal(vertices.min(axis=0), [4, 4, 0])
    np.testing.assert_array_equal(vertices.max(axis=0), [30, 28, 25])
    np.testing.assert_array_equal(vertices[16:].min(axis=0), [18, 20, 0])  # the plain box, 10 m high
    np.testing.assert_array_equal(vertices[16:].max(axis=0), [30, 28, 10])


def test_box_mesh_faces_point_outward_and_no_floor():
    boxes = np.array([[3, 5, 11, 8], [0, 0, 1, 1]])
    vertices, faces = boxes_mesh(boxes, 7.0)
    normals = face_normals(vertices, faces)
    centroids = vertices[faces].mean(axis=1)
    box_of_face = np.arange(len(faces)) // FACES_PER_BOX
    box_centres = vertices.reshape(-1, VERTICES_PER_BOX, 3).mean(axis=1)[box_of_face]
    assert (np.einsum("ij,ij->i", normals, centroids - box_centres) > 0).all()
    assert (normals[:, 2] > -0.5).all()  # nothing faces down: the floor is left out
    np.testing.assert_allclose(np.abs(normals).max(axis=1), 1.0)  # axis-aligned faces only


def test_box_mesh_winding_is_consistent_and_closed_except_the_floor():
    vertices, faces = boxes_mesh(np.array([[0, 0, 4, 6]]), 3.0)
    directed = {(int(a), int(b)) for tri in faces for a, b in zip(tri, np.roll(tri, -1))}
    assert len(directed) == 3 * len(faces)  # no directed edge twice: consistent orientation
    unmatched = {(a, b) for a, b in directed if (b, a) not in directed}
    assert len(unmatched) == 4 and all(vertices[a][2] == vertices[b][2] == 0 for a, b in unmatched)


def test_ground_faces_up_over_the_tile():
    vertices, faces = ground_mesh(256)
    np.testing.assert_allclose(face_normals(vertices, faces), [[0, 0, 1]] * 2)
    np.testing.assert_array_equal(vertices.min(axis=0), [0, 0, 0])
    np.testing.assert_array_equal(vertices.max(axis=0), [256, 256, 0])


def test_pixel_centres_map_to_world_x_col_and_y_row_and_lie_inside_their_building_box():
    np.testing.assert_array_equal(pixel_to_world(np.array([3]), np.array([7]), 1.5), [[7.5, 3.5, 1.5]])
    mask = random_city(64, np.random.default_rng(1), block=20, street=4)
    rows, cols = np.indices(mask.shape)
    points = pixel_to_world(rows, cols, 0.0)
    inside = np.zeros(len(points), dtype=bool)
    for row0, col0, row1, col1 in footprint_boxes(mask):
        x, y = points[:, 0], points[:, 1]
        inside |= (col0 <= x) & (x <= col1) & (row0 <= y) & (y <= row1)
    np.testing.assert_array_equal(inside, mask.ravel() > 0)


def test_receivers_sit_at_the_pixel_holding_each_cell_centre():
    np.testing.assert_array_equal(receiver_pixels(256, 64), np.arange(2, 256, 4))
    np.testing.assert_array_equal(receiver_pixels(256, 256), np.arange(256))
    np.testing.assert_array_equal(receiver_pixels(256, 3), [42, 128, 213])


def test_gain_db_to_grey_follows_radiomapseer_mapping_with_truncation_and_clipping():
    lo, hi = -147.0, -47.0
    db = np.array([lo, hi, lo + 100 * 100 / 255, lo + 100 * 37 / 255, -200.0, -20.0, -np.inf, np.nan, np.inf])
    np.testing.assert_array_equal(synth.gain_db_to_grey(db, (lo, hi)), [0, 255, 100, 37, 0, 255, 0, 0, 255])
    assert synth.gain_db_to_grey(np.array([-186.0]), (-186.0, -47.0))[0] == 0  # the range is a parameter


def test_upsample_db_keeps_receiver_values_and_is_linear_in_db_between_them():
    rx = receiver_pixels(16, 4)  # 2, 6, 10, 14
    grid_db = np.arange(16, dtype=np.float64).reshape(4, 4) * -5.0 - 60.0
    full = synth.upsample_db(grid_db, rx, 16, floor_db=-147.0)
    np.testing.assert_allclose(full[np.ix_(rx, rx)], grid_db)
    np.testing.assert_allclose(full[2, 4], (grid_db[0, 0] + grid_db[0, 1]) / 2)  # halfway in dB
    np.testing.assert_allclose(full[0, 0], grid_db[0, 0])  # constant beyond the outer receivers


def test_upsample_db_fills_building_cells_from_neighbours_and_floors_missing_paths():
    grid_db = np.full((3, 3), -80.0)
    grid_db[1, 1] = np.nan  # a building cell: no receiver
    grid_db[0, 0] = -np.inf  # no path
    filled = synth.fill_indoor_cells(np.maximum(grid_db, -147.0))
    assert filled[1, 1] == pytest.approx((7 * -80.0 - 147.0) / 8)
    full = synth.upsample_db(grid_db, np.array([1, 4, 7]), 9, floor_db=-147.0)
    assert np.isfinite(full).all() and full.min() == -147.0


def test_transmitters_are_distinct_street_pixels_in_the_window_at_least_3m_from_walls():
    for seed in range(4):
        rng = np.random.default_rng(seed)
        mask = random_city(256, rng)
        sites = transmitter_sites(mask, 5, rng)
        assert len(set(sites)) == 5
        building_rows, building_cols = np.nonzero(mask)
        for row, col in sites:
            assert 53 <= row <= 202 and 53 <= col <= 202 and mask[row, col] == 0
            # distance from the pixel centre to the nearest building pixel (a unit square)
            dx = np.maximum(np.abs(building_cols + 0.5 - (col + 0.5)) - 0.5, 0)
            dy = np.maximum(np.abs(building_rows + 0.5 - (row + 0.5)) - 0.5, 0)
            assert np.hypot(dx, dy).min() >= 3.0


@pytest.mark.parametrize("style", ["mixed", "boxes"])
def test_map_content_depends_only_on_seed_and_map_id(style):
    settings = synth.SynthSettings(style=style)
    a, again = synth.make_city(settings, 7, 3), synth.make_city(settings, 7, 3)
    np.testing.assert_array_equal(a.buildings, again.buildings)
    np.testing.assert_array_equal(a.heights, again.heights)
    assert a.transmitters == again.transmitters and a.solver_seed == again.solver_seed
    for other in (synth.make_city(settings, 7, 4), synth.make_city(settings, 8, 3)):
        assert not np.array_equal(a.buildings, other.buildings) and a.transmitters != other.transmitters


def test_boxes_style_keeps_one_height_unless_jittered():
    a = synth.make_city(synth.SynthSettings(style=synth.BOXES), 7, 3)
    jittered = synth.make_city(synth.SynthSettings(style=synth.BOXES, height_jitter=True), 7, 3)
    np.testing.assert_array_equal(jittered.buildings, a.buildings)
    assert (a.heights == 25.0).all() and jittered.heights.std() > 1.0


def fake_map(settings: synth.SynthSettings, map_id: int = 4, seed: int = 0):
    city = synth.make_city(settings, seed, map_id)
    k, g = settings.tx_per_map, settings.grid
    return city, np.full((k, 256, 256), 90, np.uint8), np.full((k, g, g), -100.0)


def test_finished_map_detection_ignores_partial_scratch_files(tmp_path):
    settings = synth.SynthSettings(grid=8)
    assert not synth.is_finished(tmp_path, 4, 2)
    for path in synth.outputs(tmp_path, 4, 2):  # a complete map, but only in the scratch folder
        scratch = tmp_path / synth.PARTIAL / "4" / path.relative_to(tmp_path)
        scratch.parent.mkdir(parents=True, exist_ok=True)
        scratch.write_bytes(b"x")
    assert not synth.is_finished(tmp_path, 4, 2)
    synth.write_map(tmp_path, 4, *fake_map(settings))
    assert synth.is_finished(tmp_path, 4, 2) and not (tmp_path / synth.PARTIAL).exists()
    synth.outputs(tmp_path, 4, 2)[-1].unlink()  # one gain map missing
    assert not synth.is_finished(tmp_path, 4, 2)


def test_an_interrupted_map_write_does_not_look_finished(tmp_path, monkeypatch):
    settings = synth.SynthSettings(grid=8)
    renames = []

    def crash_on_the_last_rename(src, dst):
        if len(renames) == len(synth.outputs(tmp_path, 4, 2)) - 1:
            raise KeyboardInterrupt
        renames.append(dst)
        os.rename(src, dst)

    monkeypatch.setattr(synth.os, "replace", crash_on_the_last_rename)
    with pytest.raises(KeyboardInterrupt):
        synth.write_map(tmp_path, 4, *fake_map(settings))
    assert renames and not synth.is_finished(tmp_path, 4, 2)
    monkeypatch.undo()
    synth.write_map(tmp_path, 4, *fake_map(settings))  # the rerun replaces the partial map
    assert synth.is_finished(tmp_path, 4, 2)


def test_written_map_has_radiomapseer_layout_and_values(tmp_path):
    settings = synth.SynthSettings(grid=8)
    city, grey, gain_db = fake_map(settings)
    synth.write_map(tmp_path, 4, city, grey, gain_db)
    with Image.open(tmp_path / "png" / "buildings_complete" / "4.png") as image:
        assert image.mode == "L" and image.size == (256, 256)
        np.testing.assert_array_equal(np.asarray(image), 255 * city.buildings)
    (row, col), _ = city.transmitters
    assert json.loads((tmp_path / "antenna" / "4.json").read_text())[0] == [col, row]  # [x, y]
    with Image.open(tmp_path / "png" / "antennas" / "4_0.png") as image:
        antenna = np.asarray(image)
    assert antenna[row, col] == 255 and antenna.sum() == 255
    raw = np.load(tmp_path / "gain_db" / "IRT4" / "4_1.npy")
    assert raw.dtype == np.float16 and raw.shape == (8, 8)


def test_resuming_a_root_with_other_settings_is_an_error(tmp_path):
    synth.check_metadata(tmp_path, synth.SynthSettings(), seed=1)
    metadata = json.loads((tmp_path / synth.METADATA).read_text())
    assert (
        metadata["seed"] == 1 and metadata["settings"]["grid"] == 64 and "sionna-rt" in metadata["versions"]
    )
    synth.check_metadata(tmp_path, synth.SynthSettings(), seed=1)  # same settings: fine
    with pytest.raises(InputError, match="generated with settings"):
        synth.check_metadata(tmp_path, synth.SynthSettings(grid=32), seed=1)
    with pytest.raises(InputError, match="generated with seed 1"):
        synth.check_metadata(tmp_path, synth.SynthSettings(), seed=2)


@pytest.mark.parametrize(
    "options, message",
    [
        (["--gain-db-range", "-47", "-147"], "--gain-db-range: LO -47 must be below HI -147"),
        (["--grid", "300"], "--grid 300: at most 256"),
        (["--start-id", "-1"], "--start-id -1: must be >= 0"),
        (["--building-height", "1"], "--building-height 1: must exceed"),
        (["--style", "gird"], "unknown style 'gird'"),
        (["--style", "grid=0"], "must be a positive number"),
    ],
)
def test_bad_synth_options_exit_2_with_one_line(tmp_path, capsys, options, message):
    assert main(["synth", "--out", str(tmp_path), "--maps", "1", *options]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("option", [["--maps", "0"], ["--maps", "1.5"], ["--grid", "x"], ["--workers", "-2"]])
def test_malformed_synth_numbers_are_rejected_by_the_parser(tmp_path, capsys, option):
    args = ["synth", "--out", str(tmp_path), "--maps", "1", *option]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2 and "irt4-data synth: error: argument" in capsys.readouterr().err


def test_synth_help_explains_every_option(capsys):
    parser = argparse.ArgumentParser()
    synth.add_arguments(parser)
    options = [action for action in parser._actions if action.dest != "help"]
    assert len(options) >= 15 and all(action.help and len(action.help) > 10 for action in options)
    with pytest.raises(SystemExit):
        main(["synth", "--help"])
    out = capsys.readouterr().out
    for option in ("--out", "--maps", "--start-id", "--seed", "--grid", "--workers", "--max-depth"):
        assert option in out
    for option in (
        "--samples-per-src",
        "--tx-per-map",
        "--frequency",
        "--building-height",
        "--height-jitter",
    ):
        assert option in out


def test_importing_synth_does_not_import_the_ray_tracer():
    code = "import sys, irt4.cli.data; print(sorted({'sionna', 'mitsuba', 'drjit'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def sim_missing() -> str | None:
    from irt4.data.raytrace import missing_backend_reason

    return missing_backend_reason()


@pytest.mark.sim
@pytest.mark.slow
def test_synth_traces_a_tiny_city_into_a_root_the_loader_reads(tmp_path):
    reason = sim_missing()
    if reason:
        pytest.skip(reason)
    root = tmp_path / "root"
    command = [sys.executable, "-m", "irt4.cli.data", "synth", "--out", str(root), "--maps", "1"]
    command += [
        "--seed",
        "3",
        "--grid",
        "16",
        "--max-depth",
        "2",
        "--samples-per-src",
        "1e4",
        "--no-progress",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "1 maps generated, 0 already there" in result.stdout and "s per map" in result.stdout
    assert synth.is_finished(root, 0, 2)
    with Image.open(root / "png" / "buildings_complete" / "0.png") as image:
        buildings = np.asarray(image) == 255
    for k, (col, row) in enumerate(json.loads((root / "antenna" / "0.json").read_text())):
        with Image.open(root / "gain" / "IRT4" / f"0_{k}.png") as image:
            assert image.mode == "L" and image.size == (256, 256)
            gain = np.asarray(image).astype(np.float64)
        assert (gain[buildings] == 0).all()
        rows, cols = np.indices(gain.shape)
        distance = np.hypot(rows - row, cols - col)
        near = gain[(distance < 10) & ~buildings].mean()
        far = gain[(distance > 80) & ~buildings].mean()
        assert near > 150 and near > far + 40, (near, far)  # ~-70 dB next to the transmitter
        raw = np.load(root / "gain_db" / "IRT4" / f"0_{k}.npy")
        assert raw.shape == (16, 16) and np.isfinite(raw).any()
    again = subprocess.run(command, capture_output=True, text=True, timeout=900)  # resume: nothing left
    assert again.returncode == 0 and "0 maps generated, 1 already there" in again.stdout

    from irt4.data.radiomapseer import RadioMapSeer

    dataset = RadioMapSeer(root, split="all", image_size=64)
    assert len(dataset) == 2
    item = dataset[0]
    assert item["image"].shape == (1, 64, 64) and item["gain"].shape == (1, 256, 256)
    assert item["gain"].max() > 0.5 and -1 <= item["image"].min() < item["image"].max() <= 1


def test_committed_data_set_loads_and_matches_its_metadata(committed_dataset):
    from irt4.data.radiomapseer import RadioMapSeer

    root = committed_dataset
    metadata = json.loads((root / synth.METADATA).read_text())
    maps = sorted(int(p.stem) for p in (root / "png" / "buildings_complete").glob("*.png"))
    tx_per_map = metadata["settings"]["tx_per_map"]
    assert maps and all(synth.is_finished(root, m, tx_per_map) for m in maps)
    dataset = RadioMapSeer(root, split="all", image_size=64)
    assert len(dataset) == len(maps) * tx_per_map
    # the buildings and transmitters are those the seed gives: regenerating them needs no ray tracer
    settings = synth.settings_from_metadata(synth.read_metadata(root))
    city = synth.make_city(settings, metadata["seed"], maps[0])
    with Image.open(root / "png" / "buildings_complete" / f"{maps[0]}.png") as image:
        np.testing.assert_array_equal(np.asarray(image), 255 * city.buildings)
    positions = json.loads((root / "antenna" / f"{maps[0]}.json").read_text())
    assert positions == [[col, row] for row, col in city.transmitters]


@pytest.mark.parametrize("style", ["grid", "perimeter", "oldtown", "detached", "industrial"])
def test_each_style_makes_maps_with_transmitters_on_open_outdoor_pixels(style):
    settings = synth.SynthSettings(style=style)
    for map_id in range(3):
        city = synth.make_city(settings, 11, map_id)
        assert city.layout.style == style and city.boxes is None
        np.testing.assert_array_equal(city.buildings, rasterize(city.layout.polygons))
        open_space = synth.open_to_the_border(city.buildings == 0)
        for row, col in city.transmitters:
            assert 53 <= row <= 202 and 53 <= col <= 202
            assert city.buildings[row, col] == 0 and open_space[row, col]  # not in a closed courtyard
        meshes = city.meshes()
        assert set(meshes) <= set(BUILDING_MATERIALS)
        assert sum(len(faces) for _, faces in meshes.values()) > 0


def test_a_closed_courtyard_is_not_open_to_the_border():
    outdoor = np.ones((9, 9), dtype=bool)
    outdoor[2:7, 2:7] = False  # a building ...
    outdoor[4, 4] = True  # ... around a one-pixel courtyard
    open_space = synth.open_to_the_border(outdoor)
    assert not open_space[4, 4] and open_space[0, 0] and open_space[8, 4]


def test_shards_partition_the_map_ids():
    ids = list(range(5, 17))
    shards = [synth.shard_ids(ids, (i, 3)) for i in range(3)]
    assert sorted(sum(shards, [])) == ids and all(m % 3 == i for i, s in enumerate(shards) for m in s)
    with pytest.raises(argparse.ArgumentTypeError, match="0 <= I < N"):
        synth.parse_shard("3/3")
    with pytest.raises(argparse.ArgumentTypeError, match="is not I/N"):
        synth.parse_shard("1-3")


def test_a_root_written_before_styles_reads_as_the_boxes_style(tmp_path):
    synth.check_metadata(tmp_path, synth.SynthSettings(style=synth.BOXES), seed=1)
    metadata = json.loads((tmp_path / synth.METADATA).read_text())
    del metadata["settings"]["style"]  # as format version 1 wrote it
    (tmp_path / synth.METADATA).write_text(json.dumps(metadata))
    synth.check_metadata(tmp_path, synth.SynthSettings(style=synth.BOXES), seed=1)
    assert synth.settings_from_metadata(synth.read_metadata(tmp_path)).style == synth.BOXES
    with pytest.raises(InputError, match="generated with settings"):
        synth.check_metadata(tmp_path, synth.SynthSettings(), seed=1)


def test_written_styled_map_keeps_its_footprints(tmp_path):
    settings = synth.SynthSettings(grid=8)
    city, grey, gain_db = fake_map(settings)
    synth.write_map(tmp_path, 4, city, grey, gain_db)
    assert synth.is_finished(tmp_path, 4, 2, footprints=True)
    path = tmp_path / "footprints" / "4.json.gz"
    layout = CityLayout.from_json(footprints.read_footprints(path))
    np.testing.assert_array_equal(rasterize(layout.polygons), city.buildings)
    assert layout.materials == city.layout.materials
    # reproducible: no time stamp
    assert path.read_bytes() == footprints.footprints_bytes(city.layout.to_json())
    assert footprints.map_styles(tmp_path) == {4: city.layout.style}


def test_plain_json_footprints_of_an_earlier_root_still_count_and_merge_compressed(tmp_path):
    settings = synth.SynthSettings(grid=8)
    city, grey, gain_db = fake_map(settings)
    old, new = tmp_path / "old", tmp_path / "new"
    synth.check_metadata(old, settings, seed=0)
    synth.write_map(old, 4, city, grey, gain_db)
    compressed = old / "footprints" / "4.json.gz"
    plain = compressed.with_suffix("")
    plain.write_bytes(gzip.decompress(compressed.read_bytes()))
    compressed.unlink()
    assert synth.is_finished(old, 4, 2, footprints=True)
    assert footprints.map_styles(old) == {4: city.layout.style}
    assert synth.merge_roots([old], new)["copied"] == 1
    expected = footprints.footprints_bytes(city.layout.to_json())
    assert (new / "footprints" / "4.json.gz").read_bytes() == expected
    assert synth.merge_roots([old], new)["already_there"] == 1  # equal JSON counts as the same map


def test_training_and_scoring_import_without_the_geometry_libraries():
    """The device that trains or scores needs torch, not shapely/trimesh: those are for generating."""
    code = (
        "import sys\n"
        "for name in ('shapely', 'trimesh', 'mapbox_earcut', 'rasterio', 'pyproj'):\n"
        "    sys.modules[name] = None\n"
        "import irt4.train.stages, irt4.infer, irt4.demo, bench.ablation, bench.floors\n"
        "from irt4.data.footprints import map_styles\n"
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_damaged_footprints_file_is_named(tmp_path):
    (tmp_path / "footprints").mkdir()
    (tmp_path / "footprints" / "3.json.gz").write_bytes(b"not gzip")
    with pytest.raises(InputError, match="3.json.gz: not a footprints file"):
        footprints.map_styles(tmp_path)


def fake_root(root, settings, seed, map_ids):
    synth.check_metadata(root, settings, seed)
    for map_id in map_ids:
        city, grey, gain_db = fake_map(settings, map_id, seed)
        grey[:, city.buildings > 0] = 0  # as traced maps are: no gain inside buildings
        synth.write_map(root, map_id, city, grey, gain_db)


def test_merge_joins_shard_roots_and_refuses_other_data_sets(tmp_path, capsys):
    settings = synth.SynthSettings(grid=8)
    fake_root(tmp_path / "a", settings, 5, [0, 2])
    fake_root(tmp_path / "b", settings, 5, [1, 2])
    out = tmp_path / "all"
    assert main(["merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    assert "3 maps copied, 1 already there, 3 maps in all" in capsys.readouterr().out
    assert synth.finished_maps(out, settings) == [0, 1, 2] and not (out / synth.PARTIAL).exists()
    assert main(["check", str(out)]) == 0
    fake_root(tmp_path / "c", settings, 6, [3])  # another seed: another data set
    assert main(["merge", str(tmp_path / "c"), "--out", str(out)]) == 2
    assert "generated with seed 5" in capsys.readouterr().err
    other = tmp_path / "b" / "gain" / "IRT4" / "2_0.png"
    Image.fromarray(255 - np.asarray(Image.open(other))).save(other)
    assert main(["merge", str(tmp_path / "b"), "--out", str(out)]) == 2
    assert "map 2 transmitter 0 has other gains" in capsys.readouterr().err
    (tmp_path / "b" / "antenna" / "2.json").write_text("[[1, 1], [2, 2]]\n")
    assert main(["merge", str(tmp_path / "b"), "--out", str(out)]) == 2
    assert "differ: map 2 is not the same map" in capsys.readouterr().err


def test_padded_meshes_have_power_of_two_sizes_and_hide_the_padding_under_the_ground():
    from irt4.data.raytrace import MIN_PADDED, PAD_DEPTH, pad_mesh

    vertices, faces = boxes_mesh(footprint_boxes(random_city(256, np.random.default_rng(2))), 20.0)
    padded_v, padded_f = pad_mesh(vertices, faces)
    for count, padded in ((len(vertices), len(padded_v)), (len(faces), len(padded_f))):
        assert padded >= max(count, MIN_PADDED) and padded & (padded - 1) == 0
    np.testing.assert_array_equal(padded_v[: len(vertices)], vertices)
    np.testing.assert_array_equal(padded_f[: len(faces)], faces)
    extra = padded_f[len(faces) :]
    assert (padded_v[extra][..., 2] == -PAD_DEPTH).all() and len(np.unique(extra)) == extra.size
    assert (
        np.linalg.norm(np.cross(*(padded_v[extra[:, i]] - padded_v[extra[:, 0]] for i in (1, 2))), axis=1) > 0
    ).all()
    empty_v, empty_f = pad_mesh(np.zeros((0, 3)), np.zeros((0, 3)))
    assert len(empty_f) == MIN_PADDED and len(empty_v) >= 3 * MIN_PADDED


SCENE_PROBE = """
import json, sys
import numpy as np
from irt4.data import synth
from irt4.data.raytrace import pin_libllvm
pin_libllvm()
import drjit as dr
import mitsuba as mi
dr.set_flag(dr.JitFlag.KernelHistory, True)
settings = synth.SynthSettings(style=sys.argv[1], grid=8, max_depth=2, samples_per_src=3000, paths_per_rx=64)
points = synth.pixel_to_world(np.array([60, 200, 128, 90]), np.array([60, 200, 100, 150]), 1.5)
out = {"raster_mismatch": [], "compiled": [], "same_as_fresh_scene": []}
for map_id in range(3):
    city = synth.make_city(settings, 4, map_id)
    tracer = synth.city_tracer(city, settings)
    # a vertical ray down onto each pixel centre: a building is hit exactly where the raster says so
    rows, cols = np.indices(city.buildings.shape)
    x, y = (cols.ravel() + 0.5).astype(np.float32), (rows.ravel() + 0.5).astype(np.float32)
    ray = mi.Ray3f(mi.Point3f(x, y, np.full_like(x, 500.0)), mi.Vector3f(0.0, 0.0, -1.0))
    hit = tracer.scene.mi_scene.ray_intersect(ray)
    above_ground = (hit.p.z.numpy() > 0.5) & hit.is_valid().numpy()
    out["raster_mismatch"].append(int((above_ground != (city.buildings.ravel() > 0)).sum()))
    dr.kernel_history()
    gain = tracer.path_gain_db(points)
    # the solver's big kernels compiled for this map (neither in memory nor in the disk cache)
    history = dr.kernel_history()
    compiled = [k for k in history if not (k.get("cache_hit") or k.get("cache_disk"))]
    out["compiled"].append(sum(1 for k in compiled if k.get("operation_count", 0) > 1000))
    fresh = synth.city_tracer(city, settings, keep_kernels=False).path_gain_db(points)
    out["same_as_fresh_scene"].append(bool(np.array_equal(gain, fresh)))
    dr.kernel_history()
print(json.dumps(out))
"""


@pytest.mark.sim
@pytest.mark.slow
def test_raster_equals_the_scene_and_later_maps_reuse_the_kernels_with_the_same_result(tmp_path):
    reason = sim_missing()
    if reason:
        pytest.skip(reason)
    env = {**os.environ, "HOME": str(tmp_path)}  # an empty Dr.Jit kernel cache (~/.drjit)
    result = subprocess.run(
        [sys.executable, "-c", SCENE_PROBE, "mixed"], capture_output=True, text=True, timeout=900, env=env
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["raster_mismatch"] == [0, 0, 0]
    # the geometry is swapped into the same scene: no compile after the first map, and the gains are
    # those of a scene built for the map alone
    assert out["compiled"][0] > 0 and out["compiled"][1:] == [0, 0], out
    assert out["same_as_fresh_scene"] == [True, True, True]


@pytest.mark.sim
@pytest.mark.slow
def test_shards_merged_equal_one_run_and_a_rerun_resumes(tmp_path):
    reason = sim_missing()
    if reason:
        pytest.skip(reason)
    tiny = ["--maps", "3", "--seed", "9", "--grid", "8", "--max-depth", "1", "--samples-per-src", "1000"]
    tiny += ["--paths-per-rx", "64", "--no-progress"]

    def synth_run(out, *extra):
        command = [sys.executable, "-m", "irt4.cli.data", "synth", "--out", str(out), *tiny, *extra]
        result = subprocess.run(command, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout

    assert "3 maps generated" in synth_run(tmp_path / "one")
    assert "0 maps generated, 3 already there" in synth_run(tmp_path / "one")
    assert "2 maps generated" in synth_run(tmp_path / "s0", "--shard", "0/2")
    assert "1 maps generated" in synth_run(tmp_path / "s1", "--shard", "1/2")
    assert main(["merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "all")]) == 0
    one = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    merged = sorted(p.relative_to(tmp_path / "all") for p in (tmp_path / "all").rglob("*") if p.is_file())
    assert one == merged
    for path in one:
        if path.name != synth.METADATA:
            assert (tmp_path / "one" / path).read_bytes() == (tmp_path / "all" / path).read_bytes(), path
