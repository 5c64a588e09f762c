"""irt4-infer end to end on a RadioMapSeer-layout root with a tiny model trained in the test."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from irt4.cli.infer import main
from irt4.config import apply_overrides, load_config
from irt4.data.radiomapseer import RadioMapSeer, model_inputs
from irt4.infer import DatasetPairs, FolderPairs
from irt4.models.bundle import load_model, save_bundle
from irt4.models.radiodiff import RadioDiff

LOG_DISTANCE = ("buildings", "transmitter", "log_distance")


@pytest.fixture(scope="module")
def root(committed_dataset):
    return committed_dataset


@pytest.fixture(scope="module")
def checkpoint(root, tmp_path_factory):
    """The tiny preset, a few diffusion steps on the root's training maps, saved as a bundle."""
    cfg = load_config("tiny")
    torch.manual_seed(0)
    model = RadioDiff(cfg)
    data = RadioMapSeer(root, split="train", image_size=cfg.image_size)
    batch = [data[i] for i in range(4)]
    image, cond = torch.stack([b["image"] for b in batch]), torch.stack([b["cond"] for b in batch])
    model.set_scale_from_batch(image, torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(model.unet.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        loss, _ = model.diffusion_loss(image, cond, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_bundle(path, model.eval())
    return path


def _run(*args):
    return main([str(a) for a in args] + ["--quiet"])


def test_cli_writes_maps_preview_and_metrics(root, checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        _run(
            "--checkpoint",
            checkpoint,
            "--data",
            root,
            "--split",
            "test",
            "--out",
            out,
            "--steps",
            2,
            "--save-db",
        )
        == 0
    )
    pngs = sorted(p for p in out.glob("*_*.png"))
    assert pngs, "no maps written"
    assert (out / "preview.png").is_file()
    with Image.open(pngs[0]) as image:
        assert image.size == (256, 256) and image.mode == "L"
    db = np.load(pngs[0].with_suffix(".npy"))
    assert db.shape == (256, 256) and db.min() >= -147.0 and db.max() <= -47.0
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == len(pngs)
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["count"] == len(pngs) and "rmse_raw" in summary["summary"]
    assert "rmse_raw" in capsys.readouterr().out


def test_building_pixels_are_written_as_zero_unless_kept(root, checkpoint, tmp_path):
    args = ("--checkpoint", checkpoint, "--data", root, "--split", "test", "--steps", 1, "--limit", 2)
    assert _run(*args, "--out", tmp_path / "zeroed") == 0
    assert _run(*args, "--out", tmp_path / "kept", "--keep-building-pixels") == 0
    for png in sorted((tmp_path / "zeroed").glob("*_*.png")):
        map_id = int(png.stem.split("_")[0])
        buildings = np.asarray(Image.open(root / "png" / "buildings_complete" / f"{map_id}.png")) > 0
        zeroed = np.asarray(Image.open(png))
        kept = np.asarray(Image.open(tmp_path / "kept" / png.name))
        assert buildings.any() and (kept[buildings] > 0).any()  # the model itself writes signal there
        assert (zeroed[buildings] == 0).all()
        assert np.array_equal(zeroed[~buildings], kept[~buildings])


def test_same_seed_gives_identical_maps_and_another_seed_differs(root, checkpoint, tmp_path):
    outputs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        assert (
            _run(
                "--checkpoint",
                checkpoint,
                "--data",
                root,
                "--out",
                tmp_path / name,
                "--steps",
                2,
                "--seed",
                seed,
            )
            == 0
        )
        outputs[name] = {p.name: np.asarray(Image.open(p)) for p in (tmp_path / name).glob("*_*.png")}
    assert outputs["a"].keys() == outputs["b"].keys()
    assert all(np.array_equal(outputs["a"][k], outputs["b"][k]) for k in outputs["a"])
    assert any(not np.array_equal(outputs["a"][k], outputs["c"][k]) for k in outputs["a"])


def test_two_shards_cover_every_pair_once_with_the_unsharded_maps(root, checkpoint, tmp_path):
    args = ("--checkpoint", checkpoint, "--data", root, "--split", "all", "--steps", 1, "--batch-size", 3)
    assert _run(*args, "--out", tmp_path / "full") == 0
    for shard in ("0/2", "1/2"):
        assert _run(*args, "--out", tmp_path / shard.replace("/", "of"), "--shard", shard) == 0
    full = {p.name for p in (tmp_path / "full").glob("*_*.png")}
    first = {p.name for p in (tmp_path / "0of2").glob("*_*.png")}
    second = {p.name for p in (tmp_path / "1of2").glob("*_*.png")}
    assert first.isdisjoint(second) and first | second == full
    # a pair's noise does not depend on the batch or the shard it ran in; only float rounding of
    # batched kernels does, so maps agree to one grey level
    for name in first:
        full_map = np.asarray(Image.open(tmp_path / "full" / name), dtype=int)
        shard_map = np.asarray(Image.open(tmp_path / "0of2" / name), dtype=int)
        assert np.abs(full_map - shard_map).max() <= 1


def test_existing_outputs_are_kept_and_not_sampled_again(root, checkpoint, tmp_path, capsys):
    args = ("--checkpoint", checkpoint, "--data", root, "--out", tmp_path / "out", "--steps", 1)
    assert _run(*args) == 0
    first = capsys.readouterr().out
    assert _run(*args) == 0
    assert "wrote 0 maps" in capsys.readouterr().out and "wrote 0 maps" not in first


def _write_maps(tmp_path, rows):
    maps = tmp_path / "maps"
    maps.mkdir(exist_ok=True)
    buildings = np.zeros((256, 256), np.uint8)
    buildings[100:150, 100:150] = 255
    Image.fromarray(buildings, mode="L").save(maps / "7.png")
    tx = tmp_path / "tx.csv"
    tx.write_text("map_id,tx_index,row,col\n" + "".join(f"{r}\n" for r in rows))
    return maps, tx


def test_maps_folder_and_tx_csv_input_works(checkpoint, tmp_path):
    maps, tx = _write_maps(tmp_path, ["7,0,20,30", "7,1,200,40"])
    assert (
        _run("--checkpoint", checkpoint, "--maps", maps, "--tx", tx, "--out", tmp_path / "out", "--steps", 1)
        == 0
    )
    assert {p.name for p in (tmp_path / "out").glob("*_*.png")} == {"7_0.png", "7_1.png"}
    assert not (tmp_path / "out" / "metrics.csv").exists()


@pytest.mark.parametrize(
    "rows, match",
    [
        (["7,0,300,30"], "outside the map"),
        (["7,0,120,120"], "on a building"),
        (["8,0,20,30"], "8.png: missing"),
    ],
)
def test_bad_pairs_exit_2_with_a_message_naming_the_pair(checkpoint, tmp_path, capsys, rows, match):
    maps, tx = _write_maps(tmp_path, rows)
    assert _run("--checkpoint", checkpoint, "--maps", maps, "--tx", tx, "--out", tmp_path / "out") == 2
    assert match in capsys.readouterr().err


def test_skip_bad_logs_skips_and_counts(checkpoint, tmp_path, capsys):
    maps, tx = _write_maps(tmp_path, ["7,0,20,30", "7,1,120,120"])
    assert (
        _run(
            "--checkpoint",
            checkpoint,
            "--maps",
            maps,
            "--tx",
            tx,
            "--out",
            tmp_path / "out",
            "--steps",
            1,
            "--skip-bad",
        )
        == 0
    )
    assert "skipped 1 bad inputs" in capsys.readouterr().out
    assert {p.name for p in (tmp_path / "out").glob("*_*.png")} == {"7_0.png"}


def test_wrongly_sized_map_and_bad_tx_file_exit_2(checkpoint, tmp_path, capsys):
    maps, tx = _write_maps(tmp_path, ["7,0,20,30"])
    Image.fromarray(np.zeros((128, 128), np.uint8), mode="L").save(maps / "7.png")
    assert _run("--checkpoint", checkpoint, "--maps", maps, "--tx", tx, "--out", tmp_path / "o") == 2
    assert "expected 256x256" in capsys.readouterr().err
    tx.write_text("map,tx,row,col\n7,0,1,1\n")
    assert _run("--checkpoint", checkpoint, "--maps", maps, "--tx", tx, "--out", tmp_path / "o") == 2
    assert "header must be" in capsys.readouterr().err


def test_wrong_checkpoint_and_missing_inputs_exit_2(root, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    assert _run("--checkpoint", bad, "--data", root, "--out", tmp_path / "o") == 2
    assert "not a readable irt4 checkpoint" in capsys.readouterr().err
    assert _run("--checkpoint", bad, "--out", tmp_path / "o") == 2
    assert _run("--checkpoint", tmp_path / "none.pt", "--data", root, "--out", tmp_path / "o") == 2
    assert "does not exist" in capsys.readouterr().err


def test_out_naming_an_existing_file_exits_2(root, checkpoint, tmp_path, capsys):
    taken = tmp_path / "maps.png"
    taken.write_bytes(b"not a folder")
    assert _run("--checkpoint", checkpoint, "--data", root, "--out", taken) == 2
    assert f"--out {taken} is a file" in capsys.readouterr().err
    assert taken.read_bytes() == b"not a folder"


def test_bad_shard_is_refused(root, checkpoint, tmp_path, capsys):
    assert _run("--checkpoint", checkpoint, "--data", root, "--out", tmp_path / "o", "--shard", "2/2") == 2
    assert "--shard" in capsys.readouterr().err


def test_each_pair_is_read_once_and_a_resumed_run_scores_the_same(root, checkpoint, tmp_path):
    """Sampling, scoring and the preview share one load per pair; a rerun that samples nothing
    scores the PNGs on disk and gets exactly the metrics the first run computed from memory."""
    from collections import Counter

    from irt4.infer import DatasetPairs, InferenceOptions, run_inference
    from irt4.models.bundle import load_model

    model, _ = load_model(checkpoint)
    source = DatasetPairs(RadioMapSeer(root, split="all", image_size=model.cfg.image_size))
    loads, read = Counter(), source.load
    source.load = lambda index: (loads.update([index]), read(index))[1]
    options = InferenceOptions(out=tmp_path, steps=1, batch_size=3, progress=False)

    fresh = run_inference(model, source, options)
    assert fresh.written == len(source.pairs) and sorted(loads) == list(range(len(source.pairs)))
    assert set(loads.values()) == {1}
    loads.clear()
    resumed = run_inference(model, source, options)
    assert resumed.written == 0 and set(loads.values()) == {1}
    assert resumed.per_pair_metrics == fresh.per_pair_metrics and fresh.per_pair_metrics
    assert (tmp_path / "preview.png").is_file()


def test_both_inputs_give_a_tx_field_model_the_same_condition(root, tmp_path):
    dataset = RadioMapSeer(root, split="all", image_size=32, condition=LOG_DISTANCE)
    item = dataset[0]
    row, col = item["tx_rowcol"].tolist()
    tx = tmp_path / "tx.csv"
    tx.write_text(f"map_id,tx_index,row,col\n{item['map_id']},{item['tx_index']},{row},{col}\n")
    folder = FolderPairs(dataset.buildings_dir, tx, 32, condition=LOG_DISTANCE)
    from_root, from_folder = DatasetPairs(dataset).load(0).cond, folder.load(0).cond
    torch.testing.assert_close(from_folder, from_root)
    assert not torch.allclose(from_root[2], from_root[0])  # the field, not the buildings again


@pytest.mark.parametrize(
    "override, condition",
    [
        ("data.tx_field=log_distance", LOG_DISTANCE),
        (
            "data.condition=[free_space, buildings, walls, transmitter]",
            ("free_space", "buildings", "walls", "transmitter"),
        ),
    ],
)
def test_infer_builds_the_condition_the_model_was_trained_with(
    root, tmp_path, monkeypatch, override, condition
):
    cfg = apply_overrides(load_config("tiny"), [override])
    torch.manual_seed(0)
    path = tmp_path / "field.safetensors"
    save_bundle(path, RadioDiff(cfg).eval())
    model, _ = load_model(path)
    assert model.cfg.data.condition == condition  # the list round-trips through the bundle
    seen = []
    original = DatasetPairs.load
    monkeypatch.setattr(DatasetPairs, "load", lambda self, i: seen.append(original(self, i)) or seen[-1])
    argv = ["--checkpoint", path, "--data", root, "--split", "all", "--limit", 1, "--steps", 1]
    assert _run(*argv, "--out", tmp_path / "out") == 0
    # the training loader's item for the same pair (irt4.train.stages.datasets builds it the same way)
    expected = RadioMapSeer(root, split="all", **model_inputs(cfg))[0]["cond"]
    torch.testing.assert_close(seen[0].cond, expected, rtol=0, atol=0)
    assert (tmp_path / "out" / "preview.png").is_file()
