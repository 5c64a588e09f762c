"""The tiny preset end to end: gradients, learning, sampling, condition hoisting."""

import pytest
import torch

from irt4.config import apply_overrides, load_config
from irt4.diffusion.ddm import pred_kc_loss, q_sample, training_loss
from irt4.diffusion.sampler import draw_sampler_noise, sample_latents
from irt4.models.radiodiff import RadioDiff


@pytest.fixture(scope="module")
def cfg():
    return load_config("tiny")


def _model(cfg, seed=0):
    torch.manual_seed(seed)
    return RadioDiff(cfg)


def _batch(cfg, batch=2, seed=1, cond_channels=3):
    g = torch.Generator().manual_seed(seed)
    size = cfg.image_size
    image = torch.rand(batch, 1, size, size, generator=g) * 2 - 1
    cond = torch.rand(batch, cond_channels, size, size, generator=g) * 2 - 1
    return image, cond


def test_gradients_reach_every_trainable_parameter(cfg):
    # stochastic depth may drop a whole Swin block for the batch: off, so every path is used
    model = _model(apply_overrides(cfg, ["swin.stochastic_depth=0.0"])).train()
    image, cond = _batch(cfg)
    loss, _ = model.diffusion_loss(image, cond, torch.Generator().manual_seed(0))
    loss.backward()
    missing = [
        name
        for name, p in model.unet.named_parameters()
        if p.requires_grad
        and not name.startswith("cond_adapter")
        and (p.grad is None or p.grad.abs().sum() == 0)
    ]
    assert missing == []
    assert not model.unet.time_embedding.frequencies.requires_grad


def test_cars_condition_goes_through_the_adapter(cfg):
    model = _model(cfg).train()
    image, cond = _batch(cfg, cond_channels=cfg.unet.cond_adapter_channels)
    loss, _ = model.diffusion_loss(image, cond, torch.Generator().manual_seed(0))
    loss.backward()
    assert model.unet.cond_adapter.weight.grad.abs().sum() > 0


def test_tiny_model_learns_a_fixed_batch(cfg):
    """Thirty Adam steps on one fixed synthetic batch (x_t, t, condition) at least halve the loss."""
    torch.manual_seed(0)
    unet = RadioDiff(cfg).unet.train()
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(2, *RadioDiff(cfg).latent_shape, generator=g)
    cond = torch.rand(2, 3, cfg.image_size, cfg.image_size, generator=g) * 2 - 1
    t = torch.tensor([0.3, 0.7])
    noise = torch.randn(x0.shape, generator=g)
    x_t = q_sample(x0, t, noise)
    opt = torch.optim.Adam(unet.parameters(), lr=2e-3)
    losses = []
    for _ in range(30):
        c_pred, noise_pred = unet(x_t, t, cond)
        loss, _ = pred_kc_loss(c_pred, noise_pred, -x0, noise, t, cfg.diffusion)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 2, losses


def test_training_loss_runs_the_whole_objective(cfg):
    unet = RadioDiff(cfg).unet.train()
    x0 = torch.randn(2, *RadioDiff(cfg).latent_shape)
    _, cond = _batch(cfg)
    loss, parts = training_loss(unet, x0, cond, cfg.diffusion, torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert {"loss_simple", "c_l2", "noise_l2", "c_l1", "noise_l1", "x0_l1"} <= set(parts)


def test_seeded_sampling_is_reproducible(cfg):
    model = _model(cfg).eval()
    _, cond = _batch(cfg)
    a = model.sample(cond, steps=3, generator=torch.Generator().manual_seed(7))
    b = model.sample(cond, steps=3, generator=torch.Generator().manual_seed(7))
    c = model.sample(cond, steps=3, generator=torch.Generator().manual_seed(8))
    assert a.shape == (2, 1, cfg.image_size, cfg.image_size)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1


def test_sample_encodes_the_condition_once_per_sample_not_per_step(cfg, monkeypatch):
    model = _model(cfg).eval()
    _, cond = _batch(cfg)
    calls = {"encode": 0, "denoise": 0}
    encode, denoise = model.unet.encode_condition, model.unet.denoise

    def counting_encode(c):
        calls["encode"] += 1
        return encode(c)

    def counting_denoise(*args):
        calls["denoise"] += 1
        return denoise(*args)

    monkeypatch.setattr(model.unet, "encode_condition", counting_encode)
    monkeypatch.setattr(model.unet, "denoise", counting_denoise)
    model.sample(cond, steps=5, generator=torch.Generator().manual_seed(0))
    assert calls == {"encode": 1, "denoise": 6}


def test_recomputing_the_condition_gives_the_same_latents(cfg):
    model = _model(cfg).eval()
    _, cond = _batch(cfg)
    noise = draw_sampler_noise((2, *model.latent_shape), steps=3, generator=torch.Generator().manual_seed(0))
    hoisted = sample_latents(model.unet, cond, model.latent_shape, steps=3, noise=noise)
    recomputed = sample_latents(
        model.unet, cond, model.latent_shape, steps=3, noise=noise, recompute_condition=True
    )
    torch.testing.assert_close(hoisted, recomputed)


def test_scale_by_std_sets_unit_latent_std(cfg):
    model = _model(cfg).eval()
    image, _ = _batch(cfg, batch=4)
    g = torch.Generator().manual_seed(0)
    model.set_scale_from_batch(image, g)
    z = model.encode_target(image, torch.Generator().manual_seed(0))
    assert z.flatten().std().item() == pytest.approx(1.0, rel=1e-4)


def test_folded_weight_standardization_gives_the_same_step(cfg):
    from irt4.models.layers import fold_weight_standardization, unfold_weight_standardization

    model = _model(cfg).eval()
    _, cond = _batch(cfg)
    x = torch.randn(2, *model.latent_shape)
    t = torch.tensor([0.3, 0.8])
    proj = model.unet.down_levels[0].block1.block1.proj
    with torch.no_grad():
        expected = model.unet(x, t, cond)
        assert fold_weight_standardization(model.unet) > 0
        original = proj.weight.clone()
        proj.weight.add_(torch.randn_like(original))  # ignored while folded: the folded weight is used
        folded = model.unet(x, t, cond)
        proj.weight.copy_(original)
        unfold_weight_standardization(model.unet)
        unfolded = model.unet(x, t, cond)
    for a, b, c in zip(expected, folded, unfolded):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
        assert torch.equal(c, a)


def test_channels_last_model_gives_the_same_loss(cfg):
    # the trainer moves models to channels_last on GPUs; the spectral filter's complex weight is 4-D
    # and must still be viewed as complex (this crashed the first GPU training run)
    torch.manual_seed(0)
    model = RadioDiff(cfg).eval()  # no stochastic depth: the two losses see the same network
    image = torch.rand(2, 1, cfg.image_size, cfg.image_size) * 2 - 1
    cond = torch.rand(2, 3, cfg.image_size, cfg.image_size) * 2 - 1
    expected = model.diffusion_loss(image, cond, torch.Generator().manual_seed(1))[0]
    model.to(memory_format=torch.channels_last)
    got = model.diffusion_loss(image, cond, torch.Generator().manual_seed(1))[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
