"""Train/val/test splits by map (spec: "Data", "Evaluation protocol"; contracts.md "Data").

Pure functions of map-id lists: no file is read here. A split never puts the transmitters of one map
in two splits, except where the reference run did (`radiodiff`), reproduced on request.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from irt4.errors import InputError

SPLITS = ("train", "val", "test", "all")
RADIOMAPSEER_IDS = range(1, 701)  # map 0 exists on disk but the reference loaders never use it
# Inclusive (first, last) positions into the shuffled id list. The reference loaders (lib/loaders.py)
# read maps_inds[ind1 + i] for i in 0..ind2-ind1 (__len__ = (ind2 - ind1 + 1) * numTx), i.e. the slice
# maps_inds[ind1 : ind2 + 1].
POSITIONS = {
    # RadioUNet's split: disjoint, 501 / 100 / 99 maps.
    "radiounet": {"train": (0, 500), "val": (501, 600), "test": (601, 699)},
    # The reference IRT4 run (RadioUNet_c_sprseIRT4): 601 / 100 / 100 maps; val lies inside train and
    # test shares position 600 with train.
    "radiodiff": {"train": (0, 600), "val": (501, 600), "test": (600, 699)},
}
SCHEMES = (*POSITIONS, "generated", "auto")
GENERATED_FRACTIONS = (0.8, 0.1, 0.1)


def shuffled_radiomapseer_ids(seed: int = 42) -> list[int]:
    """Map ids 1..700 in the order of numpy's legacy RandomState(seed).shuffle, as the reference loaders
    shuffle them (np.random.seed(42); np.random.shuffle(np.arange(700)), then + 1)."""
    ids = np.arange(RADIOMAPSEER_IDS.start, RADIOMAPSEER_IDS.stop)
    np.random.RandomState(seed).shuffle(ids)
    return ids.tolist()


def radiomapseer_split(split: str, scheme: str = "radiounet") -> list[int]:
    """The map ids of one split of RadioMapSeer under `scheme` ('radiounet' or 'radiodiff')."""
    if scheme not in POSITIONS:
        raise InputError(f"unknown RadioMapSeer split scheme {scheme!r}; expected one of {list(POSITIONS)}")
    if split == "all":
        return list(RADIOMAPSEER_IDS)
    _check_split(split)
    first, last = POSITIONS[scheme][split]
    return shuffled_radiomapseer_ids()[first : last + 1]


def generated_split(
    map_ids: Iterable[int],
    split: str,
    seed: int = 0,
    fractions: tuple[float, float, float] = GENERATED_FRACTIONS,
) -> list[int]:
    """The map ids of one split of a generated root: the ids present, shuffled with `seed`, cut by
    `fractions` (train, val, test). With 3 or more maps, val and test get at least one map each when
    their fraction is positive, so a small root still has something to validate and test on."""
    _check_split(split)
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise InputError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    ids = np.array(sorted(set(map_ids)), dtype=np.int64)
    if split == "all":
        return ids.tolist()
    np.random.RandomState(seed).shuffle(ids)
    n = len(ids)
    n_val, n_test = (
        max(1, round(f * n)) if f > 0 and n >= 3 else round(f * n) for f in (fractions[1], fractions[2])
    )
    n_train = n - n_val - n_test
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, n)}
    start, stop = bounds[split]
    return ids[start:stop].tolist()


def is_radiomapseer(map_ids: Iterable[int]) -> bool:
    """A root is RadioMapSeer (not generated) when it holds every map id 1..700."""
    return set(RADIOMAPSEER_IDS) <= set(map_ids)


def resolve_scheme(scheme: str, map_ids: Iterable[int]) -> str:
    """'auto' -> 'radiounet' on a RadioMapSeer root, 'generated' otherwise; other names pass through."""
    if scheme not in SCHEMES:
        raise InputError(f"unknown split scheme {scheme!r}; expected one of {list(SCHEMES)}")
    if scheme == "auto":
        return "radiounet" if is_radiomapseer(map_ids) else "generated"
    return scheme


def split_map_ids(
    map_ids: Iterable[int],
    split: str,
    scheme: str = "auto",
    seed: int = 0,
    fractions: tuple[float, float, float] = GENERATED_FRACTIONS,
) -> list[int]:
    """The map ids of `split` for a root holding `map_ids`, choosing the split by the root's kind when
    `scheme` is 'auto'. RadioMapSeer schemes return their fixed ids whether or not the root has them."""
    map_ids = list(map_ids)
    scheme = resolve_scheme(scheme, map_ids)
    if scheme == "generated":
        return generated_split(map_ids, split, seed, fractions)
    return radiomapseer_split(split, scheme)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
