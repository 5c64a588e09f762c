"""`irt4-train ldm|baseline --init-from MODEL`: a new run that starts from trained weights (tiny, CPU)."""

import json

import pytest
import torch

from irt4.baseline.bundle import load_baseline, save_baseline
from irt4.cli.train import main
from irt4.data.radiomapseer import RadioMapSeer
from irt4.models.bundle import load_model, save_bundle
from irt4.train.checkpoint import read_checkpoint
from tests.test_train_augment import common

LOG_DISTANCE = ("buildings", "transmitter", "log_distance")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(committed_dataset, tmp_path_factory):
    """A 1-step VAE, 2-step LDM and 2-step baseline, with their bundles (what irt4/assets ships)."""
    root = tmp_path_factory.mktemp("trained")
    assert main(["vae", *common(committed_dataset), "--out", str(root / "vae"), "--steps", "1"]) == 0
    ldm = ["ldm", *common(committed_dataset), "--out", str(root / "ldm"), "--vae", str(root / "vae/last.pt")]
    assert main([*ldm, "--steps", "2", "--sample-steps", "1"]) == 0
    assert main(["baseline", *common(committed_dataset), "--out", str(root / "base"), "--steps", "2"]) == 0
    model, _ = load_model(root / "ldm/last.pt")
    save_bundle(root / "ldm.safetensors", model, weights="ema", dtype=torch.float16)
    regressor, _ = load_baseline(root / "base/last.pt")
    save_baseline(root / "base.safetensors", regressor, weights="ema", dtype=torch.float16)
    return root


def test_ldm_init_from_a_bundle_starts_from_its_weights_and_scale_and_records_it(
    trained, committed_dataset, tmp_path
):
    bundle, _ = load_model(trained / "ldm.safetensors")
    run = tmp_path / "ldm"
    argv = [
        "ldm",
        *common(committed_dataset),
        "--out",
        str(run),
        "--init-from",
        str(trained / "ldm.safetensors"),
    ]
    assert main([*argv, "--steps", "1", "--sample-steps", "1", "--set", "trainer.lr=1e-7"]) == 0
    last = read_checkpoint(run / "last.pt")
    # one AdamW step moves each weight by at most ~lr: the run started from the bundle's weights; the
    # frozen VAE is the bundle's exactly (BatchNorm statistics move with their momentum: not compared)
    for name, value in bundle.named_parameters():
        torch.testing.assert_close(last["model"][name], value, rtol=0, atol=1e-6, msg=name)
        if name.startswith("vae."):
            assert torch.equal(last["model"][name], value), name
    assert float(last["model"]["scale_factor"]) == float(bundle.scale_factor)  # kept, not re-estimated
    record = json.loads((run / "run.json").read_text())
    assert record["init_from"] == str(trained / "ldm.safetensors")
    assert "--init-from" in (run / "report.md").read_text()


def test_baseline_init_from_a_bundle_starts_from_its_weights(trained, committed_dataset, tmp_path):
    regressor, _ = load_baseline(trained / "base.safetensors")
    run = tmp_path / "base"
    argv = ["baseline", *common(committed_dataset), "--out", str(run)]
    argv += ["--init-from", str(trained / "base.safetensors"), "--steps", "1", "--set", "trainer.lr=1e-7"]
    assert main(argv) == 0
    last = read_checkpoint(run / "last.pt")
    for name, value in regressor.named_parameters():
        torch.testing.assert_close(last["model"][name], value, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize(
    "command, extra, message",
    [
        ("ldm", ["--init-from", "base.safetensors"], "baseline"),  # the other kind of model
        ("ldm", ["--init-from", "ldm.safetensors", "--vae", "base.safetensors"], "baseline"),
        ("ldm", ["--init-from", "missing.safetensors"], "missing.safetensors"),
        ("vae", ["--init-from", "base.safetensors"], "baseline"),
        ("vae", ["--init-from", "ldm.safetensors", "--set", "vae.base_channels=64"], "vae.base_channels"),
        ("vae", ["--init-from", "missing.pt"], "missing.pt"),
    ],
)
def test_init_from_mistakes_exit_2_naming_the_problem(
    trained, committed_dataset, tmp_path, capsys, command, extra, message
):
    extra = [str(trained / e) if e.endswith((".safetensors", ".pt")) else e for e in extra]
    argv = [command, *common(committed_dataset), "--out", str(tmp_path / "run"), "--steps", "1", *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("source", ["ldm.safetensors", "vae/last.pt"])
def test_vae_init_from_a_diffusion_bundle_or_a_vae_checkpoint_starts_from_that_vae(
    trained, committed_dataset, tmp_path, source
):
    from irt4.train.stages import trained_vae_weights

    model, _ = load_model(trained / "ldm.safetensors")
    expected = (
        {n: v.float() for n, v in model.vae.state_dict().items()}
        if source.endswith(".safetensors")
        else read_checkpoint(trained / source)["ema"]
    )
    assert trained_vae_weights(trained / source, model.cfg, "--init-from").keys() == expected.keys()
    run = tmp_path / "vae"
    argv = ["vae", *common(committed_dataset), "--out", str(run), "--init-from", str(trained / source)]
    assert main([*argv, "--steps", "1", "--set", "vae_trainer.lr=1e-7"]) == 0
    last = read_checkpoint(run / "last.pt")
    for name, value in expected.items():
        if name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue
        torch.testing.assert_close(last["model"][f"vae.{name}"].float(), value.float(), rtol=0, atol=1e-6)
    assert json.loads((run / "run.json").read_text())["init_from"] == str(trained / source)


def test_ldm_init_from_with_vae_continues_the_unet_on_the_new_vae_with_its_own_scale(
    trained, committed_dataset, tmp_path
):
    """A retrained VAE under a trained UNet: the UNet comes from --init-from, the VAE from --vae, and the
    latent scale is measured afresh, as a fresh run on that VAE measures it."""
    vae2 = tmp_path / "vae2"
    argv = ["vae", *common(committed_dataset), "--out", str(vae2), "--steps", "1", "--seed", "7"]
    assert main(argv) == 0
    new_vae = read_checkpoint(vae2 / "last.pt")["ema"]
    bundle, _ = load_model(trained / "ldm.safetensors")
    ldm = ["ldm", *common(committed_dataset), "--steps", "1", "--sample-steps", "1"]
    ldm += ["--set", "trainer.lr=1e-7"]
    assert main([*ldm, "--out", str(tmp_path / "fresh"), "--vae", str(vae2 / "last.pt")]) == 0
    both = [*ldm, "--out", str(tmp_path / "run"), "--vae", str(vae2 / "last.pt")]
    assert main([*both, "--init-from", str(trained / "ldm.safetensors")]) == 0
    last = read_checkpoint(tmp_path / "run/last.pt")
    for name, value in bundle.unet.named_parameters():
        torch.testing.assert_close(last["model"][f"unet.{name}"], value.float(), rtol=0, atol=1e-6, msg=name)
    for name, value in new_vae.items():
        if not name.endswith("num_batches_tracked"):
            assert torch.equal(last["model"][f"vae.{name}"], value), name
    fresh = read_checkpoint(tmp_path / "fresh/last.pt")
    assert float(last["model"]["scale_factor"]) == float(fresh["model"]["scale_factor"])
    assert float(last["model"]["scale_factor"]) != float(bundle.scale_factor)


def test_init_from_a_model_of_another_size_names_the_misfit(trained, committed_dataset, tmp_path, capsys):
    argv = ["baseline", *common(committed_dataset), "--out", str(tmp_path / "run"), "--steps", "1"]
    argv += ["--set", "baseline.dim=16", "--init-from", str(trained / "base.safetensors")]
    assert main(argv) == 2
    assert "does not fit this run's config" in capsys.readouterr().err


def test_ldm_init_from_switches_to_the_tx_field_as_the_same_function_and_not_back(
    trained, committed_dataset, tmp_path, capsys
):
    bundle, _ = load_model(trained / "ldm.safetensors")
    run = tmp_path / "field"
    argv = ["ldm", *common(committed_dataset), "--out", str(run), "--steps", "1", "--sample-steps", "1"]
    argv += ["--init-from", str(trained / "ldm.safetensors"), "--set", "trainer.lr=1e-7"]
    assert main([*argv, "--set", "data.tx_field=log_distance"]) == 0
    switched, _ = load_model(run / "last.pt", use_ema=False)
    assert switched.cfg.data.condition == ("buildings", "transmitter", "log_distance")
    name = "unet.cond_backbone.patch_conv.weight"
    theirs, ours = bundle.get_parameter(name).float(), switched.get_parameter(name)
    torch.testing.assert_close(ours[:, 0], theirs[:, 0] + theirs[:, 2], rtol=0, atol=1e-5)
    assert ours[:, 2].abs().max() < 1e-5  # the field's weights start at 0 (one step at lr 1e-7)
    # the same C and noise from [buildings, transmitter, buildings] before and [.., .., field] after
    # (with the bundle's BatchNorm statistics: the training step moved them with their momentum)
    for buffer_name, buffer in bundle.named_buffers():
        switched.get_buffer(buffer_name).copy_(buffer)
    plain = RadioMapSeer(committed_dataset, split="all", image_size=bundle.cfg.image_size)[0]["cond"]
    field = RadioMapSeer(
        committed_dataset, split="all", image_size=bundle.cfg.image_size, condition=LOG_DISTANCE
    )
    torch.manual_seed(0)
    x, t = torch.randn(1, *bundle.latent_shape), torch.tensor([0.9])
    with torch.no_grad():
        before, after = bundle.float().unet(x, t, plain[None]), switched.unet(x, t, field[0]["cond"][None])
    for a, b in zip(before, after):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-3)
    # a field model cannot go back to the buildings twice without losing what it learned
    argv = ["ldm", *common(committed_dataset), "--out", str(tmp_path / "back"), "--steps", "1"]
    assert main([*argv, "--init-from", str(run / "last.pt")]) == 2
    assert "lacks ['log_distance']" in capsys.readouterr().err


def test_ldm_init_from_adds_physics_channels_as_the_same_function(trained, committed_dataset, tmp_path):
    """More channels than the trained model read: the Swin's input conv and the (cars) condition
    adapter's output rows grow, the new channels' weights start at zero, the function is unchanged."""
    bundle, _ = load_model(trained / "ldm.safetensors")
    channels = ("buildings", "transmitter", "buildings", "los", "free_space", "walls")
    run = tmp_path / "physics"
    argv = ["ldm", *common(committed_dataset), "--out", str(run), "--steps", "1", "--sample-steps", "1"]
    argv += ["--init-from", str(trained / "ldm.safetensors"), "--set", "trainer.lr=1e-7"]
    assert main([*argv, "--set", f"data.condition=[{', '.join(channels)}]"]) == 0
    grown, _ = load_model(run / "last.pt", use_ema=False)
    assert grown.cfg.data.condition == channels
    adapter = grown.get_parameter("unet.cond_adapter.weight")
    assert adapter.shape[0] == len(channels) and adapter[3:].abs().max() < 1e-5
    for buffer_name, buffer in bundle.named_buffers():
        grown.get_buffer(buffer_name).copy_(buffer)
    old = RadioMapSeer(committed_dataset, split="all", image_size=bundle.cfg.image_size)[0]["cond"]
    new = RadioMapSeer(committed_dataset, split="all", image_size=bundle.cfg.image_size, condition=channels)
    torch.manual_seed(0)
    x, t = torch.randn(1, *bundle.latent_shape), torch.tensor([0.9])
    with torch.no_grad():
        before, after = bundle.float().unet(x, t, old[None]), grown.unet(x, t, new[0]["cond"][None])
    for a, b in zip(before, after):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-3)


def test_ldm_init_from_adds_a_regressor_prior_as_the_same_function(
    trained, committed_dataset, tmp_path, capsys
):
    """--init-from a model without a prior, with --prior: the regressor fills the prior slot, its
    condition channel starts at zero weight, and the model computes what it did; a model that holds a
    prior keeps it (--prior again is exit 2)."""
    bundle, _ = load_model(trained / "ldm.safetensors")
    regressor, _ = load_baseline(trained / "base.safetensors")
    run = tmp_path / "prior"
    argv = [
        "ldm",
        *common(committed_dataset),
        "--steps",
        "1",
        "--sample-steps",
        "1",
        "--set",
        "trainer.lr=1e-7",
    ]
    with_prior = [
        *argv,
        "--init-from",
        str(trained / "ldm.safetensors"),
        "--prior",
        str(trained / "base.safetensors"),
    ]
    assert main([*with_prior, "--out", str(run)]) == 0
    grown, _ = load_model(run / "last.pt", use_ema=False)
    assert grown.cfg.diffusion.prior == "regressor"
    for name, value in regressor.state_dict().items():
        assert torch.equal(grown.unet.prior.state_dict()[name], value.float()), name
    patch = grown.get_parameter("unet.cond_backbone.patch_conv.weight")
    assert patch.shape[1] == len(bundle.cfg.data.condition) + 1 and patch[:, -1].abs().max() < 1e-5
    for buffer_name, buffer in bundle.named_buffers():
        grown.get_buffer(buffer_name).copy_(buffer)
    cond = RadioMapSeer(committed_dataset, split="all", image_size=bundle.cfg.image_size)[0]["cond"][None]
    torch.manual_seed(0)
    x, t = torch.randn(1, *bundle.latent_shape), torch.tensor([0.9])
    with torch.no_grad():
        before, after = bundle.float().unet(x, t, cond), grown.unet(x, t, cond)
    for a, b in zip(before, after):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-3)
    again = [*argv, "--out", str(tmp_path / "again"), "--init-from", str(run / "last.pt")]
    assert main([*again, "--prior", str(trained / "base.safetensors")]) == 2
    assert "keeps the one it holds" in capsys.readouterr().err
    assert main(again) == 2
    assert "--set diffusion.prior=regressor" in capsys.readouterr().err
    assert main([*again, "--set", "diffusion.prior=regressor"]) == 0  # it keeps its regressor
    kept, _ = load_model(tmp_path / "again/last.pt", use_ema=False)
    for name, value in regressor.state_dict().items():
        assert torch.equal(kept.unet.prior.state_dict()[name], value.float()), name
