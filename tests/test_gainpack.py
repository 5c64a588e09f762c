"""Packed samples (irt4.data.gainpack): exact round trips, the loader and merge on packed roots, damage."""

import filecmp
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from irt4.cli.data import main
from irt4.data import gainpack, synth
from irt4.data.radiomapseer import RadioMapSeer
from irt4.errors import InputError

RANGE = (-147.0, -47.0)


@pytest.fixture
def plain_root(committed_dataset, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(committed_dataset, root)
    return root


def _files(root):
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


def _same_tree(one, other) -> bool:
    names = _files(one)
    if names != _files(other):
        return False
    _, mismatch, errors = filecmp.cmpfiles(one, other, names, shallow=False)
    return not mismatch and not errors


def test_the_grey_rendered_from_the_stored_raw_is_the_png_but_at_bin_edges(committed_dataset):
    """The generator rounds grey from its float64 raw and stores the raw as float16: rendering from the
    stored raw lands a few pixels one grey level off, which is what the pack's `fix` carries."""
    changed = total = 0
    for map_id in synth.finished_maps(committed_dataset, synth.SynthSettings()):
        zeroed = gainpack.building_mask(committed_dataset, map_id)
        for k in range(2):
            grey, raw = gainpack.read_sample(committed_dataset, "IRT4", map_id, k)
            difference = grey.astype(int) - gainpack.render_grey(raw, zeroed, RANGE)
            assert np.abs(difference).max() <= 1
            changed, total = changed + np.count_nonzero(difference), total + difference.size
    assert 0 < changed < 0.05 * total


def test_pack_then_unpack_gives_back_every_file_byte_for_byte(plain_root, tmp_path, capsys):
    original = tmp_path / "original"
    shutil.copytree(plain_root, original)
    samples = 2 * len(list((plain_root / "png" / "buildings_complete").glob("*.png")))

    assert main(["pack", str(plain_root), "--no-progress"]) == 0
    assert f"{samples} samples packed" in capsys.readouterr().out
    assert not list((plain_root / "gain" / "IRT4").glob("*.png"))
    assert not list((plain_root / "gain_db" / "IRT4").glob("*.npy"))
    packed = sum(path.stat().st_size for path in (plain_root / "gain" / "IRT4").glob("*.npz"))
    plain = sum(path.stat().st_size for path in (original / "gain").rglob("*.png"))
    plain += sum(path.stat().st_size for path in (original / "gain_db").rglob("*.npy"))
    assert packed < plain / 3
    assert main(["check", str(plain_root)]) == 0
    assert f"{samples} samples decoded OK" in capsys.readouterr().out

    assert main(["pack", str(plain_root), "--no-progress"]) == 0  # nothing left to do
    assert "0 samples packed" in capsys.readouterr().out
    assert main(["unpack", str(plain_root), "--no-progress"]) == 0
    assert f"{samples} samples unpacked" in capsys.readouterr().out
    assert _same_tree(plain_root, original)


def test_the_loader_gives_the_same_items_from_a_packed_root(plain_root, committed_dataset):
    gainpack.convert_root(plain_root, pack=True, progress=False)
    condition = ("buildings", "transmitter", "los", "free_space")
    packed = RadioMapSeer(plain_root, split="all", image_size=64, condition=condition)
    plain = RadioMapSeer(committed_dataset, split="all", image_size=64, condition=condition)
    assert packed.samples == plain.samples and packed.validate(full=True) == 0
    for index in range(len(plain)):
        one, other = packed[index], plain[index]
        for key in ("image", "cond", "gain", "tx_rowcol"):
            torch.testing.assert_close(one[key], other[key], rtol=0, atol=0)


def test_packing_a_sample_twice_gives_the_same_bytes(committed_dataset):
    grey, raw = gainpack.read_sample(committed_dataset, "IRT4", 0, 1)
    zeroed = gainpack.building_mask(committed_dataset, 0)
    assert gainpack.pack_bytes(grey, raw, zeroed, RANGE) == gainpack.pack_bytes(grey, raw, zeroed, RANGE)


def test_any_grey_survives_the_pack_exactly(tmp_path):
    """Grey far from the rendering of its raw (not a generator's) still comes back pixel for pixel."""
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (256, 256), dtype=np.uint8)
    raw = rng.uniform(-160, -40, (16, 16)).astype(np.float16)
    raw[3, 4], raw[5, 6] = np.nan, -np.inf
    zeroed = rng.random((256, 256)) < 0.3
    path = tmp_path / "0_0.npz"
    path.write_bytes(gainpack.pack_bytes(grey, raw, zeroed, RANGE))
    back_grey, back_raw = gainpack.read_pack(path, zeroed)
    np.testing.assert_array_equal(back_grey, grey)
    assert back_raw.tobytes() == raw.tobytes()


def test_an_interrupted_pack_leaves_finished_maps_and_is_completed_by_the_next(plain_root):
    settings = synth.SynthSettings()
    maps = synth.finished_maps(plain_root, settings)
    png, npy, packed = gainpack.sample_paths(plain_root, "IRT4", maps[0], 0)
    grey, raw = gainpack.read_sample(plain_root, "IRT4", maps[0], 0)
    packed.write_bytes(gainpack.pack_bytes(grey, raw, gainpack.building_mask(plain_root, maps[0]), RANGE))
    gainpack.pack_sample(plain_root, "IRT4", maps[1], 1, gainpack.building_mask(plain_root, maps[1]), RANGE)
    # map 0: transmitter 0 in both forms (stopped before the plain files went); map 1: one of each
    assert synth.finished_maps(plain_root, settings) == maps
    assert len(RadioMapSeer(plain_root, split="all")) == 2 * len(maps)

    report = gainpack.convert_root(plain_root, pack=True, progress=False)
    assert report["samples_converted"] == 2 * len(maps) - 1
    assert not png.exists() and not npy.exists() and packed.exists()
    assert synth.finished_maps(plain_root, settings) == maps


def test_damaged_packs_are_named(plain_root, capsys):
    gainpack.convert_root(plain_root, pack=True, progress=False)
    _, _, cut = gainpack.sample_paths(plain_root, "IRT4", 0, 0)
    cut.write_bytes(cut.read_bytes()[:-30])
    assert main(["check", str(plain_root)]) == 2
    assert f"{cut}: truncated" in capsys.readouterr().err

    _, _, other = gainpack.sample_paths(plain_root, "IRT4", 0, 1)
    with np.load(other) as members:
        arrays = dict(members)
    arrays["fix"] = arrays["fix"] + np.int8(1)  # decodes, but to other pixels than the PNG's
    np.savez_compressed(other, **arrays)
    with pytest.raises(InputError, match="does not match its checksum"):
        gainpack.read_pack(other, gainpack.building_mask(plain_root, 0))
    with pytest.raises(InputError, match=f"{other.name}: unreadable packed sample"):
        other.write_bytes(b"PK\x05\x06" + bytes(18))
        gainpack.read_pack(other, gainpack.building_mask(plain_root, 0))


def test_merge_joins_packed_and_plain_shards(tmp_path, capsys):
    settings = synth.SynthSettings(grid=8)
    for name, map_ids in (("a", [0, 2]), ("b", [1, 2])):
        root = tmp_path / name
        synth.check_metadata(root, settings, 5)
        for map_id in map_ids:
            city = synth.make_city(settings, 5, map_id)
            raw = np.random.default_rng(map_id).uniform(-140, -50, (2, 8, 8))
            raw[:, 0, 0] = np.nan
            grey = np.stack([gainpack.render_grey(db, city.buildings > 0, RANGE) for db in raw])
            synth.write_map(root, map_id, city, grey, raw)
    gainpack.convert_root(tmp_path / "a", pack=True, progress=False)
    out = tmp_path / "all"
    assert main(["merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    assert "3 maps copied, 1 already there, 3 maps in all" in capsys.readouterr().out
    assert (out / "gain" / "IRT4" / "0_1.npz").is_file() and (out / "gain" / "IRT4" / "1_1.png").is_file()
    assert main(["check", str(out)]) == 0

    plain = out / "gain" / "IRT4" / "1_0.png"  # a plain sample whose pixels no longer match shard b's
    Image.fromarray(255 - np.asarray(Image.open(plain))).save(plain)
    assert main(["merge", str(tmp_path / "b"), "--out", str(out)]) == 2
    assert "map 1 transmitter 0 has other gains" in capsys.readouterr().err
