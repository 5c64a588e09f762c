"""Shapes and parameter counts of every preset, built on the meta device (nothing allocated)."""

import pytest
import torch

from irt4.config import load_config, preset_names
from irt4.models.summary import build_on_meta, count_parameters, flop_counts

# Counts of the reference code at a 256x256 condition and 3x64x64 latent (spec: "Size check").
REFERENCE_UNET_PARAMETERS = 224_869_496
REFERENCE_UNUSED_SWIN_HEAD = 1_027_048
REFERENCE_VAE_PARAMETERS = 55_307_453


def test_fidelity_preset_matches_reference_parameter_counts():
    model = build_on_meta(load_config("irt4-radiodiff-256"))
    assert count_parameters(model.unet) == REFERENCE_UNET_PARAMETERS - REFERENCE_UNUSED_SWIN_HEAD
    assert count_parameters(model.vae) == REFERENCE_VAE_PARAMETERS


def test_fidelity_preset_with_classifier_matches_full_reference_count():
    model = build_on_meta(load_config("irt4-radiodiff-256", ["swin.keep_classifier=true"]))
    assert count_parameters(model.unet) == REFERENCE_UNET_PARAMETERS


def test_320_preset_differs_only_by_the_resolution_sized_spectral_filters():
    small_mid = build_on_meta(load_config("irt4-radiodiff-256"))
    big_mid = build_on_meta(load_config("irt4-radiodiff"))
    # each of the two filters grows from (512, 8, 5) to (512, 10, 6) complex weights
    extra = 2 * 512 * 2 * (10 * 6 - 8 * 5)
    assert count_parameters(big_mid.unet) - count_parameters(small_mid.unet) == extra


@pytest.mark.parametrize("name", preset_names())
def test_shapes_at_every_preset(name):
    cfg = load_config(name)
    model = build_on_meta(cfg)
    batch, size, latent = 2, cfg.image_size, cfg.latent_size
    with torch.no_grad():
        image = torch.zeros(batch, 1, size, size, device="meta")
        posterior = model.vae.encode(image)
        assert posterior.mean.shape == (batch, cfg.unet.channels, latent, latent)
        assert model.vae.decode(posterior.mean).shape == (batch, 1, size, size)

        cond = torch.zeros(batch, 3, size, size, device="meta")
        features = model.unet.encode_condition(cond)
        dims = [cfg.unet.dim * m for m in (1, *cfg.unet.dim_mults[:-1])]
        assert features[0].shape == (batch, cfg.swin.embed_dim, latent, latent)
        for level, (feature, dim) in enumerate(zip(features[1:], dims)):
            assert feature.shape == (batch, dim, latent >> level, latent >> level)
        x = torch.zeros(batch, cfg.unet.channels, latent, latent, device="meta")
        c_pred, noise_pred = model.unet.denoise(x, torch.full((batch,), 0.5, device="meta"), features)
        assert c_pred.shape == noise_pred.shape == x.shape


def test_reference_flops_match_the_spec_measurements():
    """Spec, "Where the time goes": 146 GFLOP per call at 256/64 (51 of them Swin), VAE 345 / 670."""
    counts = flop_counts(build_on_meta(load_config("irt4-radiodiff-256")))
    assert counts["reference call (condition recomputed)"] / 1e9 == pytest.approx(146, rel=0.01)
    assert counts["condition encoder (once per map)"] / 1e9 == pytest.approx(51, rel=0.01)
    assert counts["VAE encode"] / 1e9 == pytest.approx(345, rel=0.01)
    assert counts["VAE decode"] / 1e9 == pytest.approx(670, rel=0.01)


def test_small_preset_fits_the_cpu_budget():
    """contracts.md: small aims for at most ~10 M parameters."""
    assert count_parameters(build_on_meta(load_config("small"))) < 10_500_000
