"""Which styles a data set draws its tiles from, and in what proportions."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from irt4.data.city import detached, grid, industrial, oldtown, perimeter
from irt4.data.city.layout import CityLayout
from irt4.errors import InputError

STYLES: dict[str, Callable[..., CityLayout]] = {
    "grid": grid.make_grid,
    "perimeter": perimeter.make_perimeter,
    "oldtown": oldtown.make_oldtown,
    "detached": detached.make_detached,
    "industrial": industrial.make_industrial,
}
# each style's ranges; their `coverage` and `height` say what every tile of the style shows
STYLE_PARAMS = {
    "grid": grid.PARAMS,
    "perimeter": perimeter.PARAMS,
    "oldtown": oldtown.PARAMS,
    "detached": detached.PARAMS,
    "industrial": industrial.PARAMS,
}
# "industrial" is held out: the out-of-distribution style
TRAINING_STYLES = ("grid", "perimeter", "oldtown", "detached")
MIXED = "mixed"  # the training styles, equal weights


def parse_style_mix(text: str) -> dict[str, float]:
    """{style: weight} from "oldtown", "grid=2,oldtown=1" or "mixed"; a style without "=w" weighs 1."""
    if text.strip() == MIXED:
        return {style: 1.0 for style in TRAINING_STYLES}
    known = ", ".join([*STYLES, MIXED])
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, has_weight, weight_text = (piece.strip() for piece in part.partition("="))
        if name == MIXED:
            raise InputError(f"style mix {text!r}: {MIXED!r} stands alone, it cannot be weighed or combined")
        if name not in STYLES:
            raise InputError(f"style mix {text!r}: unknown style {name!r} (known: {known})")
        if name in mix:
            raise InputError(f"style mix {text!r}: style {name!r} given twice")
        mix[name] = _weight(text, name, weight_text) if has_weight else 1.0
    return mix


def _weight(text: str, name: str, weight_text: str) -> float:
    try:
        weight = float(weight_text)
    except ValueError:
        raise InputError(f"style mix {text!r}: weight {weight_text!r} of {name!r} is not a number") from None
    if not (weight > 0 and math.isfinite(weight)):
        raise InputError(f"style mix {text!r}: weight {weight_text!r} of {name!r} must be a positive number")
    return weight


def random_layout(rng: np.random.Generator, mix: dict[str, float], size: int = 256) -> CityLayout:
    """A layout of a style drawn with the mix's weights (one draw from rng), then made from rng."""
    names = list(mix)
    weights = np.array([mix[name] for name in names], dtype=np.float64)
    assert names and all(name in STYLES for name in names) and (weights > 0).all(), mix
    style = names[rng.choice(len(names), p=weights / weights.sum())]
    return STYLES[style](rng, size)
