"""Samples/s of the RadioMapSeer loader through a DataLoader, with 0 and 2 workers.

    python bench/bench_loader.py [ROOT] [--image-size 320] [--batch 32] [--batches 20] [--repeats 3]

ROOT defaults to the committed generated dataset under tests/data/ (the first folder holding
png/buildings_complete), else a procedural root of --maps maps written to a temp dir. The reference
figure to keep fed: the reference run trained at 0.93 steps/s x batch 32, about 30 samples/s. The
"reference-style" row reads each item as the reference loader does (skimage.io.imread, numpy, / 256),
at disk resolution and without workers, for the ratio.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

from irt4.data.radiomapseer import RadioMapSeer

REPO = Path(__file__).resolve().parent.parent


def committed_root() -> Path | None:
    found = sorted(p.parent.parent for p in (REPO / "tests" / "data").glob("**/png/buildings_complete"))
    return found[0] if found else None


def procedural_root(folder: Path, maps: int) -> Path:
    sys.path.insert(0, str(REPO / "tests"))  # the tests' writer of a consistent procedural root
    from test_radiomapseer import write_root

    write_root(folder, map_ids=range(1, maps + 1))
    return folder


def samples_per_second(dataset, workers: int, batch: int, batches: int, repeats: int) -> float:
    """Median over repeats of samples/s over `batches` batches, after one warm-up batch per repeat
    (which absorbs the workers' start). Samples are drawn with replacement, so a small root serves."""
    rates = []
    for _ in range(repeats):
        sampler = RandomSampler(dataset, replacement=True, num_samples=batch * (batches + 1))
        loader = iter(DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers))
        next(loader)
        start = time.perf_counter()
        for _ in loader:
            pass
        rates.append(batches * batch / (time.perf_counter() - start))
    return statistics.median(rates)


def reference_style_per_second(dataset: RadioMapSeer, items: int) -> float | None:
    try:
        from skimage import io
    except ImportError:
        return None
    start = time.perf_counter()
    for index in range(items):
        m, k = dataset.samples[index % len(dataset)]
        buildings = np.asarray(io.imread(dataset.buildings_dir / f"{m}.png"))
        tx = np.asarray(io.imread(dataset.antennas_dir / f"{m}_{k}.png"))
        gain = np.asarray(io.imread(dataset.gain_dir / f"{m}_{k}.png"))[None] / 256
        cond = torch.from_numpy(np.stack([buildings, tx, buildings]).astype(np.float32) / 255) * 2 - 1
        _ = torch.from_numpy(gain).float() * 2 - 1, cond
    return items / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("root", nargs="?", type=Path, help="RadioMapSeer-layout root (default: see above)")
    parser.add_argument("--simulation", default="IRT4")
    parser.add_argument("--image-size", type=int, default=320, help="model resolution (default 320)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--maps", type=int, default=20, help="maps of the procedural root, if one is written")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads of the main process (0 workers read there; default: torch's)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as scratch:
        root = args.root or committed_root() or procedural_root(Path(scratch) / "root", args.maps)
        dataset = RadioMapSeer(root, split="all", simulation=args.simulation, image_size=args.image_size)
        print(f"irt4 loader benchmark, {datetime.now().isoformat(timespec='seconds')}")
        print(
            f"device: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
            f"python {platform.python_version()}, torch {torch.__version__}"
        )
        print(
            f"root {root}: {len(dataset)} samples ({args.simulation}), image_size {args.image_size}, "
            f"batch {args.batch}, {args.batches} batches x {args.repeats} repeats (median)"
        )
        for workers in args.workers:
            rate = samples_per_second(dataset, workers, args.batch, args.batches, args.repeats)
            print(f"  {workers} workers: {rate:8.1f} samples/s  ({rate / args.batch:.2f} batches/s)")
        reference = reference_style_per_second(dataset, args.batch * args.batches)
        if reference is not None and dataset.json_tx is None:
            irt4_single = samples_per_second(
                RadioMapSeer(root, split="all", simulation=args.simulation), 0, args.batch, args.batches, 1
            )
            print(
                f"  at 256, 0 workers: reference-style read {reference:.1f} samples/s, irt4 "
                f"{irt4_single:.1f} samples/s (ratio irt4 / reference {irt4_single / reference:.2f})"
            )


if __name__ == "__main__":
    main()
