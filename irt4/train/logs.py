"""Training logs: the metrics log (JSONL + CSV + TensorBoard) and the sample grid (issue 4, item 6).

`metrics.jsonl` is the record; `metrics.csv` holds the same rows for spreadsheets. Each row is
written and flushed as it comes, so a crash loses at most the row being written; a resumed run
first drops the rows after its checkpoint's step, so no step appears twice.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

log = logging.getLogger("irt4")

METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
TENSORBOARD_DIR = "tb"


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl; a line that does not parse (a crash mid-write) is skipped with
    a warning. A missing file has no rows."""
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s line %d is damaged and was skipped", path, number)
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None  # JSON has no NaN; null reads as "missing"


def _replace_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _csv_row(columns: list[str], row: dict[str, Any]) -> list[str]:
    # repr: floats round-trip exactly; a missing or non-finite value is an empty cell
    return ["" if row.get(name) is None else repr(row[name]) for name in columns]


def _csv_text(columns: list[str], rows: list[dict[str, Any]]) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(_csv_row(columns, row) for row in rows)
    return text.getvalue()


class MetricsLogger:
    """Appends one row per `log` call to run_dir/metrics.jsonl and metrics.csv and writes the same
    scalars as TensorBoard events under run_dir/tb/. Rank 0 only.

    `resume_step=None` starts a new log (earlier files in run_dir are replaced); a step keeps the
    rows up to and including it and drops the later ones, whose steps the resumed run repeats.
    """

    def __init__(self, run_dir: Path, resume_step: int | None = None, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.run_dir / METRICS_JSONL
        self.csv_path = self.run_dir / METRICS_CSV
        self._rows: list[dict[str, Any]] = []
        if resume_step is not None:
            self._rows = [row for row in read_metrics(self.jsonl_path) if row["step"] <= resume_step]
        self._columns = ["step", "time"]
        for row in self._rows:
            self._add_columns(row)
        _replace_atomically(self.jsonl_path, "".join(json.dumps(row) + "\n" for row in self._rows))
        _replace_atomically(self.csv_path, _csv_text(self._columns, self._rows))
        self._jsonl = open(self.jsonl_path, "a")
        self._csv = open(self.csv_path, "a", newline="")
        self._writer = None
        if tensorboard:
            self._writer = _summary_writer(
                self.run_dir / TENSORBOARD_DIR, None if resume_step is None else resume_step + 1
            )

    def _add_columns(self, row: dict[str, Any]) -> bool:
        new = [name for name in row if name not in self._columns]
        self._columns += new
        return bool(new)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": int(step), "time": round(time.time(), 3)}
        row.update({name: _finite_or_none(value) for name, value in metrics.items()})
        self._rows.append(row)
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        if self._add_columns(row):
            # a new metric: the header changes, so the CSV is rewritten whole (and atomically)
            self._csv.close()
            _replace_atomically(self.csv_path, _csv_text(self._columns, self._rows))
            self._csv = open(self.csv_path, "a", newline="")
        else:
            csv.writer(self._csv, lineterminator="\n").writerow(_csv_row(self._columns, row))
            self._csv.flush()
        if self._writer is not None:
            for name, value in metrics.items():
                self._writer.add_scalar(name, float(value), int(step))

    def close(self) -> None:
        if self._jsonl.closed:
            return
        self._jsonl.close()
        self._csv.close()
        if self._writer is not None:
            self._writer.close()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _summary_writer(log_dir: Path, purge_step: int | None):
    """TensorBoard is optional: without it the metrics still go to JSONL and CSV."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        log.warning(
            "TensorBoard is not available (%s): metrics go to %s and %s only",
            error,
            METRICS_JSONL,
            METRICS_CSV,
        )
        return None
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


# ---- sample grid -----------------------------------------------------------------------------------

GRID_PAD = 4  # pixels between cells and around the grid
GRID_HEADER = 18  # height of the column-label row
GRID_MIN_CELL = 128  # small maps are enlarged (nearest neighbour) to at least this many pixels
TX_MARK = (255, 40, 40)


def grid_cell_size(height: int, width: int) -> tuple[int, int]:
    """(height, width) in pixels of one map in the sample grid."""
    zoom = max(1, math.ceil(GRID_MIN_CELL / max(height, width)))
    return height * zoom, width * zoom


def _colormap(name: str, values: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) uint8."""
    from matplotlib import colormaps

    return (colormaps[name](np.clip(values, 0.0, 1.0))[..., :3] * 255).astype(np.uint8)


def _resize(rgb: np.ndarray, size_hw: tuple[int, int]) -> Image.Image:
    image = Image.fromarray(rgb)
    if image.size != (size_hw[1], size_hw[0]):
        image = image.resize((size_hw[1], size_hw[0]), Image.NEAREST)
    return image


def _buildings_cell(cond: np.ndarray, size_hw: tuple[int, int]) -> Image.Image:
    """cond (C >= 2, h, w) in [0, 1], buildings and transmitter first: buildings in grey, the
    transmitter ringed in red."""
    grey = (np.clip(cond[0], 0.0, 1.0) * 255).astype(np.uint8)
    image = _resize(np.stack([grey] * 3, axis=-1), size_hw).convert("RGB")
    tx = cond[1]
    if tx.max() > tx.min():  # an all-equal channel has no transmitter to mark
        row, col = np.unravel_index(int(np.argmax(tx)), tx.shape)
        y = (row + 0.5) * size_hw[0] / tx.shape[0]
        x = (col + 0.5) * size_hw[1] / tx.shape[1]
        radius = max(3.0, min(size_hw) / 40)
        draw = ImageDraw.Draw(image)
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), outline=TX_MARK, width=2)
        draw.point((x, y), fill=TX_MARK)
    return image


def save_sample_grid(
    path: Path,
    predicted: torch.Tensor,
    target: torch.Tensor | None = None,
    cond: torch.Tensor | None = None,
) -> None:
    """One PNG, one row per map: buildings with the transmitter (when `cond` is given), prediction,
    ground truth and |difference| (when `target` is given).

    predicted, target: (B, 1, H, W) in [0, 1]. cond: (B, C >= 2, h, w) whose first two channels are the
    buildings and the transmitter (irt4.data.condition.display_channels picks them from any
    condition), in [-1, 1] (the model's input) or [0, 1]; any h, w (resized for display).
    Maps are drawn with viridis on [0, 1]; each |difference| with magma on [0, its row's maximum],
    which is printed in the cell.
    """
    maps = predicted.detach().float().cpu().numpy()[:, 0]  # (B, H, W)
    truth = None if target is None else target.detach().float().cpu().numpy()[:, 0]
    conds = None if cond is None else cond.detach().float().cpu().numpy()
    if conds is not None and conds.min() < 0:
        conds = (conds + 1) / 2
    batch, height, width = maps.shape
    assert truth is None or truth.shape == maps.shape, (truth.shape, maps.shape)
    assert conds is None or (conds.shape[0] == batch and conds.shape[1] >= 2), conds.shape

    labels = (["buildings + Tx"] if conds is not None else []) + ["prediction"]
    if truth is not None:
        labels += ["ground truth", "|difference|"]
    cell_h, cell_w = grid_cell_size(height, width)
    columns = len(labels)
    grid = Image.new(
        "RGB",
        (columns * cell_w + (columns + 1) * GRID_PAD, GRID_HEADER + batch * cell_h + (batch + 1) * GRID_PAD),
        "white",
    )
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()

    def left(column: int) -> int:
        return GRID_PAD + column * (cell_w + GRID_PAD)

    for column, label in enumerate(labels):
        draw.text(
            (left(column) + cell_w // 2, GRID_HEADER // 2 + 1), label, fill="black", font=font, anchor="mm"
        )
    for i in range(batch):
        top = GRID_HEADER + GRID_PAD + i * (cell_h + GRID_PAD)
        cells = [] if conds is None else [_buildings_cell(conds[i], (cell_h, cell_w))]
        cells.append(_resize(_colormap("viridis", maps[i]), (cell_h, cell_w)))
        if truth is not None:
            error = np.abs(maps[i] - truth[i])
            peak = float(error.max())
            cells.append(_resize(_colormap("viridis", truth[i]), (cell_h, cell_w)))
            cells.append(_resize(_colormap("magma", error / peak if peak > 0 else error), (cell_h, cell_w)))
        for column, cell in enumerate(cells):
            grid.paste(cell, (left(column), top))
        if truth is not None:
            draw.text(
                (left(columns - 1) + 3, top + 2), f"max {peak:.3f}", fill="white", font=font, anchor="la"
            )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
