"""irt4-import: models trained with other code, as irt4 bundles."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from irt4.errors import InputError

EPILOG = """examples:
  irt4-import radiodiff --ldm results/LDM/model-50.pt --vae model/model-29.pt \\
      --config configs/radio_train.yaml --out radiodiff.safetensors
  irt4-infer --checkpoint radiodiff.safetensors --root RadioMapSeer --out maps/
  irt4-build-engine --checkpoint radiodiff.safetensors --out engine/

radiodiff reads the checkpoints of the reference RadioDiff code (github:chg0901/RadioDiff): the LDM
trainer's model-N.pt (train_cond_ldm.py) and, optionally, the first-stage VAE trainer's model-N.pt
(train_vae.py; without it the VAE comes from the LDM checkpoint's frozen first stage). The model's
shape is read from the tensors; --config (the reference YAML) is checked against them. Files are read
with torch.load(weights_only=True). The bundle works with irt4-infer, irt4-build-engine and
irt4-train --init-from. Exit codes: 0 success, 2 bad input (the message names the file and tensor);
nothing is written unless the whole import succeeds."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="irt4-import",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")
    radiodiff = sub.add_parser(
        "radiodiff",
        help="checkpoints of the reference RadioDiff code",
        description="Import the reference RadioDiff code's LDM (and VAE) checkpoints as an irt4 bundle.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    radiodiff.add_argument(
        "--ldm", required=True, type=Path, help="the LDM trainer's checkpoint (model-N.pt)"
    )
    radiodiff.add_argument(
        "--vae", type=Path, default=None, help="the VAE trainer's checkpoint (default: the LDM's first stage)"
    )
    radiodiff.add_argument(
        "--config", type=Path, default=None, help="the reference YAML the model was trained with (checked)"
    )
    radiodiff.add_argument("--out", required=True, type=Path, help="the bundle to write (.safetensors)")
    radiodiff.add_argument(
        "--weights",
        choices=("ema", "raw"),
        default="ema",
        help="EMA weights where the files have them, else the raw ones (default: ema)",
    )
    radiodiff.add_argument(
        "--keep-swin-head",
        action="store_true",
        help="keep the Swin's classification head and final norm, which the model never uses",
    )
    radiodiff.add_argument(
        "--schedule-dtype",
        choices=("float64", "float32"),
        default="float64",
        help="the sampler's time walk: float32 reproduces the reference call for call (default: float64)",
    )
    radiodiff.add_argument("--force", action="store_true", help="replace --out if it exists")
    return parser


def import_radiodiff(args: argparse.Namespace) -> Path:
    from irt4.models.bundle import save_bundle
    from irt4.models.reference_import import import_reference

    out = args.out
    if out.suffix != ".safetensors":
        raise InputError(f"--out {out}: a bundle is a .safetensors file")
    if out.exists() and not args.force:
        raise InputError(f"--out {out} exists (use --force to replace it)")
    if out.parent and not out.parent.is_dir():
        raise InputError(f"--out {out}: folder {out.parent} does not exist")
    model, info = import_reference(args.ldm, args.vae, args.config, args.weights, args.keep_swin_head)
    cfg = model.cfg
    model.cfg = replace(cfg, diffusion=replace(cfg.diffusion, schedule_dtype=args.schedule_dtype))
    save_bundle(out, model, weights=info["weights"])
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        out = import_radiodiff(args)
    except InputError as err:
        print(f"irt4-import: error: {err}", file=sys.stderr)
        return 2
    print(f"irt4-import: wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
