"""CUDA graphs of the trained network (irt4.train.graphed, `irt4-train --cuda-graphs`).

On the CPU: the networks hold no op that breaks or silently corrupts a CUDA-graph capture (under a
dispatch mode), the wrapper's dispatch between capture, replay and eager calls (with a fake
make_graphed_callables that keeps the real one's contract), and the option checks. On a GPU
(marker gpu): a real capture of the `small` UNet against eager calls, and a few training steps of
the tiny preset with and without --cuda-graphs against an fp32 reference.
"""

import copy
import dataclasses
import logging

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from irt4.baseline.regressor import RadioUNetRegressor
from irt4.cli.train import main
from irt4.config import apply_overrides, load_config
from irt4.models.radiodiff import RadioDiff
from irt4.train.graphed import GraphedModule
from irt4.train.trainer import Distributed, RunOptions, check_run_options

aten = torch.ops.aten
CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores
    yield
    torch.set_num_threads(threads)


# ---- capture safety of the networks, checked on the CPU --------------------------------------------

# ops that read device values on the host (a sync, which capture forbids) or put host data on the
# device (a copy that a replay would repeat from freed host memory)
HOST_OPS = {
    aten._local_scalar_dense: ".item(), bool(), int() or float() of a tensor (a device-to-host sync)",
    aten.is_nonzero: "bool() of a tensor (a device-to-host sync)",
    aten.equal: "torch.equal (a device-to-host sync)",
    aten.nonzero: "an output size that depends on values (a sync)",
    aten.masked_select: "an output size that depends on values (a sync)",
    aten.unique_dim: "an output size that depends on values (a sync)",
    aten._unique: "an output size that depends on values (a sync)",
    aten._unique2: "an output size that depends on values (a sync)",
    aten.unique_consecutive: "an output size that depends on values (a sync)",
    aten.lift_fresh: "a tensor made from Python data (a host-to-device copy)",
    aten.lift_fresh_copy: "a tensor made from Python data (a host-to-device copy)",
}
INDEX_OPS = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}


class CaptureHazards(TorchDispatchMode):
    """Records the ops (forward and backward) that a CUDA-graph capture cannot hold.

    What it cannot see on the CPU: an op mixing a CPU tensor into device work, and syncs inside a
    backend's own kernel code (below the dispatcher)."""

    def __init__(self):
        super().__init__()
        self.hazards: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = func.overloadpacket
        if packet in HOST_OPS:
            self.hazards.append(f"{func}: {HOST_OPS[packet]}")
        elif packet in INDEX_OPS and any(
            isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in args[1]
        ):
            self.hazards.append(f"{func}: boolean-mask indexing (an output size that depends on values)")
        return func(*args, **(kwargs or {}))


def hazards_of_a_training_call(module: nn.Module, *inputs: torch.Tensor) -> list[str]:
    """The hazards of module(*inputs) and its backward, in training mode."""
    module.train()
    with CaptureHazards() as mode:
        loss = sum(o.float().square().mean() for o in tree_leaves(module(*inputs)))
        loss.backward()
    return mode.hazards


class Unsafe(nn.Module):
    def __init__(self, op: str):
        super().__init__()
        self.op = op
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, x):
        y = x * self.scale
        if self.op == "item":
            return y * y.sum().item()
        if self.op == "bool":
            return y * 2 if y.sum() > 0 else y
        if self.op == "mask":
            return y[y > 0].sum() + y.sum()
        if self.op == "tensor":
            return y * torch.tensor([1.0, 2.0, 3.0, 4.0])
        return y.sum() + torch.unique(y.detach()).sum()


@pytest.mark.parametrize("op", ["item", "bool", "mask", "tensor", "unique"])
def test_capture_hazard_detector_flags_syncs_value_sized_outputs_and_host_data(op):
    assert hazards_of_a_training_call(Unsafe(op), torch.randn(3, 4))


def _unet_inputs(cfg, batch: int):
    g = torch.Generator().manual_seed(0)
    latent = torch.randn(batch, cfg.unet.channels, cfg.latent_size, cfg.latent_size, generator=g)
    t = torch.rand(batch, generator=g) * 0.9 + 0.05
    cond = torch.rand(batch, 3, cfg.image_size, cfg.image_size, generator=g) * 2 - 1
    return latent, t, cond


@pytest.mark.parametrize(
    "preset, dtype",
    [("tiny", torch.float32), ("small", torch.float32), ("small", torch.bfloat16)],
    ids=["tiny-fp32", "small-fp32", "small-bf16-autocast"],
)
def test_unet_training_call_has_no_op_that_breaks_cuda_graph_capture(preset, dtype):
    cfg = load_config(preset)
    torch.manual_seed(0)
    unet = RadioDiff(cfg).unet
    # as the trainer calls it under --cuda-graphs: autocast without its weight cache
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32, cache_enabled=False):
        hazards = hazards_of_a_training_call(unet, *_unet_inputs(cfg, batch=2))
    assert hazards == []


def test_baseline_regressor_training_call_has_no_op_that_breaks_cuda_graph_capture():
    cfg = load_config("tiny")
    torch.manual_seed(0)
    cond = torch.rand(2, 3, cfg.image_size, cfg.image_size) * 2 - 1
    assert hazards_of_a_training_call(RadioUNetRegressor(cfg), cond) == []


# ---- the wrapper, with a fake make_graphed_callables --------------------------------------------------


class FakeMakeGraphed:
    """torch.cuda.make_graphed_callables' contract without CUDA: warm-up iterations on the sample
    inputs (forward, and backward through autograd.grad, which moves BatchNorm statistics and the
    random stream as the real ones do), then the module returned with its forward replaced by a
    "replay" (here: the original forward, counted)."""

    def __init__(self):
        self.captures: list[dict] = []
        self.replays = 0

    def __call__(self, module, sample_args, num_warmup_iters, allow_unused_input):
        self.captures.append(
            dict(sample_args=sample_args, num_warmup_iters=num_warmup_iters, allow_unused=allow_unused_input)
        )
        params = [p for p in module.parameters() if p.requires_grad]
        for _ in range(num_warmup_iters):
            outputs = [o for o in tree_leaves(module(*sample_args)) if o.requires_grad]
            grads = [torch.ones_like(o) for o in outputs]
            torch.autograd.grad(outputs, params, grads, allow_unused=allow_unused_input)
        original = module.forward

        def replay(*args):
            self.replays += 1
            return original(*args)

        module.forward = replay
        return module


class Toy(nn.Module):
    """A network with what matters here: BatchNorm statistics, dropout, two inputs, two outputs."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 8)
        self.norm = nn.BatchNorm1d(8)
        self.dropout = nn.Dropout(0.5)
        self.head = nn.Linear(8, 2)

    def forward(self, x, t):
        h = self.dropout(self.norm(self.linear(x))) * t[:, None]
        return self.head(h), h.mean(dim=1)


def _inputs(batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, generator=g), torch.rand(batch, generator=g)


def _graphed_toy(**kwargs):
    torch.manual_seed(0)
    toy = Toy()
    fake = FakeMakeGraphed()
    return GraphedModule(toy, make_graphed=fake, device_type="cpu", **kwargs), toy, fake


def test_first_call_captures_from_clones_of_its_inputs_and_later_calls_replay():
    graphed, _, fake = _graphed_toy()
    x, t = _inputs(3)
    graphed(x, t)
    assert len(fake.captures) == 1 and fake.replays == 1
    capture = fake.captures[0]
    assert capture["num_warmup_iters"] == 3 and capture["allow_unused"] is True
    for sample, real in zip(capture["sample_args"], (x, t)):
        assert sample is not real and sample.data_ptr() != real.data_ptr()
        assert torch.equal(sample, real) and sample.stride() == real.stride()
        assert sample.requires_grad == real.requires_grad
    graphed(*_inputs(3, seed=1))
    assert len(fake.captures) == 1 and fake.replays == 2


def test_a_captured_call_leaves_module_buffers_and_random_stream_as_an_eager_call_does():
    graphed, toy, _ = _graphed_toy()
    twin = copy.deepcopy(toy)
    x, t = _inputs(5)
    torch.manual_seed(7)
    outputs = graphed(x, t)
    sum(o.sum() for o in outputs).backward()
    after_graphed = torch.rand(3)
    torch.manual_seed(7)
    expected = twin(x, t)
    sum(o.sum() for o in expected).backward()
    after_eager = torch.rand(3)

    assert "forward" not in toy.__dict__  # the module stays plain
    for got, want in zip(outputs, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)  # the same dropout mask
    assert torch.equal(after_graphed, after_eager)
    for (name, got), want in zip(toy.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(got, want), name  # BatchNorm statistics moved once, not 1 + 3 warm-ups
    for got, want in zip(toy.parameters(), twin.parameters()):
        torch.testing.assert_close(got.grad, want.grad, rtol=0, atol=0)


def test_other_signatures_modes_and_devices_run_eagerly_and_are_logged_once(caplog):
    graphed, toy, fake = _graphed_toy(max_graphs=2)
    with caplog.at_level(logging.INFO, logger="irt4.train.graphed"):
        graphed(*_inputs(3))
        graphed(*_inputs(5))
        assert len(fake.captures) == 2 and fake.replays == 2
        for _ in range(2):
            graphed(*_inputs(7))  # a third signature
        x, t = _inputs(3)
        graphed(x, t=t)
        with torch.no_grad():
            graphed(x, t)
        graphed.eval()
        eval_outputs = graphed(x, t)
        graphed.train()
    assert len(fake.captures) == 2 and fake.replays == 2
    messages = [r.getMessage() for r in caplog.records if "runs eagerly" in r.getMessage()]
    assert [m.split(": ")[-1] for m in messages] == [
        "a new input signature after 2 graphs (max_graphs) (logged once)",
        "keyword arguments (logged once)",
        "gradients disabled (logged once)",
        "eval mode (logged once)",
    ]
    assert "for inputs (7, 4), (7,)" in messages[0]
    twin = copy.deepcopy(toy).eval()
    for got, want in zip(eval_outputs, twin(x, t)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_inputs_off_the_graph_device_run_eagerly_without_a_capture():
    fake = FakeMakeGraphed()
    graphed = GraphedModule(Toy(), make_graphed=fake)  # graphs on cuda, inputs on the CPU
    graphed(*_inputs(3))
    assert fake.captures == [] and fake.replays == 0


def test_the_signature_holds_shapes_dtypes_strides_requires_grad_and_autocast():
    graphed, _, fake = _graphed_toy(max_graphs=8)
    x, t = _inputs(4)  # x is 4x4: its transpose has its shape and other strides
    for call in (
        lambda: graphed(x, t),
        lambda: graphed(x, t.half()),
        lambda: graphed(x.t().contiguous().t(), t),
        lambda: graphed(x.clone().requires_grad_(), t),
        lambda: graphed(*_inputs(5)),
    ):
        call()
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
        graphed(x, t)
    assert len(fake.captures) == 6
    graphed(*_inputs(4, seed=3))
    assert len(fake.captures) == 6 and fake.replays == 7


def test_autocast_with_its_weight_cache_is_refused():
    graphed, _, fake = _graphed_toy()
    with (
        torch.autocast("cpu", dtype=torch.bfloat16),
        pytest.raises(RuntimeError, match="cache_enabled=False"),
    ):
        graphed(*_inputs(3))
    assert fake.captures == []


def test_hooks_on_the_module_or_a_submodule_are_refused():
    graphed, toy, fake = _graphed_toy()
    toy.head.register_forward_hook(lambda module, args, output: None)
    with pytest.raises(RuntimeError, match=r"without hooks.*head"):
        graphed(*_inputs(3))
    assert fake.captures == []


def test_wrapper_state_dict_and_parameters_are_the_module_s_own():
    graphed, toy, _ = _graphed_toy()
    graphed(*_inputs(3))
    state = graphed.state_dict()
    assert list(state) == list(toy.state_dict())
    assert all(torch.equal(state[k], v) for k, v in toy.state_dict().items())
    assert [id(p) for p in graphed.parameters()] == [id(p) for p in toy.parameters()]
    weights = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}
    graphed.load_state_dict(weights)
    assert all(torch.equal(toy.state_dict()[k], v) for k, v in weights.items())


# ---- the trainer's and the CLI's option checks ----------------------------------------------------------


def test_cuda_graphs_option_refuses_cpu_compile_ddp_and_gradient_accumulation(tmp_path):
    tcfg = load_config("tiny").trainer
    cuda = torch.device("cuda")  # only its type is read
    options = RunOptions(run_dir=tmp_path, precision="bf16", cuda_graphs=True)
    check_run_options(options, Distributed(0, 1, cuda), tcfg)
    cases = {
        "needs a CUDA device, this run is on cpu": (options, Distributed(0, 1, CPU), tcfg),
        "and --compile do not combine": (
            dataclasses.replace(options, compile=True),
            Distributed(0, 1, cuda),
            tcfg,
        ),
        "DistributedDataParallel (2 processes)": (options, Distributed(0, 2, cuda), tcfg),
        "needs gradient_accumulate_every=1": (
            options,
            Distributed(0, 1, cuda),
            dataclasses.replace(tcfg, gradient_accumulate_every=2),
        ),
    }
    for message, (opts, env, trainer_cfg) in cases.items():
        with pytest.raises(Exception, match=message.replace("(", r"\(").replace(")", r"\)")):
            check_run_options(opts, env, trainer_cfg)
    plain = dataclasses.replace(options, cuda_graphs=False, compile=True)
    check_run_options(plain, Distributed(0, 2, CPU), dataclasses.replace(tcfg, gradient_accumulate_every=2))


def test_cli_cuda_graphs_on_a_cpu_is_a_one_line_error(committed_dataset, tmp_path, capsys):
    argv = ["--data", str(committed_dataset), "--config", "tiny", "--out", str(tmp_path / "run")]
    assert main(["ldm", *argv, "--device", "cpu", "--cuda-graphs"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["irt4-train: error: --cuda-graphs needs a CUDA device, this run is on cpu"]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["ldm", "baseline"])
def test_cli_help_explains_cuda_graphs(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--cuda-graphs" in text
    for point in ("CUDA graphs", "CUDA device", "--compile", "DDP", "another shape run eagerly"):
        assert point in text, point


def test_cli_vae_has_no_cuda_graphs_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["vae", "--data", "d", "--out", "o", "--cuda-graphs"])
    assert exit_info.value.code == 2 and "--cuda-graphs" in capsys.readouterr().err


# ---- on a GPU -----------------------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).norm() / want.float().norm().clamp_min(1e-12)).item()


@pytest.mark.gpu
@needs_cuda
def test_gpu_small_unet_graphs_replay_the_eager_outputs_gradients_and_statistics():
    """A real make_graphed_callables capture of the `small` UNet (bf16 autocast, channels-last, as the
    trainer runs it) against eager calls of a twin on the same inputs, over a few replays and a
    second batch size; then eval and no-grad calls run eagerly. A parameter's gradient may differ from
    the eager bf16 one by 5 %, or by twice the eager bf16 gradient's own distance to fp32 (STYLE.md's
    rule): on the H200 (2026-11-26) a Swin norm bias's 1e-6 gradients differed by 8 % in bf16."""
    device = torch.device("cuda")
    # no random ops, so that both see the same computation
    cfg = apply_overrides(load_config("small"), ["swin.stochastic_depth=0.0", "unet.relation_dropout=0.0"])
    torch.manual_seed(0)
    unet = RadioDiff(cfg).unet.to(device, memory_format=torch.channels_last).train()
    twin, fp32_twin = copy.deepcopy(unet), copy.deepcopy(unet)
    graphed = GraphedModule(unet)

    def call(module, inputs, dtype=torch.bfloat16):
        module.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dtype, cache_enabled=False, enabled=dtype != torch.float32):
            outputs = module(*inputs)
        sum(o.float().square().mean() for o in outputs).backward()
        grads = [p.grad.clone() if p.grad is not None else None for p in module.parameters()]
        return [o.detach().clone() for o in outputs], grads

    for step, batch in enumerate((8, 8, 8, 4, 4)):
        latent, t, cond = (x.to(device) for x in _unet_inputs(cfg, batch))
        latent = latent.contiguous(memory_format=torch.channels_last) + step
        cond = cond.contiguous(memory_format=torch.channels_last)
        got_out, got_grads = call(graphed, (latent, t, cond))
        want_out, want_grads = call(twin, (latent, t, cond))
        _, fp32_grads = call(fp32_twin, (latent, t, cond), torch.float32)
        for got, want in zip(got_out, want_out):
            assert _relative_error(got, want) < 1e-2, step
        named = [name for name, _ in unet.named_parameters()]
        for name, got, want, exact in zip(named, got_grads, want_grads, fp32_grads):
            assert (got is None) == (want is None), name
            if want is not None and want.norm() > 0:
                bf16_noise = _relative_error(want, exact)
                assert _relative_error(got, want) <= max(2 * bf16_noise, 5e-2), (step, name, bf16_noise)
    assert len(graphed.graphs) == 2
    for (name, got), want in zip(unet.named_buffers(), twin.buffers()):
        if got.is_floating_point():
            assert _relative_error(got, want) < 1e-2, name
        else:
            assert torch.equal(got, want), name
    twin.load_state_dict(unet.state_dict())
    latent, t, cond = (x.to(device) for x in _unet_inputs(cfg, 8))
    with torch.no_grad():
        for got, want in zip(graphed(latent, t, cond), twin(latent, t, cond)):
            torch.testing.assert_close(got, want)
    graphed.eval()
    for got, want in zip(graphed(latent, t, cond), twin.eval()(latent, t, cond)):
        torch.testing.assert_close(got, want)
    assert len(graphed.graphs) == 2


def _train_tiny(root, run_dir, precision: str, cuda_graphs: bool):
    """Six LDM steps of the tiny preset on the committed data set, cached latents; (losses, UNet weights)."""
    from irt4.train.checkpoint import read_checkpoint
    from irt4.train.logs import read_metrics
    from irt4.train.stages import LDMStage, datasets
    from irt4.train.trainer import Trainer, seed_everything

    overrides = [
        "data.split=auto",
        "data.num_workers=0",
        "trainer.batch_size=4",
        "trainer.train_num_steps=6",
        "trainer.log_every=1",
        "trainer.save_every=6",
        # no random ops inside the network: the runs differ by precision and graphs only
        "swin.stochastic_depth=0.0",
        "unet.relation_dropout=0.0",
    ]
    cfg = apply_overrides(load_config("tiny"), overrides)
    seed_everything(cfg.trainer.seed)
    train_set, sample_set = datasets(cfg, root)
    stage = LDMStage(cfg, train_set, sample_set, vae_weights=None, cache_latents=True)
    options = RunOptions(
        run_dir=run_dir, precision=precision, cuda_graphs=cuda_graphs, tensorboard=False, sample_steps=1
    )
    assert Trainer(stage, cfg, options, Distributed(0, 1, torch.device("cuda"))).run() == 0
    losses = torch.tensor([row["loss"] for row in read_metrics(run_dir / "metrics.jsonl") if "loss" in row])
    model = read_checkpoint(run_dir / "last.pt")["model"]
    weights = {k: v.float() for k, v in model.items() if k.startswith("unet.")}
    return losses, weights


@pytest.mark.gpu
@needs_cuda
def test_gpu_training_with_cuda_graphs_follows_eager_bf16_against_fp32(committed_dataset, tmp_path, caplog):
    """The tiny preset trained six steps from one seed: fp32 eager (the reference), bf16 eager and
    bf16 with --cuda-graphs. The graphed run's loss curve and weights are within 2x the eager bf16
    run's distance to the reference (the tolerance rule of STYLE.md)."""
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        ref_losses, ref_weights = _train_tiny(committed_dataset, tmp_path / "fp32", "fp32", False)
        bf16_losses, bf16_weights = _train_tiny(committed_dataset, tmp_path / "bf16", "bf16", False)
        with caplog.at_level(logging.INFO, logger="irt4.train.graphed"):
            graph_losses, graph_weights = _train_tiny(committed_dataset, tmp_path / "graphs", "bf16", True)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    log_text = caplog.text
    assert "captured CUDA graphs of ConditionalUNet" in log_text and "runs eagerly" not in log_text
    assert len(ref_losses) == len(graph_losses) == 6

    def weight_distance(weights):
        return sum((weights[k] - ref_weights[k]).norm() ** 2 for k in ref_weights).sqrt().item()

    loss_bf16 = (bf16_losses - ref_losses).abs().max().item()
    loss_graphs = (graph_losses - ref_losses).abs().max().item()
    assert loss_graphs <= 2 * loss_bf16 + 1e-5, (loss_graphs, loss_bf16)
    assert weight_distance(graph_weights) <= 2 * weight_distance(bf16_weights) + 1e-6
