"""The sampling rows: 50-step maps/s of every backend against the eager fp32 reference sampler.

Every backend gets the same condition images and the same `SamplerNoise` (contracts.md: "Sampling,
noise and backends"), so its maps are compared with the reference's: ||a - b|| / ||b|| and max |a - b|.
A backend is a context manager (`PATHS`) that puts the model in the state it needs (weight
standardization folded, Triton kernels, ...), yields a callable that samples one batch of maps, and
restores the model on the way out, whatever happens in between.

    reference       eager fp32, TF32 off, condition recomputed and weights standardized at every call
    torch           the condition hoisted out of the loop, weight standardization folded once (fp32)
    torch-bf16      + bf16 autocast
    triton-bf16     + irt4's Triton kernels (GroupNorm+SiLU, attention); on a CPU their references run
    cudagraph-bf16  triton-bf16, the whole loop (condition, 51 calls, updates, decode) in one CUDA graph
    cudagraph-torch-bf16  the same graph of torch-bf16 (PyTorch's kernels: no Triton needed)
    torch-nhwc-bf16, triton-nhwc-bf16, cudagraph-nhwc-bf16  the NHWC lever on those paths: weights cast
                    to bf16 once and stored channels_last, the condition channels_last, cudnn.benchmark
    compile         torch.compile of the UNet step and the VAE decode (fp32); compile-bf16 under autocast
    compile-regional-bf16  torch.compile of the repeated blocks only (irt4.models.regional), bf16 autocast;
                    cudagraph-regional-bf16 the same blocks inside the whole-loop CUDA graph
    onnxruntime-cpu the three ONNX graphs (irt4.export) in ONNX Runtime's CPU provider, the loop in Python
    engine-aoti     irt4.Engine (the C++ loop) on an AOTInductor package (built by irt4-build-engine
                    --precision bf16 in bench/gpu.sh); engine-aoti-graph with its CUDA graph;
                    engine-onnxruntime on ONNX Runtime's CPU provider (fp32)
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from irt4.config import Config
from irt4.diffusion.sampler import SamplerNoise, draw_sampler_noise, sample_latents
from irt4.diffusion.schedule import sampler_update, sampling_schedule
from irt4.models.kernel_switch import use_kernels
from irt4.models.layers import fold_weight_standardization, unfold_weight_standardization
from irt4.models.precision import inference_weights
from irt4.models.radiodiff import RadioDiff
from irt4.models.regional import compile_regions, uncompile_regions


class Skip(Exception):
    """A row that cannot be measured here (no CUDA, no engine, ...): recorded with the reason."""


@dataclass
class SamplingContext:
    model: RadioDiff
    device: torch.device
    batch: int
    steps: int
    cond: torch.Tensor  # (B, 3, H, W) on the device
    noise: SamplerNoise  # on the CPU
    onnx_dir: Path | None = None  # where the ONNX graphs are (or are exported to)
    engine_dir: Path | None = None
    cache: dict = field(default_factory=dict)  # ONNX Runtime sessions, loaded engines: kept across batches


def inputs(cfg: Config, batch: int, device: torch.device, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random radio maps and condition images in [-1, 1] (image, cond)."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, cfg.vae.in_channels, cfg.image_size, cfg.image_size, generator=g) * 2 - 1
    cond = torch.rand(batch, len(cfg.data.condition), cfg.image_size, cfg.image_size, generator=g) * 2 - 1
    return image.to(device), cond.to(device)


def sampling_context(model: RadioDiff, device: torch.device, batch: int, steps: int, seed: int = 0, **kw):
    _, cond = inputs(model.cfg, batch, device, seed)
    shape = (batch, *model.latent_shape)
    noise = draw_sampler_noise(shape, steps, model.cfg.diffusion.denoise, torch.Generator().manual_seed(seed))
    return SamplingContext(model, device, batch, steps, cond, noise, **kw)


def autocast(device: torch.device, dtype: torch.dtype, cache_enabled: bool = True):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype, cache_enabled=cache_enabled)


class _Hoisted:
    """The sampler's view of the UNet with another condition encoder and denoiser."""

    def __init__(self, encode_condition: Callable, denoise: Callable):
        self.encode_condition = encode_condition
        self.denoise = denoise


def _sampler(
    ctx: SamplingContext, unet, decode: Callable, recompute: bool, noise: SamplerNoise | None = None
):
    d = ctx.model.cfg.diffusion

    def run() -> torch.Tensor:
        latents = sample_latents(
            unet,
            ctx.cond,
            ctx.model.latent_shape,
            steps=ctx.steps,
            eps=d.eps,
            denoise=d.denoise,
            noise=noise or ctx.noise,
            recompute_condition=recompute,
        )
        return decode(latents)

    return run


@contextlib.contextmanager
def _model_state(model: RadioDiff, folded: bool, kernels: str) -> Iterator[None]:
    unfold_weight_standardization(model.unet)
    if folded:
        fold_weight_standardization(model.unet)
    use_kernels(model, kernels)
    try:
        yield
    finally:
        unfold_weight_standardization(model.unet)
        use_kernels(model, "torch")


@contextlib.contextmanager
def reference(ctx: SamplingContext) -> Iterator[Callable]:
    with _model_state(ctx.model, folded=False, kernels="torch"):
        yield _sampler(ctx, ctx.model.unet, ctx.model.decode_latents, recompute=True)


@contextlib.contextmanager
def _layout(ctx: SamplingContext, dtype: torch.dtype, nhwc: bool) -> Iterator[SamplingContext]:
    """The NHWC lever: weights cast to `dtype` once and stored channels_last, the condition image in
    channels_last (the convs keep that layout through the network), cuDNN's autotuner on. Without
    `nhwc`, nothing changes."""
    if not nhwc:
        yield ctx
        return
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = ctx.device.type == "cuda"
    try:
        with inference_weights(ctx.model, dtype, channels_last=True):
            yield dataclasses.replace(ctx, cond=ctx.cond.contiguous(memory_format=torch.channels_last))
    finally:
        torch.backends.cudnn.benchmark = benchmark


def _eager(dtype: torch.dtype, kernels: str, nhwc: bool = False, regional: bool = False):
    """The hoisted sampler under `dtype` autocast; with `regional`, the repeated blocks of the UNet and
    the VAE torch.compiled one by one (irt4.models.regional), the glue eager."""

    @contextlib.contextmanager
    def path(ctx: SamplingContext) -> Iterator[Callable]:
        with (
            _model_state(ctx.model, folded=True, kernels=kernels),
            _layout(ctx, dtype, nhwc) as ctx,
            _regions(ctx.model, regional),
        ):
            run = _sampler(ctx, ctx.model.unet, ctx.model.decode_latents, recompute=False)

            def run_cast():
                with autocast(ctx.device, dtype):
                    return run()

            yield run_cast

    return path


def _cuda_graph(kernels: str, nhwc: bool = False, regional: bool = False):
    """The bf16 path with `kernels`, the whole loop captured once per batch size and replayed; with
    `regional`, the repeated blocks torch.compiled first (the warm-up call compiles them)."""

    def path(ctx: SamplingContext) -> contextlib.AbstractContextManager:
        return _captured_loop(ctx, kernels, nhwc, regional)

    return path


@contextlib.contextmanager
def _regions(model: RadioDiff, on: bool) -> Iterator[None]:
    if not on:
        yield
        return
    torch._dynamo.reset()
    compile_regions(model.unet, dynamic=False)
    compile_regions(model.vae, dynamic=False)
    try:
        yield
    finally:
        uncompile_regions(model)
        torch._dynamo.reset()


@contextlib.contextmanager
def _captured_loop(
    ctx: SamplingContext, kernels: str, nhwc: bool = False, regional: bool = False
) -> Iterator[Callable]:
    if ctx.device.type != "cuda":
        raise Skip("needs CUDA")
    with (
        _model_state(ctx.model, folded=True, kernels=kernels),
        _layout(ctx, torch.bfloat16, nhwc) as ctx,
        _regions(ctx.model, regional),
    ):
        # every tensor the graph reads lives on the device at a fixed address
        static_noise = SamplerNoise(ctx.noise.initial.to(ctx.device), ctx.noise.steps.to(ctx.device))
        run = _sampler(ctx, ctx.model.unet, ctx.model.decode_latents, recompute=False, noise=static_noise)

        def run_cast():
            # the autocast weight cache must be off while capturing (CUDA graphs docs, "Usage with AMP")
            with autocast(ctx.device, torch.bfloat16, cache_enabled=False):
                return run()

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            run_cast()  # warm-up: Triton JIT, cuBLAS workspaces, allocator
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            maps = run_cast()

        def replay() -> torch.Tensor:
            graph.replay()
            return maps

        yield replay


def _compiled(dtype: torch.dtype):
    @contextlib.contextmanager
    def path(ctx: SamplingContext) -> Iterator[Callable]:
        torch._dynamo.reset()  # static shapes per batch: a fresh compile, no recompile limit reached
        model = ctx.model
        with _model_state(model, folded=True, kernels="torch"):

            def denoise(x, t, features):
                with autocast(ctx.device, dtype):
                    return model.unet.denoise(x, t, features)

            def decode(latents):
                with autocast(ctx.device, dtype):
                    return model.decode_latents(latents)

            def encode_condition(cond):
                with autocast(ctx.device, dtype):
                    return model.unet.encode_condition(cond)

            unet = _Hoisted(encode_condition, torch.compile(denoise, dynamic=False))
            try:
                yield _sampler(ctx, unet, torch.compile(decode, dynamic=False), recompute=False)
            finally:
                torch._dynamo.reset()

    return path


ONNX_STAMP = "bench-model.json"


def onnx_stamp(model: RadioDiff, seed: int) -> dict:
    import irt4

    return {"preset": model.cfg.name, "seed": seed, "irt4_version": irt4.__version__}


def export_bench_onnx(model: RadioDiff, onnx_dir: Path, seed: int = 0) -> float:
    """The bench model's three graphs in `onnx_dir` (exported from a CPU copy, PyTorch ops), unless
    they are there already for the same preset and seed; returns the seconds it took."""
    from irt4.export.onnx import export_onnx

    stamp_path = onnx_dir / ONNX_STAMP
    stamp = onnx_stamp(model, seed)
    if stamp_path.exists() and json.loads(stamp_path.read_text()) == stamp:
        return 0.0
    start = time.perf_counter()
    cpu_model = copy.deepcopy(model).cpu().float()
    use_kernels(cpu_model, "torch")
    unfold_weight_standardization(cpu_model.unet)
    export_onnx(cpu_model, onnx_dir)
    stamp_path.write_text(json.dumps(stamp) + "\n")
    return time.perf_counter() - start


@contextlib.contextmanager
def onnxruntime_cpu(ctx: SamplingContext) -> Iterator[Callable]:
    """The sampler loop in Python over ONNX Runtime's CPU provider, fp32, on the CPU whatever the device."""
    try:
        import onnxruntime as ort
    except ImportError as error:
        raise Skip(f"onnxruntime is not installed ({error})") from error
    from irt4.export.onnx import graph_specs

    if "ort" not in ctx.cache:
        if ctx.onnx_dir is None:
            raise Skip("no ONNX folder given (--onnx-dir)")
        export_bench_onnx(ctx.model, ctx.onnx_dir)
        specs = graph_specs(ctx.model.cfg)
        sessions = {
            name: ort.InferenceSession(str(ctx.onnx_dir / spec.file_name), providers=["CPUExecutionProvider"])
            for name, spec in specs.items()
        }
        ctx.cache["ort"] = specs, sessions
    specs, sessions = ctx.cache["ort"]
    d = ctx.model.cfg.diffusion
    schedule = sampling_schedule(ctx.steps, d.eps, d.denoise, d.schedule_dtype)
    feature_names = [t.name for t in specs["cond_encoder"].outputs]
    cond = ctx.cond.float().cpu().numpy()

    def run() -> torch.Tensor:
        features = dict(zip(feature_names, sessions["cond_encoder"].run(None, {"cond": cond})))
        x = ctx.noise.initial
        for i, (t, s) in enumerate(schedule):
            time_ = torch.full((ctx.batch,), t).numpy()
            c_pred, noise_pred = sessions["unet_step"].run(None, {"x_t": x.numpy(), "t": time_, **features})
            x = sampler_update(
                x, torch.from_numpy(c_pred), torch.from_numpy(noise_pred), t, s, ctx.noise.steps[i]
            )
        return torch.from_numpy(sessions["vae_decoder"].run(None, {"latents": x.numpy()})[0])

    yield run


def _engine(backend: str, cuda_graph: bool = False):
    @contextlib.contextmanager
    def path(ctx: SamplingContext) -> Iterator[Callable]:
        import irt4

        try:
            engine_class = irt4.Engine
        except (AttributeError, ImportError) as error:
            raise Skip(f"irt4.Engine is not available in this irt4 ({error})") from error
        if ctx.engine_dir is None:
            raise Skip("no --engine-dir given (irt4-build-engine --checkpoint BUNDLE --out DIR)")
        if not ctx.engine_dir.exists():
            raise Skip(f"no engine in {ctx.engine_dir}: irt4-build-engine did not write one")
        if cuda_graph and ctx.device.type != "cuda":
            raise Skip("needs CUDA")
        key = f"engine-{backend}"
        if key not in ctx.cache:
            ctx.cache[key] = engine_class.load(ctx.engine_dir, backend=backend)
        engine = ctx.cache[key]
        cond = ctx.cond if backend == "aoti" else ctx.cond.cpu()
        if cuda_graph:
            yield lambda: engine.sample(cond, ctx.noise, cuda_graph=True)
        else:
            yield lambda: engine.sample(cond, ctx.noise)

    return path


@dataclass(frozen=True)
class SamplingPath:
    name: str
    dtype: torch.dtype
    open: Callable[[SamplingContext], contextlib.AbstractContextManager]
    cpu_only: bool = False  # runs on the CPU whatever --device is (measured at --cpu-batches only there)
    compiles: bool = False  # its first call compiles or captures: capped by --compile-timeout
    torch_compile: bool = False  # measured at --compile-batches only


PATHS = {
    p.name: p
    for p in (
        SamplingPath("reference", torch.float32, reference),
        SamplingPath("torch", torch.float32, _eager(torch.float32, "torch")),
        SamplingPath("torch-bf16", torch.bfloat16, _eager(torch.bfloat16, "torch")),
        SamplingPath("triton-bf16", torch.bfloat16, _eager(torch.bfloat16, "triton")),
        SamplingPath("torch-nhwc-bf16", torch.bfloat16, _eager(torch.bfloat16, "torch", nhwc=True)),
        SamplingPath("triton-nhwc-bf16", torch.bfloat16, _eager(torch.bfloat16, "triton", nhwc=True)),
        SamplingPath("cudagraph-bf16", torch.bfloat16, _cuda_graph("triton"), compiles=True),
        SamplingPath("cudagraph-torch-bf16", torch.bfloat16, _cuda_graph("torch"), compiles=True),
        SamplingPath("cudagraph-nhwc-bf16", torch.bfloat16, _cuda_graph("triton", nhwc=True), compiles=True),
        SamplingPath(
            "cudagraph-regional-bf16",
            torch.bfloat16,
            _cuda_graph("torch", regional=True),
            compiles=True,
            torch_compile=True,
        ),
        SamplingPath("compile", torch.float32, _compiled(torch.float32), compiles=True, torch_compile=True),
        SamplingPath(
            "compile-bf16", torch.bfloat16, _compiled(torch.bfloat16), compiles=True, torch_compile=True
        ),
        SamplingPath(
            "compile-regional-bf16",
            torch.bfloat16,
            _eager(torch.bfloat16, "torch", regional=True),
            compiles=True,
            torch_compile=True,
        ),
        SamplingPath("onnxruntime-cpu", torch.float32, onnxruntime_cpu, cpu_only=True),
        SamplingPath("engine-aoti", torch.bfloat16, _engine("aoti")),
        SamplingPath("engine-aoti-graph", torch.bfloat16, _engine("aoti", cuda_graph=True), compiles=True),
        SamplingPath("engine-onnxruntime", torch.float32, _engine("onnxruntime"), cpu_only=True),
    )
}


def with_engine_precision(path: SamplingPath, engine_dir: Path | None) -> SamplingPath:
    """An engine-aoti path labelled with the precision its engine was built in (engine.json), since
    irt4-build-engine builds fp32 by default and bench/gpu.sh builds bf16."""
    if not path.name.startswith("engine-aoti") or engine_dir is None:
        return path
    try:
        precision = json.loads((Path(engine_dir) / "engine.json").read_text())["precision"]
    except (OSError, ValueError, KeyError):
        return path
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    return dataclasses.replace(path, dtype=dtypes.get(precision, path.dtype))


def output_difference(got: torch.Tensor, expected: torch.Tensor) -> dict[str, float]:
    diff = (got.detach().float().cpu() - expected.float().cpu()).flatten()
    return {
        "rel_err": float(diff.norm() / expected.float().flatten().norm().clamp_min(1e-30)),
        "max_abs_err": float(diff.abs().max()),
    }
