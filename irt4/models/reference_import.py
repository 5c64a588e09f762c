"""Checkpoints of the reference RadioDiff code (github:chg0901/RadioDiff) as irt4 bundles.

The reference trainers save `model-{milestone}.pt` with torch.save: the LDM trainer (train_cond_ldm.py)
a dict with 'model' (the LatentDiffusion state dict: the UNet under `model.`, the frozen first-stage VAE
under `first_stage_model.`, `scale_factor` and the DDPM schedule buffers) and, when it saves for
resuming, 'ema' (an EMA wrapper whose `ema_model.` holds the same state dict), 'opt', 'lr_scheduler',
'step' and 'scaler'; the VAE trainer (train_vae.py) the same with the AutoencoderKL state dict, whose
`loss.*` tensors (LPIPS, discriminator) serve training only.

irt4's modules compute the same functions under other names (tests/test_reference_import.py checks
the outputs against the reference code's own). The VAE's names are the reference's; the UNet's are
renamed by reference_unet_key(); the Swin's relative_position_index buffers follow from the window
size and are rebuilt; the Swin's classifier head and final norm, which the reference builds but never
uses, are dropped unless kept. The model's shape (UNet width, Swin depths and heads, VAE width,
resolution) is read from the tensors themselves, and the reference YAML, where given, is checked
against it.

Files are read with torch.load(weights_only=True): tensors and plain containers only, never code.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import torch
import yaml

from irt4.config import Config, load_config
from irt4.errors import InputError

# the reference's UNet attribute -> irt4's, for the parts that are renamed whole
_TOP_LEVEL = {
    "init_conv_carK": "cond_adapter",
    "projects": "cond_projections",
    "init_conv": "init_conv",
    "decouple1": "decouple_c",
    "decouple2": "decouple_noise",
    "final_res_block": "c_decoder.final_block",
    "final_conv": "c_decoder.final_conv",
    "final_res_block2": "noise_decoder.final_block",
    "final_conv2": "noise_decoder.final_conv",
}
_LEVELS = {  # (reference list, irt4 level list)
    "downs": "down_levels",
    "ups": "c_decoder.levels",
    "ups2": "noise_decoder.levels",
}
_RELATIONS = {
    "relation_layers_down": "down_levels",
    "relation_layers_up": "c_decoder.levels",
    "relation_layers_up2": "noise_decoder.levels",
}
_LEVEL_PARTS = {"0": "block1", "1": "block2", "2": "attn", "3": None}  # 3: downsample or upsample
_VAE_TRAINING_ONLY = ("loss.", "loss_pinn.", "loss_pinn_dpm2irt4.")


def _resnet_block(rest: str) -> str:
    """A ResnetBlock's tensor: the time MLP `mlp.1` is irt4's `time_proj`."""
    return re.sub(r"^mlp\.1\.", "time_proj.", rest)


def _attention(rest: str) -> str:
    """Residual(PreNorm(dim, attention)): `fn.fn.` is the attention, `fn.norm.` its norm."""
    return re.sub(r"^fn\.(fn|norm)\.", r"\1.", rest)


def _relation(rest: str) -> str:
    rest = re.sub(r"^input_conv1\.", "cond_proj.", rest)  # applied to the condition features
    rest = re.sub(r"^input_conv2\.", "feat_proj.", rest)  # applied to the UNet features
    rest = re.sub(r"^attentions\.(\d+)\.mlp\.fc1\.", r"layers.\1.mlp.0.", rest)
    rest = re.sub(r"^attentions\.(\d+)\.mlp\.fc2\.", r"layers.\1.mlp.3.", rest)
    rest = re.sub(r"^attentions\.(\d+)\.gn\.", r"layers.\1.norm.", rest)
    return re.sub(r"^attentions\.", "layers.", rest)


def _swin(rest: str, keep_classifier: bool) -> str | None:
    """The reference's Swin (patch embedding `first_coonv`, stages at even `features` indices, patch
    merging at odd ones) -> irt4's SwinBackbone."""
    if rest.endswith(".relative_position_index"):
        return None
    if rest.startswith(("norm.", "head.")):
        return rest if keep_classifier else None
    rest = re.sub(r"^first_coonv\.0\.", "patch_conv.", rest)
    rest = re.sub(r"^first_coonv\.2\.", "patch_norm.", rest)
    match = re.fullmatch(r"features\.(\d+)\.(.+)", rest)
    if match is None:
        return rest
    index, inner = int(match.group(1)), match.group(2)
    if index % 2 == 0:
        return f"stages.{index // 2}." + re.sub(r"^(\d+)\.mlp\.3\.", r"\1.mlp.2.", inner)
    return f"merges.{index // 2}.{inner}"


def reference_unet_key(key: str, keep_classifier: bool = False) -> str | None:
    """irt4's name (under `unet.`) for a tensor of the reference Unet (its name without `model.`);
    None for tensors irt4 does not keep. A name outside the reference layout comes back unchanged
    (under `unet.`), and the caller reports it as unexpected."""
    head, _, rest = key.partition(".")
    if head == "init_conv_mask":
        renamed = _swin(rest, keep_classifier)
        return None if renamed is None else f"unet.cond_backbone.{renamed}"
    if head == "time_mlp":
        parts = {"0.W": "frequencies", "1.weight": "mlp.0.weight", "1.bias": "mlp.0.bias"}
        parts |= {"3.weight": "mlp.2.weight", "3.bias": "mlp.2.bias"}
        return f"unet.time_embedding.{parts.get(rest, rest)}"
    if head in ("mid_block1", "mid_block2"):
        return f"unet.{head}.{_resnet_block(rest)}"
    if head == "mid_attn":
        return f"unet.mid_attn.{_attention(rest)}"
    if head in _TOP_LEVEL:
        target = _TOP_LEVEL[head]
        if target.endswith("final_block"):
            rest = _resnet_block(rest)
        return f"unet.{target}.{rest}"
    if head in _RELATIONS:
        level, _, inner = rest.partition(".")
        return f"unet.{_RELATIONS[head]}.{level}.relation.{_relation(inner)}"
    if head in _LEVELS:
        level, part, inner = (rest.split(".", 2) + ["", ""])[:3]
        name = _LEVEL_PARTS.get(part)
        if part == "3":
            name = "downsample" if head == "downs" else "upsample"
            return f"unet.{_LEVELS[head]}.{level}.{name}.{inner}"
        if name == "attn":
            return f"unet.{_LEVELS[head]}.{level}.attn.{_attention(inner)}"
        if name is not None:
            return f"unet.{_LEVELS[head]}.{level}.{name}.{_resnet_block(inner)}"
    return f"unet.{key}"


def _unpickling_advice(path: Path, err: Exception) -> InputError:
    return InputError(
        f"{path}: holds more than tensors and plain containers, so irt4 does not load it ({err}). "
        "If you trust the file, re-save its weights alone in your own Python: "
        "ckpt = torch.load(PATH, weights_only=False); "
        "torch.save({'model': ckpt['model'], 'ema': ckpt.get('ema')}, 'weights-only.pt')"
    )


def read_reference_checkpoint(path: str | Path, weights: str = "ema") -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, "ema" or "raw") of a reference trainer's checkpoint: its EMA weights where asked
    for and present (`ema_model.` stripped), else its raw 'model' weights."""
    import pickle

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise _unpickling_advice(path, err) from err
    except Exception as err:  # truncated or not a torch file
        raise InputError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise InputError(f"{path}: not a checkpoint of the reference trainers (no 'model' weights in it)")
    ema = checkpoint.get("ema")
    if weights == "ema" and isinstance(ema, dict) and any(k.startswith("ema_model.") for k in ema):
        state = {k[len("ema_model.") :]: v for k, v in ema.items() if k.startswith("ema_model.")}
        used = "ema"
    elif weights == "ema" and ema is not None:
        raise InputError(f"{path}: its 'ema' entry holds no ema_model weights")
    else:
        state, used = checkpoint["model"], "raw"
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise InputError(f"{path}: {bad[0]} is not a tensor")
    return dict(state), used


def _shape(state: dict[str, torch.Tensor], key: str, path: Path) -> tuple[int, ...]:
    if key not in state:
        raise InputError(f"{path}: tensor {key} is missing")
    return tuple(state[key].shape)


def config_from_tensors(
    unet: dict[str, torch.Tensor], vae: dict[str, torch.Tensor], path: Path, keep_classifier: bool
) -> Config:
    """The irt4 config whose model has these tensors' shapes (reference names)."""
    mid_size = _shape(unet, "decouple1.2.complex_weight", path)[1]  # the 1/8 latent map
    latent = 8 * mid_size
    cfg = load_config("irt4-radiodiff-256" if latent == 64 else "irt4-radiodiff")
    dim = _shape(unet, "init_conv.0.weight", path)[0]
    widths = [_shape(unet, f"downs.{i}.3.weight", path)[0] for i in range(_count(unet, "downs"))]
    dim_mults = tuple(w // dim for w in widths)
    depths = tuple(
        _count(unet, f"init_conv_mask.features.{2 * s}")
        for s in range(_count(unet, "init_conv_mask.features", 2))
    )
    heads = tuple(
        _shape(unet, f"init_conv_mask.features.{2 * s}.0.attn.relative_position_bias_table", path)[1]
        for s in range(len(depths))
    )
    window = (
        int(
            round(
                _shape(unet, "init_conv_mask.features.0.0.attn.relative_position_bias_table", path)[0] ** 0.5
            )
        )
        + 1
    ) // 2
    embed, swin_in = _shape(unet, "init_conv_mask.first_coonv.0.weight", path)[:2]
    base, image_channels = _shape(vae, "encoder.conv_in.weight", path)[:2]
    ch_mult = tuple(
        _shape(vae, f"encoder.down.{i}.block.0.conv1.weight", path)[0] // base
        for i in range(_count(vae, "encoder.down"))
    )
    z2 = _shape(vae, "encoder.conv_out.weight", path)[0]
    embed_dim = _shape(vae, "post_quant_conv.weight", path)[1]
    res_blocks = _count(vae, "encoder.down.0.block")
    image = latent * 2 ** (len(ch_mult) - 1)
    cfg = replace(
        cfg,
        image_size=image,
        vae=replace(
            cfg.vae,
            in_channels=image_channels,
            out_channels=_shape(vae, "decoder.conv_out.weight", path)[0],
            base_channels=base,
            channel_mults=ch_mult,
            num_res_blocks=res_blocks,
            z_channels=z2 // 2,
            embed_dim=embed_dim,
            resolution=image,
        ),
        swin=replace(
            cfg.swin,
            in_channels=swin_in,
            patch_size=_shape(unet, "init_conv_mask.first_coonv.0.weight", path)[2],
            embed_dim=embed,
            depths=depths,
            num_heads=heads,
            window_size=window,
            mlp_ratio=_shape(unet, "init_conv_mask.features.0.0.mlp.0.weight", path)[0] / embed,
            keep_classifier=keep_classifier,
        ),
        unet=replace(
            cfg.unet,
            dim=dim,
            dim_mults=dim_mults,
            channels=_shape(unet, "final_conv.weight", path)[0],
            fourier_features=_shape(unet, "time_mlp.0.W", path)[0],
            cond_adapter_channels=_shape(unet, "init_conv_carK.weight", path)[1],
        ),
    )
    cfg.validate()
    return cfg


def _count(state: dict, prefix: str, step: int = 1) -> int:
    """How many consecutive indices `prefix.{i}` (i = 0, step, 2 step, ...) have tensors."""
    indices = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"\.(\d+)\.", k))}
    count = 0
    while count * step in indices:
        count += 1
    return count


def check_reference_yaml(cfg: Config, path: Path) -> None:
    """The reference YAML's model section must describe the same model as the tensors."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise InputError(f"{path}: not a readable YAML file ({err})") from err
    model = (data or {}).get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("unet"), dict):
        raise InputError(f"{path}: not a reference RadioDiff config (no model.unet section)")
    unet, first = model["unet"], model.get("first_stage", {}).get("ddconfig", {})
    checks = [
        ("model.unet.dim", unet.get("dim"), cfg.unet.dim),
        ("model.unet.dim_mults", _tuple(unet.get("dim_mults")), cfg.unet.dim_mults),
        ("model.unet.channels", unet.get("channels"), cfg.unet.channels),
        ("model.unet.fourier_scale", unet.get("fourier_scale"), cfg.unet.fourier_scale),
        ("model.first_stage.ddconfig.ch", first.get("ch"), cfg.vae.base_channels),
        ("model.first_stage.ddconfig.ch_mult", _tuple(first.get("ch_mult")), cfg.vae.channel_mults),
        ("model.first_stage.ddconfig.z_channels", first.get("z_channels"), cfg.vae.z_channels),
    ]
    windows1 = tuple(w[0] if isinstance(w, (list, tuple)) else w for w in unet.get("window_sizes1", []))
    windows2 = tuple(w[0] if isinstance(w, (list, tuple)) else w for w in unet.get("window_sizes2", []))
    checks += [
        ("model.unet.window_sizes1", windows1, cfg.unet.window_sizes1),
        ("model.unet.window_sizes2", windows2, cfg.unet.window_sizes2),
    ]
    for name, theirs, ours in checks:
        if theirs is not None and theirs != () and theirs != ours:
            raise InputError(f"{path}: {name} is {theirs}, the checkpoint's tensors say {ours}")
    if model.get("objective", "pred_KC") != "pred_KC":
        raise InputError(f"{path}: objective {model['objective']!r}; irt4 serves pred_KC models only")


def _tuple(value):
    return tuple(value) if isinstance(value, (list, tuple)) else value


def import_reference(
    ldm_path: str | Path,
    vae_path: str | Path | None = None,
    config_path: str | Path | None = None,
    weights: str = "ema",
    keep_classifier: bool = False,
):
    """(RadioDiff model with the reference weights, info) from the reference trainers' files.

    The VAE comes from vae_path where given (its EMA or raw weights, as `weights` says) and from the
    LDM checkpoint's frozen first stage otherwise. Every tensor the model needs must be there with its
    shape, and every tensor there must be used, dropped by rule (schedule buffers, training-only loss
    tensors, the Swin's index buffers and unused head) or it is an InputError naming it.
    """
    from irt4.models.radiodiff import RadioDiff

    ldm_path = Path(ldm_path)
    state, used = read_reference_checkpoint(ldm_path, weights)
    unet = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    if not unet:
        raise InputError(f"{ldm_path}: no UNet weights (model.*) in it: is it a VAE checkpoint?")
    vae = {k[len("first_stage_model.") :]: v for k, v in state.items() if k.startswith("first_stage_model.")}
    vae_weights = used
    if vae_path is not None:
        vae, vae_weights = read_reference_checkpoint(vae_path, weights)
        if any(k.startswith("model.") for k in vae):
            raise InputError(f"{vae_path}: an LDM checkpoint, not the first-stage VAE's")
    elif not vae:
        raise InputError(f"{ldm_path}: holds no first-stage VAE weights; give the VAE checkpoint too")
    vae = {k: v for k, v in vae.items() if not k.startswith(_VAE_TRAINING_ONLY)}
    known = {"scale_factor"} | set(_SCHEDULE_BUFFERS)
    stray = sorted(k for k in state if not k.startswith(("model.", "first_stage_model.")) and k not in known)
    if stray:
        raise InputError(
            f"{ldm_path}: unexpected tensor {stray[0]} (not part of the reference LatentDiffusion)"
        )
    if "scale_factor" not in state:
        raise InputError(f"{ldm_path}: tensor scale_factor is missing")

    cfg = config_from_tensors(unet, vae, ldm_path, keep_classifier)
    if config_path is not None:
        check_reference_yaml(cfg, Path(config_path))
    renamed = {f"vae.{k}": v for k, v in vae.items()}
    for key, value in unet.items():
        new = reference_unet_key(key, keep_classifier)
        if new is not None:
            renamed[new] = value
    renamed["scale_factor"] = state["scale_factor"].reshape(())
    model = RadioDiff(cfg)
    expected = model.state_dict()
    _check_fit(renamed, expected, ldm_path)
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in renamed.items()})
    cfg = replace(cfg, diffusion=replace(cfg.diffusion, scale_factor=float(state["scale_factor"])))
    model.cfg = cfg
    return model.eval(), {"weights": used, "vae_weights": vae_weights}


_SCHEDULE_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "p2_loss_weight",
)


def _check_fit(renamed: dict, expected: dict, path: Path) -> None:
    missing = sorted(set(expected) - set(renamed))
    unexpected = sorted(set(renamed) - set(expected))
    if unexpected:
        raise InputError(
            f"{path}: unexpected tensor {_reference_name(unexpected[0])} (no place for it in irt4)"
        )
    if missing:
        raise InputError(f"{path}: tensor {missing[0]} (irt4's name) is missing ({len(missing)} in all)")
    for key in sorted(renamed):
        if tuple(renamed[key].shape) != tuple(expected[key].shape):
            raise InputError(
                f"{path}: tensor {key} (irt4's name) is {tuple(renamed[key].shape)}, "
                f"the model it describes needs {tuple(expected[key].shape)}"
            )


def _reference_name(irt4_key: str) -> str:
    if irt4_key.startswith("vae."):
        return "first_stage_model." + irt4_key[4:]
    if irt4_key.startswith("unet."):
        return "model." + irt4_key[5:] + " (as renamed)"
    return irt4_key
