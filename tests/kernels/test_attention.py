"""The Triton attention (kernels/attention.py) against its PyTorch reference, forward and every gradient.

On a CPU the kernels run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1), so shapes
are small but keep the real head dims, window sizes and awkward edges. On a GPU run the same tests with
`TRITON_INTERPRET=0 pytest tests/kernels`: the "cuda" cases then use the compiled kernels and the "cpu"
cases skip, saying why.

Tolerance rule (STYLE.md, flash-attention's): against an fp64 reference on the same rounded inputs, the
kernel's max error is at most 2x plain PyTorch's at the same dtype plus a floor of 1e-6 of the largest
reference value; fp32 also has issue 6's cap, max error < 1e-4 of the largest reference value.
"""

import irt4.kernels.attention as attention_module
import pytest
import torch
from irt4.kernels.attention import attention, attention_ref

MASKED_LOGIT = -100.0  # the Swin shifted-window mask value (irt4.models.swin.MASKED_LOGIT)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request) -> str:
    if request.param == "cpu" and not attention_module._INTERPRETER:
        pytest.skip(
            "on a CPU the kernels run only under TRITON_INTERPRET=1 (else attention is the reference)"
        )
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    return request.param


def _shift_mask(num_windows: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """(nW, 1, N, N) random 0 / -100 mask, symmetric with a zero diagonal like a shifted-window mask."""
    region = torch.randint(0, 3, (num_windows, n), generator=generator)
    return torch.where(region[:, :, None] == region[:, None, :], 0.0, MASKED_LOGIT)[:, None].double()


def _inputs(shape, bias_kind: str, device: str, seed: int = 0):
    """fp64 leaves q, k, v (and the bias leaf, if any) plus the bias fed to attention, built from them.

    bias_kind: "none"; "table" (heads, N, N), broadcast over batch and windows like Swin's relative
    position bias; "shifted", the table plus a (nW, 1, N, N) -100 mask, i.e. (nW, heads, N, N); "full",
    one bias of q's full (..., N, N) shape.
    """
    generator = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(shape, generator=generator, dtype=torch.float64) for _ in range(3))
    *lead, n, _ = shape
    bias_leaf, mask = None, None
    if bias_kind in ("table", "shifted"):
        bias_leaf = torch.randn(lead[-1], n, n, generator=generator, dtype=torch.float64)
    elif bias_kind == "full":
        bias_leaf = torch.randn(*lead, n, n, generator=generator, dtype=torch.float64)
    if bias_kind == "shifted":
        mask = _shift_mask(lead[-2], n, generator).to(device)
    leaves = [t.to(device).requires_grad_() for t in (q, k, v, bias_leaf) if t is not None]
    return leaves, mask


def _run(fn, leaves, mask, dtype: torch.dtype, grad_out: torch.Tensor, scale):
    """Output and gradients of all leaves of fn(q, k, v, bias, scale) on the leaves rounded to dtype."""
    cast = [t.detach().to(dtype).requires_grad_() for t in leaves]
    q, k, v, *bias_leaf = cast
    bias = None
    if bias_leaf:
        bias = bias_leaf[0] if mask is None else bias_leaf[0] + mask.to(dtype)
    out = fn(q, k, v, bias, scale)
    out.backward(grad_out.to(dtype))
    return [out] + [t.grad for t in cast]


def _check_against_reference(shape, bias_kind, dtype, device, scale=None, seed=0):
    leaves, mask = _inputs(shape, bias_kind, device, seed)
    grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    grad_out = grad_out.to(device)
    # The fp64 truth is computed on the same dtype-rounded inputs the kernel sees.
    rounded = [t.detach().to(dtype).double().requires_grad_() for t in leaves]

    def reference(q, k, v, bias, scale):
        return attention_ref(q, k, v, bias, scale, upcast=False)

    truth = _run(reference, rounded, mask, torch.float64, grad_out.to(dtype).double(), scale)
    plain = _run(reference, leaves, mask, dtype, grad_out, scale)
    kernel = _run(attention, leaves, mask, dtype, grad_out, scale)
    for name, ours, theirs, exact in zip(["out", "dq", "dk", "dv", "dbias"], kernel, plain, truth):
        assert ours.dtype == dtype and ours.shape == exact.shape, name
        kernel_error = (ours.double() - exact).abs()
        plain_error = (theirs.double() - exact).abs().max().item()
        largest = exact.abs().max().item()
        worst = kernel_error.max().item()
        where = tuple(torch.unravel_index(kernel_error.argmax(), kernel_error.shape))
        message = (
            f"{name}: kernel max error {worst:.3g} at {tuple(int(i) for i in where)} "
            f"(kernel {ours.flatten()[kernel_error.argmax()].item():.6g}, "
            f"reference {exact.flatten()[kernel_error.argmax()].item():.6g}), "
            f"PyTorch {dtype} error {plain_error:.3g}, largest reference value {largest:.3g}"
        )
        assert worst <= 2 * plain_error + 1e-6 * largest, message
        if dtype == torch.float32:
            assert worst < 1e-4 * largest, message


# (shape, bias, why this case)
REFERENCE_CASES = [
    pytest.param((2, 4, 2, 49, 32), "table", id="swin_window_bias_broadcast_over_batch_and_windows"),
    pytest.param((2, 4, 2, 49, 32), "shifted", id="swin_shifted_window_mask_minus_100"),
    pytest.param((1, 4, 100, 32), "none", id="unet_mid_100_tokens_ragged_last_block"),
    pytest.param((1, 1, 45, 512), "none", id="vae_single_head_d512_tiled_over_d_two_ragged_blocks"),
    pytest.param((1, 1, 40, 128), "none", id="d128_fp32_tiled_over_d_in_64_wide_chunks"),
    pytest.param((3, 2, 5, 32), "full", id="n_smaller_than_smallest_tile"),
    pytest.param((2, 3, 33, 20), "full", id="ragged_n_and_non_power_of_two_head_dim"),
    pytest.param((130, 16), "full", id="no_leading_dims_five_blocks"),
]


@pytest.mark.parametrize("shape, bias_kind", REFERENCE_CASES)
def test_attention_fp32_output_and_grads_match_fp64_reference(shape, bias_kind, device):
    _check_against_reference(shape, bias_kind, torch.float32, device)


# bf16: the model's three attentions (d = 512 at N = 40: the VAE's head, few tokens for the interpreter).
@pytest.mark.parametrize(
    "shape, bias_kind",
    [
        pytest.param((2, 4, 2, 49, 32), "shifted", id="swin_shifted_window"),
        pytest.param((1, 4, 100, 32), "none", id="unet_mid"),
        pytest.param((1, 1, 40, 512), "none", id="vae_single_head_d512"),
    ],
)
def test_attention_bf16_output_and_grads_within_twice_pytorch_bf16_error(shape, bias_kind, device):
    _check_against_reference(shape, bias_kind, torch.bfloat16, device)


def test_attention_honours_scale_argument(device):
    _check_against_reference((2, 2, 40, 32), "full", torch.float32, device, scale=0.37, seed=3)


def test_attention_kernels_write_every_output_element(device, monkeypatch):
    """Outputs start as NaN: an element a kernel forgets (a ragged edge, a d slice) stays NaN."""

    def poisoned(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(attention_module, "_new_output", poisoned)
    leaves = [t.detach().float().requires_grad_() for t in _inputs((2, 3, 33, 20), "full", device)[0]]
    out = attention(*leaves)
    out.backward(torch.randn_like(out))
    for name, t in zip(["out", "dq", "dk", "dv", "dbias"], [out] + [t.grad for t in leaves]):
        assert torch.isfinite(t).all(), f"{name}: {int((~torch.isfinite(t)).sum())} elements never written"


def test_attention_without_bias_grad_returns_no_bias_grad(device):
    q, k, v, bias = _inputs((1, 2, 20, 16), "full", device)[0]
    out = attention(q.float(), k.float(), v.float(), bias.detach().float())
    out.sum().backward()
    assert bias.grad is None and q.grad is not None


def _op_inputs(device, with_bias: bool):
    generator = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 2, 20, 16, generator=generator).to(device).requires_grad_() for _ in range(3))
    bias = torch.randn(2, 20, 20, generator=generator).to(device).requires_grad_() if with_bias else None
    return q, k, v, bias


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_attention_ops_pass_opcheck(device, with_bias):
    q, k, v, bias = _op_inputs(device, with_bias)
    torch.library.opcheck(torch.ops.irt4.attention_forward.default, (q, k, v, bias, 0.25))
    out, lse = torch.ops.irt4.attention_forward(q, k, v, bias, 0.25)
    detached = [t.detach() if t is not None else None for t in (q, k, v, bias)]
    backward_args = (torch.randn_like(out), *detached, out.detach(), lse.detach(), 0.25, with_bias)
    torch.library.opcheck(torch.ops.irt4.attention_backward.default, backward_args)


def test_attention_compiles_without_graph_break(device):
    """fullgraph=True traces the registered op and its autograd; aot_eager keeps the CPU run short."""
    q, k, v, bias = _op_inputs(device, with_bias=True)

    def loss(q, k, v, bias):
        return (attention(q, k, v, bias) ** 2).sum()

    explanation = torch._dynamo.explain(loss)(q, k, v, bias)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    grads = torch.autograd.grad(compiled(q, k, v, bias), (q, k, v, bias))
    expected = torch.autograd.grad(loss(q, k, v, bias), (q, k, v, bias))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)


class _TinyAttentionModel(torch.nn.Module):
    """One attention layer with a learned (heads, N, N) bias, as in a Swin window, and an output head."""

    def __init__(self, attend, channels: int = 16, heads: int = 2, tokens: int = 20):
        super().__init__()
        self.attend, self.heads = attend, heads
        self.qkv = torch.nn.Linear(channels, 3 * channels)
        self.bias = torch.nn.Parameter(0.1 * torch.randn(heads, tokens, tokens))
        self.proj = torch.nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = self.attend(q, k, v, self.bias)  # (B, heads, N, d)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


def _train(attend, device: str, steps: int) -> tuple[list[float], dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = _TinyAttentionModel(attend).to(device)
    x = torch.randn(2, 20, 16).to(device)
    target = torch.randn(2, 20, 16).to(device)
    # Plain SGD: Adam would blow the k-bias gradient (zero up to rounding: softmax ignores a per-row
    # constant) up to full-size steps of rounding noise.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(model(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, {name: p.detach() for name, p in model.named_parameters()}


def test_attention_training_converges_like_reference(device):
    steps = 8
    kernel_losses, kernel_weights = _train(attention, device, steps)
    reference_losses, reference_weights = _train(attention_ref, device, steps)
    assert kernel_losses[-1] < 0.95 * kernel_losses[0], f"the tiny model did not learn: {kernel_losses}"
    # Measured on CPU (interpreter): losses and weights agree to ~1e-7 relative after 8 steps.
    torch.testing.assert_close(torch.tensor(kernel_losses), torch.tensor(reference_losses), rtol=1e-5, atol=0)
    for name, weight in kernel_weights.items():
        torch.testing.assert_close(weight, reference_weights[name], rtol=1e-5, atol=1e-6, msg=name)


def test_attention_rejects_mismatched_inputs():
    q = torch.randn(2, 8, 16)
    with pytest.raises(ValueError, match="one shape"):
        attention(q, q, q[:, :4])
    with pytest.raises(ValueError, match="must broadcast"):
        attention(q, q, q, torch.randn(3, 8, 8))
