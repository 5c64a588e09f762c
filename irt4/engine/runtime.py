"""Running an engine directory written by irt4-build-engine (`irt4.engine.build`): `Engine.load`.

Backends:
- "aoti": the C++ loop of irt4._C (csrc/engine.cpp) over the AOTInductor packages, on the device and in
  the precision they were built for; on CUDA the whole loop can be captured in a CUDA graph per
  (batch, steps) (`cuda_graph=True`).
- "tensorrt": the same C++ loop over TensorRT plans (needs irt4._C built with TensorRT and a GPU).
- "onnxruntime": the loop in Python over ONNX Runtime sessions on the CPU, fp32.
- "auto": tensorrt where it was built and can run, else aoti where it can run, else onnxruntime.

Every backend takes the sampler noise as tensors (`SamplerNoise`, contracts.md: "Sampling, noise and
backends"), so one seed gives the maps of the Python reference sampler within tolerance. An engine
directory that does not fit this machine (missing or changed files, another torch for AOTInductor, no
GPU, a TensorRT build that is absent) is refused with an `InputError` that says what to rebuild.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from irt4 import engine as cpp
from irt4.config import Config, config_from_dict
from irt4.diffusion.sampler import SamplerNoise
from irt4.diffusion.schedule import sampler_update, sampling_schedule
from irt4.engine.build import ENGINE_FORMAT, GRAPHS, MANIFEST, sha256
from irt4.errors import InputError

log = logging.getLogger("irt4")

ENGINE_BACKENDS = ("auto", "aoti", "tensorrt", "onnxruntime")
_REBUILD = "rebuild it with irt4-build-engine"


def read_manifest(engine_dir: str | Path) -> dict:
    """ENGINE_DIR/engine.json, checked for its format; InputError naming the directory otherwise."""
    engine_dir = Path(engine_dir)
    if not engine_dir.is_dir():
        raise InputError(f"engine directory {engine_dir} does not exist (build it with irt4-build-engine)")
    path = engine_dir / MANIFEST
    if not path.is_file():
        raise InputError(f"{engine_dir} has no {MANIFEST}: not an engine directory; {_REBUILD}")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path} is not valid JSON ({err}); {_REBUILD}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != ENGINE_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise InputError(f"{path}: format {found!r}, this irt4 reads {ENGINE_FORMAT!r}; {_REBUILD}")
    return manifest


def engine_config(engine_dir: str | Path) -> Config:
    """The model config an engine directory was built from (its manifest's)."""
    try:
        return config_from_dict(read_manifest(engine_dir)["config"])
    except InputError:
        raise
    except Exception as err:
        raise InputError(
            f"{Path(engine_dir) / MANIFEST}: its config does not load ({err}); {_REBUILD}"
        ) from err


def _why_not(manifest: dict, engine_dir: Path, backend: str) -> str | None:
    """Why `backend` of this engine directory cannot run here, or None if it can."""
    built = manifest["backends"].get(backend)
    if built is None:
        reason = manifest["skipped"].get(backend, "it was not asked for (--backends)")
        return f"{engine_dir} has no {backend} engine: {reason}"
    for name in GRAPHS:
        path = engine_dir / built[name]
        if not path.is_file():
            return f"{path} is missing; {_REBUILD}"
        if sha256(path) != manifest["sha256"][built[name]]:
            return f"{path} changed since {MANIFEST} was written (stale engine directory); {_REBUILD}"
    if backend == "onnxruntime":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "onnxruntime is not installed (pip install 'irt4[ort]')"
        return None
    if not cpp.available():
        return "irt4._C is not available; build it with `pip install -e . --no-build-isolation`"
    if manifest["device"].startswith("cuda") and not torch.cuda.is_available():
        return f"{engine_dir} was built for {manifest['device']} but no CUDA GPU is visible"
    if backend == "aoti" and manifest["versions"]["torch"] != torch.__version__:
        return (
            f"{engine_dir}'s AOTInductor packages were built with torch {manifest['versions']['torch']}, "
            f"this is torch {torch.__version__}; {_REBUILD}"
        )
    if backend == "tensorrt":
        if not cpp.built_with_tensorrt():
            return "irt4._C was built without TensorRT (csrc/README.md)"
        here = torch.cuda.get_device_name(torch.device(manifest["device"]))
        if manifest["gpu"] != here:
            built_for = manifest["gpu"]
            return f"{engine_dir}'s TensorRT plans were built for {built_for}, this GPU is {here}; {_REBUILD}"
    return None


class Engine:
    """A built engine directory, ready to sample. Load it with `Engine.load(ENGINE_DIR, backend)`."""

    def __init__(self, engine_dir: Path, manifest: dict, backend: str):
        self.engine_dir, self.manifest, self.backend = engine_dir, manifest, backend
        self.cfg: Config = engine_config(engine_dir)
        if self.cfg.diffusion.schedule_dtype == "float32" and backend != "onnxruntime":
            logging.getLogger(__name__).warning(
                "%s: diffusion.schedule_dtype is float32, but the C++ engine walks the sampler's schedule "
                "in float64 (a relative difference of ~3e-5 in the latents at 50 steps)",
                engine_dir,
            )
        # the ONNX Runtime graphs are fp32 on the CPU whatever the engine was built for
        self.device = torch.device("cpu" if backend == "onnxruntime" else manifest["device"])
        self.precision = "fp32" if backend == "onnxruntime" else manifest["precision"]
        self.min_batch, self.max_batch = manifest["batch"]["min"], manifest["batch"]["max"]
        paths = [str(engine_dir / manifest["backends"][backend][name]) for name in GRAPHS]
        if backend == "onnxruntime":
            import onnxruntime as ort

            self._sessions = {
                name: ort.InferenceSession(path, providers=["CPUExecutionProvider"])
                for name, path in zip(GRAPHS, paths)
            }
        else:
            graphs = [manifest["graphs"][name] for name in GRAPHS]
            device_index = self.device.index or 0 if self.device.type == "cuda" else 0
            self._cpp = cpp.cpp_engine(backend, paths, graphs, device_index)
        self._graphs: dict[tuple[int, int], tuple] = {}  # (batch, calls) -> CUDA graph and its tensors
        self._graph_failure: str | None = None

    @classmethod
    def load(cls, engine_dir: str | Path, backend: str = "auto") -> Engine:
        """Open ENGINE_DIR (written by irt4-build-engine) with `backend`: "auto", "aoti", "tensorrt" or
        "onnxruntime". Raises InputError, with what to rebuild, where the directory does not fit."""
        engine_dir = Path(engine_dir)
        if backend not in ENGINE_BACKENDS:
            raise InputError(f"engine backend must be one of {list(ENGINE_BACKENDS)}, got {backend!r}")
        manifest = read_manifest(engine_dir)
        if backend != "auto":
            reason = _why_not(manifest, engine_dir, backend)
            if reason is not None:
                raise InputError(f"cannot run the {backend} engine: {reason}")
            return cls(engine_dir, manifest, backend)
        reasons = []
        for candidate in ("tensorrt", "aoti", "onnxruntime"):
            reason = _why_not(manifest, engine_dir, candidate)
            if reason is None:
                if reasons:
                    log.info("engine backend %s (not %s)", candidate, "; ".join(reasons))
                return cls(engine_dir, manifest, candidate)
            reasons.append(f"{candidate}: {reason}")
        raise InputError(f"no backend of {engine_dir} runs here ({'; '.join(reasons)})")

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.cfg.unet.channels, self.cfg.latent_size, self.cfg.latent_size)

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, noise: SamplerNoise, cuda_graph: bool = False) -> torch.Tensor:
        """Radio maps from condition images, like `RadioDiff.sample` with the same noise.

        cond: (B, 3, H, W) condition images in [-1, 1] (any device and float dtype; moved to the
        engine's device as float32). noise: the sampler's draws (`draw_sampler_noise` of
        (B, *latent_shape) for the number of steps wanted: N steps are N + 1 draws with the model's
        `denoise`, N without), on any device. cuda_graph: on CUDA (aoti, tensorrt) capture the whole loop
        and the decoder in one CUDA graph per (B, steps) and replay it; falls back to the eager loop,
        with a warning, where capture fails. Batches larger than the engine's max batch are run in
        chunks. Returns (B, 1, H, W) float32 radio maps in [0, 1] on the engine's device (the CPU for
        onnxruntime), the engine's precision inside.
        """
        batch = cond.shape[0]
        if noise.initial.shape != (batch, *self.latent_shape):
            raise ValueError(
                f"noise.initial has shape {tuple(noise.initial.shape)}, expected "
                f"{(batch, *self.latent_shape)} (batch of cond, the engine's latent shape)"
            )
        calls = noise.steps.shape[0]
        steps = calls - 1 if self.cfg.diffusion.denoise else calls
        if steps < 1:
            raise ValueError(f"noise has {calls} step draws: too few for one sampling step")
        maps = []
        for start in range(0, batch, self.max_batch):
            chunk = slice(start, start + self.max_batch)
            size = cond[chunk].shape[0]
            if size < self.min_batch:
                raise ValueError(f"a batch of {size} is below the engine's min batch {self.min_batch}")
            chunk_noise = SamplerNoise(noise.initial[chunk], noise.steps[:, chunk])
            maps.append(self._sample(cond[chunk], chunk_noise, steps, cuda_graph))
        return torch.cat(maps)

    def _sample(self, cond: torch.Tensor, noise: SamplerNoise, steps: int, cuda_graph: bool) -> torch.Tensor:
        cond = cond.to(self.device, torch.float32).contiguous()
        initial = noise.initial.to(self.device, torch.float32).contiguous()
        step_noise = noise.steps.to(self.device, torch.float32).contiguous()
        if self.backend == "onnxruntime":
            return self._sample_onnxruntime(cond, initial, step_noise, steps)
        if cuda_graph and self.device.type == "cuda" and self._graph_failure is None:
            try:
                return self._sample_graph(cond, initial, step_noise, steps)
            except RuntimeError as err:
                self._graph_failure = str(err)
                log.warning("CUDA graph capture failed (%s); the eager C++ loop runs instead", err)
        return self._sample_eager(cond, initial, step_noise, steps)

    def _sample_eager(
        self, cond: torch.Tensor, initial: torch.Tensor, step_noise: torch.Tensor, steps: int
    ) -> torch.Tensor:
        d = self.cfg.diffusion
        latents = cpp.engine_sample_latents(self._cpp, cond, initial, step_noise, steps, d.eps, d.denoise)
        return cpp.engine_decode(self._cpp, latents)

    def _sample_graph(
        self, cond: torch.Tensor, initial: torch.Tensor, step_noise: torch.Tensor, steps: int
    ) -> torch.Tensor:
        """Replay (capturing first if needed) the CUDA graph of this (batch, steps)."""
        key = (cond.shape[0], step_noise.shape[0])
        if key not in self._graphs:
            static = (cond.clone(), initial.clone(), step_noise.clone())
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):  # warm-up outside capture: lazy inits, TensorRT shape setup
                self._sample_eager(*static, steps)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                output = self._sample_eager(*static, steps)
            self._graphs[key] = (graph, static, output)
        graph, static, output = self._graphs[key]
        for target, source in zip(static, (cond, initial, step_noise)):
            target.copy_(source)
        graph.replay()
        return output.clone()

    def _sample_onnxruntime(
        self, cond: torch.Tensor, initial: torch.Tensor, step_noise: torch.Tensor, steps: int
    ) -> torch.Tensor:
        """The sampler loop of irt4.diffusion.sampler with ONNX Runtime sessions as the networks."""
        d, graphs = self.cfg.diffusion, self.manifest["graphs"]
        features = self._sessions["cond_encoder"].run(None, {"cond": cond.numpy()})
        feature_inputs = dict(zip(graphs["unet_step"]["inputs"][2:], features))
        x = initial
        for i, (t, s) in enumerate(sampling_schedule(steps, d.eps, d.denoise, d.schedule_dtype)):
            time = torch.full((x.shape[0],), t, dtype=torch.float32)
            c_pred, noise_pred = self._sessions["unet_step"].run(
                None, {"x_t": x.numpy(), "t": time.numpy(), **feature_inputs}
            )
            x = sampler_update(x, torch.from_numpy(c_pred), torch.from_numpy(noise_pred), t, s, step_noise[i])
        (maps,) = self._sessions["vae_decoder"].run(None, {"latents": x.contiguous().numpy()})
        return torch.from_numpy(maps)
