import math

import numpy as np
import pytest
import torch

from irt4.metrics import aggregate, format_table, nmse, psnr, radio_map_metrics, rmse, ssim, threshold_scale

skimage_metrics = pytest.importorskip("skimage.metrics", reason="scikit-image is a dev dependency")


def test_rmse_nmse_psnr_match_hand_computation():
    gt = torch.tensor([[[0.5, 0.5], [0.0, 1.0]]])
    pred = torch.tensor([[[0.6, 0.4], [0.0, 1.0]]])
    # squared errors 0.01, 0.01, 0, 0 -> MSE 0.005; sum gt^2 = 0.25 + 0.25 + 1 = 1.5
    assert rmse(pred, gt).item() == pytest.approx(math.sqrt(0.005))
    assert nmse(pred, gt).item() == pytest.approx(0.02 / 1.5)
    assert psnr(pred, gt).item() == pytest.approx(20 * math.log10(1 / math.sqrt(0.005)))


def test_masked_metrics_count_only_outdoor_pixels():
    gt = torch.tensor([[[0.5, 0.0]]])
    pred = torch.tensor([[[0.7, 0.9]]])
    outdoor = torch.tensor([[[1.0, 0.0]]])
    assert rmse(pred, gt, outdoor).item() == pytest.approx(0.2)
    assert nmse(pred, gt, outdoor).item() == pytest.approx(0.04 / 0.25)


def test_threshold_scale_moves_the_noise_floor_to_zero():
    x = torch.tensor([0.0, 0.2, 0.6, 1.0])
    torch.testing.assert_close(threshold_scale(x), torch.tensor([0.0, 0.0, 0.5, 1.0]))


@pytest.mark.parametrize("shape", [(3, 64, 64), (2, 31, 47), (1, 256, 256)])
def test_ssim_matches_scikit_image(shape):
    g = torch.Generator().manual_seed(sum(shape))
    gt = torch.rand(shape, generator=g, dtype=torch.float64)
    pred = (gt + 0.2 * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    ours = ssim(pred, gt)
    for i in range(shape[0]):
        expected = skimage_metrics.structural_similarity(
            pred[i].numpy(),
            gt[i].numpy(),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
        )
        assert ours[i].item() == pytest.approx(expected, abs=1e-10)


def test_psnr_matches_scikit_image():
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(2, 40, 40, generator=g, dtype=torch.float64)
    pred = (gt + 0.05 * torch.randn(2, 40, 40, generator=g, dtype=torch.float64)).clamp(0, 1)
    ours = psnr(pred, gt)
    for i in range(2):
        expected = skimage_metrics.peak_signal_noise_ratio(gt[i].numpy(), pred[i].numpy(), data_range=1.0)
        assert ours[i].item() == pytest.approx(expected, rel=1e-10)


def test_metric_set_has_every_scale_and_db_rmse():
    g = torch.Generator().manual_seed(1)
    gt = torch.rand(2, 1, 32, 32, generator=g)
    pred = torch.rand(2, 1, 32, 32, generator=g)
    outdoor = (torch.rand(2, 1, 32, 32, generator=g) > 0.3).float()
    metrics = radio_map_metrics(pred, gt, outdoor_mask=outdoor)
    for scale in ("raw", "thr"):
        for name in ("mse", "rmse", "nmse", "ssim", "psnr"):
            assert metrics[f"{name}_{scale}"].shape == (2,)
            assert f"{name}_{scale}_outdoor" in metrics
    torch.testing.assert_close(metrics["rmse_db"], metrics["rmse_raw"] * 100)


def test_aggregate_gives_mean_and_population_std():
    summary = aggregate({"rmse_raw": torch.tensor([1.0, 3.0])})
    assert summary["rmse_raw"] == (2.0, 1.0)
    assert aggregate({"x": torch.tensor([5.0])})["x"] == (5.0, 0.0)
    assert "rmse_raw" in format_table(summary, count=2)


def test_metrics_reject_multichannel_maps():
    with pytest.raises(ValueError, match="single-channel"):
        rmse(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4))


def test_identical_maps_have_perfect_ssim_and_zero_error():
    x = torch.from_numpy(np.random.default_rng(0).random((1, 20, 20)))
    assert ssim(x, x).item() == pytest.approx(1.0)
    assert rmse(x, x).item() == 0.0
