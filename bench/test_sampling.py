"""pytest-benchmark timings of the tiny preset's sampler and training step, the reference against
irt4's paths (bench/sampling.py, bench/training.py): `pytest bench/ --benchmark-only`. Not part of
`make test` (its testpaths are tests/); timing is never asserted."""

from __future__ import annotations

import pytest
import torch

from bench import sampling, training
from bench.run import build_model
from irt4.config import load_config

CPU = torch.device("cpu")
STEPS = 2


@pytest.fixture(scope="module")
def model():
    return build_model(load_config("tiny"), CPU)


@pytest.mark.parametrize("path", ["reference", "torch", "torch-bf16"])
def test_sampling_tiny_batch_2(benchmark, model, path):
    ctx = sampling.sampling_context(model, CPU, batch=2, steps=STEPS)
    with sampling.PATHS[path].open(ctx) as sample:
        maps = benchmark.pedantic(sample, rounds=3, warmup_rounds=1)
    assert maps.shape == (2, 1, 64, 64)


@pytest.mark.parametrize("path", ["reference", "torch-cached"])
def test_training_step_tiny_batch_2(benchmark, model, path):
    image, cond = sampling.inputs(model.cfg, 2, CPU, seed=0)
    with training.training_state(model):
        step = training.training_step(model, training.PATHS[path], image, cond)
        benchmark.pedantic(step, rounds=3, warmup_rounds=1)
