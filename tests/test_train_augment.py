"""Dihedral augmentation and the --time-budget stop of `irt4-train` (tiny preset, CPU)."""

import json
from pathlib import Path

import pytest
import torch

from irt4.baseline import transmitter_rowcol
from irt4.cli.train import main
from irt4.data.condition import log_distance_field
from irt4.data.radiomapseer import RadioMapSeer
from irt4.train.augment import DIHEDRAL, DihedralAugmented, dihedral, dihedral_rowcol, inverse_dihedral
from irt4.train.checkpoint import read_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def common(root: Path) -> list[str]:
    return [
        "--data",
        str(root),
        "--config",
        "tiny",
        "--workers",
        "0",
        "--no-tensorboard",
        "--set",
        "trainer.batch_size=2",
        "--set",
        "vae_trainer.batch_size=2",
        "--set",
        "baseline.dim=8",
    ]


def run_json(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


def same_tensors(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_tensors(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_tensors(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def test_dihedral_transforms_are_the_8_distinct_symmetries_move_pixels_as_stated_and_invert():
    maps = torch.rand(2, 7, 7, generator=torch.Generator().manual_seed(0))
    seen = []
    for k in range(DIHEDRAL):
        moved = dihedral(maps, k)
        assert torch.equal(inverse_dihedral(moved, k), maps)
        assert not any(torch.equal(moved, other) for other in seen)
        seen.append(moved)
        for row, col in ((0, 0), (1, 5), (6, 2), (3, 3)):
            new_row, new_col = dihedral_rowcol(row, col, 7, k)
            assert torch.equal(moved[:, new_row, new_col], maps[:, row, col]), (k, row, col)


def test_augmented_items_move_buildings_transmitter_and_gain_together(committed_dataset):
    dataset = RadioMapSeer(committed_dataset, split="all", image_size=64)
    augmented = DihedralAugmented(dataset)
    assert len(augmented) == 8 * len(dataset)
    sample = 3
    original = dataset[sample]
    row, col = original["tx_rowcol"].tolist()
    for k in range(DIHEDRAL):
        item = augmented[k * len(dataset) + sample]
        assert item["augment"] == k and item["map_id"] == original["map_id"]
        for key in ("image", "cond", "gain"):
            assert torch.equal(inverse_dihedral(item[key], k), original[key]), key
        new_row, new_col = item["tx_rowcol"].tolist()
        assert (new_row, new_col) == dihedral_rowcol(row, col, 256, k)
        assert item["gain"][0, new_row, new_col] == original["gain"][0, row, col]
        # the transmitter channel's peak (at 64 x 64) sits on the moved transmitter pixel
        found = transmitter_rowcol(item["cond"][None])[0].tolist()
        assert abs(found[0] - new_row) <= 2 and abs(found[1] - new_col) <= 2, (k, found, new_row, new_col)


def test_dihedral_baseline_training_resumes_bitwise_over_the_8x_stream(committed_dataset, tmp_path):
    argv = ["baseline", *common(committed_dataset), "--set", "data.augment=dihedral"]
    argv += ["--set", "trainer.save_every=2"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main([*argv, "--out", str(straight), "--steps", "4"]) == 0
    assert main([*argv, "--out", str(resumed), "--steps", "2"]) == 0
    assert main([*argv, "--out", str(resumed), "--steps", "4", "--resume"]) == 0
    a, b = read_checkpoint(straight / "last.pt"), read_checkpoint(resumed / "last.pt")
    samples = len(RadioMapSeer(committed_dataset, split="train", image_size=64))
    assert a["data"] == b["data"] and a["data"]["samples"] == 8 * samples
    for key in ("model", "ema", "optimizer", "scheduler", "rng"):
        assert same_tensors(a[key], b[key]), key
    unaugmented = tmp_path / "none"
    assert main(["baseline", *common(committed_dataset), "--out", str(unaugmented), "--steps", "4"]) == 0
    plain = read_checkpoint(unaugmented / "last.pt")
    assert plain["data"]["samples"] == samples
    assert not all(torch.equal(plain["model"][k], v) for k, v in a["model"].items())


def test_cached_latents_cover_all_8_transforms_of_each_training_map(committed_dataset, tmp_path, caplog):
    vae = tmp_path / "vae"
    assert main(["vae", *common(committed_dataset), "--out", str(vae), "--steps", "1"]) == 0
    run = tmp_path / "ldm"
    argv = ["ldm", *common(committed_dataset), "--out", str(run), "--vae", str(vae / "last.pt")]
    argv += ["--steps", "1", "--cache-latents", "--sample-steps", "1", "--set", "data.augment=dihedral"]
    caplog.set_level("INFO")
    assert main(argv) == 0
    samples = len(RadioMapSeer(committed_dataset, split="train", image_size=64))
    assert f"cached {8 * samples} latent posteriors" in caplog.text
    assert read_checkpoint(run / "last.pt")["data"]["samples"] == 8 * samples


@pytest.mark.parametrize("command", ["vae", "baseline"])
def test_time_budget_stops_after_the_budget_saves_and_records_steps_and_seconds(
    command, committed_dataset, tmp_path
):
    run = tmp_path / "run"
    argv = [command, *common(committed_dataset), "--out", str(run), "--steps", "100000"]
    assert main([*argv, "--time-budget", "1.0"]) == 0
    record = run_json(run)
    step = record["step"]
    assert record["status"] == "completed" and record["stop_reason"] == "time_budget"
    assert 1 <= step < 100000 and record["time_budget_s"] == 1.0 and record["train_time_s"] >= 1.0
    last = read_checkpoint(run / "last.pt")
    assert last["step"] == step and last["train_time_s"] >= 1.0
    assert (run / "samples" / f"step-{step:07d}.png").is_file()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == step and rows[-1]["train_time_s"] >= 1.0
    assert "of a 1 s budget" in (run / "report.md").read_text()
    assert "time budget was spent" in (run / "report.md").read_text()
    # the budget counts all sessions: resuming under the same budget trains no further step
    assert main([*argv, "--resume", "--time-budget", "1.0"]) == 0
    assert run_json(run)["step"] == step and run_json(run)["stop_reason"] == "time_budget"
    assert main([*argv, "--resume", "--steps", str(step + 2)]) == 0
    assert run_json(run)["step"] == step + 2 and run_json(run)["stop_reason"] == "steps"


def test_time_budget_must_be_positive(committed_dataset, tmp_path, capsys):
    argv = ["baseline", *common(committed_dataset), "--out", str(tmp_path / "run"), "--time-budget", "0"]
    assert main(argv) == 2
    assert "--time-budget must be a positive number" in capsys.readouterr().err


def test_augmented_log_distance_field_is_the_field_of_the_moved_transmitter(committed_dataset):
    # the field is drawn before the transform, so it must be the one a moved transmitter would give
    dataset = RadioMapSeer(
        committed_dataset, split="all", image_size=256, condition=("buildings", "transmitter", "log_distance")
    )
    augmented = DihedralAugmented(dataset)
    for k in range(DIHEDRAL):
        item = augmented[k * len(dataset) + 1]
        row, col = item["tx_rowcol"].tolist()
        expected = torch.from_numpy(log_distance_field((256, 256), row, col)) * 2 - 1
        torch.testing.assert_close(item["cond"][2], expected)
