"""Radio-map quality metrics on [0, 1] maps (spec: "Evaluation protocol"; contracts.md "Metrics details").

Everything is batched over (B, H, W) or (B, 1, H, W) tensors on whatever device they are on and
returns one value per map; `aggregate` turns those into mean and std over a split.
- NMSE = sum (pred - gt)^2 / sum gt^2; PSNR = 20 log10(1 / RMSE) (peak fixed at 1).
- SSIM as scikit-image computes it with gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
  data_range=1: an 11-tap Gaussian window and the border strip of the window radius cropped. The
  crop removes exactly the pixels whose window crosses the border, so a 'valid' convolution gives
  the same numbers without choosing a padding mode.
- Scales: `raw` (gain PNG / 255) and `thr` (RadioUNet's 0.2 noise floor: clip((x - 0.2) / 0.8, 0, 1));
  RMSE in dB through the linear grey-to-dB mapping.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # scikit-image's choice for Gaussian weights: radius 5, an 11-tap window
NOISE_FLOOR = 0.2


def _as_maps(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W) or (B, 1, H, W) -> (B, H, W) in float64 (sums over 65k pixels need it)."""
    if x.dim() == 4:
        if x.shape[1] != 1:
            raise ValueError(f"expected single-channel maps (B, 1, H, W), got {tuple(x.shape)}")
        x = x[:, 0]
    if x.dim() != 3:
        raise ValueError(f"expected maps of shape (B, H, W) or (B, 1, H, W), got {tuple(x.shape)}")
    return x.to(torch.float64)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return values.flatten(1).mean(1)
    weights = mask.to(values.dtype).flatten(1)
    return (values.flatten(1) * weights).sum(1) / weights.sum(1).clamp_min(1)


def mse(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    pred, gt = _as_maps(pred), _as_maps(gt)
    return _masked_mean((pred - gt) ** 2, None if mask is None else _as_maps(mask))


def rmse(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    return mse(pred, gt, mask).sqrt()


def nmse(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    pred, gt = _as_maps(pred), _as_maps(gt)
    weights = torch.ones_like(gt) if mask is None else _as_maps(mask)
    error = (((pred - gt) ** 2) * weights).flatten(1).sum(1)
    energy = ((gt**2) * weights).flatten(1).sum(1)
    return error / energy


def psnr(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    return 20 * torch.log10(1.0 / rmse(pred, gt, mask))


def _gaussian_window(device: torch.device) -> torch.Tensor:
    radius = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    weights = torch.exp(-0.5 * (offsets / SSIM_SIGMA) ** 2)
    return weights / weights.sum()


def _filter_valid(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter over (B, H, W), keeping only positions whose window fits."""
    taps = window.numel()
    x = F.conv2d(x[:, None], window.reshape(1, 1, taps, 1))
    return F.conv2d(x, window.reshape(1, 1, 1, taps))[:, 0]


def ssim_map(pred: torch.Tensor, gt: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-pixel SSIM over the cropped region: (B, H - 10, W - 10)."""
    pred, gt = _as_maps(pred), _as_maps(gt)
    window = _gaussian_window(pred.device)
    if min(pred.shape[-2:]) < window.numel():
        raise ValueError(
            f"maps of {tuple(pred.shape[-2:])} are smaller than the {window.numel()}-tap SSIM window"
        )
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = _filter_valid(pred, window), _filter_valid(gt, window)
    var_x = _filter_valid(pred * pred, window) - mu_x**2
    var_y = _filter_valid(gt * gt, window) - mu_y**2
    cov = _filter_valid(pred * gt, window) - mu_x * mu_y
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))


def ssim(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    values = ssim_map(pred, gt)
    if mask is not None:
        radius = (_as_maps(pred).shape[-1] - values.shape[-1]) // 2
        mask = _as_maps(mask)[:, radius:-radius, radius:-radius]
    return _masked_mean(values, mask)


def threshold_scale(x: torch.Tensor, floor: float = NOISE_FLOOR) -> torch.Tensor:
    """RadioUNet's `thr` scale: the noise floor at 0.2 moved to 0 and the rest stretched to [0, 1]."""
    return ((x - floor) / (1 - floor)).clamp(0.0, 1.0)


def radio_map_metrics(
    pred: torch.Tensor,
    gt: torch.Tensor,
    gain_db_range: tuple[float, float] = (-147.0, -47.0),
    outdoor_mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Every metric of the protocol per map: {name: (B,) tensor}.

    Names: `{mse,rmse,nmse,ssim,psnr}_{raw,thr}` and `rmse_db`; with `outdoor_mask` (1 = outdoor)
    the same again with an `_outdoor` suffix.
    """
    db_per_unit = gain_db_range[1] - gain_db_range[0]
    results: dict[str, torch.Tensor] = {}
    masks = {"": None} if outdoor_mask is None else {"": None, "_outdoor": outdoor_mask}
    for suffix, mask in masks.items():
        for scale, transform in (("raw", lambda x: x), ("thr", threshold_scale)):
            p, g = transform(_as_maps(pred)), transform(_as_maps(gt))
            results[f"mse_{scale}{suffix}"] = mse(p, g, mask)
            results[f"rmse_{scale}{suffix}"] = results[f"mse_{scale}{suffix}"].sqrt()
            results[f"nmse_{scale}{suffix}"] = nmse(p, g, mask)
            results[f"ssim_{scale}{suffix}"] = ssim(p, g, mask)
            results[f"psnr_{scale}{suffix}"] = 20 * torch.log10(1.0 / results[f"rmse_{scale}{suffix}"])
        results[f"rmse_db{suffix}"] = results[f"rmse_raw{suffix}"] * db_per_unit
    return results


def aggregate(per_map: dict[str, torch.Tensor]) -> dict[str, tuple[float, float]]:
    """{name: (mean, std)} over maps (population std; 0 for a single map)."""
    summary = {}
    for name, values in per_map.items():
        values = values.double()
        std = values.std(unbiased=False).item() if values.numel() > 1 else 0.0
        summary[name] = (values.mean().item(), std)
    return summary


def format_table(summary: dict[str, tuple[float, float]], count: int) -> str:
    """A plain-text table of mean +- std per metric, for the end of a run."""
    width = max(len(name) for name in summary)
    lines = [f"{'metric':<{width}}  {'mean':>12}  {'std':>12}   ({count} maps)"]
    for name, (mean, std) in summary.items():
        fmt = ".4f" if math.isfinite(mean) and abs(mean) >= 1 else ".6f"
        lines.append(f"{name:<{width}}  {mean:>12{fmt}}  {std:>12{fmt}}")
    return "\n".join(lines)
