"""Training checkpoints that survive crashes: atomic writes, the last K kept, newest valid loaded.

A checkpoint is one `torch.save` dict of tensors and plain Python values only (RNG states as
tensors, the config as a plain dict), so it loads with `weights_only=True`. Files in a run folder:
`ckpt-{step:07d}.pt`, and `last.pt`, a hard link to (else a copy of) the newest.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "irt4-train-checkpoint-1"
LAST = "last.pt"
_NAME = re.compile(r"^ckpt-(\d{7,})\.pt$")


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:07d}.pt"


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync it, rename it over `path`, fsync the
    folder: a crash at any point leaves either the old file or the complete new one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _link_last(run_dir: Path, newest: Path) -> None:
    tmp = run_dir / f".{LAST}.tmp-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    try:
        os.link(newest, tmp)
    except OSError:  # a file system without hard links
        shutil.copyfile(newest, tmp)
    os.replace(tmp, run_dir / LAST)
    _fsync_dir(run_dir)


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of the ckpt-*.pt files in `run_dir`, oldest first."""
    found = ((_NAME.match(p.name), p) for p in run_dir.glob("ckpt-*.pt"))
    return sorted((int(match[1]), path) for match, path in found if match)


def save_checkpoint(run_dir: Path, state: dict[str, Any], keep: int) -> Path:
    """Write `state` (which holds "step") as ckpt-{step}.pt, point last.pt at it, keep the newest `keep`."""
    path = run_dir / checkpoint_name(state["step"])
    atomic_save({"format": CHECKPOINT_FORMAT, **state}, path)
    _link_last(run_dir, path)
    for _, old in list_checkpoints(run_dir)[:-keep]:
        old.unlink()
    return path


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a training checkpoint with weights_only=True; ValueError if it is not one."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError("not an irt4 training checkpoint")
    return checkpoint


def load_newest_valid(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest ckpt-*.pt that loads; a damaged one is logged and the one before it tried."""
    for _, path in reversed(list_checkpoints(run_dir)):
        try:
            return path, read_checkpoint(path)
        except Exception as error:  # truncated, garbage, or not ours: fall back to the previous one
            log.warning("checkpoint %s is unreadable (%s); trying the previous one", path, error)
    return None
