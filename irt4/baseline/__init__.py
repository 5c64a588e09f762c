"""Baselines the diffusion model is compared with (contracts.md: "The default model's baseline").

- `RadioUNetRegressor` + `predict(model, cond)`: a RadioUNet-style one-pass conv UNet trained with
  MSE (`irt4-train baseline`), saved and loaded with `save_baseline` / `load_baseline`.
- `free_space(buildings, tx_rowcol, image_size)`: free-space gain masked by line of sight, a
  reference that needs no training (beating it proves little).
"""

from irt4.baseline.bundle import load_baseline, save_baseline
from irt4.baseline.free_space import fit_offset_db, free_space, transmitter_rowcol
from irt4.baseline.regressor import RadioUNetRegressor, predict

__all__ = [
    "RadioUNetRegressor",
    "predict",
    "save_baseline",
    "load_baseline",
    "free_space",
    "fit_offset_db",
    "transmitter_rowcol",
]
