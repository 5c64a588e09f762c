"""The training stages: the VAE (first stage), the latent diffusion UNet (second stage), and the
RadioUNet-style baseline regressor (irt4.baseline) that the diffusion model is compared with.

Each says what is trained, its loss, what its checkpoints hold and what its sample grid shows; the
loop itself is irt4.train.trainer. Checkpoint `model` weights use RadioDiff's names: `vae.*` for the
VAE stage, the whole model (`vae.*`, `unet.*`, `scale_factor`) for the LDM stage (contracts.md), the
regressor's own names for the baseline; `ema` holds the averaged trained network under its own names.

The training set is augmented as `data.augment` says (irt4.train.augment); sample grids are not.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from irt4.baseline.regressor import RadioUNetRegressor, regression_loss
from irt4.baseline.regressor import predict as regressor_predict
from irt4.config import Config, config_from_dict
from irt4.data.radiomapseer import RadioMapSeer, model_inputs
from irt4.diffusion.ddm import training_loss
from irt4.errors import InputError
from irt4.models.radiodiff import RadioDiff
from irt4.models.vae import AutoencoderKL, vae_loss
from irt4.train.augment import augmented
from irt4.train.checkpoint import read_checkpoint
from irt4.train.data import Indexed, in_memory

log = logging.getLogger(__name__)


def datasets(cfg: Config, root: Path) -> tuple[Dataset, Dataset]:
    """(train split, maps for the sample grids: the val split, or the train split where it is empty)."""
    common = dict(
        split_scheme=cfg.data.split,
        simulation=cfg.data.simulation,
        target_divisor=cfg.data.target_divisor,
        **model_inputs(cfg),
    )
    train_set = in_memory(RadioMapSeer(root, split="train", **common), cfg.data.memory_cache_gb, log)
    try:
        sample_set = RadioMapSeer(root, split="val", **common)
    except InputError as error:
        log.info("sample grids use training maps: %s", error)
        sample_set = train_set
    return Indexed(augmented(train_set, cfg.data.augment)), sample_set


def _maps(image: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1]."""
    return ((image.float() + 1) / 2).clamp(0.0, 1.0)


class VAEStage:
    """Trains the KL autoencoder with the reference's pixel + KL loss (no LPIPS, no discriminator)."""

    name = "vae"

    def __init__(self, cfg: Config, train_set: Dataset, sample_set: Dataset):
        self.cfg = cfg
        self.trainer_cfg = cfg.vae_trainer
        self.vae = AutoencoderKL(**dataclasses.asdict(cfg.vae))
        self.module = self.vae
        self.train_set, self.sample_set = train_set, sample_set

    def to(self, device: torch.device, memory_format: torch.memory_format) -> None:
        self.vae.to(device, memory_format=memory_format)

    def first_batch(self, batch: dict, generator: torch.Generator) -> dict[str, float]:
        return {}

    def loss(self, module: nn.Module, batch: dict, generator: torch.Generator):
        recon, posterior = module(batch["image"], generator=generator)
        return vae_loss(batch["image"], recon, posterior, self.cfg.vae_loss.kl_weight)

    def predict(self, ema_module: nn.Module, batch: dict, steps: int, generator: torch.Generator):
        recon, _ = ema_module(batch["image"], sample_posterior=False)
        return _maps(recon)

    def model_state(self) -> dict[str, torch.Tensor]:
        return {f"vae.{name}": value for name, value in self.vae.state_dict().items()}

    def load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        self.vae.load_state_dict({name.removeprefix("vae."): value for name, value in state.items()})

    def scale_factor(self) -> float | None:
        return None


def read_vae_weights(path: Path, cfg: Config, option: str = "--vae") -> dict[str, torch.Tensor]:
    """The EMA weights of a VAE-stage checkpoint whose VAE config is this run's; InputError otherwise."""
    if not path.is_file():
        raise InputError(f"{option} {path}: no such file")
    try:
        checkpoint = read_checkpoint(path)
    except Exception as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"{option} {path}: not an irt4-train checkpoint ({first_line})") from None
    if checkpoint.get("stage") != "vae":
        raise InputError(
            f"{option} {path}: a {checkpoint.get('stage')}-stage checkpoint; it needs one of `irt4-train vae`"
        )
    try:
        vae_cfg = config_from_dict(checkpoint["config"]).vae
    except Exception as error:
        raise InputError(f"{option} {path}: its stored config does not load ({error})") from None
    _check_vae_config(vae_cfg, cfg, f"{option} {path}")
    return checkpoint["ema"]


def _check_vae_config(theirs_cfg, cfg: Config, where: str) -> None:
    for field in dataclasses.fields(theirs_cfg):
        theirs, ours = getattr(theirs_cfg, field.name), getattr(cfg.vae, field.name)
        if theirs != ours:
            raise InputError(f"{where}: vae.{field.name} is {theirs} there and {ours} in this run's config")


def trained_vae_weights(path: Path, cfg: Config, option: str) -> dict[str, torch.Tensor]:
    """The VAE of a trained model: an `irt4-train vae` checkpoint (its EMA weights), or the frozen VAE
    of a diffusion bundle or ldm checkpoint. Its VAE config must be this run's; InputError otherwise."""
    from irt4.models.bundle import load_model

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{option} {path}: no such file")
    if path.suffix != ".safetensors":
        try:
            stage = read_checkpoint(path).get("stage")
        except Exception:
            stage = None  # load_model names the problem
        if stage == "vae":
            return read_vae_weights(path, cfg, option)
    trained, _ = load_model(path)  # InputError for a foreign or baseline file
    _check_vae_config(trained.cfg.vae, cfg, f"{option} {path}")
    return {name: value.float() for name, value in trained.vae.state_dict().items()}


def checkpoint_vae_weights(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The frozen VAE of an ldm-stage checkpoint (its `vae.*` model tensors), without the prefix."""
    return {
        name.removeprefix("vae."): value
        for name, value in checkpoint["model"].items()
        if name.startswith("vae.")
    }


class LDMStage:
    """Trains the conditional UNet on latents of the frozen VAE.

    scale_by_std: on the first batch of a fresh run, scale_factor = 1 / std(z) (rank 0's, broadcast).
    With `cache_latents`, the VAE posterior (mean, std) of every training sample is computed once and
    each step samples z from it, instead of running the VAE encoder on every batch. Under dihedral
    augmentation every transformed map is a sample of its own, so each of the 8 is encoded (the VAE
    is not equivariant: transforming a latent is not encoding the transformed map).
    """

    name = "ldm"

    def __init__(
        self,
        cfg: Config,
        train_set: Dataset,
        sample_set: Dataset,
        vae_weights: dict[str, torch.Tensor] | None,
        cache_latents: bool = False,
    ):
        self.cfg = cfg
        self.trainer_cfg = cfg.trainer
        self.model = RadioDiff(cfg)
        if vae_weights is not None:
            self.model.vae.load_state_dict(vae_weights)
        self.model.vae.eval().requires_grad_(False)
        self.module = self.model.unet
        self.train_set, self.sample_set = train_set, sample_set
        self.cache_latents = cache_latents
        self.latent_cache: tuple[torch.Tensor, ...] | None = None  # (mean, std[, residual base]) per sample
        self.keep_scale_factor = False  # set by init_from_trained: the UNet learned that latent scale

    def to(self, device: torch.device, memory_format: torch.memory_format) -> None:
        self.model.to(device, memory_format=memory_format)
        if self.cache_latents and self.latent_cache is None:
            self.latent_cache = self._encode_all(device)

    @torch.no_grad()
    def _encode_all(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        start = time.perf_counter()
        loader = DataLoader(self.train_set, batch_size=16, num_workers=self.cfg.data.num_workers)
        means, stds, bases = [], [], []
        for batch in loader:
            posterior = self.model.vae.encode(batch["image"].to(device))
            means.append(posterior.mean)
            stds.append(posterior.std)
            if self.cfg.diffusion.residual:  # the frozen regressor's latents, fixed per sample too
                bases.append(self.model.mean_latents(batch["cond"].to(device)))
        cache = (torch.cat(means), torch.cat(stds), *([torch.cat(bases)] if bases else []))
        log.info("cached %d latent posteriors in %.1f s", len(cache[0]), time.perf_counter() - start)
        return cache

    def _latents(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        """Unscaled z ~ the VAE posterior of the batch's radio maps."""
        if self.latent_cache is None:
            return self.model.vae.encode(batch["image"]).sample(generator)
        index = batch["index"].to(self.latent_cache[0].device)
        mean, std = self.latent_cache[0][index], self.latent_cache[1][index]
        noise = torch.randn(mean.shape, generator=generator, device=generator.device, dtype=mean.dtype)
        return mean + std * noise.to(mean.device)

    def _residual_base(self, batch: dict) -> torch.Tensor | None:
        """diffusion.residual: the unscaled latents of the regressor's map (RadioDiff.mean_latents)."""
        if not self.cfg.diffusion.residual:
            return None
        if self.latent_cache is None:
            return self.model.mean_latents(batch["cond"])
        return self.latent_cache[2][batch["index"].to(self.latent_cache[2].device)]

    def _target_latents(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        """Unscaled diffusion targets: z of the maps, less the regressor's under diffusion.residual."""
        z = self._latents(batch, generator)
        base = self._residual_base(batch)
        return z if base is None else z - base

    @torch.no_grad()
    def first_batch(self, batch: dict, generator: torch.Generator) -> dict[str, float]:
        if not self.cfg.diffusion.scale_by_std or self.keep_scale_factor:
            return {}
        # spec "Latent scaling", as RadioDiff.set_scale_from_batch, on the (possibly cached) posterior
        target = self._target_latents(batch, generator)
        self.model.scale_factor.fill_(1.0 / target.float().flatten().std())
        if torch.distributed.is_initialized():
            torch.distributed.broadcast(self.model.scale_factor, src=0)
        return {"scale_factor": float(self.model.scale_factor)}

    def loss(self, module: nn.Module, batch: dict, generator: torch.Generator):
        with torch.no_grad():
            x0 = self._target_latents(batch, generator) * self.model.scale_factor
        return training_loss(module, x0, batch["cond"], self.cfg.diffusion, generator)

    def predict(self, ema_module: nn.Module, batch: dict, steps: int, generator: torch.Generator):
        trained = self.model.unet
        self.model.unet = ema_module
        try:
            return self.model.sample(batch["cond"], steps=steps, generator=generator)
        finally:
            self.model.unet = trained

    def model_state(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        if self.latent_cache is None:
            self.model.load_state_dict(state)
            return
        before = {name: value.clone() for name, value in self._cached_from().items()}
        self.model.load_state_dict(state)
        after = self._cached_from()
        if any(not torch.equal(before[name], after[name]) for name in before):
            # a resumed run cached its latents (Trainer.__init__, stage.to) before its checkpoint's VAE
            # (or residual regressor) arrived: latents of the wrong one would silently retrain the UNet
            log.info("the checkpoint's VAE or regressor differs from the cached latents' own: re-caching")
            self.latent_cache = self._encode_all(self.model.scale_factor.device)

    def _cached_from(self) -> dict[str, torch.Tensor]:
        """The frozen weights the latent cache depends on: the VAE's, and the regressor's under
        diffusion.residual."""
        state = {f"vae.{k}": v for k, v in self.model.vae.state_dict().items()}
        if self.cfg.diffusion.residual:
            state.update({f"prior.{k}": v for k, v in self.model.unet.prior.state_dict().items()})
        return state

    def scale_factor(self) -> float | None:
        return float(self.model.scale_factor)


class BaselineStage:
    """Trains the RadioUNet-style regressor (irt4.baseline) with MSE on the gain in [0, 1], from the
    same condition tensors and training set as the diffusion model, with the `trainer` recipe."""

    name = "baseline"

    def __init__(self, cfg: Config, train_set: Dataset, sample_set: Dataset):
        self.cfg = cfg
        self.trainer_cfg = cfg.trainer
        self.model = RadioUNetRegressor(cfg)
        self.module = self.model
        self.train_set, self.sample_set = train_set, sample_set

    def to(self, device: torch.device, memory_format: torch.memory_format) -> None:
        self.model.to(device, memory_format=memory_format)

    def first_batch(self, batch: dict, generator: torch.Generator) -> dict[str, float]:
        return {}

    def loss(self, module: nn.Module, batch: dict, generator: torch.Generator):
        return regression_loss(module, batch["cond"], _maps(batch["image"])), {}

    def predict(self, ema_module: nn.Module, batch: dict, steps: int, generator: torch.Generator):
        return regressor_predict(ema_module, batch["cond"])

    def model_state(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)

    def scale_factor(self) -> float | None:
        return None


def init_from_trained(stage: LDMStage | BaselineStage, path: Path) -> Config:
    """Start a fresh run's network from a trained model (`irt4-train --init-from`): a bundle or a
    checkpoint of the same kind, whose weights fit this run's config. The LDM takes the whole model
    (VAE, UNet, scale_factor: the UNet learned that latent scale, so it is kept); the optimizer, the
    schedule and the EMA start fresh, the EMA from these weights. Continues training across sessions
    where only the shipped bundles survive. Condition channels (and a regressor prior) this run adds
    start at zero weight, so the network computes the function it was; a new prior's regressor is
    left for `load_prior`. Returns the trained model's config."""
    from irt4.baseline.bundle import load_baseline
    from irt4.models.bundle import load_model

    path = Path(path)
    if isinstance(stage, LDMStage):
        trained, _ = load_model(path)  # InputError for a missing, foreign or baseline file
    else:
        trained, _ = load_baseline(path)
    theirs, ours = dict(trained.state_dict()), stage.model.state_dict()
    diffusion = isinstance(stage, LDMStage)
    their_inputs, our_inputs = (
        _condition_inputs(trained.cfg, diffusion),
        _condition_inputs(stage.cfg, diffusion),
    )
    if PRIOR_INPUT in their_inputs and PRIOR_INPUT not in our_inputs:
        raise InputError(
            f"--init-from {path}: the model holds a regressor prior and this run's config has "
            "diffusion.prior=none; continue it with --set diffusion.prior=regressor (and the regressor's "
            "baseline section, if it differs from the preset's)"
        )
    if their_inputs != our_inputs:
        # the conv that reads the condition image
        name = "unet.cond_backbone.patch_conv.weight" if diffusion else "encoder.0.0.weight"
        theirs[name] = adapted_input_weight(theirs[name], their_inputs, our_inputs, path)
        if diffusion and "unet.cond_adapter.weight" in theirs:
            # the adapter of 5-channel (cars) inputs writes the condition's channels: its output rows
            for key in ("unet.cond_adapter.weight", "unet.cond_adapter.bias"):
                theirs[key] = adapted_output_rows(
                    theirs[key], trained.cfg.data.condition, stage.cfg.data.condition
                )
        log.info(
            "--init-from: condition %s -> %s (%s; new channels start at 0)", their_inputs, our_inputs, name
        )
    if PRIOR_INPUT in our_inputs and PRIOR_INPUT not in their_inputs:
        # the regressor that fills the new prior slot comes from --prior (load_prior)
        theirs.update({key: value for key, value in ours.items() if key.startswith("unet.prior.")})
    misfit = sorted(k for k in ours if k not in theirs or theirs[k].shape != ours[k].shape)
    misfit += sorted(set(theirs) - set(ours))
    if misfit:
        raise InputError(
            f"--init-from {path}: its model does not fit this run's config ({len(misfit)} tensors differ, "
            f"e.g. {misfit[:2]}); train with the config stored in it"
        )
    stage.model.load_state_dict({name: value.to(ours[name].dtype) for name, value in theirs.items()})
    if isinstance(stage, LDMStage):
        # the UNet learned the latents at that scale; a run that switches diffusion.residual diffuses
        # other latents (the residual, or the whole map's), whose scale the first batch measures afresh
        stage.keep_scale_factor = trained.cfg.diffusion.residual == stage.cfg.diffusion.residual
    log.info("--init-from: network weights from %s", path)
    return trained.cfg


PRIOR_INPUT = "prior (regressor)"  # the channel diffusion.prior=regressor appends to the condition


def _condition_inputs(cfg: Config, diffusion: bool) -> tuple[str, ...]:
    """The names of the channels the network's first layer reads: data.condition, then (for a
    diffusion model with diffusion.prior=regressor) the prior's."""
    prior = (PRIOR_INPUT,) if diffusion and cfg.diffusion.prior == "regressor" else ()
    return (*cfg.data.condition, *prior)


def load_prior(stage: LDMStage, path: Path) -> None:
    """Put the trained regressor `path` (a baseline bundle or checkpoint) into the diffusion model's
    prior slot (diffusion.prior: regressor), frozen. Its inputs must be the diffusion model's own."""
    from irt4.baseline.bundle import load_baseline

    regressor, info = load_baseline(path)
    prior = stage.model.unet.prior
    if prior is None:
        raise InputError(f"--prior {path}: this run's config has diffusion.prior=none")
    ours, theirs = stage.cfg, regressor.cfg
    if (theirs.data.condition, theirs.image_size) != (ours.data.condition, ours.image_size):
        raise InputError(
            f"--prior {path}: the regressor reads data.condition {list(theirs.data.condition)} at "
            f"{theirs.image_size} px, this run {list(ours.data.condition)} at {ours.image_size} px; "
            "train the regressor on the same inputs"
        )
    prior.load_state_dict(regressor.state_dict())
    prior.requires_grad_(False)
    log.info("--prior: the frozen regressor of %s (%s weights)", path, info.get("weights", "?"))


def adapted_output_rows(tensor: torch.Tensor, theirs: tuple[str, ...], ours: tuple[str, ...]) -> torch.Tensor:
    """A layer's weight or bias whose output rows are the condition's channels, for the condition `ours`:
    each of our channels takes the row of their first channel of the same name, new channels zero."""
    adapted = tensor.new_zeros(len(ours), *tensor.shape[1:])
    for k, channel in enumerate(ours):
        if channel in theirs:
            adapted[k] = tensor[theirs.index(channel)]
    return adapted


def adapted_input_weight(
    weight: torch.Tensor, theirs: tuple[str, ...], ours: tuple[str, ...], path: Path
) -> torch.Tensor:
    """The input conv's weight (O, len(theirs), kh, kw) for the condition `ours`, so that the network
    computes the function it was: each of their channels' weights go to our first channel of the same
    name (summed, so the reference's two equal buildings channels become one), and channels they lacked
    start at zero; the network then learns to read those from their gradients. A channel of theirs that
    ours lacks would change the function: InputError."""
    dropped = sorted(set(theirs) - set(ours))
    if dropped:
        raise InputError(
            f"--init-from {path}: trained with data.condition {list(theirs)}, this run has {list(ours)}; "
            f"it lacks {dropped}, which the model reads. Keep every trained channel and add new ones"
        )
    adapted = weight.new_zeros(weight.shape[0], len(ours), *weight.shape[2:])
    for k, channel in enumerate(theirs):
        adapted[:, ours.index(channel)] += weight[:, k]
    return adapted
