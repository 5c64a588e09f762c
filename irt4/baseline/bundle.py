"""Baseline bundles: the regressor's weights and resolved config in one safetensors file.

Like the diffusion model's bundle (irt4.models.bundle), with metadata `format`
(BASELINE_BUNDLE_FORMAT), `kind: baseline`, `irt4_version`, `config` and `weights` ("ema" or "raw").
`load_baseline` also takes an `irt4-train baseline` checkpoint (.pt), and refuses diffusion files
with a message that names the loader to use (irt4.models.bundle.load_model refuses baseline files).
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from irt4 import __version__
from irt4.baseline.regressor import RadioUNetRegressor
from irt4.config import Config, config_to_dict
from irt4.errors import InputError
from irt4.models.bundle import (
    BASELINE_BUNDLE_FORMAT,
    BUNDLE_FORMAT,
    _config_from_yaml,
    read_checkpoint,
    read_safetensors,
)

WRONG_KIND = "a diffusion model {what}, not a baseline; load it with irt4.models.bundle.load_model"


def save_baseline(
    path: str | Path, model: RadioUNetRegressor, weights: str = "ema", dtype: torch.dtype = torch.float32
) -> None:
    """Write `model` (whose weights are already the EMA ones if `weights` says so) as a bundle."""
    from safetensors.torch import save_file

    tensors = {
        name: (
            value.detach().cpu().to(dtype) if value.is_floating_point() else value.detach().cpu()
        ).contiguous()
        for name, value in model.state_dict().items()
    }
    metadata = {
        "format": BASELINE_BUNDLE_FORMAT,
        "kind": "baseline",
        "irt4_version": __version__,
        "config": yaml.safe_dump(config_to_dict(model.cfg), sort_keys=False),
        "weights": weights,
    }
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)


def _read_bundle(path: Path) -> tuple[Config, dict[str, torch.Tensor], dict]:
    metadata, tensors = read_safetensors(path)
    if metadata.get("format") == BUNDLE_FORMAT or metadata.get("kind") == "radiodiff":
        raise InputError(f"{path}: " + WRONG_KIND.format(what="bundle"))
    if metadata.get("format") != BASELINE_BUNDLE_FORMAT:
        raise InputError(f"{path}: not an irt4 baseline bundle (format {metadata.get('format')!r})")
    return _config_from_yaml(metadata["config"], path), tensors, metadata


def _read_checkpoint(path: Path, use_ema: bool) -> tuple[Config, dict[str, torch.Tensor], dict]:
    checkpoint = read_checkpoint(path)
    if checkpoint.get("stage") != "baseline":
        raise InputError(f"{path}: " + WRONG_KIND.format(what=f"{checkpoint.get('stage')}-stage checkpoint"))
    cfg = _config_from_yaml(yaml.safe_dump(checkpoint["config"]), path)
    weights = "ema" if use_ema and checkpoint.get("ema") else "raw"
    state = checkpoint["ema"] if weights == "ema" else checkpoint["model"]
    return cfg, state, {"weights": weights, "irt4_version": checkpoint.get("irt4_version", "?")}


def load_baseline(
    path: str | Path, device: str | torch.device = "cpu", use_ema: bool = True
) -> tuple[RadioUNetRegressor, dict]:
    """A baseline bundle (.safetensors) or `irt4-train baseline` checkpoint (.pt) -> (model in eval
    mode, info with `weights` and `irt4_version`)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        cfg, state, info = _read_bundle(path)
    else:
        cfg, state, info = _read_checkpoint(path, use_ema)
    model = RadioUNetRegressor(cfg)
    expected = model.state_dict()
    if set(state) != set(expected) or any(state[k].shape != v.shape for k, v in expected.items()):
        raise InputError(f"{path}: its weights do not fit its config's baseline section")
    model.load_state_dict({name: value.to(expected[name].dtype) for name, value in state.items()})
    return model.to(device).eval(), {
        "weights": info.get("weights", "raw"),
        "irt4_version": info.get("irt4_version"),
    }
