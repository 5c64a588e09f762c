"""The RadioUNet-style baseline regressor and the line-of-sight free-space map (irt4.baseline)."""

import math
from pathlib import Path

import pytest
import torch

from irt4.baseline import (
    RadioUNetRegressor,
    fit_offset_db,
    free_space,
    load_baseline,
    predict,
    save_baseline,
)
from irt4.baseline.free_space import free_space_db
from irt4.cli.train import main
from irt4.config import load_config
from irt4.errors import InputError
from irt4.models.bundle import load_model, save_bundle
from irt4.models.radiodiff import RadioDiff
from irt4.train.checkpoint import read_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def baseline_argv(root: Path, out: Path, steps: int) -> list[str]:
    return [
        "baseline",
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
        "trainer.save_every=2",
        "--set",
        "baseline.dim=8",
        "--out",
        str(out),
        "--steps",
        str(steps),
    ]


def test_small_preset_baseline_has_a_few_million_parameters_and_keeps_the_resolution():
    cfg = load_config("small")
    model = RadioUNetRegressor(cfg)
    count = sum(p.numel() for p in model.parameters())
    assert 2e6 < count < 1e7, count  # the small preset's UNet: 6.9 M
    cond = torch.rand(2, 3, cfg.image_size, cfg.image_size) * 2 - 1
    with torch.no_grad():
        gain = predict(model, cond)
    assert gain.shape == (2, 1, 128, 128) and gain.dtype == torch.float32
    assert 0 <= gain.min() and gain.max() <= 1


@pytest.fixture(scope="module")
def baseline_runs(committed_dataset, tmp_path_factory) -> tuple[Path, Path]:
    runs = tmp_path_factory.mktemp("baseline")
    straight, resumed = runs / "straight", runs / "resumed"
    assert main(baseline_argv(committed_dataset, straight, 4)) == 0
    assert main(baseline_argv(committed_dataset, resumed, 2)) == 0
    assert main([*baseline_argv(committed_dataset, resumed, 4), "--resume"]) == 0
    return straight, resumed


def test_baseline_run_trains_and_resumes_bitwise(baseline_runs):
    straight, resumed = baseline_runs
    a, b = read_checkpoint(straight / "last.pt"), read_checkpoint(resumed / "last.pt")
    assert a["stage"] == "baseline" and a["step"] == b["step"] == 4 and a["data"] == b["data"]
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][name], b[key][name]) for name in a[key]), key
    assert (straight / "report.md").is_file() and (straight / "samples" / "step-0000004.png").is_file()
    first = read_checkpoint(straight / "ckpt-0000002.pt")
    assert not all(torch.equal(first["model"][k], v) for k, v in a["model"].items())  # it trained


def test_baseline_bundle_round_trips_and_predicts_maps_in_0_1(baseline_runs, tmp_path):
    model, info = load_baseline(baseline_runs[0] / "last.pt")
    assert info["weights"] == "ema" and model.cfg.baseline.dim == 8
    ema = read_checkpoint(baseline_runs[0] / "last.pt")["ema"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ema.items())
    path = tmp_path / "baseline.safetensors"
    save_baseline(path, model)
    loaded, loaded_info = load_baseline(path)
    assert loaded.cfg == model.cfg and loaded_info["weights"] == "ema"
    cond = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        expected, gain = predict(model, cond), predict(loaded, cond)
    assert torch.equal(gain, expected)
    assert gain.shape == (3, 1, 64, 64) and 0 <= gain.min() and gain.max() <= 1


def test_each_loader_refuses_the_other_models_files(baseline_runs, tmp_path):
    model, _ = load_baseline(baseline_runs[0] / "last.pt")
    baseline_bundle = tmp_path / "baseline.safetensors"
    save_baseline(baseline_bundle, model)
    diffusion_bundle = tmp_path / "radiodiff.safetensors"
    save_bundle(diffusion_bundle, RadioDiff(load_config("tiny")))
    for path in (baseline_bundle, baseline_runs[0] / "last.pt"):
        with pytest.raises(InputError, match="baseline .*load_baseline"):
            load_model(path)
    with pytest.raises(InputError, match="diffusion model bundle.*load_model"):
        load_baseline(diffusion_bundle)


def friis_grey(distance_m: float, offset_db: float = 0.0) -> float:
    gain_db = -20 * math.log10(4 * math.pi * distance_m * 5.9e9 / 299_792_458.0) + offset_db
    return (gain_db + 147) / 100


def test_free_space_follows_friis_in_grey_units_on_an_empty_map():
    buildings = torch.zeros(64, 64)
    grey = free_space(buildings, torch.tensor([32, 20]), 64)[0, 0]
    assert grey[32, 30].item() == pytest.approx(friis_grey(10.0), abs=1e-5)
    assert grey[32, 20] == grey.max() and grey[32, 40] < grey[32, 30]
    assert (grey > 0).all()
    half = free_space(buildings, torch.tensor([32, 20]), 32, pixel_m=1.0)
    assert half.shape == (1, 1, 32, 32)


def test_free_space_is_zero_on_buildings_and_in_their_shadow():
    buildings = torch.zeros(64, 64)
    buildings[20:44, 30:34] = 1  # a wall east of the transmitter
    grey = free_space(buildings, torch.tensor([32, 10]), 64)[0, 0]
    assert (grey[20:44, 30:34] == 0).all()  # the building
    assert (grey[28:36, 40:64] == 0).all()  # its shadow
    assert (grey[0:5, 34:41] > 0).all() and (grey[32, 0:30] > 0).all()  # seen past its ends, in front


def test_fit_offset_recovers_the_offset_of_line_of_sight_pixels():
    buildings = torch.zeros(2, 64, 64)
    buildings[:, 10:20, 40:50] = 1
    tx = torch.tensor([[32, 20], [5, 60]])
    gain = free_space(buildings, tx, 64, offset_db=4.0)[:, 0]
    assert fit_offset_db(buildings, tx, gain) == pytest.approx(4.0, abs=1e-3)
    shadowed = free_space_db((64, 64), tx)
    assert shadowed.shape == (2, 64, 64)
