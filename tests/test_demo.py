"""`make demo` and the shipped models: the assets load, the demo writes and scores, irt4-infer takes a
baseline regressor bundle."""

import json

import pytest
import torch

from irt4 import demo
from irt4.baseline import RadioUNetRegressor, load_baseline, save_baseline
from irt4.cli import infer as infer_cli
from irt4.config import load_config
from irt4.models.bundle import checkpoint_kind, load_model


def test_shipped_models_load_with_their_kind():
    model, info = load_model(demo.DEFAULT_MODEL)
    assert model.cfg.name == "small" and info["weights"] == "ema"
    regressor, _ = load_baseline(demo.BASELINE_MODEL)
    assert regressor.cfg.image_size == model.cfg.image_size
    assert checkpoint_kind(demo.DEFAULT_MODEL) == "radiodiff"
    assert checkpoint_kind(demo.BASELINE_MODEL) == "baseline"


def test_demo_writes_maps_metrics_and_preview(tmp_path, capsys):
    assert demo.main(["--maps", "2", "--steps", "2", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    for label in ("diffusion (small, 2 steps)", "RadioUNet-style regressor", "free space, LoS-masked"):
        assert label in printed
    for folder in ("diffusion", "baseline", "free-space"):
        metrics = json.loads((tmp_path / folder / "metrics.json").read_text())
        assert len(list((tmp_path / folder).glob("*_*.png"))) == 2
        assert 0 <= metrics["summary"]["rmse_raw"]["mean"] <= 1
    assert (tmp_path / "preview.png").stat().st_size > 10_000


def test_irt4_infer_runs_a_baseline_bundle(tmp_path, committed_dataset, capsys):
    torch.manual_seed(0)
    cfg = load_config("tiny")
    save_baseline(tmp_path / "regressor.safetensors", RadioUNetRegressor(cfg), weights="raw")
    args = ["--checkpoint", str(tmp_path / "regressor.safetensors"), "--data", str(committed_dataset)]
    args += ["--split", "all", "--limit", "3", "--out", str(tmp_path / "out"), "--quiet", "--device", "cpu"]
    assert infer_cli.main(args) == 0
    assert "baseline regressor" in capsys.readouterr().out
    assert len(list((tmp_path / "out").glob("*_*.png"))) == 3
    assert (tmp_path / "out" / "metrics.csv").is_file()


def test_checkpoint_kind_names_a_missing_file(tmp_path):
    with pytest.raises(Exception, match="does not exist"):
        checkpoint_kind(tmp_path / "nothing.safetensors")
