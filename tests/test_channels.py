"""irt4.data.channels: each condition channel on hand-computed cases, the polar sweep against the
per-pixel reference, and the condition list's checks."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from irt4.data import channels
from irt4.data.city import random_layout
from irt4.data.city.raster import rasterize
from irt4.data.condition import condition_image, condition_tensor, display_channels, log_distance_field
from irt4.errors import InputError
from irt4.train.stages import adapted_input_weight

ALL = channels.CHANNELS
TX = (105, 60)  # (row, col)


def wall_map() -> np.ndarray:
    """One building, rows 95-115 and columns 120-140 (21 x 21 m), on a 256 x 256 map."""
    buildings = np.zeros((256, 256), dtype=np.float32)
    buildings[95:116, 120:141] = 1.0
    return buildings


def maps_of(buildings, tx=TX, names=ALL) -> dict[str, np.ndarray]:
    stacked = channels.channel_maps(buildings, torch.tensor(tx), names)
    assert stacked.shape == (1, len(names), *np.shape(buildings)) and stacked.dtype == torch.float32
    return {name: stacked[0, k].numpy() for k, name in enumerate(names)}


def friis_grey(distance_m: float, low: float = -147.0, high: float = -47.0) -> float:
    wavelength = channels.SPEED_OF_LIGHT / 5.9e9
    gain_db = 20 * math.log10(wavelength / (4 * math.pi * distance_m))
    return min(max((gain_db - low) / (high - low), 0.0), 1.0)


def test_a_building_between_the_transmitter_and_a_pixel():
    maps = maps_of(wall_map())
    behind = (105, 200)  # straight east of TX, through the whole building
    assert maps["los"][behind] == 0.0
    assert maps["walls"][behind] == pytest.approx(2 / channels.WALLS_SCALE)  # in and out
    assert maps["building_metres"][behind] == pytest.approx(
        21 / channels.METRES_SCALE, abs=1 / channels.METRES_SCALE
    )
    # free space ignores buildings between, only the pixel itself being a building
    assert maps["free_space"][behind] == pytest.approx(friis_grey(140.0), abs=1e-5)


def test_a_pixel_in_line_of_sight():
    maps = maps_of(wall_map())
    for pixel in [(50, 60), (200, 200), (105, 100)]:
        assert maps["los"][pixel] == 1.0, pixel
        assert maps["walls"][pixel] == 0.0 and maps["building_metres"][pixel] == 0.0, pixel
    distance = math.hypot(200 - TX[0], 200 - TX[1])
    assert maps["free_space"][200, 200] == pytest.approx(friis_grey(distance), abs=1e-5)


def test_a_pixel_facing_a_wall_does_not_count_it():
    maps = maps_of(wall_map())
    assert maps["los"][105, 119] == 1.0  # the last outdoor pixel before the building
    assert maps["los"][105, 141] == 0.0  # the first one after it


def test_buildings_transmitter_and_masks():
    buildings = wall_map()
    maps = maps_of(buildings)
    np.testing.assert_array_equal(maps["buildings"], buildings)
    assert maps["transmitter"].sum() == 1.0 and maps["transmitter"][TX] == 1.0
    inside = buildings > 0
    for name in ("los", "free_space", "walls", "building_metres"):
        assert (maps[name][inside] == 0).all(), name
    assert maps["log_distance"][TX] == 1.0 and maps["log_distance"].min() >= 0.0
    for name, image in maps.items():
        assert image.min() >= 0.0 and image.max() <= 1.0, name


def test_walls_saturate_at_their_scale():
    buildings = np.zeros((64, 256), dtype=np.float32)
    buildings[:, 20:240:4] = 1.0  # 55 one-pixel walls across the whole map
    maps = maps_of(buildings, (32, 5), ["walls", "building_metres"])
    assert maps["walls"][32, 250] == 1.0
    assert maps["building_metres"][32, 250] == pytest.approx(55 / channels.METRES_SCALE, abs=0.02)


def test_only_the_named_channels_in_their_order_and_batches():
    buildings = np.stack([wall_map(), np.zeros((256, 256), dtype=np.float32)])
    names = ["free_space", "buildings", "buildings"]
    stacked = channels.channel_maps(buildings, torch.tensor([TX, (10, 10)]), names)
    assert stacked.shape == (2, 3, 256, 256)
    torch.testing.assert_close(stacked[:, 1], stacked[:, 2])
    single = channels.channel_maps(buildings[1], torch.tensor((10, 10)), names)
    torch.testing.assert_close(stacked[1:], single)


@pytest.mark.parametrize("style, seed", [("grid", 1), ("perimeter", 2), ("oldtown", 3), ("detached", 4)])
def test_polar_sweep_matches_the_per_pixel_reference(style, seed):
    layout = random_layout(np.random.default_rng(seed), {style: 1.0})
    blocked = torch.from_numpy(rasterize(layout.polygons, 256) > 0)[None]
    outdoor = ~blocked[0]
    rows, cols = torch.nonzero(outdoor[53:203, 53:203], as_tuple=True)
    pick = len(rows) // 2
    tx = torch.tensor([[rows[pick] + 53, cols[pick] + 53]], dtype=torch.float32)
    walls, metres = channels.ray_profiles(blocked, tx)
    walls_ref, metres_ref = channels.reference_profiles(blocked, tx)
    los, los_ref = metres[0] == 0, metres_ref[0] == 0
    assert (los == los_ref)[outdoor].float().mean() > 0.995
    assert (walls - walls_ref)[0][outdoor].abs().mean() < 0.4
    assert (metres - metres_ref)[0][outdoor].abs().mean() < 0.4


def test_check_condition_names_the_problem():
    assert channels.check_condition(["buildings", "walls"]) == ("buildings", "walls")
    with pytest.raises(InputError, match="unknown channel.*'wall'"):
        channels.check_condition(["buildings", "wall"])
    with pytest.raises(InputError, match="empty"):
        channels.check_condition([])


@pytest.mark.parametrize("size", [256, 64])
def test_condition_image_with_the_reference_names_is_the_reference_condition(size):
    buildings = wall_map()
    transmitter = np.zeros_like(buildings)
    transmitter[TX] = 1.0
    ours = condition_image(buildings, transmitter, *TX, channels.REFERENCE_CONDITION, size)
    torch.testing.assert_close(ours, condition_tensor(buildings, transmitter, size), rtol=0, atol=0)
    field = condition_image(buildings, transmitter, *TX, ("buildings", "transmitter", "log_distance"), size)
    expected = condition_tensor(buildings, transmitter, size, log_distance_field(buildings.shape, *TX))
    torch.testing.assert_close(field, expected, rtol=0, atol=1e-6)


def test_condition_image_stacks_any_list_in_minus_one_to_one():
    buildings = wall_map()
    transmitter = np.zeros_like(buildings)
    transmitter[TX] = 1.0
    image = condition_image(buildings, transmitter, *TX, ALL, 128)
    assert image.shape == (len(ALL), 128, 128)
    assert image.min() >= -1.0 and image.max() <= 1.0
    assert image[ALL.index("transmitter")].max() == 1.0  # the dot keeps its peak when downsized


def test_adapted_input_weight_keeps_the_function_and_refuses_to_drop_a_channel(tmp_path):
    theirs = channels.REFERENCE_CONDITION
    ours = ("buildings", "transmitter", "walls", "log_distance")
    weight = torch.randn(8, 3, 4, 4)
    adapted = adapted_input_weight(weight, theirs, ours, tmp_path)
    assert adapted.shape == (8, 4, 4, 4)
    old_input = torch.randn(2, 3, 16, 16)
    old_input[:, 2] = old_input[:, 0]  # the reference's buildings, twice
    new_input = torch.cat([old_input[:, :2], torch.randn(2, 2, 16, 16)], dim=1)
    torch.testing.assert_close(
        F.conv2d(new_input, adapted), F.conv2d(old_input, weight), rtol=1e-5, atol=1e-5
    )
    with pytest.raises(InputError, match=r"lacks \['transmitter'\]"):
        adapted_input_weight(weight, theirs, ("buildings", "walls"), tmp_path)


def test_display_channels_pick_buildings_and_transmitter_by_name():
    cond = torch.stack([torch.full((2, 8, 8), float(k)) for k in range(4)], dim=1)  # channel k holds k
    shown = display_channels(cond, ("walls", "transmitter", "free_space", "buildings"))
    assert shown.shape == (2, 2, 8, 8)
    assert (shown[:, 0] == 3).all() and (shown[:, 1] == 1).all()
    missing = display_channels(cond, ("walls", "free_space", "los", "log_distance"))
    assert (missing == 0).all()  # cond's minimum: nothing drawn
