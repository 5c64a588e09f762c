"""Model bundles: both stages' weights, the latent scale, the resolved config and the irt4 version.

A bundle is one safetensors file (contracts.md: "Model and checkpoints"): tensors `vae.*`, `unet.*`
and `scale_factor`; metadata `format`, `irt4_version`, `config` (the resolved config as YAML) and
`weights` ("ema" or "raw"). Weights may be stored in fp16 to keep shipped files small; they are
loaded back in fp32. Training checkpoints (irt4.train) hold the same `model` state dict, so
`load_model` takes either kind of file.

A model with a regressor prior (diffusion.prior: regressor) holds the regressor's weights as `unet.prior.*`,
or, when it is saved with `prior_file`, links a baseline bundle beside it instead (metadata `prior_file`,
its name, and `prior_sha256`, its bytes' hash): the shipped diffusion model and the shipped regressor
are then one copy of the regressor, and loading checks that the file is the one it was saved with.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import yaml

from irt4 import __version__
from irt4.config import Config, config_from_dict, config_to_dict
from irt4.errors import InputError
from irt4.models.radiodiff import RadioDiff

BUNDLE_FORMAT = "irt4-radiodiff-bundle-1"
BASELINE_BUNDLE_FORMAT = "irt4-baseline-bundle-1"  # irt4.baseline's regressor (metadata kind: baseline)


PRIOR_PREFIX = "unet.prior."


def save_bundle(
    path: str | Path,
    model: RadioDiff,
    weights: str = "ema",
    dtype: torch.dtype = torch.float32,
    prior_file: str | Path | None = None,
) -> None:
    """Write `model` (whose weights are already the EMA ones if `weights` says so) as a bundle.
    `prior_file`: a baseline bundle in the same folder whose weights are the model's regressor prior
    (as stored there); the bundle links it instead of holding a second copy."""
    from safetensors.torch import save_file

    path = Path(path)
    link = _prior_link(path, model, prior_file) if prior_file is not None else {}
    tensors = {}
    for name, value in model.state_dict().items():
        if link and name.startswith(PRIOR_PREFIX):
            continue
        value = value.detach().cpu()
        # halve float weights for shipping, but keep the scale and integer buffers exact
        if value.is_floating_point() and name != "scale_factor":
            value = value.to(dtype)
        tensors[name] = value.contiguous()
    metadata = {
        "format": BUNDLE_FORMAT,
        "irt4_version": __version__,
        "config": yaml.safe_dump(config_to_dict(model.cfg), sort_keys=False),
        "weights": weights,
        "kind": "radiodiff",
        **link,
    }
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)


def _prior_link(path: Path, model: RadioDiff, prior_file: str | Path) -> dict[str, str]:
    """The metadata that links `prior_file` as `model`'s prior, after checking that it holds it."""
    prior_file = Path(prior_file)
    if model.unet.prior is None:
        raise InputError(f"{path}: prior_file {prior_file} given for a model without a regressor prior")
    if prior_file.resolve().parent != path.resolve().parent:
        raise InputError(f"{path}: the linked prior {prior_file} must lie in the bundle's folder")
    metadata, stored = read_safetensors(prior_file)
    if metadata.get("kind") != "baseline":
        raise InputError(f"{path}: the linked prior {prior_file} is not a baseline (regressor) bundle")
    ours = model.unet.prior.state_dict()
    if set(stored) != set(ours):
        raise InputError(f"{path}: {prior_file} does not hold this model's prior (other tensors)")
    for name, value in ours.items():
        # the file may hold the weights in fp16: compare them as stored there
        if not torch.equal(value.detach().cpu().to(stored[name].dtype), stored[name]):
            raise InputError(f"{path}: {prior_file} does not hold this model's prior ({name} differs)")
    return {
        "prior_file": prior_file.name,
        "prior_sha256": hashlib.sha256(prior_file.read_bytes()).hexdigest(),
    }


def _linked_prior(path: Path, metadata: dict) -> dict[str, torch.Tensor]:
    """The `unet.prior.*` tensors of the baseline bundle a bundle links, checked against its hash."""
    from safetensors.torch import load

    linked = path.parent / metadata["prior_file"]
    if not linked.is_file():
        raise InputError(
            f"{path}: its regressor prior is the baseline bundle {linked.name} beside it, which is missing; "
            "keep the two files together"
        )
    data = linked.read_bytes()  # read once: hashed, then parsed
    if hashlib.sha256(data).hexdigest() != metadata.get("prior_sha256"):
        raise InputError(f"{path}: {linked} is not the regressor this model was saved with (another hash)")
    return {PRIOR_PREFIX + name: value for name, value in load(data).items()}


def _config_from_yaml(text: str, path: Path) -> Config:
    try:
        return config_from_dict(yaml.safe_load(text))
    except Exception as err:  # a config from an incompatible irt4 version
        raise InputError(f"{path}: its stored config does not load in irt4 {__version__}: {err}") from err


def read_safetensors(path: Path, tensors: bool = True) -> tuple[dict, dict[str, torch.Tensor] | None]:
    """(metadata, tensors or None) of a safetensors file; an unreadable file is an InputError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        return metadata, load_file(str(path)) if tensors else None
    except (SafetensorError, OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable safetensors file ({err})") from err


def _read_bundle(path: Path) -> tuple[Config, dict[str, torch.Tensor], dict]:
    metadata, tensors = read_safetensors(path)
    if metadata.get("kind") == "baseline" or metadata.get("format") == BASELINE_BUNDLE_FORMAT:
        raise InputError(
            f"{path}: a baseline (UNet regressor) bundle, not a diffusion model; "
            "load it with irt4.baseline.load_baseline"
        )
    if metadata.get("format") != BUNDLE_FORMAT:
        raise InputError(f"{path}: not an irt4 model bundle (format {metadata.get('format')!r})")
    if "prior_file" in metadata:
        tensors.update(_linked_prior(path, metadata))
    return _config_from_yaml(metadata["config"], path), tensors, metadata


def read_checkpoint(path: Path) -> dict:
    """A training checkpoint's dict (weights only); an unreadable or foreign file is an InputError."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise InputError(f"{path}: not a readable irt4 checkpoint ({err})") from err
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or "config" not in checkpoint:
        raise InputError(f"{path}: not an irt4 checkpoint (no model weights and config in it)")
    return checkpoint


def _read_checkpoint(path: Path, use_ema: bool) -> tuple[Config, dict[str, torch.Tensor], dict]:
    checkpoint = read_checkpoint(path)
    if checkpoint.get("stage") == "vae":
        raise InputError(f"{path}: a VAE-stage checkpoint; sampling needs a diffusion (ldm) checkpoint")
    if checkpoint.get("stage") == "baseline":
        raise InputError(
            f"{path}: a baseline (UNet regressor) checkpoint, not a diffusion model; "
            "load it with irt4.baseline.load_baseline"
        )
    config = checkpoint["config"]
    cfg = _config_from_yaml(config if isinstance(config, str) else yaml.safe_dump(config), path)
    state = dict(checkpoint["model"])
    ema_unet = checkpoint.get("ema")
    weights = "raw"
    if use_ema and ema_unet:
        state.update({f"unet.{name}": value for name, value in ema_unet.items()})
        weights = "ema"
    return cfg, state, {"weights": weights, "irt4_version": checkpoint.get("irt4_version", "?")}


def load_model(
    path: str | Path, device: str | torch.device = "cpu", use_ema: bool = True
) -> tuple[RadioDiff, dict]:
    """A bundle (.safetensors) or a training checkpoint (.pt) -> (model in eval mode, info)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        cfg, state, info = _read_bundle(path)
    else:
        cfg, state, info = _read_checkpoint(path, use_ema)
    model = RadioDiff(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise InputError(
            f"{path}: weights do not fit its config ({len(missing)} missing, e.g. {missing[:2]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:2]})"
        )
    for name, value in state.items():
        if value.shape != expected[name].shape:
            raise InputError(
                f"{path}: {name} is {tuple(value.shape)}, the config needs {tuple(expected[name].shape)}"
            )
    model.load_state_dict({name: value.to(expected[name].dtype) for name, value in state.items()})
    return model.to(device).eval(), {
        "weights": info.get("weights", "raw"),
        "irt4_version": info.get("irt4_version"),
    }


def checkpoint_kind(path: str | Path) -> str:
    """'baseline' for an irt4.baseline regressor bundle or checkpoint, else 'radiodiff' (whose loader
    then checks the file properly)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        metadata, _ = read_safetensors(path, tensors=False)
        baseline = metadata.get("kind") == "baseline" or metadata.get("format") == BASELINE_BUNDLE_FORMAT
        return "baseline" if baseline else "radiodiff"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise InputError(f"{path}: not a readable irt4 checkpoint ({err})") from err
    return (
        "baseline" if isinstance(checkpoint, dict) and checkpoint.get("stage") == "baseline" else "radiodiff"
    )
