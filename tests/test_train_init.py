"""`irt4-train ldm|baseline --init-from MODEL`: a new run that starts from trained weights (tiny, CPU)."""

import json

import pytest
import torch

from irt4.baseline.bundle import load_baseline, save_baseline
from irt4.cli.train import main
from irt4.models.bundle import load_model, save_bundle
from irt4.train.checkpoint import read_checkpoint
from tests.test_train_augment import common

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
    "extra, message",
    [
        (["--init-from", "base.safetensors"], "baseline"),  # the other kind of model
        (["--init-from", "ldm.safetensors", "--vae", "vae/last.pt"], "pass one of them"),
        (["--init-from", "missing.safetensors"], "missing.safetensors"),
    ],
)
def test_ldm_init_from_mistakes_exit_2_naming_the_problem(
    trained, committed_dataset, tmp_path, capsys, extra, message
):
    extra = [str(trained / e) if e.endswith((".safetensors", ".pt")) else e for e in extra]
    argv = ["ldm", *common(committed_dataset), "--out", str(tmp_path / "run"), "--steps", "1", *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_init_from_a_model_of_another_size_names_the_misfit(trained, committed_dataset, tmp_path, capsys):
    argv = ["baseline", *common(committed_dataset), "--out", str(tmp_path / "run"), "--steps", "1"]
    argv += ["--set", "baseline.dim=16", "--init-from", str(trained / "base.safetensors")]
    assert main(argv) == 2
    assert "does not fit this run's config" in capsys.readouterr().err
