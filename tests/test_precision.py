"""The NHWC / bf16-weights lever (irt4.models.precision, bench/sampling.py's *-nhwc-bf16 paths): the
maps stay within bf16's error of the fp32 reference, and the model comes back exactly as it was."""

import pytest
import torch
from torch import nn

from bench import sampling
from bench.run import build_model
from irt4.config import load_config
from irt4.models.layers import WeightStandardizedConv2d, fold_weight_standardization
from irt4.models.precision import inference_weights

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return build_model(load_config("tiny"), CPU)


def test_inference_weights_casts_convs_and_linears_once_and_restores_them_bit_for_bit(model):
    before = {name: (value.clone(), value.stride()) for name, value in model.state_dict().items()}
    fold_weight_standardization(model.unet)
    folded = {m: m.folded_weight for m in model.modules() if isinstance(m, WeightStandardizedConv2d)}
    with inference_weights(model, torch.bfloat16, channels_last=True) as changed:
        assert changed == sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
        for module in model.modules():
            if isinstance(module, WeightStandardizedConv2d):
                assert module.folded_weight.dtype == torch.bfloat16
                assert module.folded_weight.is_contiguous(memory_format=torch.channels_last)
                assert module.weight.dtype == torch.float32  # the raw weight is not what it reads
            elif isinstance(module, nn.Conv2d):
                assert module.weight.dtype == torch.bfloat16
                assert module.weight.is_contiguous(memory_format=torch.channels_last)
            elif isinstance(module, (nn.GroupNorm, nn.LayerNorm)) and module.weight is not None:
                assert module.weight.dtype == torch.float32  # norms stay fp32
    for module, weight in folded.items():
        assert module.folded_weight is weight
        module.folded_weight = None
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name][0]) and value.stride() == before[name][1], name


def test_inference_weights_restores_the_model_when_the_block_raises(model):
    before = {name: value.clone() for name, value in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"), inference_weights(model, torch.bfloat16, True):
        raise RuntimeError("boom")
    for name, value in model.state_dict().items():
        assert value.dtype == before[name].dtype and torch.equal(value, before[name]), name


def test_nhwc_bf16_sampling_is_within_twice_the_bf16_error_of_the_fp32_reference(model):
    ctx = sampling.sampling_context(model, CPU, batch=2, steps=2)
    maps = {}
    for path in ("reference", "torch-bf16", "torch-nhwc-bf16"):
        with sampling.PATHS[path].open(ctx) as run:
            maps[path] = run()
    bf16 = sampling.output_difference(maps["torch-bf16"], maps["reference"])["rel_err"]
    nhwc = sampling.output_difference(maps["torch-nhwc-bf16"], maps["reference"])["rel_err"]
    assert 0 < bf16 < 0.05 and nhwc <= 2 * bf16
    with sampling.PATHS["reference"].open(ctx) as run:  # the path left the model as it found it
        assert torch.equal(run(), maps["reference"])


def test_triton_nhwc_path_runs_the_kernels_on_channels_last_inputs(model):
    """Here the Triton kernels run in their interpreter (tests/conftest.py), on the channels_last
    tensors the path hands them (read in place by their strides): the same maps as torch-nhwc-bf16."""
    ctx = sampling.sampling_context(model, CPU, batch=1, steps=1)
    maps = {}
    for path in ("torch-nhwc-bf16", "triton-nhwc-bf16"):
        with sampling.PATHS[path].open(ctx) as run:
            maps[path] = run()
    diff = sampling.output_difference(maps["triton-nhwc-bf16"], maps["torch-nhwc-bf16"])["rel_err"]
    assert diff < 0.02


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_nhwc_path_matches_the_reference_within_bf16_error():
    cuda = torch.device("cuda")
    model = build_model(load_config("tiny"), cuda)
    ctx = sampling.sampling_context(model, cuda, batch=2, steps=2)
    maps = {}
    for path in ("reference", "cudagraph-bf16", "cudagraph-nhwc-bf16"):
        with sampling.PATHS[path].open(ctx) as run:
            maps[path] = run().clone()
    graph = sampling.output_difference(maps["cudagraph-bf16"], maps["reference"])["rel_err"]
    nhwc = sampling.output_difference(maps["cudagraph-nhwc-bf16"], maps["reference"])["rel_err"]
    assert nhwc <= 2 * graph + 1e-3


def test_irt4_infer_samples_bf16_on_channels_last_bf16_weights_within_the_bf16_error():
    """irt4-infer's torch sampler (irt4.infer.Sampler) takes the lever at reduced precision: it holds
    the model's conv weights in bf16, channels-last, and its maps stay within bf16's error of fp32."""
    import copy
    from pathlib import Path

    from irt4.infer import InferenceOptions, Sampler

    reference_model = build_model(load_config("tiny"), CPU)
    ctx = sampling.sampling_context(reference_model, CPU, batch=2, steps=2)
    maps = {}
    for precision in ("fp32", "bf16"):
        model = copy.deepcopy(reference_model)
        sampler = Sampler(
            model, InferenceOptions(out=Path("."), steps=2, precision=precision, progress=False)
        )
        maps[precision] = sampler(ctx.cond, ctx.noise)
        convs = [
            m
            for m in model.modules()
            if isinstance(m, nn.Conv2d) and not isinstance(m, WeightStandardizedConv2d)
        ]
        layouts = {(c.weight.dtype, c.weight.is_contiguous(memory_format=torch.channels_last)) for c in convs}
        if precision == "bf16":
            assert layouts == {(torch.bfloat16, True)}
        else:
            assert {dtype for dtype, _ in layouts} == {torch.float32}
    assert maps["bf16"].shape == maps["fp32"].shape == (2, 256, 256)
    rel = sampling.output_difference(maps["bf16"], maps["fp32"])["rel_err"]
    assert 0 < rel < 0.05
