"""The model's condition image: [buildings, transmitter, buildings] in [-1, 1] (spec: "Data")."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def condition_tensor(buildings: np.ndarray, transmitter: np.ndarray, image_size: int) -> torch.Tensor:
    """Two (H, W) maps in [0, 1] -> (3, image_size, image_size) in [-1, 1], resized bilinearly."""
    stacked = torch.from_numpy(np.stack([buildings, transmitter, buildings]).astype(np.float32))
    if stacked.shape[-1] != image_size:
        stacked = F.interpolate(
            stacked[None], size=(image_size, image_size), mode="bilinear", align_corners=False
        )[0]
    return stacked * 2 - 1
