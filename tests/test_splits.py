import numpy as np
import pytest

from irt4.data.splits import (
    generated_split,
    radiomapseer_split,
    resolve_scheme,
    shuffled_radiomapseer_ids,
    split_map_ids,
)
from irt4.errors import InputError


def reference_maps(ind1: int, ind2: int) -> list[int]:
    """The maps of the reference loaders (lib/loaders.py) for phase range (ind1, ind2), as they compute
    them: np.random.seed(42); np.random.shuffle(arange(0, 700)); map = maps_inds[idxr + ind1] + 1 for
    idxr in 0..ind2-ind1 (__len__ = (ind2 - ind1 + 1) * numTx)."""
    state = np.random.get_state()
    try:
        maps_inds = np.arange(0, 700, 1, dtype=np.int16)
        np.random.seed(42)
        np.random.shuffle(maps_inds)
    finally:
        np.random.set_state(state)
    return [int(maps_inds[idxr + ind1]) + 1 for idxr in range(ind2 - ind1 + 1)]


def test_shuffle_is_the_reference_global_seed_42_shuffle_of_ids_1_to_700():
    ids = shuffled_radiomapseer_ids()
    assert ids == reference_maps(0, 699)
    assert sorted(ids) == list(range(1, 701))


def test_radiounet_split_is_disjoint_501_100_99_maps():
    train, val, test = (radiomapseer_split(s, "radiounet") for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (501, 100, 99)
    assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
    assert set(train) | set(val) | set(test) == set(range(1, 701))
    assert test == reference_maps(601, 699)


def test_radiodiff_split_reproduces_the_reference_irt4_ranges_and_overlaps():
    train, val, test = (radiomapseer_split(s, "radiodiff") for s in ("train", "val", "test"))
    # RadioUNet_c_sprseIRT4: train (0, 600), val (501, 600), test (600, 699), inclusive
    assert train == reference_maps(0, 600)
    assert val == reference_maps(501, 600)
    assert test == reference_maps(600, 699)
    assert (len(train), len(val), len(test)) == (601, 100, 100)
    assert set(val) <= set(train)  # val lies inside train
    assert set(test) & set(train) == {shuffled_radiomapseer_ids()[600]}  # one shared map


def test_generated_split_is_disjoint_by_map_and_covers_every_id():
    ids = [3, 17, 4, 90, 11, 5, 6, 2000, 8, 9]
    parts = [generated_split(ids, s, seed=1) for s in ("train", "val", "test")]
    assert [len(p) for p in parts] == [8, 1, 1]
    assert sorted(sum(parts, [])) == sorted(ids)


def test_generated_split_is_deterministic_for_a_seed_and_changes_with_it():
    ids = list(range(50))
    assert generated_split(ids, "train", seed=3) == generated_split(ids[::-1], "train", seed=3)
    assert generated_split(ids, "train", seed=3) != generated_split(ids, "train", seed=4)


def test_generated_split_of_three_maps_keeps_one_for_val_and_test():
    parts = [generated_split([7, 8, 9], s) for s in ("train", "val", "test")]
    assert [len(p) for p in parts] == [1, 1, 1]


def test_auto_scheme_picks_radiounet_only_for_a_root_with_maps_1_to_700():
    assert resolve_scheme("auto", range(0, 701)) == "radiounet"
    assert resolve_scheme("auto", range(1, 700)) == "generated"
    assert split_map_ids(range(701), "test") == radiomapseer_split("test", "radiounet")
    assert split_map_ids([1, 2, 3, 4], "all") == [1, 2, 3, 4]


def test_unknown_split_or_scheme_is_an_input_error():
    with pytest.raises(InputError, match="unknown split 'dev'"):
        split_map_ids(range(1, 701), "dev")
    with pytest.raises(InputError, match="unknown split scheme 'radio'"):
        split_map_ids(range(1, 701), "train", scheme="radio")
    with pytest.raises(InputError, match="fractions"):
        generated_split([1, 2, 3], "train", fractions=(0.5, 0.5, 0.5))
