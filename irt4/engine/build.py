"""irt4-build-engine's library: an engine directory from a checkpoint (design card: build and run are
separate steps; contracts.md: "Sampling, noise and backends").

ENGINE_DIR holds:
- `onnx/{graph}.onnx`: the three serving graphs of `irt4.export.onnx` (fp32, dynamic batch);
- `onnxruntime/{graph}.onnx`: the same graphs after ONNX Runtime's offline graph optimization
  (`SessionOptions.optimized_model_filepath`, extended level: portable across CPUs), run in fp32;
- `aoti/{graph}.pt2`: AOTInductor packages of the folded graphs on `device`, computing in `precision`,
  with float32 at their boundary except the condition features (in `precision`), and the batch
  dynamic within [min_batch, max_batch]; the C++ engine (csrc/engine.cpp) loads them;
- `tensorrt/{graph}.plan` with a JSON tag beside each (GPU, TensorRT version, sha256 of its ONNX,
  precision, batch range; a plan is rebuilt only when its tag no longer matches) and the builder's
  `tensorrt/timing.cache`, where the Python `tensorrt` module and a GPU are present;
- `engine.json`: the manifest that `irt4.engine.runtime.Engine.load` checks before it runs anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from irt4 import __version__
from irt4.config import config_to_dict
from irt4.errors import InputError
from irt4.export.onnx import RESIDUAL_NOT_SERVED, GraphSpec, export_example_inputs, export_onnx, graph_specs
from irt4.models.kernel_switch import use_kernels
from irt4.models.layers import fold_weight_standardization
from irt4.models.radiodiff import RadioDiff

MANIFEST = "engine.json"
ENGINE_FORMAT = "irt4-engine-1"
BACKENDS = ("onnxruntime", "aoti", "tensorrt")
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
GRAPHS = ("cond_encoder", "unet_step", "vae_decoder")


@dataclass(frozen=True)
class BatchRange:
    min: int
    opt: int
    max: int

    def check(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise InputError(
                f"need 1 <= --min-batch <= --opt-batch <= --max-batch, got {self.min}, {self.opt}, {self.max}"
            )


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def gpu_name(device: str) -> str | None:
    return torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else None


# --- AOTInductor ---------------------------------------------------------------------------------


class _AotiGraph(nn.Module):
    """One serving graph for AOTInductor: float32 in, autocast to `dtype` inside (as irt4.infer's Sampler
    runs the model), float32 out; the condition features stay in the compute precision."""

    def __init__(self, model: RadioDiff, name: str, dtype: torch.dtype, device_type: str):
        super().__init__()
        self.model, self.name, self.dtype, self.device_type = model, name, dtype, device_type

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            if self.name == "cond_encoder":
                return tuple(self.model.unet.encode_condition(inputs[0]))
            if self.name == "unet_step":
                c_pred, noise_pred = self.model.unet.denoise(inputs[0], inputs[1], inputs[2:])
                return c_pred.float(), noise_pred.float()
            return (self.model.decode_latents(inputs[0].float()).float(),)


def _aoti_example_inputs(
    model: RadioDiff, spec: GraphSpec, batch: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, ...]:
    """Export inputs: the UNet step's condition features come from the encoder graph, so they have the
    dtypes it returns under autocast."""
    inputs = tuple(x.to(device) for x in export_example_inputs(spec, batch))
    if spec.name != "unet_step":
        return inputs
    cond_spec = graph_specs(model.cfg)["cond_encoder"]
    (cond,) = (x.to(device) for x in export_example_inputs(cond_spec, batch))
    with torch.no_grad():
        features = _AotiGraph(model, "cond_encoder", dtype, device.type)(cond)
    return (*inputs[:2], *features)


def build_aoti(
    model: RadioDiff,
    out_dir: Path,
    precision: str,
    batch: BatchRange,
    device: str,
    log: Callable[[str], None] = print,
    compile_workers: int | None = None,
    max_autotune: bool = False,
    seconds: dict[str, float] | None = None,
) -> dict[str, Path]:
    """aoti/{graph}.pt2 for every graph: torch.export with a dynamic batch, then
    torch._inductor.aoti_compile_and_package. `model` must already be folded and on `device`.
    The compile-time budget: `compile_workers` parallel Inductor compile processes (default: every
    CPU), autotuning off unless `max_autotune` (it benchmarks many kernel variants per matmul and conv:
    minutes per graph at the large presets). Each graph's build time goes into `seconds`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    dtype, torch_device = PRECISIONS[precision], torch.device(device)
    # an example batch of 1 would let export specialize the batch axis
    example = max(2, min(batch.opt, batch.max))
    batch_dim = torch.export.Dim("batch", min=batch.min, max=max(batch.max, 2))
    paths = {}
    for name, spec in graph_specs(model.cfg).items():
        inputs = _aoti_example_inputs(model, spec, example, dtype, torch_device)
        dynamic = tuple({0: batch_dim} for _ in inputs)
        with torch.no_grad():
            program = torch.export.export(
                _AotiGraph(model, name, dtype, torch_device.type), inputs, dynamic_shapes=(dynamic,)
            )
            path = out_dir / f"{name}.pt2"
            log(f"  compiling {path.name} with AOTInductor on {device} ({precision})")
            start = time.perf_counter()
            with torch._inductor.config.patch(
                compile_threads=compile_workers or os.cpu_count() or 1,
                max_autotune=max_autotune,
                max_autotune_gemm=max_autotune,
            ):
                torch._inductor.aoti_compile_and_package(program, package_path=str(path))
            elapsed = time.perf_counter() - start
            log(f"  {path.name}: {elapsed:.1f} s")
            if seconds is not None:
                seconds[name] = round(elapsed, 2)
        paths[name] = path
    return paths


# --- ONNX Runtime --------------------------------------------------------------------------------


def build_onnxruntime(onnx_paths: dict[str, Path], out_dir: Path) -> dict[str, Path]:
    """onnxruntime/{graph}.onnx: each graph after ONNX Runtime's extended graph optimizations."""
    import onnxruntime as ort

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, source in onnx_paths.items():
        options = ort.SessionOptions()
        # extended, not all: the "all" level writes CPU-specific layouts into the saved model
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(out_dir / source.name)
        ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
        paths[name] = out_dir / source.name
    return paths


# --- TensorRT ------------------------------------------------------------------------------------


def tensorrt_unavailable(device: str) -> str | None:
    """Why TensorRT engines cannot be built here, or None if they can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as err:
        return f"the Python tensorrt module is not installed ({err}; pip install 'irt4[trt]')"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    if not device.startswith("cuda"):
        return f"--device is {device}; TensorRT engines are built with --device cuda"
    return None


def _tensorrt_tag(onnx_path: Path, precision: str, batch: BatchRange, device: str) -> dict:
    import tensorrt as trt

    return {
        "gpu": gpu_name(device),
        "tensorrt": trt.__version__,
        "onnx_sha256": sha256(onnx_path),
        "precision": precision,
        "batch": [batch.min, batch.opt, batch.max],
    }


def build_tensorrt(
    onnx_paths: dict[str, Path],
    specs: dict[str, GraphSpec],
    out_dir: Path,
    precision: str,
    batch: BatchRange,
    device: str,
    log: Callable[[str], None] = print,
) -> dict[str, Path]:
    """tensorrt/{graph}.plan with one optimization profile over the batch range; a plan whose JSON tag
    still matches (same GPU, TensorRT, ONNX hash, precision, batch range) is kept as it is."""
    import tensorrt as trt

    out_dir.mkdir(parents=True, exist_ok=True)
    logger = trt.Logger(trt.Logger.WARNING)
    cache_path = out_dir / "timing.cache"
    paths = {}
    with torch.cuda.device(torch.device(device)):
        for name, onnx_path in onnx_paths.items():
            plan_path, tag_path = out_dir / f"{name}.plan", out_dir / f"{name}.plan.json"
            tag = _tensorrt_tag(onnx_path, precision, batch, device)
            if plan_path.is_file() and tag_path.is_file() and json.loads(tag_path.read_text()) == tag:
                log(f"  {plan_path.name} is up to date (its tag matches)")
                paths[name] = plan_path
                continue
            log(f"  building {plan_path.name} with TensorRT {trt.__version__} ({precision})")
            builder = trt.Builder(logger)
            # TensorRT 10 networks are always explicit-batch; 8.x needs the flag
            major = int(trt.__version__.split(".")[0])
            flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
            network = builder.create_network(flags)
            parser = trt.OnnxParser(network, logger)
            if not parser.parse_from_file(str(onnx_path)):
                errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
                raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
            config = builder.create_builder_config()
            if precision == "fp16":
                config.set_flag(trt.BuilderFlag.FP16)
            elif precision == "bf16":
                config.set_flag(trt.BuilderFlag.BF16)
            cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
            config.set_timing_cache(cache, ignore_mismatch=False)
            profile = builder.create_optimization_profile()
            for tensor in specs[name].inputs:
                profile.set_shape(
                    tensor.name,
                    tensor.example_shape(batch.min),
                    tensor.example_shape(batch.opt),
                    tensor.example_shape(batch.max),
                )
            config.add_optimization_profile(profile)
            plan = builder.build_serialized_network(network, config)
            if plan is None:
                raise RuntimeError(f"TensorRT failed to build {plan_path.name} (see its log above)")
            plan_path.write_bytes(bytes(plan))
            cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
            tag_path.write_text(json.dumps(tag, indent=1))
            paths[name] = plan_path
    return paths


# --- the whole directory -------------------------------------------------------------------------


def build_engine(
    model: RadioDiff,
    out: str | Path,
    precision: str = "fp32",
    batch: BatchRange = BatchRange(1, 8, 32),
    device: str = "cpu",
    backends: Sequence[str] = BACKENDS,
    checkpoint: Path | None = None,
    log: Callable[[str], None] = print,
    compile_workers: int | None = None,
    max_autotune: bool = False,
) -> dict:
    """Write ENGINE_DIR for `model` (loaded on the CPU, eval mode; it is folded and moved here) and
    return the manifest. Backends that cannot be built here are skipped with the reason, logged and
    recorded in the manifest. The ONNX graphs are written where a backend needs them (onnxruntime,
    tensorrt) and onnx and onnxruntime are installed: the export of a large preset takes minutes."""
    if precision not in PRECISIONS:
        raise InputError(f"--precision must be one of {list(PRECISIONS)}, got {precision!r}")
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        raise InputError(f"--backends: unknown {unknown}, choose from {list(BACKENDS)}")
    batch.check()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA GPU is visible")
    if model.cfg.diffusion.residual:
        raise InputError(RESIDUAL_NOT_SERVED)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    use_kernels(model, "torch")  # the compilers fuse their own kernels from the PyTorch ops
    specs = graph_specs(model.cfg)

    files: dict[str, dict[str, Path]] = {}
    skipped: dict[str, str] = {}
    aoti_seconds: dict[str, float] = {}
    no_onnx = _onnx_unavailable()
    if not {"onnxruntime", "tensorrt"} & set(backends):
        pass  # the AOTInductor packages are built from the model itself
    elif no_onnx is None:
        log(f"writing the ONNX graphs to {out / 'onnx'}/")
        files["onnx"] = onnx_paths = export_onnx(model, out / "onnx")
    else:
        skipped["onnx"] = no_onnx
        log(f"ONNX graphs skipped: {no_onnx}; no onnxruntime or tensorrt engine either")
    if "onnxruntime" in backends:
        if no_onnx is None:
            log("optimizing the graphs with ONNX Runtime (CPU)")
            files["onnxruntime"] = build_onnxruntime(onnx_paths, out / "onnxruntime")
        else:
            skipped["onnxruntime"] = no_onnx
    if "tensorrt" in backends:
        reason = no_onnx or tensorrt_unavailable(device)
        if reason is None:
            files["tensorrt"] = build_tensorrt(
                onnx_paths, specs, out / "tensorrt", precision, batch, device, log
            )
        else:
            skipped["tensorrt"] = reason
            log(f"TensorRT engines skipped: {reason}; the onnxruntime engine serves instead")
    if "aoti" in backends:
        log(f"building the AOTInductor packages on {device} ({precision}); this takes minutes")
        model.to(device)  # before folding: the folded weights are plain attributes, not moved by .to()
        fold_weight_standardization(model.unet, PRECISIONS[precision])  # as irt4.infer's Sampler does
        files["aoti"] = build_aoti(
            model,
            out / "aoti",
            precision,
            batch,
            device,
            log,
            compile_workers=compile_workers,
            max_autotune=max_autotune,
            seconds=aoti_seconds,
        )
        model.cpu()

    relative = {
        backend: {name: str(path.relative_to(out)) for name, path in paths.items()}
        for backend, paths in files.items()
    }
    manifest = {
        "format": ENGINE_FORMAT,
        "versions": _versions(),
        "device": device,
        "gpu": gpu_name(device),
        "precision": precision,
        "batch": {"min": batch.min, "opt": batch.opt, "max": batch.max},
        "config": config_to_dict(model.cfg),
        "scale_factor": float(model.scale_factor),
        "checkpoint": {"path": str(checkpoint), "sha256": sha256(checkpoint)} if checkpoint else None,
        "graphs": {
            name: {"inputs": [t.name for t in spec.inputs], "outputs": [t.name for t in spec.outputs]}
            for name, spec in specs.items()
        },
        "backends": relative,
        "skipped": skipped,
        "aoti_build": {"seconds": aoti_seconds, "compile_workers": compile_workers or os.cpu_count() or 1}
        | {"max_autotune": max_autotune}
        if aoti_seconds
        else None,
        "sha256": {path: sha256(out / path) for paths in relative.values() for path in paths.values()},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    log(f"wrote {out / MANIFEST}")
    return manifest


def _onnx_unavailable() -> str | None:
    """Why the ONNX graphs cannot be written here, or None if they can."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as err:
        return f"onnx or onnxruntime is not installed ({err}; pip install 'irt4[ort]')"
    return None


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {
        "irt4": __version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
    }
    for module in ("onnxruntime", "tensorrt"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            versions[module] = None
    return versions
