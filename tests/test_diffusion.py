"""The decoupled-diffusion process, its loss and the sampler's schedule against hand-computed values."""

import math

import pytest
import torch

from irt4.config import DiffusionConfig, load_config
from irt4.diffusion.ddm import loss_weights, pred_kc_loss, q_sample, reconstruct_x0, sample_timesteps
from irt4.diffusion.schedule import sampler_update, sampling_schedule, step_sigma
from irt4.errors import ConfigError


def test_forward_process_matches_hand_computation():
    x0 = torch.tensor([[[[1.0, -0.5]]]])
    noise = torch.tensor([[[[0.2, 0.4]]]])
    x_t = q_sample(x0, torch.tensor([0.25]), noise)
    # x0 + C t + sqrt(t) n with C = -x0: 1 - 0.25 + 0.5 * 0.2 and -0.5 + 0.125 + 0.5 * 0.4
    torch.testing.assert_close(x_t, torch.tensor([[[[0.85, -0.175]]]]))


def test_forward_process_ends_at_pure_noise():
    x0, noise = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    torch.testing.assert_close(q_sample(x0, torch.ones(3), noise), noise)


def test_x0_reconstruction_inverts_the_forward_process():
    x0, noise, t = torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5), torch.rand(4) * 0.9 + 0.05
    x_t = q_sample(x0, t, noise)
    torch.testing.assert_close(reconstruct_x0(x_t, t, -x0, noise), x0, atol=1e-6, rtol=1e-5)


def test_loss_weights_match_the_spec_formulas_and_clamp():
    w_c, w_noise = loss_weights(torch.tensor([0.25, 1.0]), clamp=100.0)
    torch.testing.assert_close(w_c, torch.tensor([2 * math.exp(0.75), 2.0]))
    torch.testing.assert_close(w_noise, torch.tensor([math.exp(0.5), math.e]))
    w_c, _ = loss_weights(torch.tensor([1e-4]), clamp=3.0)
    assert w_c.item() == 3.0


def test_loss_matches_hand_computation():
    c_pred = torch.tensor([[[[0.5, -1.0]]], [[[2.0, 0.0]]]])
    c_target = torch.tensor([[[[0.0, 0.0]]], [[[1.0, 1.0]]]])
    n_pred = torch.tensor([[[[1.0, 1.0]]], [[[0.0, 0.5]]]])
    n_target = torch.tensor([[[[0.0, 2.0]]], [[[0.0, 0.0]]]])
    t = torch.tensor([0.25, 0.64])
    loss, parts = pred_kc_loss(c_pred, n_pred, c_target, n_target, t, DiffusionConfig())

    def per_sample(i, tt):
        w1, w2 = 2 * math.exp(1 - tt), math.exp(math.sqrt(tt))
        dc = [a - b for a, b in zip(c_pred[i].flatten().tolist(), c_target[i].flatten().tolist())]
        dn = [a - b for a, b in zip(n_pred[i].flatten().tolist(), n_target[i].flatten().tolist())]
        mse = lambda d: sum(v * v for v in d) / len(d)  # noqa: E731
        mae = lambda d: sum(abs(v) for v in d) / len(d)  # noqa: E731
        return (w1 * mse(dc) + w2 * mse(dn) + w1 * mae(dc) + w2 * mae(dn)) / 2

    expected = (per_sample(0, 0.25) + per_sample(1, 0.64)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert parts["c_l2"].item() == pytest.approx((0.625 + 1.0) / 2)
    assert parts["noise_l1"].item() == pytest.approx((1.0 + 0.25) / 2)


def test_loss_without_l1_is_the_weighted_mse():
    c_pred, c_target, n_pred, n_target = (torch.randn(2, 3, 4, 4) for _ in range(4))
    t = torch.tensor([0.3, 0.9])
    loss, _ = pred_kc_loss(c_pred, n_pred, c_target, n_target, t, DiffusionConfig(use_l1=False))
    w_c, w_n = loss_weights(t, 100.0)
    expected = w_c * ((c_pred - c_target) ** 2).mean((1, 2, 3)) + w_n * ((n_pred - n_target) ** 2).mean(
        (1, 2, 3)
    )
    torch.testing.assert_close(loss, expected.mean())


def test_loss_is_clamped_per_sample():
    big = torch.full((1, 1, 2, 2), 1e3)
    loss, _ = pred_kc_loss(big, big, -big, -big, torch.tensor([0.5]), DiffusionConfig(loss_clamp=1000.0))
    assert loss.item() == 1000.0


def test_training_timesteps_lie_in_eps_to_one():
    t = sample_timesteps(10_000, 1e-4, torch.Generator().manual_seed(0))
    assert t.min() >= 1e-4 and t.max() <= 1.0


@pytest.mark.parametrize("power", [1.0, 3.0])
def test_training_timesteps_follow_the_power_law(power):
    """u^(1/p) has CDF x^p: P(t <= x) = ((x - eps) / (1 - eps))^p, and power 1 is the uniform draw."""
    eps = 1e-4
    t = sample_timesteps(200_000, eps, torch.Generator().manual_seed(1), power=power)
    assert t.min() >= eps and t.max() <= 1.0
    for x in (0.25, 0.5, 0.9):
        expected = ((x - eps) / (1 - eps)) ** power
        assert (t <= x).double().mean().item() == pytest.approx(expected, abs=4e-3)
    if power == 1.0:  # the reference's draw, bit for bit
        uniform = torch.rand(200_000, generator=torch.Generator().manual_seed(1)) * (1 - eps) + eps
        assert torch.equal(t, uniform)


def test_t_power_must_be_positive():
    with pytest.raises(ConfigError, match="t_power"):
        load_config("tiny", ["diffusion.t_power=0"])


@pytest.mark.parametrize("steps", [1, 3, 5, 50])
def test_sampler_steps_sum_to_one(steps):
    schedule = sampling_schedule(steps)
    assert sum(s for _, s in schedule) == pytest.approx(1.0, abs=1e-12)
    assert schedule[0][0] == 1.0


def test_sampler_with_denoise_makes_one_extra_call_of_size_eps():
    schedule = sampling_schedule(50, eps=1e-4, denoise=True)
    assert len(schedule) == 51
    assert schedule[-2][1] == pytest.approx(1 / 50 - 1e-4)
    assert schedule[-1] == pytest.approx((1e-4, 1e-4))
    assert len(sampling_schedule(50, denoise=False)) == 50


def test_sampler_last_step_takes_the_remaining_time_and_has_zero_sigma():
    for steps in (3, 50):
        t_last, s_last = sampling_schedule(steps)[-1]
        assert s_last == t_last
        assert step_sigma(t_last, s_last) == 0.0
    assert step_sigma(0.5, 0.1) == pytest.approx(math.sqrt(0.1 * 0.4 / 0.5))


def test_sampler_rejects_bad_step_counts_and_eps():
    with pytest.raises(ValueError, match="steps"):
        sampling_schedule(0)
    with pytest.raises(ValueError, match="eps"):
        sampling_schedule(10, eps=0.2)


def test_sampler_update_matches_hand_computation():
    x, c, n, z = (torch.tensor([v]) for v in (0.3, -0.2, 0.5, 1.5))
    t, s = 0.5, 0.1
    x0 = 0.3 + 0.2 * 0.5 - math.sqrt(0.5) * 0.5
    mean = 0.3 + x0 * 0.1 - (0.1 / math.sqrt(0.5)) * 0.5
    expected = mean + math.sqrt(0.1 * 0.4 / 0.5) * 1.5
    assert sampler_update(x, c, n, t, s, z).item() == pytest.approx(expected, rel=1e-6)


def test_sampler_update_with_exact_predictions_lands_on_x0():
    x0, noise = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    t = 0.02
    x_t = q_sample(x0, torch.full((2,), t), noise)
    out = sampler_update(x_t, -x0, noise, t, t, torch.randn(2, 3, 4, 4))
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=1e-5)
