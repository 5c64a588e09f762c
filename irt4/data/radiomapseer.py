"""RadioMapSeer-layout roots as a torch Dataset (radiomapseer.md; spec: "Data").

A sample is (map m, transmitter k). Its item, at model resolution S = `image_size`:
  image    (1, S, S)     target: gain PNG / target_divisor, resized, then to [-1, 1]
  cond     (C, S, S)     the channels named by `condition` (irt4.data.channels) in [-1, 1]: by default
                         the reference's [buildings, transmitter, buildings]; the cars simulations give
                         [buildings, transmitter, cars], as the reference's cars loader builds it
  gain     (1, 256, 256) gain PNG / 255 on [0, 1] at disk resolution, for metrics (always / 255);
                         a generated root's sample may be packed (gain/{SIM}/{m}_{k}.npz,
                         irt4.data.gainpack): its grey is decoded to the PNG's exact pixels
  map_id, tx_index       ints
  tx_rowcol              (2,) long: the transmitter's (row, col) pixel on the 256 x 256 disk grid

Resizing (S != 256) follows irt4.data.condition: bilinear, antialiased when downsizing, with the
transmitter channel's peak kept at 1.

The root is checked once, at construction, cheaply: folders, every file's existence, its PNG header
(256 x 256, 8-bit grey) and its last 12 bytes (a cut file has no IEND chunk); then the building
polarity on a few maps. `validate(full=True)` decodes every file as well. Items are read with PIL and
not re-checked; the dataset holds paths and ints only, no open files, so it pickles to workers.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from irt4.config import REFERENCE_CONDITION
from irt4.data.channels import check_condition
from irt4.data.condition import condition_image, resize_maps
from irt4.data.gainpack import PACK_SUFFIX, pack_problem, read_pack
from irt4.data.pngio import MAP_SIZE, png_problem, read_grey, transmitter_image
from irt4.data.splits import GENERATED_FRACTIONS, POSITIONS, is_radiomapseer, resolve_scheme, split_map_ids
from irt4.errors import InputError

log = logging.getLogger(__name__)

SIMULATIONS = ("DPM", "IRT2", "IRT4", "carsDPM", "carsIRT2", "carsIRT4")
RADIOMAPSEER_TX = {"IRT4": 2, "carsIRT4": 2}  # WinProp's IRT4 exists for transmitters 0 and 1 only
RADIOMAPSEER_TX_DEFAULT = 80
POLARITY_MAPS = 3  # maps checked for building polarity at construction
POLARITY_TOLERANCE = 0.1  # share of building pixels allowed gain > 0 (edge effects of generated data)
_GAIN_NAME = re.compile(r"^(\d+)_(\d+)\.(?:png|npz)$")  # a gain PNG or a packed sample


def model_inputs(cfg) -> dict:
    """RadioMapSeer's keyword arguments that build the inputs a model of config `cfg` reads."""
    return {
        "image_size": cfg.image_size,
        "condition": cfg.data.condition,
        "gain_db_range": tuple(cfg.data.gain_db_range),
    }


class RadioMapSeer(Dataset):
    """Samples (map, transmitter) of one split of a RadioMapSeer-layout root.

    Args:
        root: the folder holding png/, gain/ and (optionally) antenna/.
        split: 'train', 'val', 'test' or 'all' (maps 1..700 on RadioMapSeer, every map on a generated root).
        split_scheme: 'radiounet' (disjoint 501/100/99 maps), 'radiodiff' (the reference IRT4 run's
            overlapping ranges), 'generated' (seeded shuffle of the maps present, split by fractions) or
            'auto' (radiounet on a root holding maps 1..700, generated otherwise). See irt4.data.splits.
        simulation: one of SIMULATIONS (the gain/ subfolder).
        image_size: model resolution S.
        target_divisor: 255 (default) or 256, the reference IRT4 loader's quirk (targets 0.4 % low).
        skip_bad: drop samples with a bad file, logging a warning for each (count in `skipped`),
            instead of raising InputError on the first.
        building_value: the building pixel value in png/buildings_complete (255 = building, as
            RadioMapSeer's loaders read it; 0 for a root with the opposite polarity). Checked on load.
        map_ids: only these maps (overrides `split`; for looking at single samples).
        split_seed, split_fractions: the 'generated' scheme's shuffle seed and (train, val, test).
        condition: the condition's channel names (the model's `data.condition`;
            irt4.data.channels); the cars simulations need the reference's three.
        gain_db_range: the data's grey-to-dB range (`data.gain_db_range`), for the free_space channel.

    On a RadioMapSeer root every map has a fixed list of transmitters (IRT4: 0 and 1, else 0..79)
    and a missing file is an error; on a generated root the transmitters of a map are those whose gain
    PNGs exist.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        split_scheme: str = "auto",
        simulation: str = "IRT4",
        image_size: int = MAP_SIZE,
        target_divisor: float = 255.0,
        skip_bad: bool = False,
        building_value: int = 255,
        map_ids: list[int] | None = None,
        split_seed: int = 0,
        split_fractions: tuple[float, float, float] = GENERATED_FRACTIONS,
        condition: tuple[str, ...] = REFERENCE_CONDITION,
        gain_db_range: tuple[float, float] = (-147.0, -47.0),
    ):
        if simulation not in SIMULATIONS:
            raise InputError(f"unknown simulation {simulation!r}; expected one of {list(SIMULATIONS)}")
        if image_size < 1:
            raise InputError(f"image_size must be positive, got {image_size}")
        if target_divisor <= 0:
            raise InputError(f"target_divisor must be positive, got {target_divisor}")
        if building_value not in (0, 255):
            raise InputError(f"building_value must be 255 or 0, got {building_value}")
        condition = check_condition(condition)  # InputError naming an unknown or empty list
        if condition != REFERENCE_CONDITION and simulation.startswith("cars"):
            raise InputError(
                f"condition {list(condition)}: {simulation} puts the cars map third, so it needs "
                f"{list(REFERENCE_CONDITION)}"
            )
        self.condition = condition
        self.gain_db_range = tuple(gain_db_range)
        self.root = Path(root)
        self.simulation = simulation
        self.image_size = image_size
        self.target_divisor = float(target_divisor)
        self.skip_bad = skip_bad
        self.building_value = building_value
        self.skipped = 0
        self.buildings_dir = self.root / "png" / "buildings_complete"
        self.antennas_dir = self.root / "png" / "antennas"
        self.gain_dir = self.root / "gain" / simulation
        self.cars_dir = self.root / "png" / "cars" if simulation.startswith("cars") else None

        building_maps = self._building_maps()
        gain_files = self._gain_files()
        # A map with gain PNGs but no buildings PNG stays in: its samples then fail validation.
        present = sorted(set(building_maps) | {m for m, _ in gain_files})
        self.split_scheme = resolve_scheme(split_scheme, present)
        if map_ids is not None:
            self.map_ids = sorted(set(map_ids))
        else:
            self.map_ids = split_map_ids(present, split, self.split_scheme, split_seed, split_fractions)
        # Without antenna PNGs, transmitter positions come from antenna/{m}.json: {m: [(row, col), ...]}
        self.json_tx = None if self.antennas_dir.is_dir() else self._read_antenna_json()
        self.samples = self._candidate_samples(gain_files)
        self.validate(full=False)
        self._check_polarity()

    # ---- reading -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        map_id, tx_index = self.samples[index]
        buildings = read_grey(self.buildings_dir / f"{map_id}.png").astype(np.float32) / 255
        if self.building_value == 0:
            buildings = 1 - buildings
        row, col, transmitter = self._transmitter(map_id, tx_index)
        gain_pixels = torch.from_numpy(self._gain_grey(map_id, tx_index).astype(np.float32))
        cars = None
        if self.cars_dir is not None:
            cars = read_grey(self.cars_dir / f"{map_id}.png").astype(np.float32) / 255
        cond = condition_image(
            buildings, transmitter, row, col, self.condition, self.image_size, self.gain_db_range, cars
        )
        return {
            "image": resize_maps(gain_pixels[None] / self.target_divisor, self.image_size) * 2 - 1,
            "cond": cond,
            "gain": gain_pixels[None] / 255,
            "map_id": map_id,
            "tx_index": tx_index,
            "tx_rowcol": torch.tensor([row, col], dtype=torch.long),
        }

    def _gain_file(self, map_id: int, tx_index: int) -> Path:
        """The sample's gain PNG, or its packed form (irt4.data.gainpack) where only that exists."""
        png = self.gain_dir / f"{map_id}_{tx_index}.png"
        packed = png.with_suffix(PACK_SUFFIX)
        return packed if not png.exists() and packed.exists() else png

    def _gain_grey(self, map_id: int, tx_index: int) -> np.ndarray:
        path = self._gain_file(map_id, tx_index)
        if path.suffix == PACK_SUFFIX:  # generated: its gain is zeroed on the buildings PNG's non-zero pixels
            return read_pack(path, read_grey(self.buildings_dir / f"{map_id}.png") > 0)[0]
        return read_grey(path)

    def _transmitter(self, map_id: int, tx_index: int) -> tuple[int, int, np.ndarray]:
        """(row, col, (256, 256) image with 1 at the transmitter) from the antenna PNG or JSON."""
        if self.json_tx is not None:
            row, col = self.json_tx[map_id][tx_index]
            return row, col, transmitter_image((MAP_SIZE, MAP_SIZE), row, col)
        path = self.antennas_dir / f"{map_id}_{tx_index}.png"
        pixels = read_grey(path)
        row, col = divmod(int(pixels.argmax()), pixels.shape[1])
        if pixels[row, col] != 255:
            raise InputError(f"{path}: no transmitter pixel (no value 255)")
        return row, col, pixels.astype(np.float32) / 255

    # ---- the root's contents -------------------------------------------------------------------

    def _building_maps(self) -> list[int]:
        if not self.root.is_dir():
            raise InputError(f"{self.root}: no such folder")
        for folder in (self.buildings_dir, self.gain_dir, self.cars_dir):
            if folder is not None and not folder.is_dir():
                raise InputError(f"{folder}: missing folder (the RadioMapSeer layout needs it)")
        if not self.antennas_dir.is_dir() and not (self.root / "antenna").is_dir():
            raise InputError(f"{self.antennas_dir}: missing folder, and no antenna/ JSON folder either")
        present = sorted(int(p.stem) for p in self.buildings_dir.glob("*.png") if p.stem.isdigit())
        if not present:
            raise InputError(f"{self.buildings_dir}: holds no map PNGs ({{m}}.png): empty root")
        return present

    def _gain_files(self) -> set[tuple[int, int]]:
        found = (_GAIN_NAME.match(p.name) for p in self.gain_dir.iterdir())
        return {(int(m[1]), int(m[2])) for m in found if m}

    def _candidate_samples(self, gain_files: set[tuple[int, int]]) -> list[tuple[int, int]]:
        if self.split_scheme in POSITIONS:
            n_tx = RADIOMAPSEER_TX.get(self.simulation, RADIOMAPSEER_TX_DEFAULT)
            return [(m, k) for m in self.map_ids for k in range(n_tx)]
        wanted = set(self.map_ids)
        samples = sorted(sample for sample in gain_files if sample[0] in wanted)
        if not samples:
            raise InputError(
                f"{self.gain_dir}: no gain maps ({{m}}_{{k}}.png or packed .npz) for the maps of this split"
            )
        return samples

    def _read_antenna_json(self) -> dict[int, list[tuple[int, int]]]:
        """antenna/{m}.json holds [x, y] = [col, row] per transmitter; converted to (row, col) here."""
        positions = {}
        for map_id in self.map_ids:
            path = self.root / "antenna" / f"{map_id}.json"
            try:
                positions[map_id] = [(round(y), round(x)) for x, y in json.loads(path.read_text())]
            except FileNotFoundError:
                positions[map_id] = []  # its samples are reported as bad by validate()
            except (ValueError, TypeError) as error:
                raise InputError(f"{path}: not a list of [x, y] pixel positions ({error})") from None
        return positions

    def _sample_files(self, map_id: int, tx_index: int) -> list[Path]:
        files = [self.buildings_dir / f"{map_id}.png", self._gain_file(map_id, tx_index)]
        if self.json_tx is None:
            files.append(self.antennas_dir / f"{map_id}_{tx_index}.png")
        if self.cars_dir is not None:
            files.append(self.cars_dir / f"{map_id}.png")
        return files

    def _sample_problem(self, map_id: int, tx_index: int, full: bool, checked: dict[Path, str | None]):
        for path in self._sample_files(map_id, tx_index):
            if path not in checked:
                if path.suffix == PACK_SUFFIX:
                    checked[path] = self._pack_problem(path, map_id, full)
                else:
                    checked[path] = png_problem(path, full=full)
            if checked[path]:
                return checked[path]
        if self.json_tx is not None:
            positions = self.json_tx[map_id]
            path = self.root / "antenna" / f"{map_id}.json"
            if tx_index >= len(positions):
                return f"{path}: no position for transmitter {tx_index} (has {len(positions)})"
            if not all(0 <= v < MAP_SIZE for v in positions[tx_index]):
                return f"{path}: transmitter {tx_index} at (row, col) {positions[tx_index]} is off the map"
        elif full:
            try:
                self._transmitter(map_id, tx_index)
            except InputError as error:
                return str(error)
        return None

    def _pack_problem(self, path: Path, map_id: int, full: bool) -> str | None:
        if not full:
            return pack_problem(path)
        buildings = self.buildings_dir / f"{map_id}.png"
        return png_problem(buildings, full=True) or pack_problem(path, read_grey(buildings) > 0)

    # ---- validation ----------------------------------------------------------------------------

    def validate(self, full: bool = True) -> int:
        """Check every sample's files (`full`: decode them too). Raises InputError on the first bad
        sample, or with `skip_bad` drops each with a warning; returns the number dropped."""
        checked: dict[Path, str | None] = {}
        kept = []
        for map_id, tx_index in self.samples:
            problem = self._sample_problem(map_id, tx_index, full, checked)
            if problem is None:
                kept.append((map_id, tx_index))
            elif self.skip_bad:
                log.warning("skipping map %d transmitter %d: %s", map_id, tx_index, problem)
            else:
                raise InputError(problem + self._missing_map_hint(map_id))
        dropped = len(self.samples) - len(kept)
        self.samples = kept
        self.skipped += dropped
        if dropped:
            log.warning("%s: skipped %d bad samples, %d left", self.root, dropped, len(kept))
        if not kept:
            raise InputError(f"{self.root}: no usable samples for simulation {self.simulation}")
        return dropped

    def _missing_map_hint(self, map_id: int) -> str:
        if self.split_scheme in POSITIONS and not (self.buildings_dir / f"{map_id}.png").exists():
            if not is_radiomapseer(int(p.stem) for p in self.buildings_dir.glob("*.png") if p.stem.isdigit()):
                return (
                    f" (the {self.split_scheme} split needs RadioMapSeer's maps 1..700; "
                    "for a generated root use split_scheme 'auto' or 'generated')"
                )
        return ""

    def _check_polarity(self) -> None:
        """Gain is 0 inside buildings in every gain map (radiomapseer.md), so the pixels this loader
        takes for buildings must be dark in the gain maps of a few maps; else the polarity is wrong."""
        first_tx = {}
        for map_id, tx_index in self.samples:
            first_tx.setdefault(map_id, tx_index)
        for map_id, tx_index in list(first_tx.items())[:POLARITY_MAPS]:
            buildings_path = self.buildings_dir / f"{map_id}.png"
            gain_path = self._gain_file(map_id, tx_index)
            marked = read_grey(buildings_path) >= 128
            if self.building_value == 0:
                marked = ~marked
            if not marked.any() or marked.all():
                continue
            lit = self._gain_grey(map_id, tx_index) > 0
            lit_inside, lit_outside = lit[marked].mean(), lit[~marked].mean()
            if lit_inside > POLARITY_TOLERANCE:
                inverted = " (it looks inverted)" if lit_outside <= POLARITY_TOLERANCE else ""
                raise InputError(
                    f"{buildings_path}: building polarity contradicts the data{inverted}: "
                    f"{lit_inside:.0%} of the pixels taken as buildings (value {self.building_value}) "
                    f"have gain > 0 in {gain_path}, but gain is 0 inside buildings"
                )
