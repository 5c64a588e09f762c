import pytest
import torch

from irt4.config import load_config
from irt4.errors import InputError
from irt4.models.bundle import load_model, save_bundle
from irt4.models.radiodiff import RadioDiff


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = RadioDiff(load_config("tiny")).eval()
    m.scale_factor.fill_(0.73)
    return m


def test_bundle_round_trip_restores_weights_config_and_scale(model, tmp_path):
    path = tmp_path / "model.safetensors"
    save_bundle(path, model)
    loaded, info = load_model(path)
    assert loaded.cfg == model.cfg
    assert info["weights"] == "ema"
    assert loaded.scale_factor.item() == pytest.approx(0.73)
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_fp16_bundle_loads_back_close_in_fp32(model, tmp_path):
    path = tmp_path / "half.safetensors"
    save_bundle(path, model, dtype=torch.float16)
    loaded, _ = load_model(path)
    weight = loaded.unet.init_conv[0].weight
    assert weight.dtype == torch.float32
    torch.testing.assert_close(weight, model.unet.init_conv[0].weight, atol=1e-3, rtol=1e-3)
    assert loaded.scale_factor.item() == pytest.approx(0.73)


def test_training_checkpoint_prefers_ema_weights(model, tmp_path):
    ema = {name: torch.full_like(value, 0.5) for name, value in model.unet.state_dict().items()}
    from irt4.config import config_to_dict

    checkpoint = {
        "model": model.state_dict(),
        "ema": ema,
        "config": config_to_dict(model.cfg),
        "stage": "ldm",
    }
    torch.save(checkpoint, tmp_path / "last.pt")
    with_ema, info = load_model(tmp_path / "last.pt")
    assert info["weights"] == "ema"
    assert torch.all(with_ema.unet.init_conv[0].weight == 0.5)
    raw, info = load_model(tmp_path / "last.pt", use_ema=False)
    assert info["weights"] == "raw"
    assert torch.equal(raw.unet.init_conv[0].weight, model.unet.init_conv[0].weight)


def test_wrong_files_give_clear_errors(model, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_model(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a readable irt4 checkpoint"):
        load_model(garbage)
    torch.save({"model": {}, "config": {}, "stage": "vae"}, tmp_path / "vae.pt")
    with pytest.raises(InputError, match="VAE-stage checkpoint"):
        load_model(tmp_path / "vae.pt")
    bad_bundle = tmp_path / "bad.safetensors"
    bad_bundle.write_bytes(b"\x00" * 16)
    with pytest.raises(InputError, match="safetensors"):
        load_model(bad_bundle)


def test_weights_from_another_config_are_refused(model, tmp_path):
    path = tmp_path / "model.safetensors"
    save_bundle(path, model)
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    tensors.pop("unet.init_conv.0.weight")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(InputError, match="do not fit its config"):
        load_model(path)
