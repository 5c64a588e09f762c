"""irt4.Engine over an engine directory built once per session with irt4-build-engine (tiny preset,
random weights): the C++ loop over AOTInductor packages and the ONNX Runtime loop against the Python
reference sampler with the same noise, irt4-infer end to end, and the errors of unusable directories.
AOTInductor compilation is slow on a CPU: one build of batch range 1..3, few steps."""

import contextlib
import io
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import irt4
from irt4 import engine as cpp
from irt4.cli.build_engine import main as build_main
from irt4.cli.infer import main as infer_main
from irt4.config import load_config
from irt4.diffusion.sampler import draw_sampler_noise, sample_latents
from irt4.engine.build import MANIFEST
from irt4.errors import InputError
from irt4.models.bundle import load_model, save_bundle
from irt4.models.layers import fold_weight_standardization
from irt4.models.radiodiff import RadioDiff

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (the irt4[ort] extra)")
# the session's engine build compiles three AOTInductor packages: minutes on a CPU (20 on 2 busy cores)
pytestmark = pytest.mark.slow
needs_extension = pytest.mark.skipif(not cpp.available(), reason="irt4._C is not built")

STEPS = 3
MIN_BATCH, MAX_BATCH = 1, 3


@pytest.fixture(scope="session")
def bundle(tmp_path_factory):
    torch.manual_seed(0)
    model = RadioDiff(load_config("tiny")).eval()
    model.scale_factor.fill_(0.7)  # not 1: the decoder graph must carry it
    path = tmp_path_factory.mktemp("engine-model") / "tiny.safetensors"
    save_bundle(path, model)
    return path


@pytest.fixture(scope="session")
def built(bundle, tmp_path_factory):
    """(engine dir, what irt4-build-engine printed): ONNX, ONNX Runtime and CPU AOTInductor engines."""
    out = tmp_path_factory.mktemp("engine") / "tiny-engine"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = build_main(
            ["--checkpoint", str(bundle), "--out", str(out), "--device", "cpu", "--compile-workers", "2"]
            + ["--min-batch", str(MIN_BATCH), "--opt-batch", "2", "--max-batch", str(MAX_BATCH)]
        )
    assert code == 0, printed.getvalue()
    return out, printed.getvalue()


@pytest.fixture(scope="session")
def reference(bundle):
    """The Python reference sampler of the bundle with weight standardization folded (fp32)."""
    model, _ = load_model(bundle, "cpu")
    fold_weight_standardization(model.unet)
    return model


def _inputs(model, batch: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    cond = torch.rand((batch, 3, model.cfg.image_size, model.cfg.image_size), generator=generator) * 2 - 1
    noise = draw_sampler_noise((batch, *model.latent_shape), STEPS, model.cfg.diffusion.denoise, generator)
    return cond, noise


def _relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.float() - ref.float()).norm() / ref.float().norm())


def _reference_latents(model, cond, noise):
    d = model.cfg.diffusion
    return sample_latents(model.unet, cond, model.latent_shape, STEPS, d.eps, d.denoise, noise=noise)


def test_build_writes_every_engine_and_a_manifest(built):
    out, printed = built
    manifest = json.loads((out / MANIFEST).read_text())
    assert set(manifest["backends"]) >= {"onnx", "onnxruntime", "aoti"}
    for backend in ("onnx", "onnxruntime", "aoti"):
        for relative in manifest["backends"][backend].values():
            assert (out / relative).is_file()
    assert manifest["scale_factor"] == pytest.approx(0.7)
    assert manifest["device"] == "cpu" and manifest["precision"] == "fp32"
    build = manifest["aoti_build"]  # the compile-time budget and what each graph took
    assert build["compile_workers"] == 2 and build["max_autotune"] is False
    assert set(build["seconds"]) == set(manifest["backends"]["aoti"]) and min(build["seconds"].values()) > 0
    if "tensorrt" in manifest["skipped"]:
        assert "TensorRT engines skipped" in printed


def test_build_refuses_zero_compile_workers(bundle, tmp_path, capsys):
    argv = ["--checkpoint", str(bundle), "--out", str(tmp_path / "e"), "--compile-workers", "0"]
    assert build_main(argv) == 2
    assert "--compile-workers must be at least 1" in capsys.readouterr().err


@needs_extension
def test_cpp_loop_over_cpu_aoti_packages_equals_the_python_sampler(built, reference):
    engine = irt4.Engine.load(built[0], backend="aoti")
    cond, noise = _inputs(reference, 2, seed=3)
    d = reference.cfg.diffusion
    latents = cpp.engine_sample_latents(
        engine._cpp, cond, noise.initial, noise.steps, STEPS, d.eps, d.denoise
    )
    ref = _reference_latents(reference, cond, noise)
    assert _relative_error(latents, ref) < 1e-5, float((latents - ref).abs().max())
    maps = engine.sample(cond, noise)
    ref_maps = reference.decode_latents(ref)
    assert maps.shape == ref_maps.shape
    assert _relative_error(maps, ref_maps) < 1e-5, float((maps - ref_maps).abs().max())


@needs_extension
def test_aoti_engine_takes_every_batch_of_its_range_and_chunks_larger_ones(built, reference):
    engine = irt4.Engine.load(built[0], backend="aoti")
    cond, noise = _inputs(reference, MAX_BATCH + 1, seed=4)  # one chunk of 3, one of 1
    maps = engine.sample(cond, noise)
    ref = reference.decode_latents(_reference_latents(reference, cond, noise))
    assert _relative_error(maps, ref) < 1e-5


def test_onnxruntime_engine_equals_the_python_sampler(built, reference):
    engine = irt4.Engine.load(built[0], backend="onnxruntime")
    cond, noise = _inputs(reference, 2, seed=5)
    maps = engine.sample(cond, noise)
    ref = reference.decode_latents(_reference_latents(reference, cond, noise))
    assert _relative_error(maps, ref) < 1e-4, float((maps - ref).abs().max())


def test_auto_backend_picks_one_that_runs_here(built):
    engine = irt4.Engine.load(built[0])
    expected = "aoti" if cpp.available() else "onnxruntime"
    assert engine.backend == expected


def test_load_refuses_a_missing_directory_and_a_directory_without_manifest(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        irt4.Engine.load(tmp_path / "nothing")
    with pytest.raises(InputError, match="no engine.json"):
        irt4.Engine.load(tmp_path)


def test_load_refuses_a_changed_file_and_another_torch(built, tmp_path):
    copy = tmp_path / "engine"
    shutil.copytree(built[0], copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    changed = copy / manifest["backends"]["onnxruntime"]["unet_step"]
    changed.write_bytes(changed.read_bytes() + b"\0")
    with pytest.raises(InputError, match="changed since engine.json"):
        irt4.Engine.load(copy, backend="onnxruntime")
    manifest["versions"]["torch"] = "1.0.0"
    (copy / MANIFEST).write_text(json.dumps(manifest))
    if cpp.available():
        with pytest.raises(InputError, match="torch 1.0.0"):
            irt4.Engine.load(copy, backend="aoti")
    manifest["format"] = "irt4-engine-0"
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="irt4-engine-0"):
        irt4.Engine.load(copy, backend="onnxruntime")


def test_tensorrt_backend_is_refused_with_the_reason_where_it_was_not_built(built):
    manifest = json.loads((built[0] / MANIFEST).read_text())
    if "tensorrt" in manifest["backends"]:
        pytest.skip("TensorRT engines were built here")
    with pytest.raises(InputError, match="no tensorrt engine"):
        irt4.Engine.load(built[0], backend="tensorrt")


def _infer(*args):
    return infer_main([str(a) for a in args] + ["--quiet"])


def _maps(out):
    return {p.name: np.asarray(Image.open(p), dtype=np.int16) for p in sorted(out.glob("*_*.png"))}


@pytest.mark.parametrize("backend", ["onnxruntime", pytest.param("aoti", marks=needs_extension)])
def test_infer_engine_backend_runs_end_to_end_like_the_torch_backend(
    built, bundle, committed_dataset, tmp_path, backend
):
    common = ["--data", committed_dataset, "--split", "all", "--limit", "3", "--batch-size", "2"]
    common += ["--steps", STEPS, "--device", "cpu"]
    assert _infer("--backend", backend, "--engine", built[0], "--out", tmp_path / backend, *common) == 0
    assert _infer("--checkpoint", bundle, "--out", tmp_path / "torch", *common) == 0
    got, ref = _maps(tmp_path / backend), _maps(tmp_path / "torch")
    assert len(got) == 3 and got.keys() == ref.keys()
    for name in ref:  # 8-bit PNGs: at most one grey level apart
        assert np.abs(got[name] - ref[name]).max() <= 1, name
    assert (tmp_path / backend / "metrics.json").is_file()


def test_infer_engine_backend_without_engine_names_the_option(committed_dataset, tmp_path, capsys):
    code = _infer("--backend", "aoti", "--data", committed_dataset, "--out", tmp_path / "o")
    assert code == 2
    assert "--engine" in capsys.readouterr().err


# --- on a GPU --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def cuda_engine(bundle, tmp_path_factory):
    """The CUDA AOTInductor engine of the bundle at a precision (batch 1..4), built on first use."""
    built: dict[str, object] = {}

    def get(precision: str):
        if precision not in built:
            out = tmp_path_factory.mktemp(f"engine-cuda-{precision}")
            args = ["--checkpoint", str(bundle), "--out", str(out), "--device", "cuda"]
            args += ["--precision", precision, "--backends", "aoti"]
            args += ["--min-batch", "1", "--opt-batch", "2", "--max-batch", "4"]
            assert build_main(args) == 0
            built[precision] = out
        return built[precision]

    return get


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision,tolerance", [("fp32", 1e-4), ("bf16", 1e-2)])
def test_cuda_aoti_engine_equals_the_fp32_reference(cuda_engine, reference, precision, tolerance):
    engine = irt4.Engine.load(cuda_engine(precision), backend="aoti")
    cond, noise = _inputs(reference, 3, seed=6)
    maps = engine.sample(cond.cuda(), noise).cpu()
    ref = reference.decode_latents(_reference_latents(reference, cond, noise))
    assert _relative_error(maps, ref) < tolerance, float((maps - ref).abs().max())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_path_equals_the_eager_loop(cuda_engine, reference):
    engine = irt4.Engine.load(cuda_engine("fp32"), backend="aoti")
    cond, noise = _inputs(reference, 2, seed=7)
    eager = engine.sample(cond.cuda(), noise)
    graphed = engine.sample(cond.cuda(), noise, cuda_graph=True)
    assert engine._graph_failure is None, engine._graph_failure
    cond2, noise2 = _inputs(reference, 2, seed=8)  # a replay with new inputs
    torch.testing.assert_close(
        engine.sample(cond2.cuda(), noise2, cuda_graph=True), engine.sample(cond2.cuda(), noise2)
    )
    torch.testing.assert_close(graphed, eager)


def test_irt4_load_runs_an_engine_directory_as_it_runs_the_bundle(bundle, built):
    import numpy as np

    import irt4

    engine_dir, _ = built
    buildings = np.zeros((256, 256), np.uint8)
    buildings[100:140, 60:120] = 1
    via_engine = irt4.load(engine_dir, backend="onnxruntime")
    gain = via_engine.predict(buildings, (50, 50), steps=STEPS, seed=1)
    expected = irt4.load(bundle).predict(buildings, (50, 50), steps=STEPS, seed=1)
    assert via_engine.kind == "engine"
    np.testing.assert_array_equal(np.isnan(gain), np.isnan(expected))
    assert np.nanmax(np.abs(gain - expected)) < 0.05  # dB: ONNX Runtime against PyTorch, both fp32
