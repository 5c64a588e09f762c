"""Parameter and FLOP counts of a preset: `python -m irt4.models.summary CONFIG`.

The model is built on the meta device (nothing allocated), so the full presets run in seconds.
FLOPs come from torch's FlopCounterMode (a multiply-add counts 2; FFTs and elementwise ops are
not counted, which the spec's "Where the time goes" shows to be under 1 % of the total).
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

from irt4.config import Config, load_config
from irt4.errors import InputError
from irt4.models.radiodiff import RadioDiff


def count_parameters(module: torch.nn.Module) -> int:
    """All parameters, frozen ones included, buffers excluded (contracts.md)."""
    return sum(p.numel() for p in module.parameters())


def parameter_counts(model: RadioDiff) -> dict[str, int]:
    unet_total = count_parameters(model.unet)
    backbone = count_parameters(model.unet.cond_backbone)
    return {
        "vae": count_parameters(model.vae),
        "unet (with condition backbone)": unet_total,
        "  condition backbone (Swin)": backbone,
        "  denoiser without backbone": unet_total - backbone,
        "total": count_parameters(model),
    }


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@torch.no_grad()
def flop_counts(model: RadioDiff, batch: int = 1) -> dict[str, int]:
    """FLOPs per stage for `batch` maps, on whatever device the model is (meta: shapes only)."""
    cfg = model.cfg
    device = next(model.parameters()).device
    image = torch.zeros(batch, cfg.vae.in_channels, cfg.image_size, cfg.image_size, device=device)
    cond = torch.zeros(batch, len(cfg.data.condition), cfg.image_size, cfg.image_size, device=device)
    latent = torch.zeros(batch, *model.latent_shape, device=device)
    t = torch.full((batch,), 0.5, device=device)
    features = model.unet.encode_condition(cond)
    counts = {
        "condition encoder (once per map)": _flops(lambda: model.unet.encode_condition(cond)),
        "UNet step (condition hoisted)": _flops(lambda: model.unet.denoise(latent, t, features)),
        "VAE encode": _flops(lambda: model.vae.encode(image)),
        "VAE decode": _flops(lambda: model.vae.decode(latent)),
    }
    counts["reference call (condition recomputed)"] = (
        counts["condition encoder (once per map)"] + counts["UNet step (condition hoisted)"]
    )
    return counts


def sampling_flops(counts: dict[str, int], steps: int, denoise: bool) -> dict[str, int]:
    calls = steps + 1 if denoise else steps
    return {
        f"sampling, {steps} steps ({calls} calls), hoisted": counts["condition encoder (once per map)"]
        + calls * counts["UNet step (condition hoisted)"]
        + counts["VAE decode"],
        f"sampling, {steps} steps, as the reference": calls * counts["reference call (condition recomputed)"]
        + counts["VAE decode"],
    }


def build_on_meta(cfg: Config) -> RadioDiff:
    with torch.device("meta"):
        return RadioDiff(cfg).eval()


def format_summary(cfg: Config, batch: int = 1) -> str:
    model = build_on_meta(cfg)
    lines = [
        f"# {cfg.name}: image {cfg.image_size}x{cfg.image_size}, latent {model.latent_shape}",
        "",
        "parameters:",
    ]
    lines += [f"  {name:<40} {n:>15,}" for name, n in parameter_counts(model).items()]
    counts = flop_counts(model, batch)
    counts.update(sampling_flops(counts, cfg.diffusion.sampling_steps, cfg.diffusion.denoise))
    lines += ["", f"FLOPs (batch {batch}, GFLOP):"]
    lines += [f"  {name:<40} {n / 1e9:>15,.2f}" for name, n in counts.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m irt4.models.summary",
        description="Print parameter counts and FLOPs per stage of a preset or config file.",
    )
    parser.add_argument(
        "config", help="preset name (irt4-radiodiff, irt4-radiodiff-256, small, tiny) or a YAML path"
    )
    parser.add_argument("--batch", type=int, default=1, help="batch size for the FLOP count (default 1)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field"
    )
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.set)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_summary(cfg, args.batch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
