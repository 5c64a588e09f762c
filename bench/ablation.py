"""Score trained models side by side on validation roots: the ablation table of the default model
(condition channels on/off, the regressor prior on/off, the residual over it on/off) and its
comparison with free space.

Each model (a diffusion or a regressor bundle or checkpoint; the kind is read from the file) samples
the first PAIRS pairs of each root with irt4-infer's protocol (8-bit maps at 256 x 256, building
pixels 0, scored from the written PNGs), diffusion models at each of --steps; free space masked by line
of sight is scored on the same pairs. Per root and per city style: RMSE (dB) and raw SSIM, and on how
many pairs a model beats free space in both.

  python -m bench.ablation --model all=RUN/default-small.safetensors \\
      --model regressor=RUN/baseline-small.safetensors --root datasets/city-val --root datasets/city-ood

Writes <out>/<date>-ablation.json and .md (default out: bench/results/ablation), maps under --work.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
from pathlib import Path

import numpy as np

from bench.report import write_dated

DEFAULT_ROOTS = (Path("datasets/city-val"), Path("datasets/city-ood"))
FREE_SPACE = "free space, LoS-masked"


def _model_spec(text: str) -> tuple[str, Path]:
    label, sep, path = text.partition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"expected LABEL=PATH, got {text!r}")
    return label, Path(path)


def load_any(path: Path, device: str):
    """(model, description) of a diffusion or regressor bundle/checkpoint."""
    from irt4.models.bundle import checkpoint_kind, load_model

    if checkpoint_kind(path) == "baseline":
        from irt4.baseline import load_baseline

        model, _ = load_baseline(path, device)
        return model, {"kind": "regressor"}
    model, _ = load_model(path, device)
    d = model.cfg.diffusion
    return model, {"kind": "diffusion", "prior": d.prior, "residual": d.residual}


def map_id_list(text: str) -> list[int]:
    """'0-8,10,12-16' -> [0, 1, ..., 8, 10, 12, ..., 16] (ranges inclusive)."""
    ids: list[int] = []
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        try:
            ids.extend(range(int(first), int(last or first) + 1))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r} is not a map id or an a-b range") from None
    return ids


def _pairs(root: Path, cfg, limit: int, map_ids: list[int] | None = None):
    from irt4.data.radiomapseer import RadioMapSeer, model_inputs
    from irt4.infer import DatasetPairs

    source = DatasetPairs(RadioMapSeer(root, split="all", map_ids=map_ids, **model_inputs(cfg)))
    source.pairs = source.pairs[:limit]
    return source


def score_root(models: dict, root: Path, args) -> dict[str, list[dict]]:
    """{row label: per-pair metric rows} of every model (and steps) and free space on `root`."""
    from irt4.demo import run_free_space
    from irt4.infer import InferenceOptions, run_inference

    rows: dict[str, list[dict]] = {}
    work = args.work / root.name
    source = None
    for label, (model, info) in models.items():
        source = _pairs(root, model.cfg, args.pairs, args.map_ids)
        for steps in args.steps if info["kind"] == "diffusion" else [1]:
            name = f"{label}, {steps} steps" if info["kind"] == "diffusion" else label
            options = InferenceOptions(
                out=work / name.replace(", ", "-").replace(" ", "-"),
                batch_size=args.batch_size,
                steps=steps,
                seed=args.seed,
                device=args.device,
                overwrite=True,
                progress=False,
            )
            rows[name] = run_inference(model, source, options).per_pair_metrics
    options = InferenceOptions(out=work / "free-space", overwrite=True, progress=False)
    rows[FREE_SPACE] = run_free_space(source, options, next(iter(models.values()))[0].cfg.data.gain_db_range)
    rows[FREE_SPACE] = rows[FREE_SPACE].per_pair_metrics
    return rows


def _beats(row: dict, reference: dict) -> bool:
    return row["rmse_db"] < reference["rmse_db"] and row["ssim_raw"] > reference["ssim_raw"]


def markdown(results: dict) -> str:
    lines = [
        f"Ablation, {results['date']}, {results['device']}, seed {results['seed']}: RMSE (dB) / raw SSIM, "
        "8-bit maps at 256 x 256 with building pixels 0, means over the pairs; 'beats free space': pairs "
        "where both are better",
        "",
    ]
    for root, rows in results["roots"].items():
        reference = {(r["map_id"], r["tx_index"]): r for r in rows[FREE_SPACE]}
        styles = results["styles"][root]
        style_names = sorted({styles.get(str(r["map_id"]), "unknown") for r in rows[FREE_SPACE]})
        split = len(style_names) > 1
        head = ["model", "all"] + (style_names if split else []) + ["beats free space"]
        lines += [f"**{root}** ({len(rows[FREE_SPACE])} pairs)", "", "| " + " | ".join(head) + " |"]
        lines.append("| " + " | ".join("---" for _ in head) + " |")
        for name, model_rows in rows.items():
            cells = [name, _cell(model_rows)]
            if split:
                for style in style_names:
                    cells.append(_cell([r for r in model_rows if styles.get(str(r["map_id"])) == style]))
            wins = sum(_beats(r, reference[(r["map_id"], r["tx_index"])]) for r in model_rows)
            cells.append("-" if name == FREE_SPACE else f"{wins} / {len(model_rows)}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _cell(rows: list[dict]) -> str:
    if not rows:
        return "-"
    return f"{np.mean([r['rmse_db'] for r in rows]):.2f} / {np.mean([r['ssim_raw'] for r in rows]):.3f}"


def main(argv: list[str] | None = None) -> int:
    from irt4.data.footprints import map_styles

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        type=_model_spec,
        action="append",
        required=True,
        metavar="LABEL=PATH",
        help="a diffusion or regressor bundle or checkpoint and its row label (repeatable)",
    )
    parser.add_argument(
        "--root",
        type=Path,
        action="append",
        help="RadioMapSeer-layout root (repeatable; default: datasets/city-val and datasets/city-ood)",
    )
    parser.add_argument(
        "--pairs", type=int, default=32, help="first pairs of each root (default: %(default)s)"
    )
    parser.add_argument(
        "--steps",
        type=lambda text: [int(part) for part in text.split(",")],
        default=[3, 50],
        help="the diffusion models' sampling steps, comma-separated (default: 3,50)",
    )
    parser.add_argument(
        "--map-ids",
        type=map_id_list,
        metavar="IDS",
        help="only these maps of each root, e.g. 0-8,10-16 (default: all; training maps measure the fit)",
    )
    parser.add_argument(
        "--name", default="ablation", help="results file <date>-NAME.json/.md (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="sampler seed (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16, help="pairs per batch (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("ablation-out"),
        help="folder of the written maps (default: %(default)s)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("bench/results/ablation"), help="folder of the results"
    )
    args = parser.parse_args(argv)
    roots = args.root or [root for root in DEFAULT_ROOTS if root.is_dir()]
    if not roots:
        parser.error("no --root given and no datasets/city-val or datasets/city-ood here")
    for label, path in args.model:
        if not path.is_file():
            parser.error(f"--model {label}={path}: no such file")
    models = {label: load_any(path, args.device) for label, path in args.model}
    results = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "device": args.device
        if args.device != "cpu"
        else f"cpu ({platform.processor() or platform.machine()})",
        "seed": args.seed,
        "map_ids": args.map_ids,
        "models": {label: {"path": str(path), **models[label][1]} for label, path in args.model},
        "roots": {str(root): score_root(models, root, args) for root in roots},
        "styles": {str(root): {str(k): v for k, v in map_styles(root).items()} for root in roots},
    }
    write_dated(args.out, args.name, results, markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
