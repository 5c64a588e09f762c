"""irt4.load and Model.predict: the Python API, on the bundled models and an imported reference bundle."""

import re
from pathlib import Path

import numpy as np
import pytest

import irt4
from irt4.errors import InputError

README = Path(__file__).resolve().parent.parent / "README.md"
ASSETS = Path(irt4.__file__).resolve().parent / "assets"


def buildings_map() -> np.ndarray:
    buildings = np.zeros((256, 256), np.uint8)
    buildings[100:140, 60:120] = 1
    buildings[10:30, 200:250] = 1
    return buildings


@pytest.fixture(scope="module")
def default_model():
    return irt4.load()


def test_readme_python_example_runs(capsys):
    text = README.read_text()
    section = text[text.index("## Python API") :]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)[:1]
    exec(compile(code, "README.md (Python API)", "exec"), {})
    assert "(256, 256)" in capsys.readouterr().out


def test_predict_gives_db_with_nan_on_buildings_and_is_seeded(default_model):
    buildings = buildings_map()
    gain = default_model.predict(buildings, (50, 50), steps=1, seed=3)
    low, high = default_model.cfg.data.gain_db_range
    assert gain.shape == (256, 256) and gain.dtype == np.float32 and default_model.kind == "diffusion"
    np.testing.assert_array_equal(np.isnan(gain), buildings == 1)
    assert low <= np.nanmin(gain) and np.nanmax(gain) <= high and np.nanstd(gain) > 1
    np.testing.assert_array_equal(default_model.predict(buildings * 255, (50, 50), steps=1, seed=3), gain)
    assert not np.allclose(default_model.predict(buildings, (50, 50), steps=1, seed=4), gain, equal_nan=True)


def test_a_batch_gives_the_maps_of_single_calls(default_model):
    buildings = buildings_map()
    batch = default_model.predict(
        np.stack([buildings, buildings]), [(50, 50), (200, 200)], steps=1, batch_size=1
    )
    assert batch.shape == (2, 256, 256)
    np.testing.assert_allclose(
        batch[0], default_model.predict(buildings, (50, 50), steps=1), rtol=0, atol=1e-4
    )
    assert not np.allclose(batch[0], batch[1], equal_nan=True)  # the transmitter moved


def test_the_regressor_and_an_imported_reference_bundle_load_too(tmp_path):
    regressor = irt4.load(ASSETS / "baseline-small.safetensors")
    gain = regressor.predict(buildings_map(), (50, 50))
    assert regressor.kind == "regressor" and gain.shape == (256, 256)
    np.testing.assert_array_equal(np.isnan(gain), buildings_map() == 1)

    from irt4.cli.importer import main as import_main

    fixture = Path(__file__).parent / "data" / "radiodiff-reference"
    bundle = tmp_path / "radiodiff.safetensors"
    assert import_main(["radiodiff", "--ldm", str(fixture / "model-ldm.pt"), "--out", str(bundle)]) == 0
    imported = irt4.load(bundle)
    assert imported.predict(buildings_map(), (50, 50), steps=1).shape == (256, 256)


@pytest.mark.parametrize(
    "buildings, tx, message",
    [
        (np.zeros((128, 128)), (5, 5), "must be (256, 256)"),
        (buildings_map(), (120, 80), "stands on a building pixel"),
        (buildings_map(), (300, 5), "outside the 256 x 256 map"),
        (np.stack([buildings_map()] * 2), (5, 5), "2 building maps but 1 transmitters"),
    ],
)
def test_bad_inputs_are_input_errors_naming_the_problem(default_model, buildings, tx, message):
    with pytest.raises(InputError, match=re.escape(message)):
        default_model.predict(buildings, tx, steps=1)


def test_load_refuses_a_missing_file_and_an_engine_backend_for_a_file(tmp_path):
    with pytest.raises(InputError, match="no such model file"):
        irt4.load(tmp_path / "none.safetensors")
    with pytest.raises(InputError, match="runs an engine directory"):
        irt4.load(ASSETS / "default-small.safetensors", backend="onnxruntime")
