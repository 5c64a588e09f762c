"""irt4-build-engine: the serving engines of a checkpoint, in one directory with an engine.json manifest."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from irt4.errors import InputError

EPILOG = """examples:
  irt4-build-engine --checkpoint model.safetensors --out engine/                    (CPU: ONNX Runtime + AOTI)
  irt4-build-engine --checkpoint model.safetensors --out engine-h200/ --device cuda --precision bf16 \\
      --min-batch 1 --opt-batch 8 --max-batch 32

Writes ENGINE_DIR/onnx/*.onnx, ENGINE_DIR/onnxruntime/*.onnx (graph-optimized), ENGINE_DIR/aoti/*.pt2
(AOTInductor packages for the C++ engine, on --device in --precision), ENGINE_DIR/tensorrt/*.plan where the
Python tensorrt module and a GPU are present (else it says why and skips them), and ENGINE_DIR/engine.json.
Run them with irt4-infer --backend aoti|onnxruntime|tensorrt --engine ENGINE_DIR, or irt4.Engine.load.
Exit codes: 0 success, 2 bad input (the message names the file or option)."""


def build_parser() -> argparse.ArgumentParser:
    from irt4.engine.build import BACKENDS, PRECISIONS

    parser = argparse.ArgumentParser(
        prog="irt4-build-engine",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        type=Path,
        help="an irt4 diffusion checkpoint (.pt) or model bundle (.safetensors)",
    )
    parser.add_argument("--out", required=True, type=Path, help="the engine directory (created)")
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=list(PRECISIONS),
        help="precision of the AOTInductor and TensorRT engines (default: fp32; ONNX Runtime: fp32)",
    )
    parser.add_argument(
        "--min-batch", type=int, default=1, help="smallest batch the engines take (default: 1)"
    )
    parser.add_argument(
        "--opt-batch",
        type=int,
        default=None,
        help="batch TensorRT tunes for (default: 8, kept within --min-batch .. --max-batch)",
    )
    parser.add_argument(
        "--max-batch", type=int, default=32, help="largest batch the engines take (default: 32)"
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="device of the AOTInductor packages and TensorRT: cpu or cuda (default: cpu)",
    )
    parser.add_argument(
        "--backends",
        nargs="+",
        default=list(BACKENDS),
        choices=list(BACKENDS),
        help="which engines to build (default: all; the ONNX graphs are written for onnxruntime, tensorrt)",
    )
    parser.add_argument(
        "--compile-workers",
        type=int,
        default=None,
        help="parallel Inductor compile processes of the AOTInductor build (default: every CPU)",
    )
    parser.add_argument(
        "--max-autotune",
        action="store_true",
        help="let Inductor benchmark kernel variants for every matmul and conv of the AOTInductor build "
        "(off by default: it multiplies the build time; each graph's build time is in engine.json)",
    )
    parser.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="use the EMA weights of a training checkpoint (default: yes)",
    )
    return parser


def run(args) -> int:
    from irt4.engine.build import BatchRange, build_engine
    from irt4.models.bundle import load_model

    if not (args.device == "cpu" or args.device.startswith("cuda")):
        raise InputError(f"--device must be cpu or cuda[:N], got {args.device!r}")
    if args.compile_workers is not None and args.compile_workers < 1:
        raise InputError(f"--compile-workers must be at least 1, got {args.compile_workers}")
    opt_batch = args.opt_batch if args.opt_batch is not None else min(max(8, args.min_batch), args.max_batch)
    batch = BatchRange(args.min_batch, opt_batch, args.max_batch)
    batch.check()
    model, info = load_model(args.checkpoint, "cpu", use_ema=args.ema)
    print(
        f"irt4-build-engine: model {model.cfg.name} ({info['weights']} weights), {args.precision}, "
        f"batch {batch.min}..{batch.max} (opt {batch.opt}), device {args.device}, "
        f"backends {' '.join(args.backends)}"
    )
    manifest = build_engine(
        model,
        args.out,
        precision=args.precision,
        batch=batch,
        device=args.device,
        backends=args.backends,
        checkpoint=args.checkpoint,
        compile_workers=args.compile_workers,
        max_autotune=args.max_autotune,
    )
    built = ", ".join(manifest["backends"])
    skipped = "".join(f"; {name} skipped: {reason}" for name, reason in manifest["skipped"].items())
    print(f"engine directory {args.out}/: {built}{skipped}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return run(args)
    except InputError as err:
        print(f"irt4-build-engine: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
