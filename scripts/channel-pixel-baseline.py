"""How much of the radio maps the physics condition channels explain on their own, with no spatial
context: a small per-pixel MLP from (free_space, los, walls, building_metres, log_distance)
to the grey gain, fitted on the outdoor pixels of a training root and scored on other roots like
irt4-infer scores models (8-bit maps at 256 x 256, RMSE over all pixels in dB), per city style, next
to free space masked by line of sight (no offset).

  .venv/bin/python scripts/channel-pixel-baseline.py [--train datasets/city-train]
      [--eval datasets/city-val --eval datasets/city-ood] [--steps 1500] [--seed 0]

A lower bound for what a model that reads these channels should reach, and a check that the channels
carry over to a city style no training map has.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from irt4.data.channels import channel_maps
from irt4.data.footprints import map_styles
from irt4.data.gainpack import read_sample
from irt4.data.pngio import read_grey

NAMES = ("free_space", "los", "walls", "building_metres", "log_distance")


def load_pairs(root: Path) -> list[tuple[int, np.ndarray, torch.Tensor, torch.Tensor]]:
    """(map id, buildings (256, 256), channels (C, 256, 256), grey gain (256, 256)) per pair."""
    pairs = []
    for path in sorted((root / "antenna").glob("*.json"), key=lambda p: int(p.stem)):
        buildings = (read_grey(root / "png" / "buildings_complete" / f"{path.stem}.png") > 127).astype(
            np.float32
        )
        for k, (col, row) in enumerate(json.loads(path.read_text())):
            grey, _ = read_sample(root, "IRT4", int(path.stem), k)  # plain or packed
            gain = torch.from_numpy(grey / 255.0).float()
            pairs.append((int(path.stem), buildings, channel_maps(buildings, (row, col), NAMES)[0], gain))
    return pairs


def fit(pairs, steps: int, samples: int = 400_000) -> torch.nn.Module:
    outdoor = [torch.from_numpy(b).reshape(-1) == 0 for _, b, _, _ in pairs]
    x = torch.cat([c.reshape(len(NAMES), -1).T[o] for (_, _, c, _), o in zip(pairs, outdoor)])
    y = torch.cat([g.reshape(-1)[o] for (_, _, _, g), o in zip(pairs, outdoor)])
    pick = torch.randperm(len(x))[:samples]
    x, y = x[pick], y[pick]
    net = torch.nn.Sequential(
        torch.nn.Linear(len(NAMES), 64),
        torch.nn.SiLU(),
        torch.nn.Linear(64, 64),
        torch.nn.SiLU(),
        torch.nn.Linear(64, 1),
    )
    optimizer = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(steps):
        batch = torch.randint(len(x), (8192,))
        loss = ((net(x[batch])[:, 0] - y[batch]) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net


@torch.no_grad()
def score(net, pairs, styles: dict[int, str]) -> dict[str, tuple[float, float, int]]:
    """{style: (MLP RMSE dB, free space RMSE dB, pairs)}, and "all"."""
    rows: dict[str, list[tuple[float, float]]] = {}
    for map_id, buildings, channels, gain in pairs:
        outdoor = torch.from_numpy(1 - buildings)
        predicted = net(channels.reshape(len(NAMES), -1).T)[:, 0].clamp(0, 1).reshape(gain.shape) * outdoor
        predicted = torch.round(predicted * 255) / 255
        free_space = torch.round(channels[0] * channels[1] * 255) / 255
        errors = [float(((m - gain) ** 2).mean().sqrt()) * 100 for m in (predicted, free_space)]
        rows.setdefault(styles.get(map_id, "unknown"), []).append(tuple(errors))
    table = {
        style: (*np.mean(values, axis=0).round(2).tolist(), len(values)) for style, values in rows.items()
    }
    everything = [value for values in rows.values() for value in values]
    table["all"] = (*np.mean(everything, axis=0).round(2).tolist(), len(everything))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train", type=Path, default=Path("datasets/city-train"))
    parser.add_argument("--eval", type=Path, action="append", help="default: datasets/city-val and city-ood")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    train = load_pairs(args.train)
    net = fit(train, args.steps)
    print(f"per-pixel MLP over {', '.join(NAMES)}; fitted on {len(train)} pairs of {args.train}")
    print("root / style: MLP RMSE dB | free space (LoS-masked) RMSE dB | pairs")
    for root in args.eval or [Path("datasets/city-val"), Path("datasets/city-ood")]:
        for style, (mlp, free_space, count) in score(net, load_pairs(root), map_styles(root)).items():
            print(f"{root} / {style}: {mlp:.2f} | {free_space:.2f} | {count}")


if __name__ == "__main__":
    main()
