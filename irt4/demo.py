"""`make demo`: the default model turns the committed test maps into radio maps, scored against ray tracing.

The default model (`irt4/assets/default-small.safetensors`, the `small` preset, see
irt4/assets/README.md) samples every (map, transmitter) pair of the held-out test set
`tests/data/synth-irt4` (ray-traced with another seed than the training maps) with 3 steps on the
CPU (`DEMO_STEPS`). Beside it, on the same pairs and with the same metrics: the RadioUNet-style
regressor trained with the same budget (`baseline-small.safetensors`) and a free-space map masked by
line of sight; then the same on pairs of the out-of-distribution set `datasets/city-ood` (a city
style no training map has), and a table per city style (the styles of the maps' footprints files).
Everything goes to demo-out/: each model's PNG maps and metrics (the OOD set's under ood/), and
preview.png.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from irt4.baseline import free_space, load_baseline, transmitter_rowcol
from irt4.data.footprints import map_styles
from irt4.data.pngio import MAP_SIZE, read_grey
from irt4.data.radiomapseer import RadioMapSeer, model_inputs
from irt4.errors import InputError
from irt4.infer import (
    DatasetPairs,
    InferenceOptions,
    InferenceResult,
    collect_metrics,
    run_inference,
    score_map,
    write_metrics,
    write_png,
)
from irt4.models.bundle import load_model

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_MODEL = ASSETS / "default-small.safetensors"
BASELINE_MODEL = ASSETS / "baseline-small.safetensors"
TEST_DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "synth-irt4"
OOD_DATA = Path(__file__).resolve().parents[1] / "datasets" / "city-ood"
SHOWN = ("rmse_raw", "ssim_raw", "psnr_raw", "rmse_thr", "ssim_thr", "rmse_db")
PREVIEW_ROWS = 4
# The public RadioDiff sampling config for IRT4 takes 3 steps. The shipped model also scores best with
# 1-3: on 58 pairs of training-set maps it never trained on, raw RMSE 0.0893 at 3 steps against 0.0980
# at 50 (irt4/assets/README.md, "Sampling steps").
DEMO_STEPS = 3


def _pairs(data: Path, cfg, limit: int | None) -> DatasetPairs:
    source = DatasetPairs(RadioMapSeer(data, split="all", **model_inputs(cfg)))
    if limit is not None:
        source.pairs = source.pairs[:limit]
    return source


def _options(out: Path, args) -> InferenceOptions:
    return InferenceOptions(
        out=out, batch_size=args.batch_size, steps=args.steps, seed=args.seed, device="cpu", overwrite=True
    )


def _protocol(args, cfg) -> dict:
    return {
        "data": str(args.data),
        "scales": "raw = gain/255; thr = clip((x - 0.2)/0.8, 0, 1); rmse_db through gain_db_range",
        "gain_db_range": list(cfg.data.gain_db_range),
        "steps": args.steps,
        "seed": args.seed,
    }


def run_free_space(source: DatasetPairs, options: InferenceOptions, db_range) -> InferenceResult:
    """The free-space reference, written and scored exactly like the models."""
    options.out.mkdir(parents=True, exist_ok=True)
    result = InferenceResult()
    start = time.perf_counter()
    rows = []
    for index, pair in enumerate(source.pairs):
        item = source.load(index)
        grey = free_space(
            item.buildings.float(), transmitter_rowcol(item.cond[None]), MAP_SIZE, db_range=db_range
        )
        written = np.round(grey[0, 0].numpy() * 255).astype(np.uint8)
        write_png(options.out / f"{pair.name}.png", written)
        rows.append(score_map(pair, item, written, options, db_range))
        result.written += 1
    result.seconds = time.perf_counter() - start
    collect_metrics(result, rows)
    return result


def comparison_table(results: dict[str, InferenceResult]) -> str:
    """One line per model: the headline metrics (mean over maps) and maps/s."""
    header = f"{'model':<28}" + "".join(f"{name:>10}" for name in SHOWN) + f"{'maps/s':>9}"
    lines = [header, "-" * len(header)]
    for label, result in results.items():
        values = "".join(f"{result.summary[name][0]:>10.4f}" for name in SHOWN)
        lines.append(f"{label:<28}{values}{result.maps_per_s:>9.2f}")
    return "\n".join(lines)


def write_preview(source: DatasetPairs, folders: dict[str, Path], path: Path, rows: int) -> None:
    """preview.png: buildings + transmitter, each model's map, and the ray-traced ground truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = min(rows, len(source.pairs))
    columns = ["buildings + Tx", *folders, "ray-traced (truth)"]
    figure, axes = plt.subplots(rows, len(columns), figsize=(2.2 * len(columns), 2.2 * rows), squeeze=False)
    for row in range(rows):
        pair, item = source.pairs[row], source.load(row)
        tx = transmitter_rowcol(item.cond[None])[0]
        images = [item.buildings.numpy()]
        images += [read_grey(folder / f"{pair.name}.png") / 255.0 for folder in folders.values()]
        images.append(item.gain.numpy())
        for column, (axis, image) in enumerate(zip(axes[row], images)):
            axis.imshow(image, cmap="gray" if column == 0 else "viridis", vmin=0, vmax=1)
            if column == 0:
                axis.plot(float(tx[1]), float(tx[0]), "o", mfc="none", mec="red", ms=6)
                axis.set_ylabel(pair.name, fontsize=8)
            if row == 0:
                axis.set_title(columns[column], fontsize=8)
            axis.set_xticks([])
            axis.set_yticks([])
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def evaluate(
    model, regressor, data: Path, limit: int | None, out: Path, args
) -> tuple[dict, dict, DatasetPairs]:
    """The diffusion model, the regressor (if any) and free space on the pairs of `data`, written under
    `out`: ({label: InferenceResult}, {column name: folder}, the pairs)."""
    cfg = model.cfg
    source = _pairs(data, cfg, limit)
    protocol = {**_protocol(args, cfg), "data": str(data)}
    results: dict[str, InferenceResult] = {}
    folders: dict[str, Path] = {}

    folder = out / "diffusion"
    results[f"diffusion ({cfg.name}, {args.steps} steps)"] = run_inference(
        model, source, _options(folder, args)
    )
    write_metrics(results[next(reversed(results))], _options(folder, args), protocol)
    folders["irt4 diffusion"] = folder

    if regressor is not None:
        folder = out / "baseline"
        ours, theirs = model_inputs(cfg), model_inputs(regressor.cfg)
        regressor_source = source if theirs == ours else _pairs(data, regressor.cfg, limit)
        results["RadioUNet-style regressor"] = run_inference(
            regressor, regressor_source, _options(folder, args)
        )
        write_metrics(results["RadioUNet-style regressor"], _options(folder, args), protocol)
        folders["regressor"] = folder

    folder = out / "free-space"
    results["free space, LoS-masked"] = run_free_space(source, _options(folder, args), cfg.data.gain_db_range)
    write_metrics(results["free space, LoS-masked"], _options(folder, args), protocol)
    folders["free space"] = folder
    return results, folders, source


def per_style_table(results_by_set: dict[str, dict[str, InferenceResult]], styles_by_set: dict) -> str:
    """RMSE (dB) / SSIM (raw) of each model, per set and city style (the styles of the maps'
    footprints files), means over the pairs of that style."""
    labels = list(next(iter(results_by_set.values())))
    header = f"{'set / style':<24}{'pairs':>6}" + "".join(f"{label[:26]:>28}" for label in labels)
    lines = [header, "-" * len(header)]
    for set_name, results in results_by_set.items():
        styles = styles_by_set[set_name]
        groups: dict[str, list[tuple[int, int]]] = {}
        for row in next(iter(results.values())).per_pair_metrics:
            key = (row["map_id"], row["tx_index"])
            groups.setdefault(styles.get(row["map_id"], "unknown"), []).append(key)
        for style, keys in sorted(groups.items()):
            cells = []
            for label in labels:
                by_pair = {(r["map_id"], r["tx_index"]): r for r in results[label].per_pair_metrics}
                rmse = np.mean([by_pair[k]["rmse_db"] for k in keys])
                ssim = np.mean([by_pair[k]["ssim_raw"] for k in keys])
                cells.append(f"{rmse:>17.2f} / {ssim:.3f}")
            lines.append(f"{set_name + ' / ' + style:<24}{len(keys):>6}" + "".join(cells))
    return "\n".join(lines)


def run(args) -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, info = load_model(args.model)
    cfg = model.cfg
    regressor = load_baseline(args.baseline)[0] if args.baseline is not None else None
    sets = {"test": (args.data, args.maps, args.out)}
    if args.ood is not None:
        if (args.ood / "png").is_dir():
            sets["ood"] = (args.ood, args.ood_pairs, args.out / "ood")
        else:
            print(f"no out-of-distribution set at {args.ood} (--no-ood skips it): scoring the test set only")
    print(
        f"irt4 demo: default model {args.model.name} (preset {cfg.name!r}, {info['weights']} weights), "
        f"CPU, fp32, batch {args.batch_size}, {args.steps} sampling steps, backend torch (eager)"
    )
    results_by_set, styles_by_set = {}, {}
    for name, (data, limit, out) in sets.items():
        results, folders, source = evaluate(model, regressor, data, limit, out, args)
        results_by_set[name], styles_by_set[name] = results, map_styles(data)
        if name == "test":
            write_preview(source, folders, args.out / "preview.png", PREVIEW_ROWS)
        held_out = "held out from training" if name == "test" else "a city style no training map has"
        print(f"\n{name}: {len(source.pairs)} (map, transmitter) pairs of {data} ({held_out})")
        print(comparison_table(results))
    print(
        "\nmeans over the pairs, scored from the written 8-bit PNGs at 256 x 256 (raw: gain/255; thr: "
        "RadioUNet's threshold scale; rmse_db in dB)\n"
    )
    print("per city style, RMSE (dB) / SSIM (raw):")
    print(per_style_table(results_by_set, styles_by_set))
    if args.step_curve:
        print("\nthe diffusion model by sampling steps, test set, RMSE (dB) / SSIM (raw):")
        source = _pairs(args.data, cfg, args.maps)
        for steps in args.step_curve:
            options = _options(args.out / f"steps-{steps}", args)
            options.steps = steps
            result = run_inference(model, source, options)
            summary = result.summary
            print(f"{steps:>4} steps: {summary['rmse_db'][0]:.2f} / {summary['ssim_raw'][0]:.4f}")
    print(f"\nwrote maps, metrics (metrics.csv/json per model and set) and preview.png to {args.out}/")


def _step_list(text: str) -> list[int]:
    try:
        steps = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected step counts like 1,3,10,50, got {text!r}") from None
    if not steps or min(steps) < 1:
        raise argparse.ArgumentTypeError(f"step counts must be at least 1, got {text!r}")
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m irt4.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="diffusion bundle or checkpoint")
    parser.add_argument(
        "--baseline",
        type=Path,
        default=BASELINE_MODEL,
        help="regressor bundle to compare with (default: the shipped one)",
    )
    parser.add_argument("--no-baseline", dest="baseline", action="store_const", const=None)
    parser.add_argument("--data", type=Path, default=TEST_DATA, help="RadioMapSeer-layout test set")
    parser.add_argument("--maps", type=int, default=None, help="only the first N pairs (default: all)")
    parser.add_argument(
        "--ood",
        type=Path,
        default=OOD_DATA,
        help="out-of-distribution set scored too, into OUT/ood (default: datasets/city-ood, the industrial "
        "style that no training map has)",
    )
    parser.add_argument(
        "--no-ood", dest="ood", action="store_const", const=None, help="score the test set only"
    )
    parser.add_argument(
        "--ood-pairs", type=int, default=12, help="pairs of the OOD set scored (default: %(default)s)"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=DEMO_STEPS,
        help=f"sampling steps (default: {DEMO_STEPS}, the public RadioDiff IRT4 setting; irt4-infer's is 50)",
    )
    parser.add_argument("--batch-size", type=int, default=12, help="pairs sampled together (default: 12)")
    parser.add_argument(
        "--step-curve",
        type=_step_list,
        default=None,
        metavar="N,N,...",
        help="also sample the test set with each of these step counts and print the diffusion model's "
        "RMSE / SSIM per count (e.g. 1,3,10,50: about 30 s more for 12 pairs on 2 cores)",
    )
    parser.add_argument("--seed", type=int, default=0, help="sampler seed (default: 0)")
    parser.add_argument(
        "--out", type=Path, default=Path("demo-out"), help="output folder (default: demo-out)"
    )
    args = parser.parse_args(argv)
    try:
        run(args)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
