"""irt4-infer: radio maps for many (map, transmitter) pairs, with metrics where ground truth exists."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from irt4.errors import InputError

EPILOG = """examples:
  irt4-infer --checkpoint runs/ldm/last.pt --data RadioMapSeer --split test --out out/
  irt4-infer --checkpoint model.safetensors --maps city_maps/ --tx tx.csv --out out/ --save-db
  irt4-infer ... --shard 0/2   and   irt4-infer ... --shard 1/2   (two processes, disjoint pairs)
  irt4-infer --backend aoti --engine engine/ --data RadioMapSeer --out out/   (engine of irt4-build-engine)
  irt4-infer --footprints city.gpkg --sites sites.csv --out coverage/   (the bundled default model)

Outputs: OUT/{map}_{tx}.png (256x256, RadioMapSeer grey encoding), OUT/{map}_{tx}.npy with --save-db
(pathloss in dB), OUT/preview.png, and with ground truth OUT/metrics.csv + OUT/metrics.json.
With --footprints: OUT/{site}.tif (float32 path gain in dB, NaN on buildings, in the footprints' metric
CRS or their UTM zone), OUT/{site}.png, OUT/mosaic_gain.tif and OUT/mosaic_server.tif (best server),
OUT/sites.json.
Existing outputs are kept and not sampled again (use --overwrite to redo them).
Exit codes: 0 success, 2 bad input (the message names the file, pair or option)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="irt4-infer",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="an irt4 checkpoint (.pt) or model bundle (.safetensors) for the torch backends: a diffusion "
        "model, or a baseline regressor of `irt4-train baseline` (one pass, no sampler)",
    )
    source = parser.add_argument_group("inputs (one of)")
    source.add_argument("--data", type=Path, help="a RadioMapSeer-layout root (ground truth gives metrics)")
    source.add_argument(
        "--maps", type=Path, help="a folder of building maps {map_id}.png (256x256 grey, 255 = building)"
    )
    source.add_argument(
        "--footprints",
        type=Path,
        help="building footprints: any vector file GDAL reads (GeoPackage, GeoJSON, Shapefile, ...) or an "
        "OpenStreetMap extract (.osm, .osm.pbf); needs --sites. Without --checkpoint or --engine the "
        "bundled default model predicts",
    )
    parser.add_argument(
        "--sites",
        type=Path,
        help="with --footprints: CSV site_id,lon,lat (WGS 84) or site_id,x,y (the footprints' CRS); each "
        "site gets the 256 m window centred on it",
    )
    parser.add_argument(
        "--layer", help="with --footprints: the layer of a multi-layer file (default: the first)"
    )
    parser.add_argument(
        "--tx",
        type=Path,
        help="with --maps: CSV with header map_id,tx_index,row,col (pixels, row = y) or a JSON list of them",
    )
    parser.add_argument(
        "--split",
        default="test",
        choices=["train", "val", "test", "all"],
        help="with --data: the split (default: test)",
    )
    parser.add_argument(
        "--split-scheme",
        default="auto",
        choices=["auto", "radiounet", "radiodiff", "generated"],
        help="with --data: how maps are split (default: auto)",
    )
    parser.add_argument(
        "--simulation",
        default="IRT4",
        help="with --data: the gain/ subfolder, e.g. IRT4, DPM (default: IRT4)",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder (created)")
    parser.add_argument("--batch-size", type=int, default=8, help="maps sampled together (default: 8)")
    parser.add_argument(
        "--steps",
        type=int,
        help="sampling steps (default: 50; with --footprints the model's own; N steps make N + 1 network "
        "calls)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the sampler noise; each pair's noise depends only on (seed, map, tx)",
    )
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16", "fp16"],
        help="compute precision (default: fp32)",
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device (default: cuda if available, else cpu)",
    )
    parser.add_argument(
        "--backend",
        default="torch",
        choices=["torch", "torch-compile", "onnxruntime", "tensorrt", "aoti"],
        help="sampler backend (default: torch, eager); onnxruntime, tensorrt and aoti run --engine",
    )
    parser.add_argument(
        "--engine",
        type=Path,
        help="with --backend onnxruntime|tensorrt|aoti: an engine directory made by irt4-build-engine "
        "(its model, device and precision; --checkpoint, --device and --precision are not used)",
    )
    parser.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="use the EMA weights of a training checkpoint (default: yes)",
    )
    parser.add_argument(
        "--shard", default="0/1", help="i/n: process every n-th pair starting at i (default: 0/1, all)"
    )
    parser.add_argument("--save-db", action="store_true", help="also write each map in dB as float32 .npy")
    parser.add_argument(
        "--overwrite", action="store_true", help="sample pairs again even if their PNG exists"
    )
    parser.add_argument("--skip-bad", action="store_true", help="log and skip bad inputs instead of stopping")
    parser.add_argument(
        "--mask-buildings", action="store_true", help="also report metrics over outdoor pixels only"
    )
    parser.add_argument(
        "--keep-building-pixels",
        action="store_true",
        help="write the model's output on building pixels as it is (default: 0 there, as in every gain map "
        "of the layout)",
    )
    parser.add_argument("--limit", type=int, help="only the first N pairs (after sharding order)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _source(args, data_cfg, image_size: int):
    from irt4.infer import DatasetPairs, FolderPairs

    if (args.data is None) == (args.maps is None):
        raise InputError("give exactly one input: --data ROOT or --maps DIR --tx FILE")
    if args.maps is not None:
        if args.tx is None:
            raise InputError("--maps needs --tx FILE (CSV map_id,tx_index,row,col or JSON)")
        return FolderPairs(
            args.maps,
            args.tx,
            image_size,
            skip_bad=args.skip_bad,
            condition=data_cfg.condition,
            gain_db_range=data_cfg.gain_db_range,
        )
    from irt4.data.radiomapseer import RadioMapSeer

    dataset = RadioMapSeer(
        args.data,
        split=args.split,
        split_scheme=args.split_scheme,
        simulation=args.simulation,
        image_size=image_size,
        skip_bad=args.skip_bad,
        condition=data_cfg.condition,
        gain_db_range=data_cfg.gain_db_range,
    )
    return DatasetPairs(dataset)


def run_geodata(args) -> int:
    """--footprints FILE --sites CSV: a GeoTIFF per site and the coverage mosaic."""
    import irt4
    from irt4.geo.footprints import read_footprints
    from irt4.geo.predict import SiteOptions, predict_sites
    from irt4.geo.sites import read_sites

    if args.sites is None:
        raise InputError("--footprints needs --sites CSV (site_id,lon,lat or site_id,x,y)")
    if args.data is not None or args.maps is not None:
        raise InputError("give one input: --footprints, --data or --maps")
    if args.batch_size < 1 or (args.steps is not None and args.steps < 1):
        raise InputError("--batch-size and --steps must be at least 1")
    footprints = read_footprints(args.footprints, layer=args.layer)
    sites = read_sites(args.sites, footprints.file_crs, footprints.crs)
    if args.backend in ("onnxruntime", "tensorrt", "aoti"):
        if args.engine is None:
            raise InputError(
                f"--backend {args.backend} needs --engine ENGINE_DIR (made by irt4-build-engine)"
            )
        model = irt4.load(args.engine, backend=args.backend)
    else:
        model = irt4.load(args.checkpoint, device=args.device, backend=args.backend, precision=args.precision)
    args.steps = args.steps or model.cfg.diffusion.sampling_steps
    print(
        f"irt4-infer: {len(sites)} sites over {len(footprints.polygons)} footprints of {args.footprints} "
        f"({footprints.crs.name}), model {model.cfg.name} from {model.source} ({model.kind}), "
        f"{args.steps} steps"
    )
    options = SiteOptions(
        out=args.out,
        steps=args.steps,
        seed=args.seed,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    summary = predict_sites(model, footprints, sites, options)
    print(
        f"wrote {summary['predicted']} site maps ({summary['kept']} already there), mosaic_gain.tif and "
        f"mosaic_server.tif to {args.out}/"
    )
    return 0


def run(args) -> int:
    if args.footprints is not None or args.sites is not None:
        if args.footprints is None:
            raise InputError("--sites goes with --footprints FILE")
        return run_geodata(args)
    args.steps = 50 if args.steps is None else args.steps
    from irt4.infer import ENGINE_BACKENDS, InferenceOptions, parse_shard, run_inference, write_metrics
    from irt4.metrics import format_table
    from irt4.models.bundle import checkpoint_kind, load_model

    if args.batch_size < 1 or args.steps < 1:
        raise InputError("--batch-size and --steps must be at least 1")
    if args.out.exists() and not args.out.is_dir():
        raise InputError(f"--out {args.out} is a file; it names the output folder")
    shard = parse_shard(args.shard)
    if args.backend in ENGINE_BACKENDS:
        from irt4.engine.runtime import engine_config, read_manifest

        if args.engine is None:
            raise InputError(
                f"--backend {args.backend} needs --engine ENGINE_DIR (made by irt4-build-engine)"
            )
        model, cfg = None, engine_config(args.engine)
        manifest = read_manifest(args.engine)
        args.device, args.precision = manifest["device"], manifest["precision"]
        if args.backend == "onnxruntime":
            args.device, args.precision = "cpu", "fp32"
        described = f"engine {args.engine}"
    else:
        if args.checkpoint is None:
            raise InputError(f"--backend {args.backend} needs --checkpoint")
        if checkpoint_kind(args.checkpoint) == "baseline":
            from irt4.baseline import load_baseline

            model, info = load_baseline(args.checkpoint, args.device, use_ema=args.ema)
            described = f"baseline regressor, {info['weights']} weights, one pass (--steps unused)"
        else:
            model, info = load_model(args.checkpoint, args.device, use_ema=args.ema)
            described = f"{info['weights']} weights"
        cfg = model.cfg
    source = _source(args, cfg.data, cfg.image_size)
    if args.limit is not None:
        source.pairs = source.pairs[: args.limit]
    options = InferenceOptions(
        out=args.out,
        batch_size=args.batch_size,
        steps=args.steps,
        seed=args.seed,
        precision=args.precision,
        device=args.device,
        backend=args.backend,
        engine=args.engine,
        shard=shard,
        save_db=args.save_db,
        overwrite=args.overwrite,
        mask_buildings=args.mask_buildings,
        zero_buildings=not args.keep_building_pixels,
        progress=not args.quiet,
    )
    print(
        f"irt4-infer: {len(source.pairs)} pairs (shard {shard[0]}/{shard[1]}), model {cfg.name} "
        f"({described}), device {args.device}, {args.precision}, batch {args.batch_size}, "
        f"{args.steps} steps, backend {args.backend}"
    )
    result = run_inference(model, source, options)
    print(f"wrote {result.written} maps ({result.reused} already there) to {args.out}/", end="")
    print(f"; {result.maps_per_s:.2f} maps/s" if result.written else "")
    if source.skipped:
        print(f"skipped {source.skipped} bad inputs (see the warnings above)")
    protocol = {
        "scales": "raw = gain/255; thr = clip((x - 0.2)/0.8, 0, 1); rmse_db through gain_db_range",
        "gain_db_range": list(cfg.data.gain_db_range),
        "resize": "predictions resized to 256x256 bilinearly (antialiased) before scoring",
        "split": args.split if args.data else None,
        "steps": args.steps,
        "seed": args.seed,
    }
    if write_metrics(result, options, protocol):
        print(format_table(result.summary, len(result.per_pair_metrics)))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return run(args)
    except InputError as err:
        print(f"irt4-infer: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("irt4-infer: interrupted; finished maps are kept, rerun to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
