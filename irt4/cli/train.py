"""`irt4-train`: train the VAE, then the latent diffusion model, resumably (issue 4); and the
RadioUNet-style baseline regressor it is compared with (issue 9).

  irt4-train vae --config C --data ROOT --out RUN_VAE
  irt4-train ldm --config C --data ROOT --vae RUN_VAE/last.pt --out RUN
  irt4-train baseline --config C --data ROOT --out RUN_BASELINE
  irt4-train report RUN

`--time-budget SECONDS` stops any of them after that much training time (irt4.train.trainer).
`--cuda-graphs` (ldm, baseline) replays the network's forward and backward from CUDA graphs
(irt4.train.graphed).

Under `torchrun --nproc_per_node=N` the same commands run DistributedDataParallel. User mistakes
(InputError, ConfigError) print one line on stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from irt4.config import Config, apply_overrides, config_from_dict, config_to_dict, load_config
from irt4.errors import InputError

PROG = "irt4-train"
log = logging.getLogger(PROG)


def _add_run_options(parser: argparse.ArgumentParser, stage: str) -> None:
    section = "vae_trainer" if stage == "vae" else "trainer"
    parser.add_argument(
        "--config",
        help="preset name (tiny, small, irt4-radiodiff, irt4-radiodiff-256) or YAML file; "
        "required unless --resume, which takes the run's own config",
    )
    parser.add_argument("--data", type=Path, required=True, help="RadioMapSeer-layout data root")
    parser.add_argument(
        "--out", type=Path, required=True, help="run folder (config, checkpoints, logs, report)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config field, e.g. --set {section}.lr=1e-4 (repeatable); "
        f"this stage's recipe is the `{section}` section",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest valid checkpoint in --out (weights, optimizer, scheduler, EMA, "
        "grad scaler, RNG and data order)",
    )
    parser.add_argument(
        "--auto-resume",
        action="store_true",
        help="continue like --resume when --out holds a checkpoint, else start a new run: the same "
        "command serves a job's first start and every restart (options of a fresh start, such as "
        "--init-from and --prior, then apply to the first start only)",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the trained network")
    parser.add_argument(
        "--compile-regions",
        action="store_true",
        help="torch.compile each repeated block of the trained network (ResnetBlock, RelationNet, Swin and "
        "VAE blocks: irt4.models.regional) instead of the whole network: each distinct block and shape "
        "compiles once, so compilation takes a fraction of --compile's time",
    )
    if stage != "vae":  # the VAE's loss calls it with a generator keyword, which a graph cannot take
        parser.add_argument(
            "--cuda-graphs",
            action="store_true",
            help="capture the trained network's forward and backward in CUDA graphs on the first step "
            "and replay them (loss, optimizer and EMA stay eager): far fewer kernel launches. Needs a "
            "CUDA device, one process (no torchrun DDP), no --compile and gradient_accumulate_every=1; "
            "batches of another shape run eagerly",
        )
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        help="fp32, bf16 autocast, or fp16 autocast with a grad scaler; default: bf16 on GPUs that "
        f"support it, else fp32, or {section}.precision when --set names it",
    )
    parser.add_argument("--device", help="torch device, e.g. cuda, cuda:1, cpu (default: cuda if present)")
    parser.add_argument(
        "--steps", type=int, help=f"number of optimizer steps (sets {section}.train_num_steps)"
    )
    parser.add_argument(
        "--seed", type=int, help=f"seed of weights, data order and noise (sets {section}.seed)"
    )
    parser.add_argument("--workers", type=int, help="dataloader worker processes (sets data.num_workers)")
    parser.add_argument(
        "--no-tensorboard", action="store_true", help="write metrics.jsonl/csv only, no TensorBoard events"
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        metavar="SECONDS",
        help="stop after SECONDS of training time (steps only, summed over resumed sessions; "
        "startup, checkpoints and sample grids not counted), saving the final checkpoint and report",
    )
    parser.add_argument(
        "--sample-steps",
        type=int,
        default=5,
        help="sampler steps for the sample grid at each checkpoint (ldm; default 5)",
    )
    parser.add_argument(
        "--inject-nan-at",
        type=int,
        metavar="STEP",
        help="testing aid: make the loss of step STEP NaN, to exercise the nan_policy",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train the first-stage VAE, then the latent diffusion model, with resumable "
        "checkpoints, mixed precision, torch.compile and DDP (torchrun).",
    )
    commands = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        help="vae, ldm, baseline or report (COMMAND --help for its options)",
    )
    vae = commands.add_parser(
        "vae", help="train the VAE (the vae_trainer recipe)", description="Train the VAE."
    )
    _add_run_options(vae, "vae")
    _add_init_option(
        vae,
        "the VAE of an `irt4-train vae` checkpoint or the frozen VAE of a diffusion bundle or checkpoint "
        "(e.g. to continue the shipped VAE on new maps)",
    )
    ldm = commands.add_parser(
        "ldm",
        help="train the diffusion UNet on a frozen VAE (the trainer recipe)",
        description="Train the conditional UNet on latents of a frozen VAE.",
    )
    _add_run_options(ldm, "ldm")
    ldm.add_argument(
        "--vae",
        type=Path,
        help="checkpoint of an `irt4-train vae` run (e.g. RUN_VAE/last.pt); its EMA weights are used; "
        "required unless --resume or --init-from. With --init-from it replaces that model's VAE (the UNet "
        "continues on the new VAE's latents, scale_factor measured afresh)",
    )
    _add_init_option(
        ldm,
        "the whole model (VAE, UNet, scale_factor) of a diffusion bundle or checkpoint (its UNet only "
        "with --vae)",
    )
    ldm.add_argument(
        "--prior",
        type=Path,
        metavar="REGRESSOR",
        help="a trained regressor (a baseline bundle or checkpoint of `irt4-train baseline`, same "
        "data.condition and image_size): the UNet reads its frozen prediction as one more condition "
        "channel (sets diffusion.prior=regressor and the baseline section to the regressor's). A fresh run, "
        "or --init-from a model without a prior (the new channel starts at zero weight: the model starts as "
        "the function it was); a resumed run or a model with a prior keeps the regressor it holds",
    )
    ldm.add_argument(
        "--cache-latents",
        action="store_true",
        help="encode every training map's VAE posterior once and sample latents from it at each step",
    )
    baseline = commands.add_parser(
        "baseline",
        help="train the RadioUNet-style one-pass UNet regressor (the trainer recipe, baseline section)",
        description="Train the baseline: a conv UNet from the condition image to the radio map, MSE loss.",
    )
    _add_run_options(baseline, "baseline")
    _add_init_option(baseline, "the regressor of a baseline bundle or checkpoint")
    report = commands.add_parser(
        "report", help="write RUN/report.md with loss and LR plots", description="Write a run's report."
    )
    report.add_argument("run", type=Path, help="run folder")
    return parser


def _add_init_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--init-from",
        type=Path,
        metavar="MODEL",
        help=f"start a new run from trained weights instead of random ones: {what} "
        "(e.g. a file of irt4/assets), whose weights fit this run's config; the optimizer, schedule "
        "and EMA start fresh. Continues a model whose checkpoints are gone; not with --resume",
    )


def prior_overrides(path: Path) -> list[str]:
    """The config overrides that make a diffusion model hold the regressor `path` as its prior."""
    from irt4.baseline.bundle import load_baseline

    regressor, _ = load_baseline(path)  # InputError for a missing or foreign file
    arch = config_to_dict(regressor.cfg)["baseline"]
    return ["diffusion.prior=regressor", *(f"baseline.{key}={value}" for key, value in arch.items())]


def _resolve_config(args: argparse.Namespace, section: str) -> tuple[Config, tuple | None]:
    """The run's config: --config (or the resumed checkpoint's) with the command-line overrides."""
    from irt4.train.checkpoint import load_newest_valid

    overrides = list(args.overrides)
    if getattr(args, "prior", None) is not None:
        overrides += prior_overrides(args.prior)
    for value, key in ((args.steps, f"{section}.train_num_steps"), (args.seed, f"{section}.seed")):
        if value is not None:
            overrides.append(f"{key}={value}")
    if args.workers is not None:
        overrides.append(f"data.num_workers={args.workers}")
    resume = None
    if args.resume and args.auto_resume:
        raise InputError("--auto-resume resumes by itself where --out holds a checkpoint: drop --resume")
    if args.resume or args.auto_resume:
        resume = load_newest_valid(args.out) if args.out.is_dir() else None
        if resume is None and args.resume:
            raise InputError(f"--resume: {args.out} holds no readable checkpoint")
    if resume is not None:
        path, checkpoint = resume
        if checkpoint.get("stage") != args.command:
            raise InputError(f"--resume: {path} is a {checkpoint.get('stage')} run, not {args.command}")
        if args.config:
            log.info("--resume: using the config stored in %s, not --config", path)
        cfg = apply_overrides(config_from_dict(checkpoint["config"]), overrides)
    else:
        if not args.config:
            raise InputError("--config is required (unless --resume)")
        if any(args.out.glob("ckpt-*.pt")):
            raise InputError(
                f"{args.out} already holds checkpoints, none readable: pass --resume, or another --out"
                if args.auto_resume
                else f"{args.out} already holds checkpoints: pass --resume, or another --out"
            )
        cfg = load_config(args.config, overrides)
    return cfg, resume


def train(args: argparse.Namespace) -> int:
    from irt4.train.stages import (
        BaselineStage,
        LDMStage,
        VAEStage,
        checkpoint_vae_weights,
        datasets,
        init_from_trained,
        load_prior,
        read_vae_weights,
        trained_vae_weights,
    )
    from irt4.train.trainer import (
        RunOptions,
        Trainer,
        check_run_options,
        resolve_precision,
        seed_everything,
        setup_distributed,
    )

    section = "vae_trainer" if args.command == "vae" else "trainer"
    if args.sample_steps < 1:
        raise InputError("--sample-steps must be at least 1")
    if args.time_budget is not None and not args.time_budget > 0:
        raise InputError(f"--time-budget must be a positive number of seconds, got {args.time_budget}")
    cfg, resume = _resolve_config(args, section)
    if resume is not None and args.auto_resume:
        log.info("--auto-resume: continuing from %s", resume[0])
        for option in ("init_from", "prior"):
            if getattr(args, option, None) is not None:
                flag = "--" + option.replace("_", "-")
                log.info("--auto-resume: %s applied to the run's first start only", flag)
                setattr(args, option, None)
    init_from = getattr(args, "init_from", None)
    if init_from is not None and resume is not None:
        raise InputError("--init-from starts a new run and --resume continues one: pass one of them")
    env = setup_distributed(args.device)
    if not env.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    precision = args.precision
    if precision is None and any(o.startswith(f"{section}.precision=") for o in args.overrides):
        precision = getattr(cfg, section).precision
    precision = resolve_precision(precision, env.device)
    cfg = apply_overrides(cfg, [f"{section}.precision={precision}"])  # the config records what ran
    options = RunOptions(
        run_dir=args.out,
        precision=precision,
        compile=args.compile,
        compile_regions=args.compile_regions,
        cuda_graphs=getattr(args, "cuda_graphs", False),
        tensorboard=not args.no_tensorboard,
        sample_steps=args.sample_steps,
        time_budget_s=args.time_budget,
        init_from=str(init_from) if init_from is not None else None,
        inject_nan_at=args.inject_nan_at,
    )
    check_run_options(options, env, getattr(cfg, section))  # before the data and models load

    seed_everything(getattr(cfg, section).seed)
    train_set, sample_set = datasets(cfg, args.data)
    if args.command == "vae":
        stage = VAEStage(cfg, train_set, sample_set)
        if init_from is not None:
            stage.vae.load_state_dict(trained_vae_weights(init_from, cfg, "--init-from"))
            log.info("--init-from: VAE weights from %s", init_from)
    elif args.command == "baseline":
        stage = BaselineStage(cfg, train_set, sample_set)
    else:
        if resume is None and init_from is None and args.vae is None:
            raise InputError("--vae is required: the checkpoint of an `irt4-train vae` run")
        if resume is not None:  # the checkpoint's VAE, so that --cache-latents encodes with it once
            vae_weights = checkpoint_vae_weights(resume[1])
        else:
            vae_weights = None if init_from is not None else read_vae_weights(args.vae, cfg)
        stage = LDMStage(cfg, train_set, sample_set, vae_weights, cache_latents=args.cache_latents)
    trained_cfg = None
    if init_from is not None and args.command != "vae":
        trained_cfg = init_from_trained(stage, init_from)
        if args.command == "ldm" and args.vae is not None:
            # a retrained VAE under the trained UNet: its latents have their own scale, measured on the
            # first batch as in a fresh run, so the UNet sees unit-variance latents as it learned to
            stage.model.vae.load_state_dict(trained_vae_weights(args.vae, cfg, "--vae"))
            stage.keep_scale_factor = False
            log.info("--vae: the VAE of %s replaces the one of --init-from", args.vae)
    prior = getattr(args, "prior", None)
    had_prior = trained_cfg is not None and trained_cfg.diffusion.prior == "regressor"
    if prior is not None:
        if resume is not None or had_prior:
            raise InputError(
                "--prior adds a regressor: a resumed or --init-from model keeps the one it holds"
            )
        load_prior(stage, prior)  # with --init-from: its new condition channel starts at zero weight
    elif args.command == "ldm" and cfg.diffusion.prior == "regressor" and resume is None and not had_prior:
        raise InputError(
            "diffusion.prior=regressor needs --prior REGRESSOR (an `irt4-train baseline` result)"
        )
    try:
        return Trainer(stage, cfg, options, env, resume).run()
    finally:
        if env.active:
            torch.distributed.destroy_process_group()


def report(args: argparse.Namespace) -> int:
    from irt4.train.report import write_report

    if not (args.run / "run.json").is_file():
        raise InputError(f"{args.run}: not a training run folder (no run.json)")
    print(write_report(args.run))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"{PROG}: %(levelname)s: %(message)s")
    try:
        return report(args) if args.command == "report" else train(args)
    except InputError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
