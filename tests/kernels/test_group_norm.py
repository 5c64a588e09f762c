"""The Triton GroupNorm(+scale-shift)(+SiLU) kernels against their PyTorch reference.

On CPU the kernels run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1 before
they are imported), which costs ~30-60 ms per program (batch x group x pixel chunk) and launch:
the shapes here are small, with few groups, but cover every masking and reduction path. The same
tests run unchanged on a GPU; the model's real shapes run only there.

Tolerance rule (STYLE.md, flash-attention's): against a reference computed in fp64 from the same
(rounded) inputs, the kernel's max error must be at most 2x the max error of plain PyTorch at the
same dtype, plus a floor of FLOOR_FP32_ULPS fp32 units in the last place of the reference's max
magnitude, for the output and every gradient. The floor is there because on groups of a few
elements PyTorch's max error is sometimes lucky: measured over 20 seeds of the tiny shapes, the
kernel's fp32 output error had a median of 1.0x PyTorch's and reached 2.3 ulps of max |y| where
PyTorch's was 2.6x-5x smaller. In fp32 issue 6's cap applies on top: max error / max |ref| < 1e-4.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from irt4.kernels import group_norm as gn
from torch import nn

FLOOR_FP32_ULPS = 3
FP32_REL_CAP = 1e-4

# (shape (B, C, H, W), groups, why)
SHAPES = [
    ((1, 4, 2, 2), 2, "tiny: 8 elements per group"),
    ((2, 6, 4, 4), 1, "one_group: LayerNorm over (C, H, W)"),
    ((2, 3, 4, 3), 3, "groups_eq_channels: InstanceNorm"),
    ((2, 8, 7, 9), 4, "odd_spatial: 7x9"),
    ((1, 12, 5, 5), 4, "non_pow2_group: 3 channels per group, masked channel lanes"),
    ((1, 160, 3, 5), 1, "channel_blocks: 160 channels in a group, 3 channel blocks, the last partial"),
    (
        (1, 2, 70, 130),
        2,
        "pixel_chunks: 9100 pixels in a group, split over 2 programs and merged; an empty tile",
    ),
]

# (scale-shift, silu): which fused epilogue, as the models use it
VARIANTS = {
    "unet_scale_shift_silu": (True, True, True),  # ConvGroupNormSiLU with the time embedding
    "vae_silu": (False, False, True),  # VAE blocks
    "plain_group_norm": (False, False, False),  # RelationNet, decouple branches
    "scale_only": (True, False, False),
    "shift_only_silu": (False, True, True),
}


@pytest.fixture
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_inputs(shape, dtype, device, scale_shift=(True, True), param_dtype=None, seed=0):
    """Fresh random inputs (never zeros); scale/shift as the UNet passes them, (B, C, 1, 1) views."""
    batch, channels = shape[:2]
    generator = torch.Generator().manual_seed(seed)

    def randn(*size, mean=0.0, std=1.0):
        return torch.randn(*size, generator=generator) * std + mean

    has_scale, has_shift = scale_shift
    time_proj = randn(batch, 2 * channels, std=0.5)[:, :, None, None]  # (B, 2C, 1, 1)
    scale, shift = time_proj.chunk(2, dim=1)
    return {
        "x": randn(*shape, mean=0.3, std=2.0).to(device, dtype),
        "weight": randn(channels, mean=1.0, std=0.5).to(device, param_dtype or dtype),
        "bias": randn(channels, std=0.5).to(device, param_dtype or dtype),
        "scale": scale.to(device, dtype) if has_scale else None,
        "shift": shift.to(device, dtype) if has_shift else None,
    }


def run_with_grads(fn, inputs, num_groups, eps, silu, grad_out_seed=1, cast=None, **kwargs):
    """fn's output and the gradients of all tensor inputs, for one fixed random upstream gradient."""
    leaves = {
        name: None if t is None else t.detach().to(cast or t.dtype).requires_grad_()
        for name, t in inputs.items()
    }
    y = fn(
        leaves["x"],
        leaves["weight"],
        leaves["bias"],
        num_groups,
        eps,
        leaves["scale"],
        leaves["shift"],
        silu=silu,
        **kwargs,
    )
    generator = torch.Generator().manual_seed(grad_out_seed)
    grad_out = torch.randn(y.shape, generator=generator).to(inputs["x"].dtype)  # rounded like y
    y.backward(grad_out.to(y.device, y.dtype))
    results = {"y": y.detach()}
    results.update({f"d{name}": t.grad for name, t in leaves.items() if t is not None})
    return results


def assert_within_torch_error(kernel, torch_same_dtype, reference, dtype, fp32_cap=True):
    """The 2x-PyTorch-error rule for every tensor; on failure, the count and first mismatches."""
    assert kernel.keys() == reference.keys()
    for name, ref in reference.items():
        ref = ref.double()
        fast, plain = kernel[name].double(), torch_same_dtype[name].double()
        assert fast.shape == ref.shape, f"{name}: shape {tuple(fast.shape)} != {tuple(ref.shape)}"
        scale = ref.abs().max().item()
        floor = FLOOR_FP32_ULPS * torch.finfo(torch.float32).eps * scale
        fast_error = (fast - ref).abs()
        bound = 2 * (plain - ref).abs().max().item() + floor
        bad = ~(fast_error <= bound)  # NaN counts as bad
        if bad.any():
            index = bad.nonzero()[:5].tolist()
            raise AssertionError(
                f"{name}: {int(bad.sum())} of {ref.numel()} elements exceed 2 x PyTorch's error + floor = "
                f"{bound:.3g} (max kernel error {fast_error.max().item():.3g}); first at {index}: "
                f"kernel {[fast[tuple(i)].item() for i in index]}, "
                f"reference {[ref[tuple(i)].item() for i in index]}"
            )
        if dtype == torch.float32 and fp32_cap:
            relative = fast_error.max().item() / scale
            assert relative < FP32_REL_CAP, f"{name}: relative error {relative:.3g} >= {FP32_REL_CAP}"


def compare_to_reference(inputs, num_groups, eps, silu, dtype):
    kernel = run_with_grads(gn.group_norm_silu, inputs, num_groups, eps, silu)
    plain = run_with_grads(gn.group_norm_silu_ref, inputs, num_groups, eps, silu, upcast=False)
    reference = run_with_grads(gn.group_norm_silu_ref, inputs, num_groups, eps, silu, cast=torch.float64)
    assert_within_torch_error(kernel, plain, reference, dtype)
    return kernel


@pytest.mark.parametrize(("shape", "num_groups", "why"), SHAPES, ids=[s[2].split(":")[0] for s in SHAPES])
def test_forward_and_all_gradients_match_reference_fp32(shape, num_groups, why, device):
    inputs = make_inputs(shape, torch.float32, device)
    compare_to_reference(inputs, num_groups, 1e-5, True, torch.float32)


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_fused_epilogue_matches_reference(variant, device):
    has_scale, has_shift, silu = VARIANTS[variant]
    inputs = make_inputs((2, 8, 7, 9), torch.float32, device, (has_scale, has_shift))
    kernel = compare_to_reference(inputs, 4, 1e-6, silu, torch.float32)
    assert ("dscale" in kernel) == has_scale and ("dshift" in kernel) == has_shift


@pytest.mark.parametrize(
    ("shape", "num_groups"),
    [((2, 8, 7, 9), 4), ((1, 160, 3, 5), 1), ((1, 2, 70, 130), 2)],
    ids=["odd_spatial", "channel_blocks", "pixel_chunks"],
)
def test_channels_last_input_matches_reference_and_stays_channels_last(shape, num_groups, device):
    inputs = make_inputs(shape, torch.float32, device)
    inputs["x"] = inputs["x"].contiguous(memory_format=torch.channels_last)
    kernel = compare_to_reference(inputs, num_groups, 1e-5, True, torch.float32)
    assert kernel["y"].is_contiguous(memory_format=torch.channels_last)
    assert kernel["dx"].is_contiguous(memory_format=torch.channels_last)


def test_non_dense_input_is_made_contiguous_and_matches_reference(device):
    inputs = make_inputs((2, 4, 9, 14), torch.float32, device)
    inputs["x"] = inputs["x"][:, :, :, ::2]  # (2, 4, 9, 7), neither NCHW nor channels_last contiguous
    compare_to_reference(inputs, 2, 1e-5, True, torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("param_dtype", ["same", "fp32"], ids=["params_same_dtype", "params_fp32"])
@pytest.mark.parametrize(
    ("shape", "num_groups"), [((2, 8, 7, 9), 4), ((1, 2, 70, 130), 2)], ids=["odd_spatial", "pixel_chunks"]
)
def test_half_precision_within_twice_torch_error(dtype, param_dtype, shape, num_groups, device):
    inputs = make_inputs(shape, dtype, device, param_dtype=torch.float32 if param_dtype == "fp32" else None)
    kernel = compare_to_reference(inputs, num_groups, 1e-5, True, dtype)
    assert kernel["y"].dtype == kernel["dx"].dtype == kernel["dscale"].dtype == dtype
    assert kernel["dweight"].dtype == inputs["weight"].dtype


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_results_are_the_fp32_results_rounded_to_nearest(dtype, device):
    """All arithmetic is fp32 whatever the input dtype: from the same values, the half-precision
    run's outputs are the fp32 run's, rounded to nearest even (which Triton's interpreter does not
    do by itself for bf16)."""
    inputs = make_inputs((1, 2, 70, 130), dtype, device)
    half = run_with_grads(gn.group_norm_silu, inputs, 2, 1e-5, True)
    full = run_with_grads(gn.group_norm_silu, inputs, 2, 1e-5, True, cast=torch.float32)
    for name, t in half.items():
        assert torch.equal(t, full[name].to(dtype)), (
            f"{name}: {int((t != full[name].to(dtype)).sum())} differ"
        )


@pytest.fixture
def poisoned_buffers(monkeypatch):
    """Every buffer the launchers allocate (outputs, statistics, partial sums) starts as NaN, so an
    element a kernel forgets to write shows up in the result."""
    monkeypatch.setattr(gn, "_alloc_like", lambda t: torch.full_like(t, float("nan")))
    monkeypatch.setattr(
        gn,
        "_alloc",
        lambda shape, device: torch.full(shape, float("nan"), dtype=torch.float32, device=device),
    )


@pytest.mark.parametrize(
    ("shape", "num_groups", "channels_last"),
    [((1, 12, 5, 5), 4, False), ((1, 160, 3, 5), 1, True), ((1, 2, 70, 130), 2, False)],
    ids=["non_pow2_group", "channel_blocks_channels_last", "pixel_chunks"],
)
def test_every_output_element_is_written(poisoned_buffers, shape, num_groups, channels_last, device):
    inputs = make_inputs(shape, torch.bfloat16, device)
    if channels_last:
        inputs["x"] = inputs["x"].contiguous(memory_format=torch.channels_last)
    kernel = compare_to_reference(inputs, num_groups, 1e-5, True, torch.bfloat16)
    for name, t in kernel.items():
        assert not t.isnan().any(), f"{name} has {int(t.isnan().sum())} unwritten (NaN) elements"


def test_large_groups_really_take_the_chunked_and_blocked_paths():
    """The shapes above that claim the multi-program and multi-block paths do take them."""
    assert gn._launch_config(1, 70 * 130)["num_chunks"] > 1
    assert 160 > gn._launch_config(160, 15)["BLOCK_C"]
    assert gn._launch_config(3, 25)["BLOCK_C"] == 4  # masked lanes


@pytest.mark.parametrize(
    ("channels_last", "scale_shift"),
    [(True, (True, True)), (False, (False, False))],
    ids=["channels_last_scale_shift", "nchw_no_scale_shift"],
)
def test_registered_ops_pass_opcheck(channels_last, scale_shift, device):
    inputs = make_inputs((2, 4, 3, 5), torch.float32, device, scale_shift)
    x = inputs["x"]
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    scale, shift = (None if t is None else t.reshape(2, 4) for t in (inputs["scale"], inputs["shift"]))
    leaves = [
        t if t is None else t.requires_grad_() for t in (x, inputs["weight"], inputs["bias"], scale, shift)
    ]
    torch.library.opcheck(torch.ops.irt4.group_norm_silu.default, (*leaves, 2, 1e-5, True))

    _, mean, rstd = torch.ops.irt4.group_norm_silu(
        x, inputs["weight"], inputs["bias"], scale, shift, 2, 1e-5, True
    )
    dy = torch.randn_like(x)
    backward_args = (dy, x.detach(), inputs["weight"].detach(), inputs["bias"].detach())
    backward_args += tuple(None if t is None else t.detach() for t in (scale, shift))
    torch.library.opcheck(
        torch.ops.irt4.group_norm_silu_backward.default, (*backward_args, mean, rstd, 2, True)
    )


class TinyTimeBlock(nn.Module):
    """conv -> GroupNorm -> time scale-shift -> SiLU -> conv, as a UNet block uses it."""

    def __init__(self, norm_fn, channels=8, groups=2, time_dim=6):
        super().__init__()
        self.norm_fn = norm_fn
        self.groups = groups
        self.conv_in = nn.Conv2d(3, channels, 3, padding=1)
        self.time_proj = nn.Linear(time_dim, 2 * channels)
        self.norm_weight = nn.Parameter(torch.ones(channels))
        self.norm_bias = nn.Parameter(torch.zeros(channels))
        self.conv_out = nn.Conv2d(channels, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, time_emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.time_proj(F.silu(time_emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm_fn(self.conv_in(x), self.norm_weight, self.norm_bias, self.groups, 1e-5, scale, shift)
        return self.conv_out(h)


def test_compiled_module_has_no_graph_break_and_compiles_fullgraph(device):
    torch.manual_seed(0)
    module = TinyTimeBlock(gn.group_norm_silu).to(device)
    x, time_emb = torch.randn(2, 3, 6, 5, device=device), torch.randn(2, 6, device=device)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(module)(x, time_emb)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1

    # inductor on a GPU; on CPU aot_eager traces the same graph through the fake and autograd
    # registrations without spending a minute of the 2 CPU cores on C++ code generation
    backend = "inductor" if device.type == "cuda" else "aot_eager"
    compiled = torch.compile(module, fullgraph=True, backend=backend)
    compiled(x, time_emb).square().mean().backward()
    compiled_grads = [p.grad.clone() for p in module.parameters()]
    module.zero_grad()
    module(x, time_emb).square().mean().backward()
    for compiled_grad, p in zip(compiled_grads, module.parameters()):
        torch.testing.assert_close(compiled_grad, p.grad)


def test_convergence_matches_reference_training_run(device):
    """A tiny UNet-style block trained 10 Adam steps from one seed with the kernel and with the
    reference: the loss curves and the final weights agree (the loss must also fall)."""

    def train(norm_fn):
        torch.manual_seed(0)
        module = TinyTimeBlock(norm_fn).to(device)
        optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)
        data = torch.Generator().manual_seed(1)
        x = torch.randn(2, 3, 8, 8, generator=data).to(device)
        time_emb = torch.randn(2, 6, generator=data).to(device)
        target = torch.randn(2, 1, 8, 8, generator=data).to(device)
        losses = []
        for _ in range(10):
            optimizer.zero_grad()
            loss = F.mse_loss(module(x, time_emb), target)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return torch.tensor(losses), dict(module.named_parameters())

    kernel_losses, kernel_params = train(gn.group_norm_silu)
    reference_losses, reference_params = train(gn.group_norm_silu_ref)
    assert reference_losses[-1] < 0.9 * reference_losses[0]
    # measured on CPU: the loss curves agree to 1e-7 relative, the weights to 1.2e-7 absolute
    torch.testing.assert_close(kernel_losses, reference_losses, rtol=1e-5, atol=0)
    for name, p in kernel_params.items():
        torch.testing.assert_close(p, reference_params[name], rtol=1e-5, atol=1e-6, msg=name)


def test_without_cuda_or_interpreter_the_reference_runs(monkeypatch):
    monkeypatch.setattr(gn, "TRITON_INTERPRETER", False)

    def must_not_run(*args):
        raise AssertionError("the Triton path ran on CPU without the interpreter")

    monkeypatch.setattr(gn, "_forward", must_not_run)
    inputs = make_inputs((2, 8, 3, 3), torch.float32, torch.device("cpu"))
    args = (inputs["x"], inputs["weight"], inputs["bias"], 4, 1e-5, inputs["scale"], inputs["shift"])
    torch.testing.assert_close(gn.group_norm_silu(*args), gn.group_norm_silu_ref(*args), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_groups": 5}, "cannot be split into 5 groups"),
        ({"weight": torch.ones(7)}, "weight has shape (7,)"),
        ({"scale": torch.ones(2, 8, 2, 2)}, "scale has shape (2, 8, 2, 2)"),
        ({"x": torch.ones(2, 8, 9)}, "expects x of shape (B, C, H, W)"),
    ],
)
def test_wrong_shapes_raise_with_the_sizes(change, message):
    args = {
        "x": torch.randn(2, 8, 3, 3),
        "weight": torch.ones(8),
        "bias": torch.zeros(8),
        "num_groups": 4,
        "eps": 1e-5,
        "scale": None,
        "shift": None,
    }
    args.update(change)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        gn.group_norm_silu(**args)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the model's real shapes need a CUDA GPU")
@pytest.mark.parametrize(
    ("shape", "num_groups", "scale_shift", "eps"),
    [
        ((32, 128, 80, 80), 8, (True, True), 1e-5),  # UNet, first level
        ((32, 512, 20, 20), 8, (True, True), 1e-5),  # UNet, deepest level
        ((32, 512, 80, 80), 32, (False, False), 1e-6),  # VAE, widest block at full latent-input size
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_model_real_shapes_on_gpu_within_twice_torch_error(shape, num_groups, scale_shift, eps, dtype):
    inputs = make_inputs(shape, dtype, torch.device("cuda"), scale_shift)
    compare_to_reference(inputs, num_groups, eps, True, dtype)


@pytest.mark.parametrize("one_pass", [True, False], ids=["one_pass", "two_kernels"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_pass_and_two_kernel_forwards_both_match_reference(
    monkeypatch, one_pass, channels_last, dtype, device
):
    """Small groups take the one-program forward and backward, unless ONE_PASS_ELEMENTS is 0; both
    paths give the reference's output, every gradient (with scale and shift) and the layout."""
    shape, num_groups = (2, 12, 9, 11), 4  # 3 channels x 99 pixels per group: masked lanes both ways
    if not one_pass:
        monkeypatch.setattr(gn, "ONE_PASS_ELEMENTS", 0)
    assert (gn._one_pass_tile(3, 99) is not None) == one_pass
    inputs = make_inputs(shape, dtype, device, (True, True))
    if channels_last:
        inputs["x"] = inputs["x"].contiguous(memory_format=torch.channels_last)
    kernel = compare_to_reference(inputs, num_groups, 1e-5, True, dtype)
    assert {"dx", "dweight", "dbias", "dscale", "dshift"} <= kernel.keys()
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert all(kernel[name].is_contiguous(memory_format=layout) for name in ("y", "dx"))


def test_one_pass_tile_holds_small_groups_only():
    assert gn._one_pass_tile(4, 32 * 32) == (4, 1024)  # the small preset's UNet levels
    assert gn._one_pass_tile(16, 80 * 80) is None  # irt4-radiodiff's first level: two kernels
    assert gn._one_pass_tile(1, 3) == (1, 16)  # at least 16 lanes of pixels
