"""Training observability: the metrics log, the sample grid and the markdown report (issue 4, item 6)."""

from __future__ import annotations

import csv
import json
import math
import sys

import pytest
import torch
from PIL import Image

from irt4.config import Config, save_config
from irt4.train.logs import (
    GRID_HEADER,
    GRID_PAD,
    MetricsLogger,
    grid_cell_size,
    read_metrics,
    save_sample_grid,
)
from irt4.train.report import milestone_rows, nice_interval, write_report


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_logger_writes_jsonl_and_csv_with_matching_rows(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        for step in (1, 5, 10):
            logger.log(step, {"loss": 1.0 / step, "lr": 1e-3})
    rows, table = read_metrics(tmp_path / "metrics.jsonl"), read_csv(tmp_path / "metrics.csv")
    assert [row["step"] for row in rows] == [1, 5, 10]
    assert list(table[0]) == ["step", "time", "loss", "lr"]
    for row, line in zip(rows, table, strict=True):
        assert int(line["step"]) == row["step"]
        assert float(line["loss"]) == row["loss"] and float(line["time"]) == row["time"]


def test_logger_new_metric_mid_run_keeps_csv_valid(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.log(1, {"loss": 2.0})
        logger.log(2, {"loss": 1.5, "kl_loss": 0.25})
        logger.log(3, {"loss": 1.0, "kl_loss": 0.125, "lr": float("nan")})
        assert read_csv(tmp_path / "metrics.csv")[-1]["kl_loss"] == "0.125"  # flushed while open
    table = read_csv(tmp_path / "metrics.csv")
    assert list(table[0]) == ["step", "time", "loss", "kl_loss", "lr"]
    assert [line["kl_loss"] for line in table] == ["", "0.25", "0.125"]
    assert table[2]["lr"] == ""  # non-finite: empty cell, and null in the JSONL
    assert read_metrics(tmp_path / "metrics.jsonl")[2]["lr"] is None
    with open(tmp_path / "metrics.csv", newline="") as f:
        assert {len(line) for line in csv.reader(f)} == {5}


def test_logger_resume_drops_later_rows_without_duplicates(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        for step in range(1, 9):
            logger.log(step, {"loss": float(step)})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 9, "loss"')  # a crash mid-write
    with MetricsLogger(tmp_path, resume_step=5, tensorboard=False) as logger:
        for step in range(6, 11):
            logger.log(step, {"loss": float(step)})
    steps = [row["step"] for row in read_metrics(tmp_path / "metrics.jsonl")]
    assert steps == list(range(1, 11))
    assert [int(line["step"]) for line in read_csv(tmp_path / "metrics.csv")] == steps


def test_logger_without_tensorboard_warns_and_still_logs(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # the import raises ImportError
    with caplog.at_level("WARNING", logger="irt4"), MetricsLogger(tmp_path) as logger:
        logger.log(1, {"loss": 1.0})
    assert any("TensorBoard is not available" in record.message for record in caplog.records)
    assert len(read_metrics(tmp_path / "metrics.jsonl")) == 1
    assert not (tmp_path / "tb").exists()


def test_logger_with_tensorboard_writes_events(tmp_path):
    pytest.importorskip("tensorboard")
    with MetricsLogger(tmp_path) as logger:
        logger.log(1, {"loss": 1.0, "lr": 1e-4})
    with MetricsLogger(tmp_path, resume_step=1) as logger:
        logger.log(2, {"loss": 0.5, "lr": 1e-4})
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert events and all(path.stat().st_size > 0 for path in events)


@pytest.mark.parametrize("with_target", [True, False])
def test_sample_grid_png_has_one_row_per_map_and_one_column_per_view(tmp_path, with_target):
    generator = torch.Generator().manual_seed(0)
    predicted = torch.rand(3, 1, 48, 40, generator=generator)
    target = torch.rand(3, 1, 48, 40, generator=generator) if with_target else None
    cond = torch.rand(3, 3, 24, 30, generator=generator) * 2 - 1  # another size than the maps
    path = tmp_path / "samples" / "grid.png"
    save_sample_grid(path, predicted, target, cond)
    cell_h, cell_w = grid_cell_size(48, 40)
    columns = 4 if with_target else 2
    with Image.open(path) as image:
        assert image.size == (
            columns * cell_w + (columns + 1) * GRID_PAD,
            GRID_HEADER + 3 * cell_h + 4 * GRID_PAD,
        )


def test_nice_milestones_include_first_and_final_steps():
    assert nice_interval(50000) == 10000 and nice_interval(20) == 5 and nice_interval(3) == 1
    rows = [{"step": step} for step in [1, *range(500, 49501, 500)]]
    steps = [row["step"] for row in milestone_rows(rows)]
    assert steps == [1, 10000, 20000, 30000, 40000, 49500]


def make_run(run_dir, status="completed", steps=50, metrics=True):
    """A synthetic run folder: the default (reference) config, ~50 logged rows of a decaying loss."""
    run_dir.mkdir(parents=True, exist_ok=True)
    total = 50000
    save_config(Config(), run_dir / "config.yaml")
    record = {
        "stage": "ldm",
        "status": status,
        "started": "2025-01-01T00:00:00+00:00",
        "finished": None if status == "running" else "2025-01-01T15:02:00+00:00",
        "duration_s": 54120.0,
        "step": total if status == "completed" else 31000,
        "total_steps": total,
        "batch_size": 32,
        "grad_accum": 1,
        "world_size": 1,
        "precision": "bf16",
        "compile": True,
        "device": "cuda:0",
        "hardware": {"cpu": "x86_64 (16 cores)", "gpu": "NVIDIA H100", "torch": "2.13", "irt4": "0.1.0"},
        "steps_per_s": 3.1,
        "samples_per_s": 99.2,
        "resumed_from": [20000],
        "checkpoints": ["ckpt-0049000.pt", "ckpt-0050000.pt"],
    }
    (run_dir / "run.json").write_text(json.dumps(record))
    lines = []
    if metrics:
        for i, step in enumerate([1, *range(1000, total + 1, total // (steps - 1) // 1000 * 1000)]):
            loss = 0.24 + 7.6 * math.exp(-step / 2000) + 0.01 * math.sin(i)
            row = {"step": step, "time": 1.7e9 + i, "loss": loss, "lr": 5e-5 * (1 - step / total) + 5e-6}
            lines.append(json.dumps(row | {"samples_per_s": 99.0}))
        lines.append(json.dumps({"step": 1234, "time": 1.7e9, "nonfinite_loss": 1.0, "skipped_steps": 1.0}))
    (run_dir / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    return run_dir


def test_report_has_status_milestones_schedule_hardware_and_plots(tmp_path):
    path = write_report(make_run(tmp_path / "run"))
    text = path.read_text()
    assert path == tmp_path / "run" / "report.md"
    assert "**completed**" in text and "15 h 02 min" in text and "50,000 of 50,000 planned" in text
    table = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert table[0].startswith("| 1 | 7.") and table[-1].startswith("| 50,000 | 0.2")
    assert "| 10,000 |" in text and "| 30,000 |" in text
    assert "cosine with warm restarts, from 5e-05 down to a floor of 5e-06 over 10,000 steps" in text
    assert "NVIDIA H100" in text and "| steps/s | 3.1 |" in text and "| precision | bf16 |" in text
    assert "Resumed from step 20,000" in text and "steps 1,234" in text and "`ckpt-0050000.pt`" in text
    assert "<details>" in text and "train_num_steps" in text
    for plot in ("loss.png", "lr.png"):
        assert f"]({plot})" in text and (tmp_path / "run" / plot).stat().st_size > 0


def test_report_on_empty_metrics_says_no_metrics_logged(tmp_path):
    run_dir = make_run(tmp_path / "run", status="running", metrics=False)
    text = write_report(run_dir).read_text()
    assert "No metrics logged" in text and "**running**" in text
    assert "](loss.png)" not in text and not (run_dir / "loss.png").exists()


def test_report_on_interrupted_run_shows_progress_so_far(tmp_path):
    run_dir = make_run(tmp_path / "run", status="interrupted")
    (run_dir / "metrics.jsonl").write_text(
        "".join(
            json.dumps({"step": s, "time": 1.7e9, "loss": 1.0 / s, "lr": 1e-4}) + "\n" for s in (1, 10, 20)
        )
    )
    text = write_report(run_dir).read_text()
    assert "**interrupted**" in text and "--resume" in text and "31,000 of 50,000 planned (62 %)" in text
    assert "| Finished |" in text and "Final loss | 0.05 (step 20)" in text
