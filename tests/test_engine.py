"""irt4.engine (the C++/CUDA sampler) against the pure-PyTorch reference in irt4.diffusion.schedule."""

import logging
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

import irt4
from irt4 import engine
from irt4.diffusion import schedule as reference

# Odd sizes, one larger than the CPU loop's grain so it runs in several chunks, and the model's latent.
SHAPES = [(1,), (7,), (3, 5, 7), (1, 1, 257, 255), (2, 3, 80, 80)]


def _steps_to_check() -> list[tuple[float, float]]:
    """First step, a middle one, the eps-split pair and the last one, where s == t."""
    plan = reference.sampling_schedule(50)
    return [plan[0], plan[25], plan[-2], plan[-1]]


def _random_inputs(shape, generator, device="cpu"):
    return [torch.randn(shape, generator=generator).to(device) for _ in range(4)]  # x, c_pred, noise_pred, z


def _assert_close_to_reference(actual: torch.Tensor, expected: torch.Tensor) -> None:
    max_abs = (actual - expected).abs().max().item()
    rel_norm = ((actual - expected).norm() / expected.norm()).item()
    assert max_abs <= 1e-6 and rel_norm <= 1e-6, (
        f"max abs error {max_abs:.3g}, relative norm error {rel_norm:.3g}"
    )


def test_engine_is_available():
    assert engine.available(), "irt4._C did not import: run `make install`"


@pytest.mark.parametrize("steps", [1, 2, 7, 50, 1000])
@pytest.mark.parametrize(("eps", "denoise"), [(1e-4, True), (3e-4, True), (1e-4, False)])
def test_schedule_matches_reference(steps, eps, denoise):
    expected = reference.sampling_schedule(steps, eps, denoise)
    actual = engine.sampling_schedule(steps, eps, denoise)
    assert len(actual) == len(expected)
    for (t, s), (t_ref, s_ref) in zip(actual, expected):
        assert abs(t - t_ref) <= 1e-12 and abs(s - s_ref) <= 1e-12


@pytest.mark.parametrize("steps", [1, 7, 50])
def test_schedule_last_call_lands_exactly_on_zero(steps):
    t, s = engine.sampling_schedule(steps)[-1]
    assert s == t


@pytest.mark.parametrize(("steps", "eps"), [(0, 1e-4), (10, 0.1), (10, 0.0)])
def test_schedule_rejects_what_the_reference_rejects(steps, eps):
    with pytest.raises(ValueError):
        reference.sampling_schedule(steps, eps)
    with pytest.raises(ValueError, match="steps|eps"):
        engine.sampling_schedule(steps, eps)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("t", "s"), _steps_to_check())
def test_update_matches_reference_on_cpu(shape, t, s):
    generator = torch.Generator().manual_seed(hash((shape, t)) % 2**31)
    x, c_pred, noise_pred, z = _random_inputs(shape, generator)
    actual = engine.sampler_update(x, c_pred, noise_pred, t, s, z)
    _assert_close_to_reference(actual, reference.sampler_update(x, c_pred, noise_pred, t, s, z))


@pytest.mark.parametrize(("t", "s"), _steps_to_check())
def test_update_error_is_within_twice_pytorch_float32_error(t, s):
    generator = torch.Generator().manual_seed(0)
    x, c_pred, noise_pred, z = _random_inputs((8, 3, 80, 80), generator)
    exact = reference.sampler_update(*(v.double() for v in (x, c_pred, noise_pred)), t, s, z.double())
    pytorch_error = (reference.sampler_update(x, c_pred, noise_pred, t, s, z).double() - exact).abs().max()
    engine_error = (engine.sampler_update(x, c_pred, noise_pred, t, s, z).double() - exact).abs().max()
    assert engine_error <= 2 * pytorch_error


def test_last_step_adds_no_noise():
    generator = torch.Generator().manual_seed(1)
    x, c_pred, noise_pred, z = _random_inputs((3, 5, 7), generator)
    t, s = reference.sampling_schedule(50)[-1]
    assert s == t
    first = engine.sampler_update(x, c_pred, noise_pred, t, s, z)
    second = engine.sampler_update(x, c_pred, noise_pred, t, s, torch.randn(z.shape, generator=generator))
    assert torch.equal(first, second)


def test_update_accepts_non_contiguous_inputs():
    generator = torch.Generator().manual_seed(2)
    x, c_pred, noise_pred, z = (v.transpose(0, 1) for v in _random_inputs((9, 13), generator))
    assert not x.is_contiguous()
    actual = engine.sampler_update(x, c_pred, noise_pred, 0.5, 0.02, z)
    _assert_close_to_reference(actual, reference.sampler_update(x, c_pred, noise_pred, 0.5, 0.02, z))


def test_update_names_a_tensor_of_the_wrong_dtype():
    x, c_pred, noise_pred, z = _random_inputs((2, 3), torch.Generator().manual_seed(3))
    with pytest.raises(TypeError, match="c_pred must be float32, got Double"):
        engine.sampler_update(x, c_pred.double(), noise_pred, 0.5, 0.02, z)


def test_update_names_a_tensor_of_the_wrong_shape():
    x, c_pred, noise_pred, z = _random_inputs((2, 3), torch.Generator().manual_seed(4))
    with pytest.raises(ValueError, match=r"noise_pred has shape \[3, 2\], expected \[2, 3\]"):
        engine.sampler_update(x, c_pred, noise_pred.reshape(3, 2), 0.5, 0.02, z)


def test_update_names_an_argument_that_is_not_a_tensor():
    x, c_pred, noise_pred, _ = _random_inputs((2, 3), torch.Generator().manual_seed(5))
    with pytest.raises(TypeError, match="z must be a torch.Tensor, got ndarray"):
        engine.sampler_update(x, c_pred, noise_pred, 0.5, 0.02, x.numpy())


def test_update_rejects_a_time_that_is_not_positive():
    x, c_pred, noise_pred, z = _random_inputs((2, 3), torch.Generator().manual_seed(6))
    with pytest.raises(ValueError, match="t must be > 0"):
        engine.sampler_update(x, c_pred, noise_pred, 0.0, 0.0, z)


def test_missing_extension_is_reported_once_and_names_the_fix(monkeypatch, caplog):
    monkeypatch.setattr(engine, "_extension", None)
    monkeypatch.setattr(engine, "_import_error", None)
    monkeypatch.delattr(irt4, "_C", raising=False)
    monkeypatch.setitem(sys.modules, "irt4._C", None)
    x = torch.randn(3)
    with caplog.at_level(logging.WARNING, logger="irt4"):
        assert not engine.available()
        with pytest.raises(RuntimeError, match="pip install -e . --no-build-isolation"):
            engine.sampler_update(x, x, x, 0.5, 0.02, x)
    warnings = [record for record in caplog.records if "irt4._C is not available" in record.getMessage()]
    assert len(warnings) == 1 and "irt4.diffusion.schedule" in warnings[0].getMessage()


def _nvcc_present() -> bool:
    return shutil.which("nvcc") is not None or Path("/usr/local/cuda/bin/nvcc").exists()


@pytest.mark.skipif(not _nvcc_present(), reason="no nvcc on this machine, so the CUDA kernel is not compiled")
@pytest.mark.skipif(os.environ.get("IRT4_WITH_CUDA") == "OFF", reason="IRT4_WITH_CUDA=OFF")
def test_cuda_kernel_is_compiled_where_nvcc_exists():
    assert engine.built_with_cuda()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("t", "s"), _steps_to_check())
def test_update_matches_reference_on_cuda(shape, t, s):
    generator = torch.Generator().manual_seed(hash((shape, t)) % 2**31)
    x, c_pred, noise_pred, z = _random_inputs(shape, generator, device="cuda")
    side_stream = torch.cuda.Stream()
    side_stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side_stream):
        actual = engine.sampler_update(x, c_pred, noise_pred, t, s, z)
        expected = reference.sampler_update(x, c_pred, noise_pred, t, s, z)
    side_stream.synchronize()
    assert actual.device == x.device
    _assert_close_to_reference(actual, expected)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_update_names_a_tensor_on_the_wrong_device():
    x, c_pred, noise_pred, z = _random_inputs((2, 3), torch.Generator().manual_seed(7), device="cuda")
    with pytest.raises(ValueError, match="z is on cpu, expected cuda:0"):
        engine.sampler_update(x, c_pred, noise_pred, 0.5, 0.02, z.cpu())
