"""Batch radio-map construction: (map, transmitter) pairs in, radio maps and metrics out.

Pairs come from a RadioMapSeer-layout root and split (`DatasetPairs`) or from a folder of building
maps plus a transmitter list (`FolderPairs`). Each pair's sampler noise is drawn from a generator
seeded by (seed, map, transmitter), so an output does not depend on the batch it was in, on the
shard that made it or on a resumed run (up to the float rounding of batched kernels): the same
seed and batching give identical maps. Outputs that already
exist are not sampled again (resumable); metrics are computed from the written 8-bit PNGs, so a
resumed run scores exactly what a user gets.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from irt4.config import REFERENCE_CONDITION
from irt4.data.condition import condition_image
from irt4.data.pngio import MAP_SIZE, read_grey, transmitter_image
from irt4.data.radiomapseer import RadioMapSeer
from irt4.diffusion.sampler import SamplerNoise, draw_sampler_noise, sample_latents
from irt4.errors import InputError
from irt4.metrics import aggregate, radio_map_metrics
from irt4.models.layers import fold_weight_standardization
from irt4.models.precision import cast_inference_weights
from irt4.models.radiodiff import RadioDiff

log = logging.getLogger("irt4")

PREVIEW_PAIRS = 8
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TORCH_BACKENDS = ("torch", "torch-compile")
ENGINE_BACKENDS = ("onnxruntime", "tensorrt", "aoti")  # run an engine directory (--engine)


@dataclass
class Pair:
    map_id: int
    tx_index: int

    @property
    def name(self) -> str:
        return f"{self.map_id}_{self.tx_index}"


@dataclass
class PairInput:
    cond: torch.Tensor  # (3, S, S) in [-1, 1]
    buildings: torch.Tensor  # (256, 256) in {0, 1}
    gain: torch.Tensor | None  # (256, 256) ground truth in [0, 1], when known


class DatasetPairs:
    """The samples of a RadioMapSeer-layout root (validated by the dataset on construction)."""

    def __init__(self, dataset: RadioMapSeer):
        self.dataset = dataset
        self.pairs = [Pair(m, k) for m, k in dataset.samples]
        self.skipped = dataset.skipped
        self.condition = dataset.condition

    def load(self, index: int) -> PairInput:
        item = self.dataset[index]
        names = self.condition
        channel = names.index("buildings") if "buildings" in names else None
        if channel is not None and item["cond"].shape[-1] == MAP_SIZE:
            buildings = (item["cond"][channel] + 1) / 2
        else:
            map_id = self.pairs[index].map_id
            buildings = torch.from_numpy(read_grey(self.dataset.buildings_dir / f"{map_id}.png") / 255.0)
        return PairInput(item["cond"], (buildings > 0.5).float(), item["gain"][0])


def _read_tx_list(path: Path) -> list[tuple[int, int, int, int]]:
    """(map_id, tx_index, row, col) rows of a CSV (header map_id,tx_index,row,col) or JSON list."""
    if not path.is_file():
        raise InputError(f"transmitter list {path} does not exist")
    fields = ("map_id", "tx_index", "row", "col")
    try:
        if path.suffix == ".json":
            rows = json.loads(path.read_text())
        else:
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                if reader.fieldnames is None or [n.strip() for n in reader.fieldnames] != list(fields):
                    raise InputError(f"{path}: header must be {','.join(fields)}, got {reader.fieldnames}")
                rows = list(reader)
        return [tuple(int(row[name]) for name in fields) for row in rows]
    except InputError:
        raise
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"{path}: every row needs integer {', '.join(fields)} ({err})") from None


class FolderPairs:
    """Building maps `DIR/{map_id}.png` (256 x 256 grey, 255 = building) and a transmitter list."""

    def __init__(
        self,
        maps_dir: Path,
        tx_file: Path,
        image_size: int,
        skip_bad: bool = False,
        condition: tuple[str, ...] = REFERENCE_CONDITION,
        gain_db_range: tuple[float, float] = (-147.0, -47.0),
    ):
        if not maps_dir.is_dir():
            raise InputError(f"building map folder {maps_dir} does not exist")
        self.maps_dir, self.image_size = maps_dir, image_size
        self.condition, self.gain_db_range = tuple(condition), tuple(gain_db_range)
        self.pairs: list[Pair] = []
        self.positions: dict[tuple[int, int], tuple[int, int]] = {}
        self.skipped = 0
        buildings_cache: dict[int, np.ndarray] = {}
        for map_id, tx_index, row, col in _read_tx_list(tx_file):
            try:
                if map_id not in buildings_cache:
                    buildings_cache[map_id] = self._read_buildings(map_id)
                self._check_transmitter(buildings_cache[map_id], map_id, tx_index, row, col)
            except InputError as err:
                if not skip_bad:
                    raise
                log.warning("skipping pair %d_%d: %s", map_id, tx_index, err)
                self.skipped += 1
                continue
            self.pairs.append(Pair(map_id, tx_index))
            self.positions[(map_id, tx_index)] = (row, col)
        if not self.pairs and not self.skipped:
            raise InputError(f"{tx_file}: no transmitters listed")

    def _read_buildings(self, map_id: int) -> np.ndarray:
        path = self.maps_dir / f"{map_id}.png"
        pixels = read_grey(path)
        if pixels.shape != (MAP_SIZE, MAP_SIZE):
            raise InputError(
                f"{path}: is {pixels.shape[1]}x{pixels.shape[0]}, expected {MAP_SIZE}x{MAP_SIZE}"
            )
        return (pixels > 127).astype(np.float32)

    @staticmethod
    def _check_transmitter(buildings: np.ndarray, map_id: int, tx_index: int, row: int, col: int) -> None:
        if not (0 <= row < MAP_SIZE and 0 <= col < MAP_SIZE):
            raise InputError(f"transmitter {map_id}_{tx_index} at (row {row}, col {col}) is outside the map")
        if buildings[row, col] > 0:
            raise InputError(f"transmitter {map_id}_{tx_index} at (row {row}, col {col}) is on a building")

    def load(self, index: int) -> PairInput:
        pair = self.pairs[index]
        buildings = self._read_buildings(pair.map_id)
        row, col = self.positions[(pair.map_id, pair.tx_index)]
        transmitter = transmitter_image(buildings.shape, row, col)
        cond = condition_image(
            buildings, transmitter, row, col, self.condition, self.image_size, self.gain_db_range
        )
        return PairInput(cond, torch.from_numpy(buildings), None)


@dataclass
class InferenceOptions:
    out: Path
    batch_size: int = 8
    steps: int = 50
    seed: int = 0
    precision: str = "fp32"
    device: str = "cpu"
    backend: str = "torch"
    engine: Path | None = None  # the engine directory of the engine backends
    shard: tuple[int, int] = (0, 1)
    save_db: bool = False
    overwrite: bool = False
    mask_buildings: bool = False
    zero_buildings: bool = True  # building pixels hold no signal in the layout: write them as 0
    progress: bool = True


@dataclass
class InferenceResult:
    written: int = 0
    reused: int = 0
    seconds: float = 0.0
    per_pair_metrics: list[dict] = field(default_factory=list)
    summary: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def maps_per_s(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else float("nan")


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise InputError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if not 0 <= index < count:
        raise InputError(f"--shard {text}: need 0 <= i < n")
    return index, count


def shard_indices(count: int, shard: tuple[int, int]) -> list[int]:
    index, shards = shard
    return list(range(index, count, shards))


def pair_noise(model, pairs: list[Pair], steps: int, seed: int) -> SamplerNoise:
    """The sampler noise of each pair from its own generator, stacked into a batch. `model`: anything
    with the model's `cfg` and `latent_shape` (a RadioDiff, an engine sampler)."""
    draws = []
    for pair in pairs:
        pair_seed = int(np.random.SeedSequence([seed, pair.map_id, pair.tx_index]).generate_state(1)[0])
        generator = torch.Generator().manual_seed(pair_seed)
        draws.append(
            draw_sampler_noise((1, *model.latent_shape), steps, model.cfg.diffusion.denoise, generator)
        )
    return SamplerNoise(torch.cat([d.initial for d in draws]), torch.cat([d.steps for d in draws], dim=1))


def sample_batch(sampler, cond: torch.Tensor, pairs: list[Pair], steps: int, seed: int) -> torch.Tensor:
    """(B, 1, 256, 256) maps in [0, 1] of one batch of conditions, each pair with its own noise
    (pair_noise; a regressor takes none): the one sampling step of irt4-infer, the demo and irt4.load's
    Model.predict."""
    noise = None if sampler.latent_shape is None else pair_noise(sampler, pairs, steps, seed)
    return sampler(cond, noise)


def _batches(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Sampler:
    """The PyTorch backends: eager or torch.compile, at a given precision, on a device."""

    def __init__(self, model: RadioDiff, options: InferenceOptions):
        if options.precision not in PRECISIONS:
            raise InputError(f"--precision must be one of {list(PRECISIONS)}, got {options.precision!r}")
        if options.backend not in TORCH_BACKENDS:
            raise InputError(f"--backend must be torch or torch-compile, got {options.backend!r}")
        self.model, self.options = model, options
        self.cfg, self.latent_shape = model.cfg, model.latent_shape
        self.unet = model.unet
        self.dtype = PRECISIONS[options.precision]
        fold_weight_standardization(self.unet, self.dtype)  # once, not at every one of the N + 1 calls
        # reduced precision: weights cast once and stored channels_last, for the sampler's lifetime
        # (irt4.models.precision; on a CPU with bf16 matrix units 8.8x the fp32 reference at the 256
        # preset where autocast alone is 4.8x, bench/results/cpu-preset/)
        self.channels_last = self.dtype != torch.float32
        if self.channels_last:
            cast_inference_weights(model, self.dtype, channels_last=True)
        if options.backend == "torch-compile":
            self.unet.denoise = torch.compile(self.unet.denoise)

    @torch.no_grad()
    def __call__(self, cond: torch.Tensor, noise: SamplerNoise) -> torch.Tensor:
        device = torch.device(self.options.device)
        autocast = self.dtype != torch.float32
        with torch.autocast(device.type, dtype=self.dtype, enabled=autocast):
            cond = cond.to(device)
            if self.channels_last:
                cond = cond.contiguous(memory_format=torch.channels_last)
            latents = sample_latents(
                self.unet,
                cond,
                self.model.latent_shape,
                steps=self.options.steps,
                eps=self.model.cfg.diffusion.eps,
                denoise=self.model.cfg.diffusion.denoise,
                noise=noise,
                schedule_dtype=self.model.cfg.diffusion.schedule_dtype,
            )
            maps = self.model.decode_latents(latents.float(), self.model.mean_latents(cond))
        return _on_disk_grid(maps)


class EngineSampler:
    """The engine backends (onnxruntime, tensorrt, aoti): an engine directory of irt4-build-engine,
    run by `irt4.engine.runtime.Engine` on the device and in the precision it was built for."""

    def __init__(self, options: InferenceOptions):
        from irt4.engine.runtime import Engine

        if options.engine is None:
            raise InputError(
                f"--backend {options.backend} needs --engine ENGINE_DIR (made by irt4-build-engine)"
            )
        self.engine = Engine.load(options.engine, options.backend)
        self.cfg, self.latent_shape = self.engine.cfg, self.engine.latent_shape

    def __call__(self, cond: torch.Tensor, noise: SamplerNoise) -> torch.Tensor:
        return _on_disk_grid(self.engine.sample(cond, noise))


class RegressorSampler:
    """A one-pass regressor (irt4.baseline's RadioUNet-style UNet): no latent, no noise, one call."""

    latent_shape = None

    def __init__(self, model, options: InferenceOptions):
        if options.backend not in TORCH_BACKENDS:
            raise InputError(f"a baseline regressor runs on the torch backends, not {options.backend!r}")
        self.model, self.options, self.cfg = model, options, model.cfg
        self.dtype = PRECISIONS[options.precision]

    @torch.no_grad()
    def __call__(self, cond: torch.Tensor, noise: SamplerNoise | None) -> torch.Tensor:
        from irt4.baseline import predict

        device = torch.device(self.options.device)
        with torch.autocast(device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            return _on_disk_grid(predict(self.model, cond.to(device)).float())


def _on_disk_grid(maps: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) maps -> (B, 256, 256) on the CPU: back to the disk grid in the [0, 1] grey domain
    (contracts.md: "Metrics details")."""
    if maps.shape[-1] != MAP_SIZE:
        maps = F.interpolate(maps.float(), size=(MAP_SIZE, MAP_SIZE), mode="bilinear", antialias=True)
    return maps[:, 0].float().clamp(0, 1).cpu()


def zero_building_pixels(maps: torch.Tensor, buildings: torch.Tensor) -> torch.Tensor:
    """(B, 256, 256) maps with their building pixels set to 0, the value every gain map of the
    layout holds there (radiomapseer.md). A model at a lower resolution blurs the building edges when
    its output is resized to 256 x 256; the building map at full resolution restores them exactly."""
    return maps * (1 - buildings.to(maps.dtype))


def write_png(path: Path, values: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.png")
    Image.fromarray(values, mode="L").save(tmp)
    tmp.replace(path)  # a crash never leaves a half-written PNG under the final name


def make_sampler(model, options: InferenceOptions) -> Sampler | EngineSampler | RegressorSampler:
    """The sampler of `options.backend`: the model's (torch backends) or an engine directory's."""
    if options.backend in ENGINE_BACKENDS:
        return EngineSampler(options)
    from irt4.baseline import RadioUNetRegressor

    if isinstance(model, RadioUNetRegressor):
        return RegressorSampler(model, options)
    if model is None:
        raise InputError(f"--backend {options.backend} needs --checkpoint")
    return Sampler(model, options)


def run_inference(model, source, options: InferenceOptions) -> InferenceResult:
    """Sample every pair of this shard that has no output yet, write PNGs (and dB arrays), score.
    `model`: a RadioDiff, an irt4.baseline regressor, or None for the engine backends (they carry
    their own config)."""
    from tqdm import tqdm

    options.out.mkdir(parents=True, exist_ok=True)
    sampler = make_sampler(model, options)
    db_range = sampler.cfg.data.gain_db_range
    db_low, db_high = db_range
    indices = shard_indices(len(source.pairs), options.shard)
    todo = [
        i for i in indices if options.overwrite or not (options.out / f"{source.pairs[i].name}.png").exists()
    ]
    result = InferenceResult(reused=len(indices) - len(todo))
    preview = set(indices[:PREVIEW_PAIRS])
    kept: dict[int, PairInput] = {}  # the preview's inputs, so no pair is read twice
    metrics: dict[int, dict | None] = {}
    bar = tqdm(total=len(todo), unit="map", disable=not options.progress, desc="sampling")
    for batch in _batches(todo, options.batch_size):
        inputs = [source.load(i) for i in batch]
        pairs = [source.pairs[i] for i in batch]
        start = time.perf_counter()
        cond = torch.stack([x.cond for x in inputs])
        maps = sample_batch(sampler, cond, pairs, options.steps, options.seed)
        if options.zero_buildings:
            maps = zero_building_pixels(maps, torch.stack([x.buildings for x in inputs]))
        result.seconds += time.perf_counter() - start
        for index, pair, item, radio in zip(batch, pairs, inputs, maps):
            grey = np.round(radio.numpy() * 255).astype(np.uint8)
            write_png(options.out / f"{pair.name}.png", grey)
            if options.save_db:
                np.save(
                    options.out / f"{pair.name}.npy",
                    (db_low + (db_high - db_low) * radio.numpy()).astype(np.float32),
                )
            # the PNG is lossless: scoring `grey` scores exactly what was written
            metrics[index] = score_map(pair, item, grey, options, db_range)
            if index in preview:
                kept[index] = item
        result.written += len(batch)
        bar.update(len(batch))
        bar.set_postfix(maps_per_s=f"{result.maps_per_s:.2f}")
    bar.close()
    sampled = set(todo)
    for index in (i for i in indices if i not in sampled):  # an earlier run's outputs, scored from disk
        item = source.load(index)
        if index in preview:
            kept[index] = item
        grey = read_grey(options.out / f"{source.pairs[index].name}.png")
        metrics[index] = score_map(source.pairs[index], item, grey, options, db_range)
    _write_preview(source, [i for i in indices if i in preview], options.out, kept)
    collect_metrics(result, [metrics[i] for i in indices])
    return result


def _write_preview(source, indices: list[int], out: Path, inputs: dict[int, PairInput]) -> None:
    """preview.png: condition, prediction, ground truth and error of the first pairs, coloured
    (`inputs`: each of those pairs' loaded input)."""
    from irt4.data.condition import display_channels
    from irt4.train.logs import save_sample_grid

    if not indices:
        return
    items = [inputs[i] for i in indices]
    predicted = torch.stack(
        [
            torch.from_numpy(read_grey(out / f"{source.pairs[i].name}.png") / 255.0).float()[None]
            for i in indices
        ]
    )
    target = None if any(x.gain is None for x in items) else torch.stack([x.gain[None] for x in items])
    shown = display_channels(torch.stack([x.cond for x in items]), source.condition)
    save_sample_grid(out / "preview.png", predicted, target, shown)


def score_map(pair: Pair, item: PairInput, grey: np.ndarray, options, db_range) -> dict | None:
    """The metrics row of one written map (8-bit grey) against its ground truth; None without one."""
    if item.gain is None:
        return None
    predicted = torch.from_numpy(grey.astype(np.float64) / 255)
    outdoor = (1 - item.buildings)[None] if options.mask_buildings else None
    values = radio_map_metrics(predicted[None], item.gain.double()[None], db_range, outdoor)
    return {"map_id": pair.map_id, "tx_index": pair.tx_index, **{k: v.item() for k, v in values.items()}}


def collect_metrics(result: InferenceResult, rows: list[dict | None]) -> None:
    """The per-pair rows (None: a pair without ground truth) and their summary, into `result`."""
    rows = [row for row in rows if row is not None]
    result.per_pair_metrics = rows
    if rows:
        names = [k for k in rows[0] if k not in ("map_id", "tx_index")]
        result.summary = aggregate({n: torch.tensor([row[n] for row in rows]) for n in names})


def write_metrics(result: InferenceResult, options: InferenceOptions, protocol: dict) -> list[Path]:
    """metrics[-shard].csv (one row per pair) and .json (protocol, summary, pairs)."""
    if not result.per_pair_metrics:
        return []
    suffix = "" if options.shard[1] == 1 else f"-shard{options.shard[0]}of{options.shard[1]}"
    csv_path = options.out / f"metrics{suffix}.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(result.per_pair_metrics[0]))
        writer.writeheader()
        writer.writerows(result.per_pair_metrics)
    json_path = options.out / f"metrics{suffix}.json"
    summary = {name: {"mean": mean, "std": std} for name, (mean, std) in result.summary.items()}
    json_path.write_text(
        json.dumps(
            {
                "protocol": protocol,
                "count": len(result.per_pair_metrics),
                "summary": summary,
                "pairs": result.per_pair_metrics,
            },
            indent=1,
        )
    )
    return [csv_path, json_path]
