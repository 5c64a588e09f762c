"""Dihedral augmentation: each training sample in its 8 flips and 90-degree rotations.

Radio propagation over a flat city has no preferred direction, so rotating or mirroring the
building map and the transmitter position rotates or mirrors the radio map the same way: the
transformed triple is itself a physically valid sample. Transform k (0..7) is `k // 4` mirror(s)
of the columns, then `k % 4` counter-clockwise quarter turns (torch.rot90 on the last two dims).

The augmented set is n x 8 items long (item i is sample i % n under transform i // n), so the
trainer's sample stream (irt4.train.data) shuffles transforms and samples together: the order is
deterministic given the seed and resumes bitwise from `consumed`, with no random state of its own.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

DIHEDRAL = 8  # transforms: identity, 3 rotations, a mirror and the mirror followed by 3 rotations


def dihedral(maps: torch.Tensor, k: int) -> torch.Tensor:
    """(..., H, W) square maps under transform k."""
    if k // 4:
        maps = maps.flip(-1)
    return torch.rot90(maps, k % 4, dims=(-2, -1)) if k % 4 else maps


def inverse_dihedral(maps: torch.Tensor, k: int) -> torch.Tensor:
    """Undoes `dihedral(., k)`."""
    if k % 4:
        maps = torch.rot90(maps, -(k % 4), dims=(-2, -1))
    return maps.flip(-1) if k // 4 else maps


def dihedral_rowcol(row: int, col: int, size: int, k: int) -> tuple[int, int]:
    """Where pixel (row, col) of a size x size map lands under transform k."""
    if k // 4:
        col = size - 1 - col
    for _ in range(k % 4):  # a counter-clockwise quarter turn: new[i, j] = old[j, size - 1 - i]
        row, col = size - 1 - col, row
    return row, col


class DihedralAugmented(Dataset):
    """Items of `dataset` (RadioMapSeer's) in all 8 transforms: `image`, `cond` and `gain` maps and
    the `tx_rowcol` pixel transform together; `augment` holds the transform's index."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset) * DIHEDRAL

    def __getitem__(self, index: int) -> dict:
        k, sample = divmod(index, len(self.dataset))
        item = dict(self.dataset[sample])
        for key in ("image", "cond", "gain"):
            item[key] = dihedral(item[key], k).contiguous()
        if "tx_rowcol" in item:
            size = item["gain"].shape[-1]
            row, col = dihedral_rowcol(int(item["tx_rowcol"][0]), int(item["tx_rowcol"][1]), size, k)
            item["tx_rowcol"] = torch.tensor([row, col], dtype=torch.long)
        item["augment"] = k
        return item


def augmented(dataset: Dataset, augment: str) -> Dataset:
    """The training set under `data.augment` ("none" or "dihedral")."""
    if augment == "dihedral":
        return DihedralAugmented(dataset)
    assert augment == "none", augment
    return dataset
