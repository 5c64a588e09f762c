"""A deterministic, resumable order of training samples, and the DataLoader that feeds it.

The order is one endless stream: epoch e is a permutation of the n samples drawn from a generator
seeded with (seed, e), and the epochs follow each other without a gap. A global batch is the next
world_size x batch_size items of the stream; rank r takes items r, r + world_size, ... of it, so the
union of the ranks' batches is the single-process batch of the same global size. The whole state
is the number of stream items consumed (`consumed`), saved in checkpoints; epoch and position follow.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


class StreamSampler(Sampler[int]):
    """Endless sample indices of one rank, starting `consumed` items into the global stream."""

    def __init__(self, n: int, seed: int, consumed: int = 0, rank: int = 0, world_size: int = 1):
        assert n > 0 and 0 <= rank < world_size
        self.n, self.seed, self.consumed = n, seed, consumed
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[int]:
        item = self.consumed + self.rank
        epoch, permutation = -1, None
        while True:
            if item // self.n != epoch:
                epoch = item // self.n
                permutation = epoch_permutation(self.n, self.seed, epoch)
            yield int(permutation[item % self.n])
            item += self.world_size


def data_state(consumed: int, n: int, seed: int) -> dict[str, int]:
    """What a checkpoint stores of the data order."""
    return {
        "consumed": consumed,
        "epoch": consumed // n,
        "position": consumed % n,
        "samples": n,
        "seed": seed,
    }


def make_loader(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    consumed: int,
    rank: int,
    world_size: int,
    num_workers: int,
    pin_memory: bool,
) -> DataLoader:
    """Endless batches of `batch_size` items (one rank's share of a global batch)."""
    sampler = StreamSampler(len(dataset), seed, consumed, rank, world_size)
    workers = {"prefetch_factor": 4, "persistent_workers": True} if num_workers > 0 else {}
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=False,
        # its own generator: a loader's base seed must not come from (and shift) the global RNG,
        # or a resumed run would draw different dropout masks than an uninterrupted one
        generator=torch.Generator().manual_seed(seed),
        **workers,
    )


class Indexed(Dataset):
    """Items of `dataset` with their index added (for per-sample caches such as latents)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return {**self.dataset[index], "index": index}


def _item_bytes(item: dict) -> int:
    return sum(v.numel() * v.element_size() for v in item.values() if isinstance(v, torch.Tensor))


class InMemory(Dataset):
    """Every item of `dataset`, read once, up front, in this process. A RadioMapSeer item costs
    PNG decoding and ~10 ms of condition channels on a CPU core, more than a GPU spends training on it;
    held here, DataLoader workers forked afterwards read the same pages (copy on write, never written),
    so memory is paid once, not per worker."""

    def __init__(self, items: list[dict]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


def in_memory(dataset: Dataset, cap_gb: float, log=None) -> Dataset:
    """`dataset` as an InMemory copy when its estimated size (first item x length) fits in `cap_gb`
    GB; else, or with cap 0, `dataset` itself."""
    if cap_gb <= 0 or len(dataset) == 0:
        return dataset
    first = dataset[0]
    estimate = _item_bytes(first) * len(dataset)
    if estimate > cap_gb * 1e9:
        if log is not None:
            log.info("training set not held in memory: ~%.1f GB > data.memory_cache_gb", estimate / 1e9)
        return dataset
    start = time.perf_counter()
    items = [first] + [dataset[i] for i in range(1, len(dataset))]
    if log is not None:
        log.info(
            "training set held in memory: %d items, %.2f GB, read in %.1f s",
            len(items),
            estimate / 1e9,
            time.perf_counter() - start,
        )
    return InMemory(items)
