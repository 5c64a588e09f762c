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
    argv = ["--maps", "2", "--ood-pairs", "2", "--steps", "2", "--out", str(tmp_path)]
    assert demo.main(argv) == 0
    printed = capsys.readouterr().out
    for label in ("diffusion (small, 2 steps)", "RadioUNet-style regressor", "free space, LoS-masked"):
        assert label in printed
    for folder in ("diffusion", "baseline", "free-space", "ood/diffusion", "ood/baseline", "ood/free-space"):
        metrics = json.loads((tmp_path / folder / "metrics.json").read_text())
        assert len(list((tmp_path / folder).glob("*_*.png"))) == 2
        assert 0 <= metrics["summary"]["rmse_raw"]["mean"] <= 1
    assert (tmp_path / "preview.png").stat().st_size > 10_000
    # the committed test set's map 0 is a perimeter-block map, the OOD set is all industrial
    assert "test / perimeter" in printed and "ood / industrial" in printed


def test_per_style_table_groups_pairs_by_the_style_of_their_map():
    def result(values):
        rows = [
            {"map_id": m, "tx_index": k, "rmse_db": v, "ssim_raw": v / 100} for (m, k), v in values.items()
        ]
        return demo.InferenceResult(per_pair_metrics=rows)

    results = {"test": {"a": result({(0, 0): 10.0, (0, 1): 20.0, (1, 0): 30.0})}}
    table = demo.per_style_table(results, {"test": {0: "grid", 1: "oldtown"}})
    grid_line = next(line for line in table.splitlines() if line.startswith("test / grid"))
    assert grid_line.split()[3] == "2" and "15.00 / 0.150" in grid_line
    assert "30.00 / 0.300" in next(line for line in table.splitlines() if "oldtown" in line)


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


def test_demo_step_curve_samples_each_count(tmp_path, capsys):
    argv = ["--maps", "2", "--no-ood", "--no-baseline", "--steps", "1", "--step-curve", "1,2"]
    assert demo.main([*argv, "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "   1 steps: " in printed and "   2 steps: " in printed
    assert len(list((tmp_path / "steps-2").glob("*_*.png"))) == 2
    with pytest.raises(SystemExit):
        demo.main(["--step-curve", "3,0"])
