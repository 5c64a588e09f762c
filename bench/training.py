"""The training rows: samples/s of one AdamW step of the diffusion UNet at the preset's batch.

    reference           the reference recipe: eager fp32, the frozen VAE encodes the targets and the
                        condition network runs at every step (RadioDiff.diffusion_loss)
    torch-cached        the VAE posterior (mean, std) cached once, latents drawn from it (fp32)
    torch-bf16-cached   + bf16 autocast, fused AdamW on CUDA
    triton-bf16-cached  + irt4's Triton kernels
    compile-bf16-cached + torch.compile of the loss (forward and backward), PyTorch ops
    compile-regional-bf16-cached  torch-bf16-cached with the UNet's repeated blocks compiled one by one
                        (irt4.models.regional, `irt4-train --compile-regions`)
    cudagraph-bf16-cached torch-bf16-cached with the UNet's forward and backward replayed from CUDA
                        graphs (irt4.train.graphed, `irt4-train --cuda-graphs`; CUDA only): captured
                        on the first step, so it counts as a compiling row

FLOPs of a step: 3x the forward FLOPs of the UNet and its condition network, plus the VAE encode
where the recipe runs it (`step_flops`); the bf16, Triton and compiled steps compute the same.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from bench.sampling import Skip, autocast
from irt4.diffusion.ddm import training_loss
from irt4.models.kernel_switch import use_kernels
from irt4.models.layers import unfold_weight_standardization
from irt4.models.radiodiff import RadioDiff
from irt4.models.regional import compile_regions, uncompile_regions
from irt4.train.graphed import GraphedModule


@dataclass(frozen=True)
class TrainingPath:
    name: str
    dtype: torch.dtype
    cached: bool  # latents from the cached posterior instead of a VAE encode per step
    kernels: str = "torch"
    compiles: bool = False  # a first call that compiles or captures: not timed, the compile cap applies
    torch_compile: bool = False  # torch.compile in the step (the whole loss, or the blocks if `regional`)
    cuda_graphs: bool = False  # the UNet as irt4.train.graphed.GraphedModule
    regional: bool = False  # the UNet's repeated blocks through torch.compile (irt4.models.regional)


PATHS = {
    p.name: p
    for p in (
        TrainingPath("reference", torch.float32, cached=False),
        TrainingPath("torch-cached", torch.float32, cached=True),
        TrainingPath("torch-bf16-cached", torch.bfloat16, cached=True),
        TrainingPath("triton-bf16-cached", torch.bfloat16, cached=True, kernels="triton"),
        TrainingPath("compile-bf16-cached", torch.bfloat16, cached=True, compiles=True, torch_compile=True),
        TrainingPath("cudagraph-bf16-cached", torch.bfloat16, cached=True, compiles=True, cuda_graphs=True),
        TrainingPath(
            "compile-regional-bf16-cached",
            torch.bfloat16,
            cached=True,
            compiles=True,
            torch_compile=True,
            regional=True,
        ),
    )
}


@contextlib.contextmanager
def training_state(model: RadioDiff) -> Iterator[None]:
    """The UNet in training mode for the block, its weights as they were afterwards."""
    unfold_weight_standardization(model.unet)
    model.vae.eval().requires_grad_(False)
    state = {k: v.clone() for k, v in model.unet.state_dict().items()}
    model.unet.train()
    try:
        yield
    finally:
        model.unet.eval()
        model.unet.load_state_dict(state)
        use_kernels(model, "torch")
        uncompile_regions(model)


def loss_function(model: RadioDiff, path: TrainingPath, image: torch.Tensor, cond: torch.Tensor) -> Callable:
    if not path.cached:
        return lambda: model.diffusion_loss(image, cond)[0]
    with torch.no_grad():
        posterior = model.vae.encode(image)
        mean, std = posterior.mean, posterior.std
    unet = GraphedModule(model.unet) if path.cuda_graphs else model.unet

    def cached_loss():
        x0 = (mean + std * torch.randn_like(mean)) * model.scale_factor
        return training_loss(unet, x0, cond, model.cfg.diffusion)[0]

    whole = path.torch_compile and not path.regional  # a regional path compiled its blocks already
    return torch.compile(cached_loss) if whole else cached_loss


def training_step(model: RadioDiff, path: TrainingPath, image: torch.Tensor, cond: torch.Tensor) -> Callable:
    """One optimizer step of `path` (call inside `training_state`)."""
    if path.cuda_graphs and image.device.type != "cuda":
        raise Skip("needs CUDA")
    use_kernels(model, path.kernels)
    if path.regional:
        compile_regions(model.unet, dynamic=False)
    loss_fn = loss_function(model, path, image, cond)
    fused = image.device.type == "cuda" and path.name != "reference"
    optimizer = torch.optim.AdamW(model.unet.parameters(), lr=model.cfg.trainer.lr, fused=fused or None)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        # a CUDA graph must hold the weight casts, not autocast's cached copies (irt4.train.graphed)
        with autocast(image.device, path.dtype, cache_enabled=not path.cuda_graphs):
            loss = loss_fn()
        loss.backward()
        optimizer.step()

    return step


def step_flops(per_map: dict[str, int], batch: int, cached: bool) -> int:
    """FLOPs of one step from the forward counts per map (irt4.models.summary.flop_counts): the UNet
    with its condition network forward and backward (~3x the forward), plus the VAE encode unless the
    latents are cached. Counting a real step with FlopCounterMode costs more than the step."""
    unet = 3 * per_map["reference call (condition recomputed)"]
    return batch * (unet + (0 if cached else per_map["VAE encode"]))
