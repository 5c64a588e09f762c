"""Condition channels (irt4.data.channels): milliseconds per 256 x 256 map on one CPU thread.

For each map of a RadioMapSeer-layout root and each of its transmitters: every channel the module
knows, computed together (one polar sweep serves the three line channels), as the loader computes
them for a model that names them all; the line sweep alone; and, on the first few pairs, the
per-pixel reference with how far the sweep lies from it (line-of-sight agreement, mean |walls| and
|metres| differences over outdoor pixels).

  python -m bench.channels                               # datasets/city-val, 20 pairs
  python -m bench.channels --root tests/data/synth-irt4 --pairs 12 --out /tmp/channels

Writes <out>/<date>-channels.json and .md (default out: bench/results/channels) and prints the table.
Timing is measured, never asserted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from bench.report import write_dated
from irt4.config import CONDITION_CHANNELS


def timed_ms(fn, repeats: int) -> float:
    fn()  # warm-up (the sweep's tables are built once per map size)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def pairs_of(root: Path, limit: int) -> list[tuple[np.ndarray, tuple[int, int]]]:
    from irt4.data.pngio import read_grey

    pairs = []
    for path in sorted((root / "antenna").glob("*.json"), key=lambda p: int(p.stem)):
        buildings = (read_grey(root / "png" / "buildings_complete" / f"{path.stem}.png") > 127).astype(
            np.float32
        )
        for col, row in json.loads(path.read_text()):  # [[x, y], ...] = [[col, row], ...]
            pairs.append((buildings, (int(row), int(col))))
            if len(pairs) == limit:
                return pairs
    return pairs


def measure_pair(buildings: np.ndarray, tx: tuple[int, int], repeats: int, with_reference: bool) -> dict:
    from irt4.data import channels

    blocked = torch.from_numpy(buildings > 0.5)[None]
    tx_tensor = torch.tensor([tx], dtype=torch.float32)
    row = {
        "all_channels_ms": timed_ms(
            lambda: channels.channel_maps(buildings, tx, CONDITION_CHANNELS), repeats
        ),
        "sweep_ms": timed_ms(lambda: channels.ray_profiles(blocked, tx_tensor), repeats),
    }
    if with_reference:
        start = time.perf_counter()
        walls_ref, metres_ref = channels.reference_profiles(blocked, tx_tensor)
        row["reference_ms"] = 1e3 * (time.perf_counter() - start)
        walls, metres = channels.ray_profiles(blocked, tx_tensor)
        outdoor = ~blocked
        row["los_agreement"] = float(((metres == 0) == (metres_ref == 0))[outdoor].float().mean())
        row["walls_mean_abs_diff"] = float((walls - walls_ref)[outdoor].abs().mean())
        row["metres_mean_abs_diff"] = float((metres - metres_ref)[outdoor].abs().mean())
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root", type=Path, default=Path("datasets/city-val"), help="a RadioMapSeer-layout root"
    )
    parser.add_argument(
        "--pairs", type=int, default=20, help="(map, transmitter) pairs (default: %(default)s)"
    )
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per pair (default: %(default)s)")
    parser.add_argument("--reference-pairs", type=int, default=3, help="pairs compared with the reference")
    parser.add_argument(
        "--out", type=Path, default=Path("bench/results/channels"), help="folder of the results"
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    pairs = pairs_of(args.root, args.pairs)
    if not pairs:
        parser.error(f"{args.root}: no antenna/*.json transmitters found")
    rows = [
        measure_pair(buildings, tx, args.repeats, k < args.reference_pairs)
        for k, (buildings, tx) in enumerate(pairs)
    ]
    results = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": 1,
        "root": str(args.root),
        "pairs": len(rows),
        "rows": rows,
    }
    for key in ("all_channels_ms", "sweep_ms"):
        values = [r[key] for r in rows]
        results[key] = {"median": float(np.median(values)), "max": float(np.max(values))}
    write_dated(args.out, "channels", results, markdown(results))
    return 0


def markdown(results: dict) -> str:
    every, sweep = results["all_channels_ms"], results["sweep_ms"]
    lines = [
        f"Condition channels, {results['date']}, {results['machine']}, torch {results['torch']}, "
        f"one thread, {results['pairs']} pairs of {results['root']}",
        "",
        "| computed | median ms per map | max ms |",
        "| --- | --- | --- |",
        f"| all {len(CONDITION_CHANNELS)} channels | {every['median']:.1f} | {every['max']:.1f} |",
        f"| line sweep alone | {sweep['median']:.1f} | {sweep['max']:.1f} |",
    ]
    compared = [r for r in results["rows"] if "reference_ms" in r]
    if compared:

        def mean(key: str) -> float:
            return float(np.mean([r[key] for r in compared]))

        lines += [
            "",
            f"against the per-pixel reference on {len(compared)} pairs ({mean('reference_ms'):.0f} ms each): "
            f"line of sight agrees on {100 * mean('los_agreement'):.2f} % of outdoor pixels; mean |walls| "
            f"difference {mean('walls_mean_abs_diff'):.2f}, mean |metres| difference "
            f"{mean('metres_mean_abs_diff'):.2f} m",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
