"""irt4-build-engine without AOTInductor (fast): the ONNX and ONNX Runtime files, the manifest, TensorRT
skipped with its reason, and the errors a user can make. The AOTInductor packages and the engines
built from them are tested in test_engine_runtime.py."""

import json

import pytest
import torch

from irt4.cli.build_engine import main
from irt4.config import load_config
from irt4.engine.build import MANIFEST, sha256
from irt4.models.bundle import save_bundle
from irt4.models.radiodiff import RadioDiff

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (the irt4[ort] extra)")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_bundle(path, RadioDiff(load_config("tiny")).eval())
    return path


def test_build_writes_onnx_optimized_graphs_and_a_manifest_and_says_tensorrt_is_absent(
    bundle, tmp_path, capsys
):
    out = tmp_path / "engine"
    code = main(["--checkpoint", str(bundle), "--out", str(out), "--backends", "onnxruntime", "tensorrt"])
    assert code == 0
    printed = capsys.readouterr().out
    manifest = json.loads((out / MANIFEST).read_text())
    for graph in ("cond_encoder", "unet_step", "vae_decoder"):
        for backend in ("onnx", "onnxruntime"):
            relative = manifest["backends"][backend][graph]
            assert (out / relative).is_file()
            assert manifest["sha256"][relative] == sha256(out / relative)
    assert manifest["versions"]["torch"] == torch.__version__
    assert manifest["batch"] == {"min": 1, "opt": 8, "max": 32}
    assert manifest["config"]["name"] == "tiny"
    if "tensorrt" not in manifest["backends"]:  # this machine: no tensorrt module or no GPU
        assert "tensorrt" in manifest["skipped"]
        assert "TensorRT engines skipped" in printed and manifest["skipped"]["tensorrt"] in printed


@pytest.mark.parametrize(
    "args,culprit",
    [
        (["--min-batch", "4", "--max-batch", "2"], "--min-batch"),
        (["--device", "tpu"], "--device"),
    ],
)
def test_build_rejects_bad_options_with_exit_code_2(bundle, tmp_path, capsys, args, culprit):
    assert main(["--checkpoint", str(bundle), "--out", str(tmp_path / "e"), *args]) == 2
    assert culprit in capsys.readouterr().err


def test_build_rejects_a_missing_checkpoint(tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "e")]) == 2
    assert "none.pt" in capsys.readouterr().err


def test_default_opt_batch_stays_inside_a_small_batch_range(bundle, tmp_path):
    out = tmp_path / "engine"
    args = ["--checkpoint", str(bundle), "--out", str(out), "--max-batch", "2", "--backends", "onnxruntime"]
    assert main(args) == 0
    assert json.loads((out / "engine.json").read_text())["batch"] == {"min": 1, "opt": 2, "max": 2}


def test_an_aoti_only_build_skips_the_onnx_export(bundle, tmp_path, monkeypatch):
    """The export of a large preset takes minutes and the AOTInductor packages do not need it."""
    import irt4.engine.build as build

    def no_export(*args, **kwargs):
        raise AssertionError("the ONNX graphs were exported for an aoti-only build")

    options = {}

    def fake_aoti(model, out_dir, precision, batch, device, log, **budget):
        options.update(budget)
        out_dir.mkdir(parents=True)
        (out_dir / "unet_step.pt2").write_bytes(b"package")
        return {"unet_step": out_dir / "unet_step.pt2"}

    monkeypatch.setattr(build, "export_onnx", no_export)
    monkeypatch.setattr(build, "build_aoti", fake_aoti)
    out = tmp_path / "engine"
    assert main(["--checkpoint", str(bundle), "--out", str(out), "--backends", "aoti"]) == 0
    manifest = json.loads((out / MANIFEST).read_text())
    assert set(manifest["backends"]) == {"aoti"} and not (out / "onnx").exists()
    # the compile-time budget's defaults: every CPU compiles, no autotuning
    assert options["compile_workers"] is None and options["max_autotune"] is False
