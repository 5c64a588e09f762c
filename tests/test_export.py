"""ONNX export (irt4.export): the three graphs through ONNX Runtime against PyTorch, on the tiny preset."""

import pytest
import torch

from irt4.config import load_config
from irt4.export.onnx import (
    BATCH,
    GRAPH_MODULES,
    MatmulSpectralFilter,
    export_example_inputs,
    export_onnx,
    graph_specs,
    spectral_filters_as_matmul,
)
from irt4.models.layers import SpectralFilter, fold_weight_standardization
from irt4.models.radiodiff import RadioDiff

onnx = pytest.importorskip("onnx", reason="onnx is not installed (the irt4[ort] extra)")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (the irt4[ort] extra)")

EXPORT_BATCH, CHECK_BATCH = 2, 3


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = RadioDiff(load_config("tiny")).eval()
    fold_weight_standardization(model)
    return model


@pytest.fixture(scope="module")
def onnx_paths(model, tmp_path_factory):
    return export_onnx(model, tmp_path_factory.mktemp("onnx"), example_batch=EXPORT_BATCH)


def _relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got - ref).norm() / ref.norm())


@pytest.mark.parametrize("height,width", [(2, 2), (4, 6), (5, 7), (10, 10)])
def test_matmul_spectral_filter_equals_torch_fft(height, width):
    torch.manual_seed(height * 100 + width)
    spectral = SpectralFilter(dim=3, height=height, width=width)
    with torch.no_grad():
        spectral.complex_weight.normal_()  # O(1) weights: the init's 0.02 would hide errors
    x = torch.randn(2, 3, height, width)
    ref = spectral(x)
    got = MatmulSpectralFilter(spectral)(x)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)


def test_spectral_filters_are_restored_after_export(model):
    before = {name: type(m) for name, m in model.named_modules()}
    with spectral_filters_as_matmul(model) as swapped:
        assert swapped > 0
        assert not any(isinstance(m, SpectralFilter) for m in model.modules())
    assert {name: type(m) for name, m in model.named_modules()} == before


def test_exported_graphs_have_a_dynamic_batch_and_the_declared_shapes(model, onnx_paths):
    for name, spec in graph_specs(model.cfg).items():
        graph = onnx.load(str(onnx_paths[name])).graph
        for declared, saved in ((spec.inputs, graph.input), (spec.outputs, graph.output)):
            shapes = {
                t.name: tuple(d.dim_param or d.dim_value for d in t.type.tensor_type.shape.dim) for t in saved
            }
            assert shapes == {t.name: t.shape for t in declared}, name
            assert all(shape[0] == BATCH for shape in shapes.values()), name


@pytest.mark.parametrize("name", sorted(GRAPH_MODULES))
def test_onnxruntime_matches_pytorch_at_another_batch(model, onnx_paths, name):
    spec = graph_specs(model.cfg)[name]
    inputs = export_example_inputs(spec, CHECK_BATCH, seed=7)  # fresh inputs, not the export's
    with torch.no_grad():
        ref = GRAPH_MODULES[name](model)(*inputs)  # the model's own SpectralFilter: torch.fft
    ref = ref if isinstance(ref, tuple) else (ref,)
    session = ort.InferenceSession(str(onnx_paths[name]), providers=["CPUExecutionProvider"])
    got = session.run(
        [t.name for t in spec.outputs], {t.name: x.numpy() for t, x in zip(spec.inputs, inputs)}
    )
    for out_spec, expected, actual in zip(spec.outputs, ref, got):
        actual = torch.from_numpy(actual)
        assert actual.shape == expected.shape == out_spec.example_shape(CHECK_BATCH)
        error = _relative_error(actual, expected)
        max_abs = float((actual - expected).abs().max())
        print(f"{name}.{out_spec.name}: relative error {error:.2e}, max abs error {max_abs:.2e}")
        assert error < 1e-4, f"{name}.{out_spec.name}: relative error {error:.2e}, max abs {max_abs:.2e}"
