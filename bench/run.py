"""Sampling and training speed of irt4's paths against the eager fp32 reference, in one run.

    python -m bench.run [--device cpu|cuda] [--preset small|irt4-radiodiff] [--quick]
                        [--steps N] [--batches 1,8,32] [--train-batch N] [--repeats N] [--no-compile]

Measures, on one model of the preset (random weights: speed does not depend on them):
- sampling, maps/s of the whole sampler + VAE decode for
  "reference": the eager fp32 reference sampler (contracts.md "Sampling, noise and backends"):
               condition network recomputed at every call, weight standardization at every call;
  "torch":     irt4's PyTorch path: condition hoisted, weight standardization folded once;
  "compile":   torch.compile of the "torch" path (UNet step and VAE decode);
  each with the ratio to the reference, the difference of its maps from the reference's for the same
  noise (draw_sampler_noise: norm-relative and max-abs) and the peak memory (CUDA only);
- training, samples/s of one AdamW step of the diffusion UNet for
  "reference": the reference recipe, the frozen VAE encodes the target at every step;
  "torch-cached": irt4's, the VAE posterior cached once (LDMStage cache_latents);
- the floor: FLOPs per UNet step and per map (irt4.models.summary.flop_counts, measured with
  FlopCounterMode), and each row's achieved GFLOP/s.

Writes bench/results/<date>-<device>.json and regenerates bench/RESULTS.md (one section per device,
the newest JSON of each). Timing uses bench/kernels.py's Harness (warm-up, repeats, p20/p50/p80; CUDA
events on a GPU) and its Row record. Timing is never asserted anywhere.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import irt4
from bench.kernels import Harness, Row, device_description
from irt4.config import Config, load_config
from irt4.diffusion.ddm import training_loss
from irt4.diffusion.sampler import SamplerNoise, draw_sampler_noise, sample_latents
from irt4.models.layers import fold_weight_standardization, unfold_weight_standardization
from irt4.models.radiodiff import RadioDiff
from irt4.models.summary import build_on_meta, flop_counts, sampling_flops

BENCH = Path(__file__).resolve().parent
RESULTS_DIR = BENCH / "results"
RESULTS_MD = BENCH / "RESULTS.md"
CPU_NOTE = (
    "CPU numbers are noisy: the machine's cores may be shared with other work while this runs; "
    "compare ratios within one run, not absolute times across runs."
)


def build_model(cfg: Config, device: torch.device, seed: int = 0) -> RadioDiff:
    torch.manual_seed(seed)
    return RadioDiff(cfg).to(device).eval()


def _inputs(cfg: Config, batch: int, device: torch.device, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random radio maps and condition images in [-1, 1] (image, cond)."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, cfg.vae.in_channels, cfg.image_size, cfg.image_size, generator=g) * 2 - 1
    cond = torch.rand(batch, cfg.swin.in_channels, cfg.image_size, cfg.image_size, generator=g) * 2 - 1
    return image.to(device), cond.to(device)


class _Hoisted:
    """The sampler's view of the UNet with a (possibly compiled) denoiser."""

    def __init__(self, unet: torch.nn.Module, denoise: Callable):
        self.encode_condition = unet.encode_condition
        self.denoise = denoise


def _sampler(
    model: RadioDiff, unet, decode: Callable, cond, noise: SamplerNoise, steps: int, recompute: bool
):
    d = model.cfg.diffusion

    def run() -> torch.Tensor:
        latents = sample_latents(
            unet,
            cond,
            model.latent_shape,
            steps=steps,
            eps=d.eps,
            denoise=d.denoise,
            noise=noise,
            recompute_condition=recompute,
        )
        return decode(latents)

    return run


def _timed(harness: Harness, fn: Callable) -> tuple[tuple[float, float, float], float, float | None]:
    """(p20, p50, p80) ms, first-call s and the peak memory in MiB (CUDA; None elsewhere)."""
    cuda = harness.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(harness.device)
    quantiles, first_call_s = harness.time_quantiles_ms(fn)
    peak = torch.cuda.max_memory_allocated(harness.device) / 2**20 if cuda else None
    return quantiles, first_call_s, peak


def _row(stage, provider, mode, quantiles, first_call_s, items, unit, config) -> Row:
    p20, p50, p80 = quantiles
    flops = config.get("flops")
    if flops is not None:
        config["gflop_per_s"] = flops / p50 / 1e6
    return Row(
        op=stage,
        case=f"{config['preset']} b{config['batch']}"
        + (f" {config['steps']} steps" if config.get("steps") else ""),
        dtype="fp32",
        provider=provider,
        mode=mode,
        median_ms=p50,
        rate=items / p50 * 1e3,
        rate_unit=unit,
        first_call_s=first_call_s,
        p20_ms=p20,
        p80_ms=p80,
        config=config,
    )


def sampling_rows(
    harness: Harness, model: RadioDiff, batch: int, steps: int, compile_: bool, seed: int = 0
) -> list[Row]:
    """The reference, torch and (if `compile_`) compile sampling rows at one batch size."""
    cfg = model.cfg
    _, cond = _inputs(cfg, batch, harness.device, seed)
    noise = draw_sampler_noise(
        (batch, *model.latent_shape), steps, cfg.diffusion.denoise, torch.Generator().manual_seed(seed)
    )
    per_map = flop_counts(build_on_meta(cfg), 1)
    totals = sampling_flops(per_map, steps, cfg.diffusion.denoise)
    hoisted_flops, reference_flops = (batch * n for n in totals.values())
    base = {
        "preset": cfg.name,
        "batch": batch,
        "steps": steps,
        "unet_step_flops": batch * per_map["UNet step (condition hoisted)"],
    }

    rows = []
    unfold_weight_standardization(model.unet)
    reference = _sampler(model, model.unet, model.decode_latents, cond, noise, steps, recompute=True)
    expected = reference()
    timing = _timed(harness, reference)
    rows.append(
        _row(
            "sampling",
            "reference",
            "sample",
            *timing[:2],
            batch,
            "maps/s",
            {**base, "flops": reference_flops, "peak_mib": timing[2]},
        )
    )

    fold_weight_standardization(model.unet)
    paths = {"torch": _sampler(model, model.unet, model.decode_latents, cond, noise, steps, recompute=False)}
    if compile_:
        compiled = _Hoisted(model.unet, torch.compile(model.unet.denoise))
        paths["compile"] = _sampler(
            model, compiled, torch.compile(model.decode_latents), cond, noise, steps, False
        )
    try:
        for provider, fn in paths.items():
            timing = _timed(harness, fn)
            got = fn()
            config = {
                **base,
                "flops": hoisted_flops,
                "peak_mib": timing[2],
                **output_difference(got, expected),
            }
            rows.append(_row("sampling", provider, "sample", *timing[:2], batch, "maps/s", config))
    finally:
        unfold_weight_standardization(model.unet)
    add_reference_ratios(rows)
    return rows


def output_difference(got: torch.Tensor, expected: torch.Tensor) -> dict[str, float]:
    diff = (got.float() - expected.float()).flatten()
    return {
        "rel_err": float(diff.norm() / expected.float().flatten().norm().clamp_min(1e-30)),
        "max_abs_err": float(diff.abs().max()),
    }


def training_rows(harness: Harness, model: RadioDiff, batch: int, seed: int = 0) -> list[Row]:
    """samples/s of one AdamW step of the UNet: VAE encode every step (reference) vs cached latents."""
    cfg = model.cfg
    image, cond = _inputs(cfg, batch, harness.device, seed)
    unfold_weight_standardization(model.unet)
    model.vae.eval().requires_grad_(False)
    with torch.no_grad():
        posterior = model.vae.encode(image)
        mean, std = posterior.mean, posterior.std

    def reference_loss():
        return model.diffusion_loss(image, cond)[0]

    def cached_loss():
        x0 = (mean + std * torch.randn_like(mean)) * model.scale_factor
        return training_loss(model.unet, x0, cond, cfg.diffusion)[0]

    rows = []
    state = {k: v.clone() for k, v in model.unet.state_dict().items()}
    model.unet.train()
    try:
        for provider, loss_fn in (("reference", reference_loss), ("torch-cached", cached_loss)):
            optimizer = torch.optim.AdamW(model.unet.parameters(), lr=cfg.trainer.lr)

            def step(loss_fn=loss_fn, optimizer=optimizer):
                optimizer.zero_grad(set_to_none=True)
                loss_fn().backward()
                optimizer.step()

            with FlopCounterMode(display=False) as counter:
                step()
            timing = _timed(harness, step)
            config = {
                "preset": cfg.name,
                "batch": batch,
                "flops": counter.get_total_flops(),
                "peak_mib": timing[2],
            }
            rows.append(_row("training", provider, "train-step", *timing[:2], batch, "samples/s", config))
    finally:
        model.unet.eval()
        model.unet.load_state_dict(state)
    add_reference_ratios(rows)
    return rows


def add_reference_ratios(rows: list[Row]) -> None:
    """vs_reference: the reference row's time of the same stage and case / each row's time."""
    reference = {(r.op, r.case): r for r in rows if r.provider == "reference"}
    for r in rows:
        ref = reference.get((r.op, r.case))
        if ref is not None:
            r.vs_reference = ref.median_ms / r.median_ms


def git_sha() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=BENCH, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=BENCH, capture_output=True, text=True
        ).stdout
        return sha + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_metadata(device: torch.device, preset: str, quick: bool) -> dict:
    return {
        "device": device.type,
        "device_description": device_description(device),
        "preset": preset,
        "quick": quick,
        "torch_version": torch.__version__,
        "irt4_version": irt4.__version__,
        "git_sha": git_sha(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def records(rows: list[Row], meta: dict) -> list[dict]:
    """One record per row: the Row fields (op is the stage), plus the run's metadata."""
    return [{"stage": r.op, **asdict(r), **meta} for r in rows]


def _fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def markdown_table(recs: list[dict]) -> str:
    lines = [
        "| stage | provider | mode | batch | steps | p50 ms (p20-p80) | rate | vs reference | GFLOP/s "
        "| rel. err | max abs err | peak MiB | 1st call s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in recs:
        c = r["config"]
        lines.append(
            f"| {r['stage']} | {r['provider']} | {r['mode']} | {c['batch']} | {c.get('steps', '')} | "
            f"{r['median_ms']:.1f} ({r['p20_ms']:.1f}-{r['p80_ms']:.1f}) | "
            f"{r['rate']:.3g} {r['rate_unit']} | "
            f"{_fmt(r['vs_reference'], '.2f')}x | {_fmt(c.get('gflop_per_s'), '.1f')} | "
            f"{_fmt(c.get('rel_err'), '.1e')} | {_fmt(c.get('max_abs_err'), '.1e')} | "
            f"{_fmt(c.get('peak_mib'), '.0f')} | {_fmt(r['first_call_s'], '.1f')} |".replace("| x |", "|  |")
        )
    return "\n".join(lines)


def device_section(result: dict) -> str:
    meta = result["meta"]
    lines = [
        f"## {meta['device']}",
        "",
        f"- machine: {meta['device_description']}",
        f"- date: {meta['date']}; torch {meta['torch_version']}; irt4 {meta['irt4_version']}; "
        f"git {meta['git_sha']}",
        f"- preset: {meta['preset']}{' (quick)' if meta['quick'] else ''}; the ratio is the reference's "
        "time / the row's time, measured in the same run",
    ]
    lines += [f"- {note}" for note in result["notes"]]
    lines += ["", markdown_table(result["records"]), ""]
    return "\n".join(lines)


def regenerate_results_md(results_dir: Path = RESULTS_DIR, path: Path = RESULTS_MD) -> str:
    """bench/RESULTS.md from the newest JSON of each device in `results_dir`."""
    newest: dict[str, dict] = {}
    for file in sorted(results_dir.glob("*.json")):
        result = json.loads(file.read_text())
        device = result["meta"]["device"]
        if device not in newest or result["meta"]["date"] >= newest[device]["meta"]["date"]:
            newest[device] = result
    text = "\n".join(
        [
            "# Benchmark results",
            "",
            "Generated by `python -m bench.run` (`make bench` for the quick CPU run) from the newest",
            "`bench/results/*.json` of each device; do not edit by hand. See bench/run.py for what each row",
            "measures. `reference` is the eager fp32 reference sampler / training recipe (contracts.md).",
            "",
        ]
        + [device_section(newest[d]) for d in sorted(newest)]
    )
    if "cuda" not in newest:
        text += "\n## cuda\n\nNo GPU result yet: run `python -m bench.run --device cuda` on a GPU machine.\n"
    path.write_text(text)
    return text


def run(
    device: torch.device,
    preset: str,
    quick: bool,
    steps: int,
    batches: list[int],
    train_batch: int,
    repeats: int,
    warmup: int,
    compile_: bool,
) -> tuple[list[Row], list[str]]:
    """All rows of one run and the notes that go with them."""
    cfg = load_config(preset)
    harness = Harness(device, quick, repeats, warmup=warmup)
    model = build_model(cfg, device)
    notes = [
        f"sampling: {steps} steps ({steps + 1 if cfg.diffusion.denoise else steps} network calls) per map"
    ]
    per_map = flop_counts(build_on_meta(cfg), 1)
    notes.append(
        f"the floor: {per_map['UNet step (condition hoisted)'] / 1e9:.2f} GFLOP per UNet step "
        "(condition hoisted), "
        f"{per_map['condition encoder (once per map)'] / 1e9:.2f} GFLOP per condition encoding, "
        f"{per_map['VAE decode'] / 1e9:.2f} GFLOP per VAE decode (per map; FlopCounterMode)"
    )
    if not compile_:
        notes.append(
            "torch.compile rows skipped (quick mode on CPU or --no-compile: compilation takes minutes)"
        )
    if device.type == "cpu":
        notes.append("peak memory: not measured on the CPU (CUDA max_memory_allocated only)")
        notes.append(CPU_NOTE)
    rows: list[Row] = []
    for batch in batches:
        print(f"sampling, batch {batch}, {steps} steps ...", flush=True)
        rows += sampling_rows(harness, model, batch, steps, compile_)
    print(f"training, batch {train_batch} ...", flush=True)
    rows += training_rows(harness, model, train_batch)
    return rows, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available")
    parser.add_argument("--preset", default=None, help="small or irt4-radiodiff (default: small if quick)")
    parser.add_argument(
        "--quick", action="store_true", help="small preset, batch 1 and 2, few steps and repeats"
    )
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default 50, quick 10)")
    parser.add_argument("--batches", default=None, help="sampling batch sizes (default 1,8,32; quick 1,2)")
    parser.add_argument(
        "--train-batch", type=int, default=None, help="training batch (default: the preset's; quick 2)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per row (default 20, quick 3)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder of the JSON results")
    args = parser.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device here")
        # the reference is fp32 without TF32; every path runs at the same precision
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    preset = args.preset or ("small" if args.quick else "irt4-radiodiff")
    cfg = load_config(preset)
    steps = args.steps or (10 if args.quick else 50)
    batches = [int(b) for b in (args.batches or ("1,2" if args.quick else "1,8,32")).split(",")]
    train_batch = args.train_batch or (2 if args.quick else cfg.trainer.batch_size)
    repeats = args.repeats or (3 if args.quick else 20)
    compile_ = not args.no_compile and not (args.quick and device.type == "cpu")

    meta = run_metadata(device, preset, args.quick)
    print(f"# irt4 benchmarks, {meta['date']}: {meta['device_description']}, torch {torch.__version__}")
    print(f"preset {preset}, sampling {steps} steps at batch {batches}, training batch {train_batch}")
    rows, notes = run(
        device, preset, args.quick, steps, batches, train_batch, repeats, 1 if args.quick else 3, compile_
    )
    result = {"meta": meta, "notes": notes, "records": records(rows, meta)}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{meta['date'][:10]}-{device.type}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print()
    print(device_section(result))
    if args.out.resolve() == RESULTS_DIR:
        regenerate_results_md()
        print(f"wrote {path} and {RESULTS_MD}")
    else:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
