"""The error a latent diffusion model cannot go below on a root, before any sampling: its targets
resized to the model's resolution and back, and encoded and decoded by its VAE (posterior mean).

Both are scored as the models are (irt4-infer's protocol): 8-bit maps at 256 x 256 with their
building pixels set to 0, against the ray-traced PNGs, RMSE over all pixels in dB through the data's
gain range, and raw SSIM; per city style where the root has footprints files.

  python -m bench.floors                                         # the shipped model, city-val and city-ood
  python -m bench.floors --model RUN/last.pt --root datasets/city-ood --pairs 24
  python -m bench.floors --vae VAE_RUN/last.pt          # a retrained VAE at the shipped model's resolution

Writes <out>/<date>-floors.json and .md (default out: bench/results/floors) and prints the table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
from pathlib import Path

import numpy as np
import torch

from bench.report import write_dated

DEFAULT_ROOTS = (Path("datasets/city-val"), Path("datasets/city-ood"))


def floors_of_pair(model, item: dict, buildings: torch.Tensor, gain_db_span: float) -> dict[str, float]:
    """RMSE (dB) and raw SSIM of the resize and of the VAE round trip, for one dataset item
    (`buildings`: its (256, 256) building mask, whose pixels irt4-infer writes as 0)."""
    from irt4.data.condition import resize_maps
    from irt4.infer import zero_building_pixels
    from irt4.metrics import ssim

    truth = item["gain"][None]  # (1, 1, 256, 256) in [0, 1]
    image = item["image"][None]  # (1, 1, S, S) in [-1, 1]
    with torch.no_grad():
        decoded = model.vae.decode(model.vae.encode(image).mean)
    row = {}
    for name, small in (("resize", image), ("vae", decoded)):
        back = resize_maps(((small[0] + 1) / 2).clamp(0.0, 1.0), truth.shape[-1]).clamp(0.0, 1.0)
        back = zero_building_pixels(back, buildings[None])
        back = torch.round(back * 255) / 255  # written as 8-bit PNGs, as irt4-infer scores
        row[f"{name}_rmse_db"] = float(((back - truth[0]) ** 2).mean().sqrt()) * gain_db_span
        row[f"{name}_ssim"] = float(ssim(back[None], truth))
    return row


def measure_root(model, root: Path, pairs: int) -> list[dict]:
    from irt4.data.footprints import map_styles
    from irt4.data.pngio import read_grey
    from irt4.data.radiomapseer import RadioMapSeer, model_inputs

    dataset = RadioMapSeer(root, split="all", **model_inputs(model.cfg))
    styles = map_styles(root)
    low, high = model.cfg.data.gain_db_range
    rows = []
    for index in range(min(pairs, len(dataset))):
        item = dataset[index]
        row = {"map_id": int(item["map_id"]), "tx_index": int(item["tx_index"])}
        row["style"] = styles.get(row["map_id"], "unknown")
        buildings = torch.from_numpy(read_grey(dataset.buildings_dir / f"{row['map_id']}.png") > 0).float()
        rows.append({**row, **floors_of_pair(model, item, buildings, high - low)})
    return rows


def markdown(results: dict) -> str:
    lines = [
        f"Floors under a latent diffusion model's error, {results['date']}, model {results['model']} "
        f"({results['image_size']} px, VAE of {results.get('vae', results['model'])}), 8-bit maps at "
        "256 x 256, RMSE over all pixels in dB / raw SSIM",
        "",
        "| root / style | pairs | resize to the model's size and back | VAE encode + decode |",
        "| --- | --- | --- | --- |",
    ]
    for root, rows in results["roots"].items():
        styles = sorted({r["style"] for r in rows})
        groups = [("all", rows)] + (
            [(s, [r for r in rows if r["style"] == s]) for s in styles] if len(styles) > 1 else []
        )
        for style, group in groups:
            resize = [np.mean([r[k] for r in group]) for k in ("resize_rmse_db", "resize_ssim")]
            vae = [np.mean([r[k] for r in group]) for k in ("vae_rmse_db", "vae_ssim")]
            cells = f"{resize[0]:.2f} / {resize[1]:.3f} | {vae[0]:.2f} / {vae[1]:.3f}"
            lines.append(f"| {root} / {style} | {len(group)} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from irt4.models.bundle import load_model

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=Path("irt4/assets/default-small.safetensors"),
        help="diffusion bundle or checkpoint whose VAE and resolution are measured (default: the shipped "
        "one)",
    )
    parser.add_argument(
        "--vae",
        type=Path,
        help="measure this VAE instead of the model's: an `irt4-train vae` checkpoint or a diffusion bundle "
        "with the model's VAE config",
    )
    parser.add_argument(
        "--root",
        type=Path,
        action="append",
        help="RadioMapSeer-layout root (repeatable; default: city-val, city-ood)",
    )
    parser.add_argument("--pairs", type=int, default=24, help="pairs per root (default: %(default)s)")
    parser.add_argument(
        "--out", type=Path, default=Path("bench/results/floors"), help="folder of the results"
    )
    args = parser.parse_args(argv)

    model, _ = load_model(args.model)
    if args.vae is not None:
        from irt4.train.stages import trained_vae_weights

        model.vae.load_state_dict(trained_vae_weights(args.vae, model.cfg, "--vae"))
    roots = args.root or [root for root in DEFAULT_ROOTS if root.is_dir()]
    if not roots:
        parser.error("no --root given and no datasets/city-val or datasets/city-ood here")
    results = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "model": str(args.model),
        "vae": str(args.vae or args.model),
        "image_size": model.cfg.image_size,
        "roots": {str(root): measure_root(model, root, args.pairs) for root in roots},
    }
    write_dated(args.out, "floors", results, markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
