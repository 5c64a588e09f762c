import copy
import math

import pytest
import torch

from irt4.errors import ConfigError, InputError
from irt4.models.vae import AttnBlock, AutoencoderKL, DiagonalGaussian, Downsample, _attention_ref, vae_loss

# Smallest config with the reference's three levels (so /4) and GroupNorm(32)-compatible widths.
TINY = dict(base_channels=32, channel_mults=(1, 1, 1), num_res_blocks=1)


def _randomize_norm_affine(module: torch.nn.Module, generator: torch.Generator) -> None:
    # GroupNorm starts at weight 1, bias 0: fresh values make the tests see every parameter's role.
    for sub in module.modules():
        if isinstance(sub, torch.nn.GroupNorm):
            sub.weight.data = 1 + 0.1 * torch.randn(sub.weight.shape, generator=generator)
            sub.bias.data = 0.1 * torch.randn(sub.bias.shape, generator=generator)


def test_param_count_matches_reference_config_exactly():
    with torch.device("meta"):
        model = AutoencoderKL()
    assert sum(p.numel() for p in model.parameters()) == 55_307_453


def test_state_dict_uses_reference_key_layout():
    with torch.device("meta"):
        state = AutoencoderKL().state_dict()
    assert len(state) == 204
    expected_shapes = {
        "encoder.down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1),
        "encoder.down.0.downsample.conv.weight": (128, 128, 3, 3),
        "encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "decoder.up.2.upsample.conv.weight": (512, 512, 3, 3),
        "decoder.up.0.block.2.conv2.weight": (128, 128, 3, 3),
        "decoder.conv_out.weight": (1, 128, 3, 3),
        "quant_conv.weight": (6, 6, 1, 1),
        "post_quant_conv.weight": (3, 3, 1, 1),
    }
    for key, shape in expected_shapes.items():
        assert tuple(state[key].shape) == shape, key


@pytest.mark.parametrize("side, latent_side", [(320, 80), (256, 64)])
def test_full_size_latent_shapes_on_meta_device(side, latent_side):
    with torch.device("meta"):
        model = AutoencoderKL(resolution=side)
        recon, posterior = model(torch.empty(2, 1, side, side))
    assert model.downsample_factor == 4
    assert posterior.mean.shape == posterior.logvar.shape == (2, 3, latent_side, latent_side)
    assert recon.shape == (2, 1, side, side)


@pytest.mark.parametrize("side, latent_side", [(320, 80), (256, 64)])
def test_tiny_encode_decode_shapes(side, latent_side):
    torch.manual_seed(0)
    model = AutoencoderKL(**TINY, resolution=side)
    with torch.no_grad():
        posterior = model.encode(torch.randn(1, 1, side, side))
        assert posterior.sample().shape == (1, 3, latent_side, latent_side)
        assert model.decode(posterior.mode()).shape == (1, 1, side, side)


def test_downsample_pads_right_and_bottom_only():
    # With a kernel that reads only its top-left tap, output (i, j) is input (2i - pad_top, 2j - pad_left).
    down = Downsample(1)
    with torch.no_grad():
        down.conv.weight.zero_()
        down.conv.weight[0, 0, 0, 0] = 1.0
        down.conv.bias.zero_()
    x = torch.randn(1, 1, 6, 8, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(down(x), x[:, :, ::2, ::2])


def test_encode_rejects_size_not_multiple_of_downsample_factor():
    model = AutoencoderKL(**TINY)
    with pytest.raises(InputError, match="66x64"):
        model.encode(torch.randn(1, 1, 66, 64))


def test_constructor_rejects_widths_not_multiple_of_group_count_and_single_z():
    with pytest.raises(ConfigError, match="multiples of 32"):
        AutoencoderKL(base_channels=48)
    with pytest.raises(ConfigError, match="double_z"):
        AutoencoderKL(**TINY, double_z=False)


def test_posterior_kl_matches_hand_computation():
    generator = torch.Generator().manual_seed(1)
    moments = torch.randn(2, 4, 3, 2, generator=generator)
    moments[1, 2, 0, 0] = 25.0  # a logvar above the clamp: counts as 20
    kl = DiagonalGaussian(moments).kl()

    expected = []
    for sample in moments.tolist():
        means, logvars = sample[:2], sample[2:]
        total = 0.0
        for mean_row, logvar_row in zip(sum(means, []), sum(logvars, [])):
            for mean, logvar in zip(mean_row, logvar_row):
                logvar = min(max(logvar, -30.0), 20.0)
                total += 0.5 * (mean**2 + math.exp(logvar) - 1.0 - logvar)
        expected.append(total)
    torch.testing.assert_close(kl, torch.tensor(expected), rtol=1e-6, atol=0.0)


def test_posterior_sample_is_reproducible_for_a_seeded_generator():
    moments = torch.randn(2, 6, 5, 7, generator=torch.Generator().manual_seed(2))
    posterior = DiagonalGaussian(moments)
    first = posterior.sample(torch.Generator().manual_seed(7))
    again = posterior.sample(torch.Generator().manual_seed(7))
    other = posterior.sample(torch.Generator().manual_seed(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    noise = torch.randn(2, 3, 5, 7, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(first, posterior.mean + torch.exp(0.5 * posterior.logvar) * noise)


def test_forward_with_seeded_generator_is_reproducible_and_mode_is_deterministic():
    torch.manual_seed(0)
    model = AutoencoderKL(**TINY).eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        first, _ = model(x, generator=torch.Generator().manual_seed(3))
        again, _ = model(x, generator=torch.Generator().manual_seed(3))
        mode_recon, posterior = model(x, sample_posterior=False)
        assert torch.equal(first, again)
        assert torch.equal(mode_recon, model.decode(posterior.mean))


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    # Attention at 16 px puts level attention blocks in both encoder and decoder too.
    model = AutoencoderKL(**TINY, attn_resolutions=(16,), resolution=32)
    _randomize_norm_affine(model, torch.Generator().manual_seed(4))
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    recon, posterior = model(x, generator=torch.Generator().manual_seed(5))
    loss, _ = vae_loss(x, recon, posterior, kl_weight=1e-2)
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_vae_loss_matches_reference_reduction():
    generator = torch.Generator().manual_seed(6)
    x = torch.rand(3, 1, 8, 8, generator=generator) * 2 - 1
    recon = torch.rand(3, 1, 8, 8, generator=generator) * 2 - 1
    posterior = DiagonalGaussian(torch.randn(3, 6, 2, 2, generator=generator))
    loss, parts = vae_loss(x, recon, posterior, kl_weight=0.5)

    diff = (x - recon).double()
    nll = (diff.abs() + diff**2).sum() / 3  # summed over pixels, averaged over the batch
    kl = posterior.kl().double().sum() / 3
    torch.testing.assert_close(parts["nll_loss"].double(), nll)
    torch.testing.assert_close(parts["kl_loss"].double(), kl)
    torch.testing.assert_close(loss.double(), nll + 0.5 * kl)


@pytest.mark.parametrize("channels, height, width", [(32, 1, 3), (64, 7, 9), (512, 10, 8)])
def test_mid_attention_sdpa_matches_explicit_softmax(channels, height, width):
    generator = torch.Generator().manual_seed(channels + height)
    block = AttnBlock(channels)
    _randomize_norm_affine(block, generator)
    block64 = copy.deepcopy(block).double()
    x = torch.randn(2, channels, height, width, generator=generator)

    def explicit(block: AttnBlock, x: torch.Tensor) -> torch.Tensor:
        h = block.norm(x)
        q, k, v = (conv(h).flatten(2).transpose(1, 2) for conv in (block.q, block.k, block.v))  # (B, N, C)
        out = _attention_ref(q, k, v).transpose(1, 2).reshape(x.shape)
        return x + block.proj_out(out)

    def output_and_input_grad(fn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.clone().requires_grad_(True)
        out = fn(x)
        (grad,) = torch.autograd.grad(out.square().sum(), x)
        return out.detach().double(), grad.double()

    fast = output_and_input_grad(block, x)
    plain = output_and_input_grad(lambda x: explicit(block, x), x)
    exact = output_and_input_grad(lambda x: explicit(block64, x), x.double())
    torch.testing.assert_close(fast[0], plain[0], rtol=1e-5, atol=1e-5)
    # STYLE.md's rule: the fast path's fp32 error is at most ~2x plain PyTorch's fp32 error.
    for fast_t, plain_t, exact_t in zip(fast, plain, exact):
        fast_err = (fast_t - exact_t).abs().max()
        plain_err = (plain_t - exact_t).abs().max()
        assert fast_err <= 2 * plain_err + 1e-6, (fast_err, plain_err)
