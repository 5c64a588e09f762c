"""diffusion.residual: the diffusion model learns the residual over its frozen regressor in latent space."""

from pathlib import Path

import pytest
import torch

from irt4.cli.train import main
from irt4.config import ConfigError, apply_overrides, load_config
from irt4.errors import InputError
from irt4.models.bundle import load_model, save_bundle
from irt4.models.radiodiff import RadioDiff
from irt4.train.checkpoint import read_checkpoint
from tests.test_prior import CONDITION, conditions, regressor_run  # noqa: F401  (a fixture)
from tests.test_train_augment import common

pytestmark = pytest.mark.usefixtures("one_thread")
RESIDUAL = ["diffusion.prior=regressor", "diffusion.residual=true", CONDITION]


def residual_model(seed: int = 0) -> RadioDiff:
    cfg = apply_overrides(load_config("tiny"), RESIDUAL)
    torch.manual_seed(seed)
    model = RadioDiff(cfg).eval()
    model.scale_factor.fill_(0.7)
    return model


def test_the_residual_needs_a_regressor_prior():
    with pytest.raises(ConfigError, match="needs diffusion.prior=regressor"):
        apply_overrides(load_config("tiny"), ["diffusion.residual=true"])
    assert RadioDiff(load_config("tiny")).mean_latents(torch.zeros(1, 3, 64, 64)) is None


def test_the_mean_latents_encode_the_regressors_map():
    model = residual_model()
    cond = conditions(model.cfg)
    prior_map = torch.sigmoid(model.unet.prior(cond)) * 2 - 1
    expected = model.vae.encode(prior_map).mean
    torch.testing.assert_close(model.mean_latents(cond), expected)
    assert expected.shape == (2, *model.latent_shape)


def test_the_training_target_is_the_scaled_residual(monkeypatch):
    model = residual_model()
    cond = conditions(model.cfg)
    image = torch.rand(2, 1, model.cfg.image_size, model.cfg.image_size) * 2 - 1
    seen = {}

    def capture(unet, x0, cond, cfg, generator):
        seen["x0"] = x0
        return x0.sum(), {}

    monkeypatch.setattr("irt4.models.radiodiff.training_loss", capture)
    model.diffusion_loss(image, cond, torch.Generator().manual_seed(3))
    z = model.vae.encode(image).sample(generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(seen["x0"], (z - model.mean_latents(cond)) * 0.7)

    scale = model.set_scale_from_batch(image, torch.Generator().manual_seed(3), cond)
    assert scale == pytest.approx(1 / (z - model.mean_latents(cond)).flatten().std().item(), rel=1e-5)


def test_a_zero_residual_samples_the_regressors_map_through_the_vae(monkeypatch):
    model = residual_model()
    cond = conditions(model.cfg)
    monkeypatch.setattr(
        "irt4.models.radiodiff.sample_latents", lambda unet, cond, shape, **_: torch.zeros(len(cond), *shape)
    )
    expected = ((model.vae.decode(model.mean_latents(cond)) + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(model.sample(cond, steps=2), expected)


def test_residual_sampling_is_deterministic_per_seed_and_round_trips_a_bundle(tmp_path):
    model = residual_model()
    cond = conditions(model.cfg)
    first = model.sample(cond, steps=3, generator=torch.Generator().manual_seed(5))
    again = model.sample(cond, steps=3, generator=torch.Generator().manual_seed(5))
    other = model.sample(cond, steps=3, generator=torch.Generator().manual_seed(6))
    assert first.shape == (2, 1, model.cfg.image_size, model.cfg.image_size)
    assert torch.equal(first, again) and not torch.equal(first, other)
    save_bundle(tmp_path / "residual.safetensors", model)
    loaded, _ = load_model(tmp_path / "residual.safetensors")
    assert loaded.cfg.diffusion.residual
    torch.testing.assert_close(
        loaded.sample(cond, steps=3, generator=torch.Generator().manual_seed(5)), first
    )


def test_engines_refuse_a_residual_model(tmp_path):
    from irt4.engine.build import build_engine

    with pytest.raises(InputError, match="PyTorch backends only"):
        build_engine(residual_model(), tmp_path / "engine", backends=["aoti"])


@pytest.mark.parametrize("cache", [False, True], ids=["encoded-per-step", "cached-latents"])
def test_train_a_residual_model(regressor_run, committed_dataset, tmp_path, cache):  # noqa: F811
    root = regressor_run
    argv = ["ldm", *common(committed_dataset), "--vae", str(root / "vae/last.pt")]
    argv += ["--set", CONDITION, "--set", "diffusion.residual=true", "--prior", str(root / "base/last.pt")]
    argv += ["--out", str(tmp_path / "ldm"), "--steps", "2", "--sample-steps", "1"]
    assert main([*argv, *(["--cache-latents"] if cache else [])]) == 0
    model, _ = load_model(tmp_path / "ldm/last.pt")
    assert model.cfg.diffusion.residual and model.cfg.diffusion.prior == "regressor"
    assert read_checkpoint(tmp_path / "ldm/last.pt")["step"] == 2


def test_irt4_infer_samples_a_residual_model_as_the_model_does():
    from pathlib import Path

    from irt4.diffusion.sampler import draw_sampler_noise
    from irt4.infer import InferenceOptions, Sampler

    model = residual_model()
    cond = conditions(model.cfg)
    noise = draw_sampler_noise((2, *model.latent_shape), 2, True, torch.Generator().manual_seed(4))
    expected = model.sample(cond, steps=2, noise=noise)
    maps = Sampler(model, InferenceOptions(out=Path("."), steps=2, progress=False))(cond, noise)
    size = maps.shape[-1]
    torch.testing.assert_close(
        maps,
        torch.nn.functional.interpolate(expected, size=(size, size), mode="bilinear", antialias=True)[:, 0],
    )


def test_init_from_a_prior_model_into_a_residual_run_measures_the_new_scale(
    regressor_run,  # noqa: F811
    committed_dataset,
    tmp_path,
):
    root = regressor_run
    argv = ["ldm", *common(committed_dataset), "--set", CONDITION, "--cache-latents", "--sample-steps", "1"]
    first = [*argv, "--vae", str(root / "vae/last.pt"), "--prior", str(root / "base/last.pt")]
    assert main([*first, "--out", str(tmp_path / "prior"), "--steps", "1"]) == 0
    prior_model, _ = load_model(tmp_path / "prior/last.pt")
    then = ["--init-from", str(tmp_path / "prior/last.pt"), "--set", "diffusion.prior=regressor"]
    then += ["--set", "diffusion.residual=true", "--out", str(tmp_path / "residual"), "--steps", "1"]
    assert main([*argv, *then]) == 0
    model, _ = load_model(tmp_path / "residual/last.pt")
    assert model.cfg.diffusion.residual
    # the prior model's scale fits the whole map's latents: the residual run measured its own
    assert float(model.scale_factor) != pytest.approx(float(prior_model.scale_factor), rel=1e-3)
    for name, value in prior_model.unet.prior.state_dict().items():
        assert torch.equal(model.unet.prior.state_dict()[name], value), name


def _prior_decode_script():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "prior-delta-decode.py"
    spec = importlib.util.spec_from_file_location("prior_delta_decode", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("decode", ["delta", "vae"])
def test_the_decode_trials_at_zero_residual(decode, monkeypatch):
    script = _prior_decode_script()
    for name in ("mean_latents", "decode_latents"):  # restored after the test
        monkeypatch.setattr(RadioDiff, name, getattr(RadioDiff, name))
    model = residual_model()
    cond = conditions(model.cfg)
    monkeypatch.setattr(
        "irt4.models.radiodiff.sample_latents", lambda unet, cond, shape, **_: torch.zeros(len(cond), *shape)
    )
    through_vae = model.sample(cond, steps=2)
    script.install(decode)
    regressor = torch.sigmoid(model.unet.prior(cond))
    # delta: the VAE's error on the regressor's map cancels, leaving that map; vae: the plain decoding
    torch.testing.assert_close(model.sample(cond, steps=2), regressor if decode == "delta" else through_vae)
