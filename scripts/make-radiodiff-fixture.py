"""Build tests/data/radiodiff-reference/: a checkpoint in the reference RadioDiff code's own file layout
and that code's outputs, for tests/test_reference_import.py.

The reference code is github:chg0901/RadioDiff at commit REFERENCE_COMMIT. Its models are built by its
own classes, at a reduced width that keeps every module type (VAE width 32, its GroupNorm minimum;
UNet dim 8; a Swin of embed dim 8 and depths 1/1/2/1, with the UNet's condition convolutions sized to
it), at the 256 -> 64 resolution the reference code runs at. Every parameter and buffer is randomized
(norms and biases too). The files are written as its trainers write them (model-{milestone}.pt; the
weights in fp16, drawn to be exact in it, to keep the files small): the LDM file with the layout of
the LDM trainer without enable_resume (weights only, as the reference's radio_train.yaml sets it),
the VAE file with the resumable one (model, ema, optimizers). The outputs are computed in fp32 with
the LDM file's UNet and the VAE file's EMA weights: a VAE decode and encode, UNet calls at three
times for a batch of 2, and a 3-step sample whose random draws are recorded.

Run it with a Python that has torch, torchvision, einops, fvcore, pyyaml and safetensors (not irt4's
venv: the reference code needs torchvision), from a checkout of the reference code:

  python scripts/make-radiodiff-fixture.py --reference /path/to/RadioDiff --out tests/data/radiodiff-reference

Training-only imports of the reference code (taming's LPIPS and discriminator, cv2) are replaced by
small stand-ins; the LPIPS stand-in keeps one tensor so the files hold `loss.*` tensors as real ones do.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import torch
from torch import nn

REFERENCE_COMMIT = "894edda"  # github:chg0901/RadioDiff (HEAD when this fixture was made)
SEED = 20261205


def install_stand_ins() -> None:
    """taming.modules.losses.vqperceptual and cv2 as the reference code imports them."""

    class LPIPS(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Conv2d(1, 1, 1)

    class NLayerDiscriminator(nn.Module):
        def __init__(self, input_nc=1, n_layers=3, use_actnorm=False, ndf=64):
            super().__init__()
            self.main = nn.Conv2d(input_nc, 2, 3)

    def d_loss(real, fake):
        return real.mean() - fake.mean()

    losses = types.ModuleType("taming.modules.losses.vqperceptual")
    losses.LPIPS, losses.NLayerDiscriminator = LPIPS, NLayerDiscriminator
    losses.weights_init = lambda module: None
    losses.hinge_d_loss = losses.vanilla_d_loss = d_loss
    losses.adopt_weight = lambda weight, global_step, threshold=0, value=0.0: weight
    losses.torch, losses.nn, losses.F = torch, nn, torch.nn.functional
    losses.__all__ = [n for n in vars(losses) if not n.startswith("_")]
    for name in ("taming", "taming.modules", "taming.modules.losses"):
        sys.modules[name] = types.ModuleType(name)
    sys.modules["taming.modules.losses.vqperceptual"] = losses
    sys.modules.setdefault("cv2", types.ModuleType("cv2"))


def build_reference(reference: Path):
    """The reference LatentDiffusion (UNet, Swin, VAE) at the fixture's width, random weights."""
    sys.path.insert(0, str(reference))
    install_stand_ins()
    from denoising_diffusion_pytorch.ddm_const_sde import LatentDiffusion
    from denoising_diffusion_pytorch.encoder_decoder import AutoencoderKL
    from denoising_diffusion_pytorch.mask_cond_unet import Unet
    from denoising_diffusion_pytorch.swin_transformer import SwinTransformer
    from fvcore.common.config import CfgNode

    ddconfig = dict(
        double_z=True, z_channels=3, resolution=[256, 256], in_channels=1, out_ch=1, ch=32,
        ch_mult=[1, 1, 1], num_res_blocks=1, attn_resolutions=[], dropout=0.0,
    )  # fmt: skip
    lossconfig = dict(disc_start=50001, kl_weight=1e-6, disc_weight=0.5, disc_in_channels=1)
    vae = AutoencoderKL(ddconfig=ddconfig, lossconfig=lossconfig, embed_dim=3)
    unet_cfg = CfgNode(
        dict(
            dim=8, cond_net="swin", without_pretrain=True, fix_bb=False, channels=3, out_mul=1,
            dim_mults=[1, 2, 4, 4], cond_in_dim=3, cond_dim=8, cond_dim_mults=[2, 4],
            window_sizes1=[[8, 8], [4, 4], [2, 2], [1, 1]], window_sizes2=[[8, 8], [4, 4], [2, 2], [1, 1]],
            fourier_scale=16, cond_pe=False, num_pos_feats=8, cond_feature_size=[32, 32],
            input_size=[80, 80],  # the reference sizes BlockFFT from it: an 8x8 mid map, a 64x64 latent
        )
    )  # fmt: skip
    unet = Unet(
        dim=8, channels=3, dim_mults=[1, 2, 4, 4], out_mul=1, cond_in_dim=3, cond_dim=8,
        cond_dim_mults=[2, 4], window_sizes1=unet_cfg.window_sizes1, window_sizes2=unet_cfg.window_sizes2,
        fourier_scale=16, carsDPM=False, cfg=unet_cfg,
    )  # fmt: skip
    # a narrow Swin in place of swin_b, and the two places that take its widths (128 in swin_b)
    swin_dim = 8
    unet.init_conv_mask = SwinTransformer(
        patch_size=[4, 4], embed_dim=swin_dim, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4],
        window_size=[7, 7], stochastic_depth_prob=0.5,
    )  # fmt: skip
    unet.init_conv[0] = nn.Conv2d(3 + swin_dim, 8, 7, padding=3)
    dims = [8, 8, 16, 32, 32]
    unet.projects = nn.ModuleList(nn.Conv2d(swin_dim * 2**k, dims[k], 1) for k in range(4))
    model_cfg = CfgNode(dict(model_name="cond_unet", eps=1e-4, weighting_loss=True))
    ldm = LatentDiffusion(
        model=unet, auto_encoder=vae, train_sample=-1, image_size=[256, 256], timesteps=1000,
        sampling_timesteps=3, loss_type="l2", objective="pred_KC", scale_factor=0.3, scale_by_std=True,
        scale_by_softsign=False, default_scale=True, input_keys=["image", "cond"], ckpt_path=None,
        ignore_keys=[], only_model=False, start_dist="normal", perceptual_weight=0, use_l1=True,
        cfg=model_cfg,
    )  # fmt: skip
    return ldm.eval()


@torch.no_grad()
def randomize(module: nn.Module, generator: torch.Generator) -> None:
    """Every float parameter and buffer of the networks drawn anew: norm scales near 1, biases and
    running means near 0, running variances above 1, weights scaled by their fan-in. The schedule
    buffers of the diffusion wrapper (top-level names) are left as they are; the latent scale is 0.7."""
    for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        if not tensor.is_floating_point() or "." not in name:
            continue
        noise = torch.randn(tensor.shape, generator=generator)
        if name.endswith("running_var"):
            tensor.copy_(1 + 0.2 * noise.abs())
        elif name.endswith(".g") or (tensor.dim() == 1 and name.endswith(".weight")):
            tensor.copy_(1 + 0.1 * noise)
        elif tensor.dim() <= 1:
            tensor.copy_(0.05 * noise)
        else:
            tensor.copy_(noise / tensor[0].numel() ** 0.5)
        tensor.copy_(tensor.half().float())  # representable in fp16, the files' storage type
    if isinstance(getattr(module, "scale_factor", None), torch.Tensor):
        module.scale_factor.fill_(0.7)


def half(state: dict) -> dict:
    """The networks' float tensors stored in fp16 (exact: randomize() drew them representable) to keep
    the fixture small; the latent scale and the schedule buffers stay fp32."""
    return {k: v.half() if v.is_floating_point() and "." in k else v for k, v in state.items()}


def trainer_file(state: dict, ema_state: dict, **extra) -> dict:
    """A checkpoint as the reference trainers save it for resuming."""
    ema = {"initted": torch.tensor(True), "step": torch.tensor(1234)}
    ema |= {f"ema_model.{k}": v for k, v in half(ema_state).items()}
    return {"step": 1234, "model": half(state), "ema": ema, "scaler": None, **extra}


def fp16_exact(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.half().float()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reference", type=Path, required=True, help="checkout of github:chg0901/RadioDiff")
    parser.add_argument("--out", type=Path, required=True, help="fixture folder (written)")
    args = parser.parse_args(argv)
    torch.manual_seed(SEED)
    generator = torch.Generator().manual_seed(SEED)
    ldm = build_reference(args.reference)
    randomize(ldm, generator)
    raw = {k: v.clone() for k, v in ldm.state_dict().items()}
    randomize(ldm.first_stage_model, generator)  # the VAE trainer's EMA weights: a second draw
    vae_ema = {k: v.clone() for k, v in ldm.first_stage_model.state_dict().items()}
    vae_raw = {
        k[len("first_stage_model.") :]: v for k, v in raw.items() if k.startswith("first_stage_model.")
    }

    args.out.mkdir(parents=True, exist_ok=True)
    # the LDM trainer without enable_resume writes the weights alone (the reference's radio_train.yaml);
    # the VAE trainer always writes the resumable layout, EMA included
    torch.save({"model": half(raw)}, args.out / "model-ldm.pt")
    torch.save(trainer_file(vae_raw, vae_ema, opt_ae={}, opt_disc={}), args.out / "model-vae.pt")

    inputs = {
        "latent": fp16_exact(torch.randn(1, 3, 64, 64, generator=generator)),
        "image": fp16_exact(torch.rand(1, 1, 256, 256, generator=generator) * 2 - 1),
        "x": fp16_exact(torch.randn(2, 3, 64, 64, generator=generator)),
        "cond": fp16_exact(torch.rand(2, 3, 256, 256, generator=generator) * 2 - 1),
        "times": torch.tensor([1.0, 0.5, 0.05]),
    }
    outputs = {}
    with torch.no_grad():
        vae = ldm.first_stage_model
        outputs["decode"] = vae.decode(inputs["latent"])
        outputs["encode_mean"] = vae.encode(inputs["image"]).mean
        for i, t in enumerate(inputs["times"]):
            c, n = ldm.model(inputs["x"], torch.full((2,), float(t)), inputs["cond"])[:2]
            outputs[f"unet_c_{i}"], outputs[f"unet_noise_{i}"] = c, n
        draws = record_draws(lambda: ldm.sample(batch_size=1, cond=inputs["cond"][:1], denoise=True))
        outputs["sample"] = draws.pop("result")
        inputs["sample_initial"] = draws["initial"]
        inputs["sample_steps"] = draws["steps"]
    from safetensors.torch import save_file

    stored = {k: v.half() if k in ("latent", "image", "x", "cond") else v for k, v in inputs.items()}
    save_file({k: v.contiguous() for k, v in stored.items()}, str(args.out / "inputs.safetensors"))
    save_file({k: v.contiguous() for k, v in outputs.items()}, str(args.out / "outputs.safetensors"))
    (args.out / "README.md").write_text(
        "Made by scripts/make-radiodiff-fixture.py from github:chg0901/RadioDiff at commit "
        f"{REFERENCE_COMMIT} (seed {SEED}): model-ldm.pt and model-vae.pt in the reference trainers' "
        "layout, the reference code's inputs and outputs in inputs/outputs.safetensors.\n"
    )
    print(json.dumps({k: list(v.shape) for k, v in outputs.items()}))
    return 0


def record_draws(run) -> dict:
    """Run `run` with torch.randn / randn_like recorded: the sampler's start and per-step draws."""
    drawn = []
    randn, randn_like = torch.randn, torch.randn_like

    def recording_randn(*args, **kwargs):
        drawn.append(randn(*args, **kwargs))
        return drawn[-1]

    def recording_randn_like(*args, **kwargs):
        drawn.append(randn_like(*args, **kwargs))
        return drawn[-1]

    torch.randn, torch.randn_like = recording_randn, recording_randn_like
    try:
        result = run()
    finally:
        torch.randn, torch.randn_like = randn, randn_like
    return {"result": result, "initial": drawn[0], "steps": torch.stack(drawn[1:])}


if __name__ == "__main__":
    raise SystemExit(main())
