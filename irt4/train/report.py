"""The training report: RUN/report.md with loss.png and lr.png beside it (issue 4, item 6).

Written at the end of every run and on demand (`irt4-train report RUN`), from the run folder alone:
run.json (status, steps, throughput, hardware), config.yaml and metrics.jsonl. A run that is still
going, was interrupted or logged nothing still gets a report that says so.
"""

from __future__ import annotations

import json
import math
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from irt4.config import config_from_dict
from irt4.errors import InputError
from irt4.train.logs import METRICS_JSONL, read_metrics

REPORT = "report.md"
LOSS_PLOT = "loss.png"
LR_PLOT = "lr.png"
MILESTONES = 6  # rows of the loss table, about
SMOOTH_MIN_POINTS = 25  # a loss curve this long gets a smoothed copy (over a window of ~1/12 of it)
# columns of metrics.jsonl that are not losses (they go elsewhere in the report)
NOT_LOSSES = {"step", "time", "loss", "lr", "samples_per_s", "steps_per_s"}
NOT_LOSSES |= {"nonfinite_loss", "skipped_steps", "nan_skipped", "train_time_s"}

STATUS_TEXT = {
    "completed": "all planned steps done",
    "running": "running (or ended without closing its record): numbers are as of the last log",
    "interrupted": "interrupted by a signal; a checkpoint was saved, continue with --resume",
    "stopped_nan": "stopped on a non-finite loss; the last good state was saved",
    "failed": "failed with an error (see the run's log); the last checkpoint is intact",
}


def _status_text(record: dict[str, Any]) -> str:
    if record.get("status") == "completed" and record.get("stop_reason") == "time_budget":
        return "stopped when the time budget was spent; the final state was saved"
    return STATUS_TEXT.get(record.get("status"), "unknown status")


# ---- numbers for people ----------------------------------------------------------------------------


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h {minutes:02d} min"
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def _number(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}g}"


def nice_interval(span: float, count: int = MILESTONES - 1) -> int:
    """An interval of 1, 2, 2.5 or 5 x 10^k steps that cuts `span` into about `count` parts."""
    if span <= count:
        return 1
    raw = span / count
    magnitude = 10 ** math.floor(math.log10(raw))
    best = min((1, 2, 2.5, 5, 10), key=lambda m: abs(m * magnitude - raw))
    return max(1, int(best * magnitude))


def milestone_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows nearest to 0, k, 2k, ... (k a nice interval), always with the first and the last row."""
    if not rows:
        return []
    steps = np.array([row["step"] for row in rows])
    interval = nice_interval(steps[-1])
    targets = np.arange(0, steps[-1] + 1, interval)
    chosen = {0, len(rows) - 1}
    chosen |= {int(np.abs(steps - target).argmin()) for target in targets}
    return [rows[i] for i in sorted(chosen)]


def _smooth(values: np.ndarray, log_scale: bool) -> np.ndarray:
    """Centred moving average over ~1/12 of the curve (no lag, unlike an exponential average), in
    log space on a log axis; the window shrinks symmetrically at the ends, which stay in place."""
    index = np.arange(len(values))
    half = np.minimum(len(values) // SMOOTH_MIN_POINTS, np.minimum(index, len(values) - 1 - index))
    data = np.log(values) if log_scale else values
    sums = np.concatenate([[0.0], np.cumsum(data)])
    low, high = index - half, index + half + 1
    smoothed = (sums[high] - sums[low]) / (high - low)
    return np.exp(smoothed) if log_scale else smoothed


# ---- plots -----------------------------------------------------------------------------------------


def _figure():
    from matplotlib.figure import Figure  # no pyplot: no global state, no display backend

    figure = Figure(figsize=(7, 4), dpi=110, layout="tight")
    return figure, figure.add_subplot()


def _log_minor_label(value: float, _position: int) -> str:
    """Label the 2 and 5 minor ticks of a log axis, whose decades alone are too sparse to read."""
    if value <= 0:
        return ""
    return f"{value:g}" if round(value / 10 ** math.floor(math.log10(value))) in (2, 5) else ""


def _save(figure, axes, path: Path, ylabel: str) -> None:
    from matplotlib.ticker import FuncFormatter

    # plain "%g" tick labels, set after the y scale (which resets them): the default 10^k labels
    # of a log axis go through mathtext, which takes seconds to set up
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axes.yaxis.set_minor_formatter(FuncFormatter(_log_minor_label))
    axes.set_xlabel("step")
    axes.set_ylabel(ylabel)
    axes.legend()
    figure.savefig(path)


def plot_loss(path: Path, steps: np.ndarray, losses: np.ndarray, resumed_from: list[int]) -> None:
    figure, axes = _figure()
    positive = losses[losses > 0]
    log_scale = len(positive) == len(losses) and positive.max() / positive.min() > 10
    smooth = len(losses) >= SMOOTH_MIN_POINTS
    axes.plot(
        steps,
        losses,
        color="tab:blue",
        alpha=0.35 if smooth else 1.0,
        linewidth=1,
        marker="." if len(steps) < 60 else None,
        label="logged (mean over each logging window)",
    )
    if smooth:
        axes.plot(steps, _smooth(losses, log_scale), color="tab:blue", linewidth=2, label="smoothed")
    if log_scale:
        axes.set_yscale("log")
    for i, step in enumerate(resumed_from):
        axes.axvline(step, color="grey", linestyle=":", linewidth=1, label="resumed" if i == 0 else None)
    axes.grid(True, which="both", alpha=0.3)
    _save(figure, axes, path, "loss")


def plot_lr(
    path: Path, steps: np.ndarray, lrs: np.ndarray, planned: tuple[np.ndarray, np.ndarray] | None
) -> None:
    figure, axes = _figure()
    if planned is not None:
        axes.plot(*planned, color="grey", linewidth=1, linestyle="--", label="schedule (config)")
    if len(steps):
        axes.plot(steps, lrs, color="tab:orange", marker=".", linewidth=1.5, label="logged")
    axes.grid(True, alpha=0.3)
    _save(figure, axes, path, "learning rate")


def planned_lr(
    config: dict[str, Any], section: str, total_steps: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """The schedule the config asks for, over the whole run; None when the config does not load.
    Logged step s is the s-th optimizer step, which ran at lr_at(s - 1)."""
    from irt4.train.schedule import lr_at

    try:
        trainer = getattr(config_from_dict(config), section)
    except InputError:
        return None
    steps = np.unique(np.linspace(1, max(total_steps, 1), 2000).astype(int))
    return steps, np.array([lr_at(int(step) - 1, trainer) for step in steps])


# ---- the report ------------------------------------------------------------------------------------


def _read_yaml(path: Path) -> tuple[dict[str, Any], str]:
    if not path.is_file():
        return {}, ""
    text = path.read_text()
    data = yaml.safe_load(text)
    return (data if isinstance(data, dict) else {}), text


def _schedule_text(trainer: dict[str, Any], total_steps: int | None) -> str:
    name = trainer.get("lr_schedule")
    lr, min_lr = _number(trainer.get("lr")), _number(trainer.get("min_lr"))
    if name == "cosine_restarts":
        what = (
            f"cosine with warm restarts, from {lr} down to a floor of {min_lr} over "
            f"{_number(trainer.get('restart_period'))} steps, then back to {lr}"
        )
    elif name == "poly_reference":
        what = (
            f"the reference code's polynomial decay, {lr} x max((1 - step/{_number(total_steps)})^0.96, "
            f"{min_lr}) (min_lr acts as a factor, so the lr decays to ~{_number(_product(trainer))})"
        )
    else:
        what = f"{name} (lr {lr}, min_lr {min_lr})"
    if trainer.get("warmup_steps"):
        what += f", after {_number(trainer['warmup_steps'])} steps of linear warm-up"
    return what


def _product(trainer: dict[str, Any]) -> float | None:
    if isinstance(trainer.get("lr"), (int, float)) and isinstance(trainer.get("min_lr"), (int, float)):
        return trainer["lr"] * trainer["min_lr"]
    return None


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def write_report(run_dir: Path) -> Path:
    """Write run_dir/report.md (and loss.png, lr.png when there are metrics); returns its path."""
    run_dir = Path(run_dir)
    run_json = run_dir / "run.json"
    record: dict[str, Any] = {}
    if run_json.is_file():
        record = json.loads(run_json.read_text())
    config, config_text = _read_yaml(run_dir / "config.yaml")
    rows = read_metrics(run_dir / METRICS_JSONL)

    stage = record.get("stage", "?")
    section = "vae_trainer" if stage == "vae" else "trainer"
    trainer = config.get(section) or {}
    status = record.get("status", "unknown")
    step, total = record.get("step"), record.get("total_steps") or trainer.get("train_num_steps")
    loss_rows = [
        row for row in rows if isinstance(row.get("loss"), (int, float)) and math.isfinite(row["loss"])
    ]
    lr_rows = [row for row in rows if isinstance(row.get("lr"), (int, float))]
    resumed_from = list(record.get("resumed_from") or [])

    lines = [f"# Training report: {stage} stage, {config.get('name', run_dir.name)}", ""]
    lines.append(f"Run folder `{run_dir}`, report written {datetime.now(UTC).isoformat(timespec='seconds')}.")
    lines.append("")
    done = _number(step)
    if isinstance(step, int) and isinstance(total, int) and total > 0:
        done += f" of {total:,} planned ({100 * step / total:.0f} %)"
    summary = [
        ["Status", f"**{status}**: {_status_text(record)}"],
        ["Started", str(record.get("started") or "–")],
        ["Finished", str(record.get("finished") or "–")],
        ["Duration", human_duration(record.get("duration_s"))],
        ["Steps", done],
    ]
    if isinstance(record.get("train_time_s"), (int, float)):
        spent = human_duration(record["train_time_s"])
        budget = record.get("time_budget_s")
        if isinstance(budget, (int, float)):
            spent += f" of a {human_duration(budget)} budget"
        summary.append(["Training time", spent + " (steps only: no startup, checkpoints or sample grids)"])
    if record.get("init_from"):
        summary.append(["Started from", f"the trained weights of `{record['init_from']}` (`--init-from`)"])
    if loss_rows:
        final, best = loss_rows[-1], min(loss_rows, key=lambda row: row["loss"])
        summary.append(["Final loss", f"{_number(final['loss'])} (step {final['step']:,})"])
        summary.append(["Lowest logged loss", f"{_number(best['loss'])} (step {best['step']:,})"])
    lines += _table(["", ""], summary) + [""]

    lines += ["## Loss", ""]
    if not rows:
        lines += ["No metrics logged (metrics.jsonl is missing or empty).", ""]
    elif not loss_rows:
        lines += ["No finite loss logged yet.", ""]
    else:
        parts = [
            name for name in dict.fromkeys(k for row in loss_rows for k in row) if name not in NOT_LOSSES
        ]
        table = [
            [f"{row['step']:,}", _number(row["loss"]), _number(row.get("lr"), 3)]
            + [_number(row.get(name)) for name in parts]
            for row in milestone_rows(loss_rows)
        ]
        lines.append("Loss averaged over each logging window, at about evenly spaced steps and the last one:")
        lines += [""] + _table(["step", "loss", "lr", *parts], table) + [""]
        steps = np.array([row["step"] for row in loss_rows])
        plot_loss(run_dir / LOSS_PLOT, steps, np.array([row["loss"] for row in loss_rows]), resumed_from)
        lines += [f"![loss]({LOSS_PLOT})", ""]

    lines += ["## Learning-rate schedule", ""]
    if trainer:
        lines.append(f"`{trainer.get('lr_schedule')}`: {_schedule_text(trainer, total)}.")
        lines += ["", f"AdamW, weight decay {_number(trainer.get('weight_decay'))}.", ""]
    else:
        lines += ["No configuration found (config.yaml is missing).", ""]
    planned = planned_lr(config, section, total) if trainer and isinstance(total, int) else None
    if lr_rows or planned is not None:
        lr_steps = np.array([row["step"] for row in lr_rows])
        plot_lr(run_dir / LR_PLOT, lr_steps, np.array([row["lr"] for row in lr_rows]), planned)
        lines += [f"![learning rate]({LR_PLOT})", ""]

    lines += ["## Configuration", ""]
    data = config.get("data") or {}
    batch, accumulate, world = record.get("batch_size"), record.get("grad_accum"), record.get("world_size")

    def field(name: str) -> str:
        return _number(trainer.get(name))

    key_fields = [
        ["preset", str(config.get("name", "–"))],
        ["image size", _number(config.get("image_size"))],
        [
            "batch",
            f"{_number(batch)} per process x {_number(accumulate)} accumulation x {_number(world)} "
            f"processes = {_number(_global_batch(batch, accumulate, world))} per step",
        ],
        [
            "EMA",
            f"beta {field('ema_beta')}, from step {field('ema_update_after_step')}, "
            f"every {field('ema_update_every')} steps",
        ],
        [
            "checkpoints / logs",
            f"every {field('save_every')} / {field('log_every')} steps, "
            f"last {field('keep_checkpoints')} kept",
        ],
        ["non-finite loss", str(trainer.get("nan_policy", "–"))],
        ["seed", field("seed")],
        ["data", f"{data.get('simulation', '–')}, split {data.get('split', '–')}"],
    ]
    lines += _table(["field", "value"], key_fields) + [""]
    if config_text:
        lines += ["<details><summary>Full configuration (config.yaml)</summary>", "", "```yaml"]
        lines += [config_text.rstrip("\n"), "```", "", "</details>", ""]

    lines += ["## Hardware and throughput", ""]
    hardware = record.get("hardware") or {}
    steps_per_s, samples_per_s = record.get("steps_per_s"), record.get("samples_per_s")
    throughput = [
        ["device", str(record.get("device", "–"))],
        ["GPU", str(hardware.get("gpu") or "none")],
        ["CPU", str(hardware.get("cpu", "–"))],
        ["torch / irt4", f"{hardware.get('torch', '–')} / {hardware.get('irt4', '–')}"],
        ["processes (world size)", _number(world)],
        ["precision", str(record.get("precision", "–"))],
        ["torch.compile", {True: "yes", False: "no"}.get(record.get("compile"), "–")],
        ["CUDA graphs", {True: "yes", False: "no"}.get(record.get("cuda_graphs"), "–")],
        ["steps/s", _number(steps_per_s, 3)],
        ["samples/s", _number(samples_per_s, 3)],
    ]
    lines += _table(["", ""], throughput) + [""]
    if stage == "ldm":
        lines += [
            "The reference run: 0.93 steps/s (about 30 samples/s) at batch 32 in fp32, 15 h for 50,000 "
            "steps.",
            "",
        ]

    lines += ["## Resumes", ""]
    if resumed_from:
        lines += ["Resumed from step " + ", ".join(f"{s:,}" for s in resumed_from) + ".", ""]
    else:
        lines += ["None: one uninterrupted session.", ""]

    skipped = [row["step"] for row in rows if row.get("nonfinite_loss") or row.get("nan_skipped")]
    if skipped:
        shown = ", ".join(f"{s:,}" for s in skipped[:20]) + (", ..." if len(skipped) > 20 else "")
        lines += [
            "## Non-finite losses",
            "",
            f"{len(skipped)} step(s) had a non-finite loss "
            f"(policy `{trainer.get('nan_policy', '?')}`): steps {shown}.",
            "",
        ]

    lines += ["## Checkpoints", ""]
    checkpoints = record.get("checkpoints") or []
    lines += [f"- `{name}`" for name in checkpoints] or ["None saved."]
    lines.append("")

    path = run_dir / REPORT
    tmp = path.with_name(f".{REPORT}.tmp-{os.getpid()}")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, path)
    return path


def _global_batch(batch: Any, accumulate: Any, world: Any) -> int | None:
    if all(isinstance(v, int) for v in (batch, accumulate, world)):
        return batch * accumulate * world
    return None
