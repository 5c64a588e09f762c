"""diffusion.prior = regressor: the UNet reads a frozen regressor's prediction as a condition channel."""

import pytest
import torch

from irt4.baseline.bundle import load_baseline, save_baseline
from irt4.baseline.regressor import RadioUNetRegressor
from irt4.cli.train import main
from irt4.config import apply_overrides, load_config
from irt4.errors import InputError
from irt4.models.bundle import load_model, save_bundle
from irt4.models.radiodiff import RadioDiff
from irt4.train.checkpoint import read_checkpoint
from tests.test_train_augment import common

pytestmark = pytest.mark.usefixtures("one_thread")
CONDITION = "data.condition=[buildings, transmitter, los, free_space, walls]"


def prior_model(seed: int = 0) -> RadioDiff:
    cfg = apply_overrides(load_config("tiny"), ["diffusion.prior=regressor", CONDITION])
    torch.manual_seed(seed)
    return RadioDiff(cfg).eval()


def conditions(cfg, batch: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return (
        torch.rand(batch, len(cfg.data.condition), cfg.image_size, cfg.image_size, generator=generator) * 2
        - 1
    )


def test_the_prior_adds_one_swin_input_channel_and_is_frozen():
    model = prior_model()
    assert model.cfg.swin.in_channels == 6 and model.unet.cond_backbone.patch_conv.in_channels == 6
    assert model.unet.prior is not None
    assert not any(p.requires_grad for p in model.unet.prior.parameters())
    plain = apply_overrides(load_config("tiny"), [CONDITION])
    assert plain.swin.in_channels == 5 and RadioDiff(plain).unet.prior is None


def test_the_condition_features_read_the_regressors_prediction():
    model = prior_model()
    cond = conditions(model.cfg)
    with torch.no_grad():
        gain = torch.sigmoid(model.unet.prior(cond)) * 2 - 1
        expected = model.unet.cond_backbone(torch.cat([cond, gain], dim=1))
        features = model.unet.encode_condition(cond)
        torch.testing.assert_close(features[0], expected[0])
        for parameter in model.unet.prior.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
        moved = model.unet.encode_condition(cond)
    assert not torch.allclose(moved[0], features[0])


def test_sampling_with_a_prior_is_deterministic_per_seed_and_round_trips_a_bundle(tmp_path):
    model = prior_model()
    cond = conditions(model.cfg)

    def sample(net, seed):
        return net.sample(cond, steps=2, generator=torch.Generator().manual_seed(seed))

    first, again, other = sample(model, 0), sample(model, 0), sample(model, 1)
    assert first.shape == (2, 1, model.cfg.image_size, model.cfg.image_size)
    assert torch.equal(first, again) and not torch.equal(first, other)
    save_bundle(tmp_path / "prior.safetensors", model)
    loaded, _ = load_model(tmp_path / "prior.safetensors")
    assert loaded.cfg.diffusion.prior == "regressor"
    torch.testing.assert_close(sample(loaded, 0), first)


def test_a_bundle_links_the_regressor_beside_it_instead_of_a_second_copy(tmp_path):
    """The shipped diffusion model and the shipped regressor share one copy of the regressor."""
    model = prior_model()
    regressor = RadioUNetRegressor(model.cfg).eval()
    regressor.load_state_dict(model.unet.prior.state_dict())
    save_baseline(tmp_path / "regressor.safetensors", regressor, dtype=torch.float16)
    other = RadioUNetRegressor(model.cfg).eval()
    save_baseline(tmp_path / "other.safetensors", other, dtype=torch.float16)
    with pytest.raises(InputError, match="does not hold this model's prior"):
        save_bundle(tmp_path / "linked.safetensors", model, prior_file=tmp_path / "other.safetensors")
    save_bundle(tmp_path / "whole.safetensors", model, dtype=torch.float16)
    regressor_file = tmp_path / "regressor.safetensors"
    save_bundle(tmp_path / "linked.safetensors", model, dtype=torch.float16, prior_file=regressor_file)
    whole, _ = load_model(tmp_path / "whole.safetensors")
    linked, _ = load_model(tmp_path / "linked.safetensors")
    assert (tmp_path / "linked.safetensors").stat().st_size < (tmp_path / "whole.safetensors").stat().st_size
    for name, value in whole.state_dict().items():
        assert torch.equal(linked.state_dict()[name], value), name

    (tmp_path / "other.safetensors").replace(tmp_path / "regressor.safetensors")  # another one in its place
    with pytest.raises(InputError, match="not the regressor this model was saved with"):
        load_model(tmp_path / "linked.safetensors")
    (tmp_path / "regressor.safetensors").unlink()
    with pytest.raises(InputError, match="regressor.safetensors beside it, which is missing"):
        load_model(tmp_path / "linked.safetensors")
    with pytest.raises(InputError, match="without a regressor prior"):
        save_bundle(tmp_path / "x.safetensors", RadioDiff(load_config("tiny")), prior_file=tmp_path / "y")


@pytest.fixture(scope="module")
def regressor_run(committed_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("prior")
    base = ["baseline", *common(committed_dataset), "--set", CONDITION]
    assert main([*base, "--out", str(root / "base"), "--steps", "2"]) == 0
    assert main(["vae", *common(committed_dataset), "--out", str(root / "vae"), "--steps", "1"]) == 0
    return root


def test_train_ldm_with_a_prior_keeps_the_regressor_frozen(regressor_run, committed_dataset, tmp_path):
    root = regressor_run
    argv = ["ldm", *common(committed_dataset), "--set", CONDITION, "--vae", str(root / "vae/last.pt")]
    argv += ["--out", str(tmp_path / "ldm"), "--steps", "2", "--sample-steps", "1"]
    assert main([*argv, "--prior", str(root / "base/last.pt")]) == 0
    regressor, _ = load_baseline(root / "base/last.pt")
    state = read_checkpoint(tmp_path / "ldm/last.pt")["model"]
    for name, value in regressor.state_dict().items():
        assert torch.equal(state[f"unet.prior.{name}"], value), name
    model, _ = load_model(tmp_path / "ldm/last.pt")
    assert model.cfg.diffusion.prior == "regressor" and model.cfg.data.condition[2] == "los"


def test_prior_errors_name_the_problem(regressor_run, committed_dataset, tmp_path, capsys):
    root = regressor_run
    argv = ["ldm", *common(committed_dataset), "--vae", str(root / "vae/last.pt"), "--steps", "1"]
    # the regressor reads other inputs than this run's model would
    assert main([*argv, "--out", str(tmp_path / "a"), "--prior", str(root / "base/last.pt")]) == 2
    assert "train the regressor on the same inputs" in capsys.readouterr().err
    # a prior slot without a regressor to fill it
    prior_set = ["--set", "diffusion.prior=regressor", "--set", CONDITION]
    assert main([*argv, "--out", str(tmp_path / "b"), *prior_set]) == 2
    assert "needs --prior REGRESSOR" in capsys.readouterr().err


def test_the_exported_condition_encoder_runs_the_prior(tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (the irt4[ort] extra)")
    from irt4.export.onnx import GRAPH_MODULES, export_example_inputs, export_onnx, graph_specs
    from irt4.models.layers import fold_weight_standardization

    model = prior_model()
    fold_weight_standardization(model)
    paths = export_onnx(model, tmp_path, example_batch=2)
    spec = graph_specs(model.cfg)["cond_encoder"]
    (cond,) = export_example_inputs(spec, 3, seed=7)
    assert cond.shape[1] == len(model.cfg.data.condition)  # the condition image; the prior is inside
    with torch.no_grad():
        expected = GRAPH_MODULES["cond_encoder"](model)(cond)
    session = ort.InferenceSession(str(paths["cond_encoder"]), providers=["CPUExecutionProvider"])
    got = session.run([t.name for t in spec.outputs], {spec.inputs[0].name: cond.numpy()})
    for reference, actual in zip(expected, got):
        actual = torch.from_numpy(actual)
        assert float((actual - reference).norm() / reference.norm()) < 1e-4
