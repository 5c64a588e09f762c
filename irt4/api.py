"""irt4's Python API: load a model, predict radio maps as path gain in dB.

    import irt4
    model = irt4.load()                                   # the bundled default model
    gain_db = model.predict(buildings, (row, col), steps=3, seed=0)

`irt4.load(source)` takes a bundle (.safetensors) or training checkpoint (.pt) of a diffusion model
or of a baseline regressor, or an engine directory of irt4-build-engine. `predict` takes one building
map (256 x 256, 1 m pixels, nonzero = building) or a batch of them, and one transmitter pixel
(row, col) per map; it returns float32 path gain in dB, NaN on building pixels. Inputs are turned
into the model's condition exactly as irt4-infer --maps does, and sampled with the same per-pair
noise (irt4.infer.pair_noise), so the same seed gives the same maps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from irt4.errors import InputError

MAP_SIZE = 256


@dataclass
class Model:
    """A loaded model (irt4.load): `predict` turns building maps and transmitters into gain in dB."""

    sampler: object  # irt4.infer's Sampler, EngineSampler or RegressorSampler
    cfg: object
    kind: str  # "diffusion", "regressor" or "engine"
    source: str

    def predict(
        self,
        buildings: np.ndarray,
        tx,
        steps: int | None = None,
        seed: int = 0,
        batch_size: int = 8,
        noise_ids=None,
    ) -> np.ndarray:
        """Path gain in dB, (256, 256) for one map or (B, 256, 256) for a batch, NaN on buildings.

        buildings: (256, 256) or (B, 256, 256), nonzero = building (bool, 0/1 or 0/255 grey).
        tx: (row, col) for one map, or (B, 2). steps: sampling steps (default: the model's; unused by a
        regressor). seed: the sampler noise of map b comes from (seed, b), or from (seed, noise_ids[b]) where
        given, so that a map keeps its noise whichever call it is predicted in."""
        from irt4.infer import Pair, sample_batch

        maps, rows_cols, single = _check_inputs(buildings, tx)
        steps = steps or self.cfg.diffusion.sampling_steps
        if steps < 1 or batch_size < 1:
            raise InputError("steps and batch_size must be at least 1")
        if hasattr(self.sampler, "options"):  # an engine takes the step count from the noise it is given
            self.sampler.options.steps = steps
        conds = [self._condition(m, r, c) for m, (r, c) in zip(maps, rows_cols)]
        ids = list(range(len(conds))) if noise_ids is None else [int(i) for i in noise_ids]
        if len(ids) != len(conds):
            raise InputError(f"{len(conds)} building maps but {len(ids)} noise ids")
        grey = []
        for start in range(0, len(conds), batch_size):
            cond = torch.stack(conds[start : start + batch_size])
            pairs = [Pair(ids[start + i], 0) for i in range(len(cond))]
            grey.append(sample_batch(self.sampler, cond, pairs, steps, seed).numpy())
        low, high = self.cfg.data.gain_db_range
        gain = (low + (high - low) * np.concatenate(grey)).astype(np.float32)
        gain[maps > 0] = np.nan
        return gain[0] if single else gain

    def _condition(self, buildings: np.ndarray, row: int, col: int) -> torch.Tensor:
        from irt4.data.condition import condition_image
        from irt4.data.pngio import transmitter_image

        d = self.cfg.data
        transmitter = transmitter_image(buildings.shape, row, col)
        return condition_image(
            buildings.astype(np.float32),
            transmitter,
            row,
            col,
            d.condition,
            self.cfg.image_size,
            d.gain_db_range,
        )


def _check_inputs(buildings, tx) -> tuple[np.ndarray, list[tuple[int, int]], bool]:
    maps = np.asarray(buildings)
    single = maps.ndim == 2
    if single:
        maps = maps[None]
    if maps.ndim != 3 or maps.shape[1:] != (MAP_SIZE, MAP_SIZE):
        raise InputError(
            f"buildings must be ({MAP_SIZE}, {MAP_SIZE}) or (B, {MAP_SIZE}, {MAP_SIZE}), got {maps.shape}"
        )
    threshold = 127 if maps.max(initial=0) > 1 else 0.5
    maps = (maps > threshold).astype(np.uint8)
    points = np.asarray(tx, dtype=np.int64).reshape(-1, 2)
    if len(points) != len(maps):
        raise InputError(
            f"{len(maps)} building maps but {len(points)} transmitters: give one (row, col) per map"
        )
    for index, (row, col) in enumerate(points):
        if not (0 <= row < MAP_SIZE and 0 <= col < MAP_SIZE):
            raise InputError(
                f"transmitter {index} at ({row}, {col}) lies outside the {MAP_SIZE} x {MAP_SIZE} map"
            )
        if maps[index, row, col]:
            raise InputError(f"transmitter {index} at ({row}, {col}) stands on a building pixel")
    return maps, [(int(r), int(c)) for r, c in points], single


def load(
    source: str | Path | None = None,
    device: str = "cpu",
    backend: str = "auto",
    precision: str = "fp32",
) -> Model:
    """A model ready to predict. source: a bundle or checkpoint (diffusion or regressor), an engine
    directory, or None for the bundled default model. backend: "auto" (torch for files; for an engine
    directory aoti where its packages and the C++ engine are present, else onnxruntime), "torch",
    "torch-compile", "aoti", "onnxruntime" or "tensorrt"."""
    from irt4.infer import ENGINE_BACKENDS, InferenceOptions, make_sampler

    path = Path(source) if source is not None else _default_model()
    if not path.exists():
        raise InputError(f"{path}: no such model file or engine directory")
    options = InferenceOptions(out=Path("."), device=device, precision=precision, progress=False)
    if path.is_dir():
        options.backend = _engine_backend(path) if backend == "auto" else backend
        if options.backend not in ENGINE_BACKENDS:
            raise InputError(f"{path} is an engine directory: backend must be one of {ENGINE_BACKENDS}")
        options.engine = path
        sampler = make_sampler(None, options)
        return Model(sampler, sampler.cfg, "engine", str(path))
    options.backend = "torch" if backend == "auto" else backend
    if options.backend in ENGINE_BACKENDS:
        raise InputError(
            f"backend {options.backend} runs an engine directory (irt4-build-engine), not {path}"
        )
    from irt4.models.bundle import checkpoint_kind, load_model

    if checkpoint_kind(path) == "baseline":
        from irt4.baseline import load_baseline

        model, _ = load_baseline(path, device)
        kind = "regressor"
    else:
        model, _ = load_model(path, device)
        kind = "diffusion"
    sampler = make_sampler(model, options)
    return Model(sampler, model.cfg, kind, str(path))


def _default_model() -> Path:
    from irt4.demo import DEFAULT_MODEL

    return DEFAULT_MODEL


def _engine_backend(path: Path) -> str:
    from irt4 import engine

    if (path / "aoti").is_dir() and engine.available():
        return "aoti"
    return "onnxruntime"
