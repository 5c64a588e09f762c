"""`kernels: triton` against `kernels: torch` in the whole model: the tiny preset (at 32 x 32 maps, to keep
the Triton interpreter's time down) built twice from one seed, once per switch.

Tolerance: fp32, max |fast - torch| / max |torch| per tensor, measured at 3e-7 (denoise outputs), 2e-6
(VAE decode) and 3e-5 (worst parameter gradient below): issue 6's fp32 bound of 1e-4 holds with margin.
Gradients that are rounding noise by construction (the key biases of softmax attention, whose true
gradient is zero) are not compared.
"""

import pytest
import torch

from irt4.config import apply_overrides, load_config
from irt4.models import layers, swin, vae
from irt4.models.kernel_switch import ATTENTION_MODULES, GROUP_NORM_SILU_MODULES, use_kernels
from irt4.models.radiodiff import RadioDiff

RTOL = 1e-4
# one parameter behind each switched path: Swin window attention, UNet ConvGroupNormSiLU with and without
# the time scale-shift, UNet mid attention, and parameters upstream of all of them
GRAD_PARAMETERS = [
    "cond_backbone.stages.0.1.attn.relative_position_bias_table",
    "cond_backbone.stages.1.1.attn.qkv.weight",
    "down_levels.0.block1.block1.norm.weight",
    "down_levels.0.block1.time_proj.weight",
    "mid_block1.block2.norm.bias",
    "mid_attn.fn.to_qkv.weight",
    "init_conv.0.weight",
    "time_embedding.mlp.0.weight",
]


def _relative_error(fast: torch.Tensor, reference: torch.Tensor) -> float:
    return ((fast - reference).abs().max() / reference.abs().max()).item()


def _run(model: RadioDiff) -> dict[str, torch.Tensor]:
    """denoise outputs, their parameter gradients and a VAE decode, on fixed random inputs."""
    generator = torch.Generator().manual_seed(1)
    size = model.cfg.image_size
    cond = torch.randn(1, 3, size, size, generator=generator)
    x_t = torch.randn(1, *model.latent_shape, generator=generator)
    t = torch.rand(1, generator=generator) * 0.8 + 0.1
    c_pred, noise_pred = model.unet.denoise(x_t, t, model.unet.encode_condition(cond))
    weights = [torch.randn(o.shape, generator=generator) for o in (c_pred, noise_pred)]
    ((c_pred * weights[0]).sum() + (noise_pred * weights[1]).sum()).backward()
    parameters = dict(model.unet.named_parameters())
    results = {"c_pred": c_pred.detach(), "noise_pred": noise_pred.detach()}
    results.update({name: parameters[name].grad for name in GRAD_PARAMETERS})
    with torch.no_grad():
        results["vae_decode"] = model.vae.decode(x_t)
    return results


@pytest.fixture(scope="module")
def models() -> dict[str, RadioDiff]:
    cfg = apply_overrides(load_config("tiny"), ["image_size=32", "vae.resolution=32"])
    built = {}
    for kind in ("torch", "triton"):
        torch.manual_seed(0)
        built[kind] = RadioDiff(apply_overrides(cfg, [f"kernels={kind}"])).eval()  # eval: no drop path
    return built


@pytest.fixture(scope="module")
def results(models) -> dict[str, dict[str, torch.Tensor]]:
    return {kind: _run(model) for kind, model in models.items()}


def _kernel_of(module) -> object:
    return module.group_norm_silu if isinstance(module, GROUP_NORM_SILU_MODULES) else module.attention


def test_use_kernels_sets_every_groupnorm_silu_and_attention_module(models):
    for kind, model in models.items():
        switchable = [
            m for m in model.modules() if isinstance(m, GROUP_NORM_SILU_MODULES + ATTENTION_MODULES)
        ]
        expected = {layers.ConvGroupNormSiLU, layers.Attention, vae.ResnetBlock, vae.AttnBlock}
        assert expected | {swin.ShiftedWindowAttention} <= {type(m) for m in switchable}
        kernels_set = [_kernel_of(m) is not None for m in switchable]
        assert all(kernels_set) if kind == "triton" else not any(kernels_set)
    # torch -> triton -> torch on one model: reports every module it set, and the kernels are gone again
    model = models["torch"]
    assert use_kernels(model, "triton") == len(switchable) > 50
    assert use_kernels(model, "torch") == len(switchable)
    assert all(_kernel_of(m) is None for m in model.modules() if isinstance(m, ATTENTION_MODULES))


def test_triton_kernels_match_torch_in_denoise_gradients_and_vae_decode(results):
    for name, reference in results["torch"].items():
        fast = results["triton"][name]
        assert not torch.equal(fast, reference), f"{name}: bitwise equal, the kernels did not run"
        error = _relative_error(fast, reference)
        assert error < RTOL, f"{name}: relative error {error:.2e} >= {RTOL:g}"
