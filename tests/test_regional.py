"""Regional compilation (irt4.models.regional): every repeated block compiled on its own, the model
still computes what it did, and it comes back to eager. Dynamo's tracing is exercised with its
`eager` backend (no Inductor code generation: seconds, not minutes, on a CPU); the Inductor path is
`compile-regional-bf16` in bench/sampling.py, checked on a GPU."""

import pytest
import torch

from bench import sampling
from bench.run import build_model
from irt4.config import load_config
from irt4.models import layers, relation, swin, vae
from irt4.models.regional import REGION_CLASSES, REGION_RECOMPILE_LIMIT, compile_regions, uncompile_regions

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")


def _compiled(model) -> list[torch.nn.Module]:
    return [m for m in model.modules() if getattr(m, "_compiled_call_impl", None) is not None]


def test_compile_regions_compiles_each_outermost_block_and_uncompile_undoes_it():
    model = build_model(load_config("tiny"), CPU)
    expected = [m for m in model.modules() if isinstance(m, REGION_CLASSES)]
    nested = {id(inner) for outer in expected for inner in outer.modules() if inner is not outer}
    outermost = [m for m in expected if id(m) not in nested]
    assert compile_regions(model, backend="eager") == len(outermost) > 10
    assert torch._dynamo.config.recompile_limit >= REGION_RECOMPILE_LIMIT  # a version per width and dtype
    assert {id(m) for m in _compiled(model)} == {id(m) for m in outermost}
    kinds = {type(m) for m in outermost}
    assert {layers.ResnetBlock, relation.RelationNet, swin.SwinBlock, vae.ResnetBlock} <= kinds
    uncompile_regions(model)
    assert not _compiled(model)


def test_regionally_compiled_sampler_draws_the_eager_maps():
    torch._dynamo.reset()
    model = build_model(load_config("tiny"), CPU)
    ctx = sampling.sampling_context(model, CPU, batch=1, steps=2)
    with sampling.PATHS["torch"].open(ctx) as run:
        eager = run()
    try:
        compile_regions(model, backend="eager", dynamic=False)
        with sampling.PATHS["torch"].open(ctx) as run:
            compiled = run()
    finally:
        uncompile_regions(model)
        torch._dynamo.reset()
    assert sampling.output_difference(compiled, eager)["rel_err"] < 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compile_regional_bf16_path_matches_the_reference_within_bf16_error():
    cuda = torch.device("cuda")
    model = build_model(load_config("tiny"), cuda)
    ctx = sampling.sampling_context(model, cuda, batch=2, steps=2)
    maps = {}
    for path in ("reference", "torch-bf16", "compile-regional-bf16"):
        with sampling.PATHS[path].open(ctx) as run:
            maps[path] = run().clone()
    bf16 = sampling.output_difference(maps["torch-bf16"], maps["reference"])["rel_err"]
    regional = sampling.output_difference(maps["compile-regional-bf16"], maps["reference"])["rel_err"]
    assert regional <= 2 * bf16 + 1e-3


def test_regional_training_path_steps_like_the_eager_one(monkeypatch):
    """bench/training.py's compile-regional-bf16-cached (Dynamo's eager backend here): its step
    moves the weights as torch-bf16-cached's does, and the model leaves it uncompiled."""
    from bench import training
    from irt4.models import regional

    eager_compile = regional.compile_regions
    monkeypatch.setattr(training, "compile_regions", lambda m, **kw: eager_compile(m, backend="eager", **kw))
    torch._dynamo.reset()
    model = build_model(load_config("tiny"), CPU)
    image, cond = sampling.inputs(model.cfg, 2, CPU, seed=0)
    moved = {}
    for name in ("torch-bf16-cached", "compile-regional-bf16-cached"):
        torch.manual_seed(0)
        with training.training_state(model):
            training.training_step(model, training.PATHS[name], image, cond)()
            moved[name] = {k: v.clone() for k, v in model.unet.state_dict().items()}
        assert not _compiled(model)
    for key, value in moved["torch-bf16-cached"].items():
        torch.testing.assert_close(moved["compile-regional-bf16-cached"][key], value, rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()
