"""`make demo`: procedural city maps in, radio maps out, end to end on the CPU.

Until the trained default model ships (issue 9), this runs the `small` preset with random
weights: the maps it writes show the pipeline working, not a trained prediction, and it says so.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from irt4.config import load_config
from irt4.data.city import random_city, random_transmitter, transmitter_image
from irt4.data.condition import condition_tensor
from irt4.errors import InputError
from irt4.models.layers import fold_weight_standardization
from irt4.models.radiodiff import RadioDiff
from irt4.train.logs import save_sample_grid

DISK_SIZE = 256  # RadioMapSeer maps are 256 x 256 px


def to_grey_png(values: np.ndarray, path: Path) -> None:
    """[0, 1] map -> 8-bit grey PNG (RadioMapSeer's gain encoding)."""
    Image.fromarray(np.round(np.clip(values, 0, 1) * 255).astype(np.uint8), mode="L").save(path)


def run(config: str, maps: int, steps: int, seed: int, out: Path) -> None:
    cfg = load_config(config)
    torch.manual_seed(seed)
    model = RadioDiff(cfg).eval()
    fold_weight_standardization(model.unet)
    print(
        f"irt4 demo: preset {cfg.name!r} with RANDOM weights (the trained default model comes with issue 9)"
    )
    print(f"device cpu, fp32, batch {maps}, {steps} sampling steps, backend torch (eager)")

    rng = np.random.default_rng(seed)
    cities = [random_city(DISK_SIZE, rng) for _ in range(maps)]
    sites = [random_transmitter(b, rng) for b in cities]
    cond = torch.stack(
        [
            condition_tensor(b, transmitter_image(b.shape, *site), cfg.image_size)
            for b, site in zip(cities, sites)
        ]
    )

    start = time.perf_counter()
    predicted = model.sample(cond, steps=steps, generator=torch.Generator().manual_seed(seed))
    elapsed = time.perf_counter() - start
    # back to the on-disk resolution, in the [0, 1] grey domain (contracts.md: "Metrics details")
    predicted = F.interpolate(predicted, size=(DISK_SIZE, DISK_SIZE), mode="bilinear", antialias=True)
    predicted = predicted[:, 0].clamp(0, 1).numpy()

    out.mkdir(parents=True, exist_ok=True)
    for i, (city, radio) in enumerate(zip(cities, predicted)):
        to_grey_png(city, out / f"{i}_buildings.png")
        to_grey_png(radio, out / f"{i}_radio.png")
    save_sample_grid(out / "preview.png", torch.from_numpy(predicted)[:, None], cond=cond)
    print(f"wrote {maps} radio maps and preview.png to {out}/")
    print(f"{maps / elapsed:.2f} maps/s ({elapsed:.1f} s for {maps} maps)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m irt4.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="small", help="preset or YAML config (default: small)")
    parser.add_argument("--maps", type=int, default=4, help="number of city maps to generate (default: 4)")
    parser.add_argument("--steps", type=int, default=50, help="sampling steps (default: 50)")
    parser.add_argument("--seed", type=int, default=0, help="seed for cities, weights and sampler noise")
    parser.add_argument(
        "--out", type=Path, default=Path("demo-out"), help="output folder (default: demo-out)"
    )
    args = parser.parse_args(argv)
    try:
        run(args.config, args.maps, args.steps, args.seed, args.out)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
