import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from irt4.data.city import random_city, random_transmitter
from irt4.data.condition import log_distance_field, third_channel
from irt4.data.radiomapseer import RadioMapSeer
from irt4.errors import InputError

TESTS = Path(__file__).parent


def save_grey(pixels: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8), mode="L").save(path)


def write_root(
    root: Path, map_ids=(1, 2, 3, 4, 5), n_tx: int = 2, simulation: str = "IRT4", seed: int = 0
) -> dict:
    """A tiny consistent RadioMapSeer-layout root: buildings = 255, one 255 pixel per antenna PNG,
    gain falling with distance and 0 inside buildings, antenna/{m}.json as [x, y] = [col, row].
    Returns {(m, k): (row, col)}."""
    rng = np.random.default_rng(seed)
    sites = {}
    for m in map_ids:
        buildings = random_city(256, rng)
        save_grey(buildings * 255, root / "png" / "buildings_complete" / f"{m}.png")
        save_grey(np.rot90(buildings) * 255, root / "png" / "cars" / f"{m}.png")
        positions = []
        for k in range(n_tx):
            row, col = random_transmitter(buildings, rng)
            sites[m, k] = (row, col)
            positions.append([col, row])
            antenna = np.zeros((256, 256))
            antenna[row, col] = 255
            save_grey(antenna, root / "png" / "antennas" / f"{m}_{k}.png")
            rows, cols = np.mgrid[:256, :256]
            gain = np.clip(
                255 - 1.2 * np.hypot(rows - row, cols - col) + rng.integers(0, 3, (256, 256)), 0, 255
            )
            save_grey(gain * (buildings == 0), root / "gain" / simulation / f"{m}_{k}.png")
        (root / "antenna").mkdir(exist_ok=True)
        (root / "antenna" / f"{m}.json").write_text(json.dumps(positions))
    return sites


@pytest.fixture
def root(tmp_path):
    write_root(tmp_path / "root")
    return tmp_path / "root"


def test_item_shapes_and_ranges(root):
    dataset = RadioMapSeer(root, split="all")
    assert len(dataset) == 10 and dataset.split_scheme == "generated" and dataset.skipped == 0
    item = dataset[3]
    assert item["image"].shape == (1, 256, 256) and item["cond"].shape == (3, 256, 256)
    assert item["gain"].shape == (1, 256, 256) and item["tx_rowcol"].shape == (2,)
    assert item["image"].dtype == item["cond"].dtype == item["gain"].dtype == torch.float32
    for key, (lo, hi) in {"image": (-1, 1), "cond": (-1, 1), "gain": (0, 1)}.items():
        assert lo <= item[key].min() < item[key].max() <= hi, key
    assert (item["map_id"], item["tx_index"]) == dataset.samples[3]


def test_target_is_gain_over_255_in_minus_one_one_and_gain_is_disk_pixels_over_255(root):
    item = RadioMapSeer(root, split="all")[0]
    pixels = np.asarray(Image.open(root / "gain" / "IRT4" / "1_0.png"), dtype=np.float32)
    torch.testing.assert_close(item["gain"][0], torch.from_numpy(pixels / 255))
    torch.testing.assert_close(item["image"][0], torch.from_numpy(pixels / 255 * 2 - 1))


def test_target_divisor_256_reproduces_the_reference_quirk(root):
    item = RadioMapSeer(root, split="all", target_divisor=256)[0]
    pixels = np.asarray(Image.open(root / "gain" / "IRT4" / "1_0.png"), dtype=np.float32)
    torch.testing.assert_close(item["image"][0], torch.from_numpy(pixels / 256 * 2 - 1))
    torch.testing.assert_close(item["gain"][0], torch.from_numpy(pixels / 255))  # metrics stay / 255


def test_cond_channels_are_buildings_transmitter_buildings(root):
    dataset = RadioMapSeer(root, split="all")
    item = dataset[1]
    buildings = np.asarray(Image.open(root / "png" / "buildings_complete" / "1.png"), dtype=np.float32) / 255
    antenna = np.asarray(Image.open(root / "png" / "antennas" / "1_1.png"), dtype=np.float32) / 255
    torch.testing.assert_close(item["cond"][0], torch.from_numpy(buildings * 2 - 1))
    torch.testing.assert_close(item["cond"][1], torch.from_numpy(antenna * 2 - 1))
    torch.testing.assert_close(item["cond"][2], item["cond"][0])


def test_cars_simulation_cond_is_buildings_transmitter_cars(tmp_path):
    write_root(tmp_path, map_ids=(1, 2), simulation="carsIRT4")
    item = RadioMapSeer(tmp_path, split="all", simulation="carsIRT4")[0]
    cars = np.asarray(Image.open(tmp_path / "png" / "cars" / "1.png"), dtype=np.float32) / 255
    assert item["cond"].shape == (3, 256, 256)
    torch.testing.assert_close(item["cond"][2], torch.from_numpy(cars * 2 - 1))


def test_tx_rowcol_is_the_antenna_pixel_as_row_col(tmp_path):
    sites = write_root(tmp_path)
    dataset = RadioMapSeer(tmp_path, split="all")
    for index in (0, 5, 9):
        item = dataset[index]
        assert tuple(item["tx_rowcol"].tolist()) == sites[item["map_id"], item["tx_index"]]


def test_antenna_json_x_y_is_converted_to_row_col_when_there_are_no_antenna_pngs(tmp_path):
    sites = write_root(tmp_path)
    with_pngs = RadioMapSeer(tmp_path, split="all")[4]
    for path in (tmp_path / "png" / "antennas").iterdir():
        path.unlink()
    (tmp_path / "png" / "antennas").rmdir()
    item = RadioMapSeer(tmp_path, split="all")[4]
    assert tuple(item["tx_rowcol"].tolist()) == sites[item["map_id"], item["tx_index"]]
    torch.testing.assert_close(item["cond"], with_pngs["cond"])


def test_resize_is_antialiased_bilinear_and_keeps_the_transmitter_peak(root):
    full = RadioMapSeer(root, split="all")[2]
    small = RadioMapSeer(root, split="all", image_size=64)[2]
    assert small["image"].shape == (1, 64, 64) and small["cond"].shape == (3, 64, 64)
    assert small["gain"].shape == (1, 256, 256)
    expected = F.interpolate(full["image"][None], size=(64, 64), mode="bilinear", antialias=True)[0]
    torch.testing.assert_close(small["image"], expected)
    assert small["cond"][1].max() == 1  # a one-pixel transmitter would otherwise fade to ~1/16
    big = RadioMapSeer(root, split="all", image_size=320)[2]
    assert big["image"].shape == (1, 320, 320) and big["cond"].shape == (3, 320, 320)
    assert -1 <= big["cond"].min() and big["cond"].max() <= 1


def test_generated_root_splits_by_map(tmp_path):
    write_root(tmp_path, map_ids=range(10, 20), n_tx=1)
    parts = [RadioMapSeer(tmp_path, split=s) for s in ("train", "val", "test")]
    maps = [{m for m, _ in part.samples} for part in parts]
    assert [len(m) for m in maps] == [8, 1, 1]
    assert set.union(*maps) == set(range(10, 20)) and not maps[0] & maps[1] and not maps[0] & maps[2]


def test_generated_root_reads_only_the_transmitters_whose_gain_exists(root):
    (root / "gain" / "IRT4" / "3_1.png").unlink()
    assert (3, 1) not in RadioMapSeer(root, split="all").samples


def test_radiomapseer_scheme_on_a_generated_root_says_what_to_use(root):
    with pytest.raises(InputError, match=r"buildings_complete/\d+\.png: missing.*split_scheme 'auto'"):
        RadioMapSeer(root, split="test", split_scheme="radiounet")


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda r: _rmtree(r / "gain" / "IRT4"), r"gain/IRT4: missing folder"),
        (lambda r: (r / "gain" / "IRT4" / "2_1.png").unlink(), None),
        (
            lambda r: (r / "png" / "buildings_complete" / "2.png").unlink(),
            r"buildings_complete/2\.png: missing",
        ),
        (lambda r: _truncate(r / "png" / "antennas" / "2_1.png"), r"antennas/2_1\.png: truncated"),
        (lambda r: _resave(r / "gain" / "IRT4" / "2_1.png", size=(255, 256)), r"2_1\.png: is 255x256"),
        (lambda r: _resave(r / "gain" / "IRT4" / "2_1.png", mode="RGB"), r"2_1\.png: has mode RGB"),
        (
            lambda r: _resave(r / "png" / "buildings_complete" / "2.png", mode="I;16"),
            r"2\.png: has mode I;16",
        ),
    ],
    ids=["missing-folder", "missing-gain", "missing-buildings", "truncated", "wrong-size", "rgb", "16-bit"],
)
def test_bad_root_raises_input_error_naming_the_file(root, damage, match):
    damage(root)
    if match is None:  # a generated root has only the transmitters present: a missing gain is no error
        assert (2, 1) not in RadioMapSeer(root, split="all").samples
        return
    with pytest.raises(InputError, match=match):
        RadioMapSeer(root, split="all")


def test_missing_gain_on_a_radiomapseer_scheme_is_an_error(root):
    (root / "gain" / "IRT4" / "2_1.png").unlink()
    with pytest.raises(InputError, match=r"gain/IRT4/2_1\.png: missing"):
        RadioMapSeer(root, split="all", split_scheme="radiounet", map_ids=[1, 2])


def test_empty_root_and_missing_root_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="no such folder"):
        RadioMapSeer(tmp_path / "nowhere")
    for folder in ("png/buildings_complete", "png/antennas", "gain/IRT4"):
        (tmp_path / folder).mkdir(parents=True)
    with pytest.raises(InputError, match="empty root"):
        RadioMapSeer(tmp_path)


def test_inverted_building_polarity_is_refused_and_accepted_when_declared(root):
    for path in (root / "png" / "buildings_complete").iterdir():
        _resave(path, invert=True)
    with pytest.raises(InputError, match=r"buildings_complete/1\.png: building polarity.*looks inverted"):
        RadioMapSeer(root, split="all")
    item = RadioMapSeer(root, split="all", building_value=0)[0]
    buildings = np.asarray(Image.open(root / "png" / "buildings_complete" / "1.png"), dtype=np.float32) / 255
    torch.testing.assert_close(item["cond"][0], torch.from_numpy((1 - buildings) * 2 - 1))


def test_skip_bad_logs_each_bad_sample_and_counts_them(root, caplog):
    _truncate(root / "gain" / "IRT4" / "2_0.png")
    _resave(root / "png" / "buildings_complete" / "4.png", mode="RGB")
    with caplog.at_level(logging.WARNING, logger="irt4"):
        dataset = RadioMapSeer(root, split="all", skip_bad=True)
    assert dataset.skipped == 3 and len(dataset) == 7
    assert {(4, 0), (4, 1), (2, 0)}.isdisjoint(dataset.samples)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("skipping map" in m for m in messages) == 3
    assert any("skipped 3 bad samples" in m for m in messages)


def test_full_validation_decodes_and_finds_an_antenna_without_transmitter(root):
    dataset = RadioMapSeer(root, split="all")
    assert dataset.validate(full=True) == 0
    save_grey(np.zeros((256, 256)), root / "png" / "antennas" / "5_1.png")
    with pytest.raises(InputError, match=r"antennas/5_1\.png: no transmitter pixel"):
        dataset.validate(full=True)


def test_full_validation_finds_corrupt_pixel_data_the_cheap_check_cannot_see(root):
    corrupt_middle(root / "gain" / "IRT4" / "5_1.png")  # map 5: past the polarity check
    dataset = RadioMapSeer(root, split="all")
    with pytest.raises(InputError, match=r"gain/IRT4/5_1\.png: unreadable"):
        dataset.validate(full=True)


def test_dataset_feeds_a_dataloader_with_workers(root):
    loader = torch.utils.data.DataLoader(RadioMapSeer(root, split="all"), batch_size=4, num_workers=2)
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 1, 256, 256) and batch["tx_rowcol"].shape == (4, 2)


def test_loader_reads_the_committed_generated_dataset(committed_dataset):
    dataset = RadioMapSeer(committed_dataset, split="all")
    assert len(dataset) > 0 and dataset.skipped == 0
    item = dataset[len(dataset) - 1]
    assert item["image"].shape == (1, 256, 256) and item["cond"].shape == (3, 256, 256)
    assert -1 <= item["image"].min() and item["image"].max() <= 1


def _rmtree(path: Path) -> None:
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def corrupt_middle(path: Path) -> None:
    """Flip 40 bytes in the middle of the pixel data: header and IEND intact, decoding fails."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 40] = bytes(255 - v for v in data[middle : middle + 40])
    path.write_bytes(bytes(data))


def _resave(path: Path, size=None, mode=None, invert=False) -> None:
    image = Image.open(path)
    image.load()
    if invert:
        image = Image.fromarray(255 - np.asarray(image))
    if size is not None:
        image = image.resize(size)
    if mode is not None:
        image = image.convert(mode)
    image.save(path)


def test_log_distance_field_is_one_at_the_transmitter_and_falls_with_distance_to_zero_at_the_diagonal():
    field = log_distance_field((256, 256), 40, 200)
    assert field.dtype == np.float32 and field.shape == (256, 256)
    assert field[40, 200] == 1 and field.min() >= 0 and field.max() <= 1
    distance = np.hypot(*np.mgrid[:256, :256] - np.array([40, 200])[:, None, None])
    order = np.argsort(distance, axis=None)
    assert np.all(np.diff(field.flatten()[order]) <= 1e-6)  # never rises with distance
    corner = log_distance_field((256, 256), 0, 0)
    np.testing.assert_allclose(
        corner[255, 255], 1 - np.log1p(np.hypot(255, 255)) / np.log1p(np.hypot(256, 256))
    )
    assert third_channel(np.ones((4, 4)), 1, 2, "none").sum() == 16


def test_tx_field_puts_the_log_distance_field_third_and_leaves_buildings_and_transmitter(root):
    plain = RadioMapSeer(root, split="all", image_size=64)[3]
    item = RadioMapSeer(
        root, split="all", image_size=64, condition=("buildings", "transmitter", "log_distance")
    )[3]
    torch.testing.assert_close(item["cond"][:2], plain["cond"][:2])
    row, col = item["tx_rowcol"].tolist()
    field = torch.from_numpy(log_distance_field((256, 256), row, col))
    expected = F.interpolate(field[None, None], size=(64, 64), mode="bilinear", antialias=True)[0, 0]
    torch.testing.assert_close(item["cond"][2], expected * 2 - 1)
    # the field's peak sits on the transmitter's pixel at the model's resolution
    peak = divmod(int(item["cond"][2].argmax()), 64)
    assert abs(peak[0] - row / 4) <= 1 and abs(peak[1] - col / 4) <= 1


def test_condition_is_checked(root, tmp_path):
    with pytest.raises(InputError, match="unknown channel.*gaussian"):
        RadioMapSeer(root, split="all", condition=("buildings", "gaussian"))
    write_root(tmp_path / "cars", map_ids=(1,), simulation="carsIRT4")
    with pytest.raises(InputError, match="puts the cars map third"):
        RadioMapSeer(
            tmp_path / "cars",
            split="all",
            simulation="carsIRT4",
            condition=("buildings", "transmitter", "walls"),
        )
