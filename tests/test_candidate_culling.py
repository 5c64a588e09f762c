"""irt4.data.candidate_culling: fewer shadow rays in Sionna's candidate search, the same gains.

The traces run in one subprocess (this file run as a script prints JSON): Dr.Jit's state is global and
a bad libLLVM aborts the process it runs in. One old-town and one street-grid city (rotated walls,
several materials, reflections and diffraction) are traced with Sionna's loop and then with the
culled one, on the same tracer.
"""

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from irt4.data import candidate_culling
from tests.conftest import run_sim_script

FAKE_MODULE = (
    "import drjit as dr\n\n"
    "class Generator:\n"
    "    @dr.syntax\n"
    "    def _shoot_and_bounce_loop(self):\n"
    "        while active:\n"
    "            while dr.hint(\n"
    "                t_idx < num_targets,\n"
    "                label='inner',\n"
    "            ):\n"
    "                if counting_mode:\n"
    "                    los_blocked = mi_scene.ray_test(los_ray, active=active)\n"
    "\n"
    "def hash_for_target(t_idx):\n"
    "    return t_idx\n"
)


def test_edited_source_applies_both_edits_and_keeps_the_rest():
    edited = candidate_culling.edited_source(FAKE_MODULE)
    assert edited.startswith("@dr.syntax\ndef _shoot_and_bounce_loop(self):\n")  # dedented to module level
    assert "(t_idx < num_targets) & active," in edited
    assert "facing = diffraction | (dr.dot(n, los_ray.d) > 0.0)" in edited
    assert "ray_test(los_ray, active=active & facing) | ~facing" in edited
    assert "hash_for_target" not in edited  # the method only
    compile(edited, "<edited>", "exec")


@pytest.mark.parametrize(
    "source, message",
    [
        (FAKE_MODULE.replace("t_idx < num_targets,", "t_idx < count,"), "occurs 0 times"),
        (FAKE_MODULE.replace("active=active)", "active=active & x)"), "occurs 0 times"),
        (FAKE_MODULE.replace("def _shoot_and_bounce_loop", "def _loop"), "not where"),
    ],
)
def test_edited_source_refuses_a_loop_it_does_not_know(source, message):
    with pytest.raises(RuntimeError, match=message):
        candidate_culling.edited_source(source)


def test_apply_refuses_other_sionna_versions(monkeypatch):
    monkeypatch.setattr(candidate_culling, "_sionna_rt_version", lambda: "2.3.0")
    with pytest.raises(RuntimeError, match=r"found sionna-rt 2\.3\.0"):
        candidate_culling.apply()


def test_module_imports_without_sionna():
    code = (
        "import sys; from irt4.data import candidate_culling as c; "
        "assert not c.is_applied(); "
        "print(sorted(m for m in ('sionna', 'mitsuba', 'drjit') if m in sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[]"


def trace_both() -> dict:
    """Per city: outdoor receiver gains with Sionna's loop, then culled (applied twice), then Sionna's
    again after remove()."""
    from irt4.data import synth

    settings = synth.SynthSettings(grid=16, max_depth=3, samples_per_src=20_000, style="oldtown")
    result: dict = {"applied_before": candidate_culling.is_applied()}
    for style, seed in (("oldtown", 5), ("grid", 7)):
        city = synth.make_city(replace(settings, style=style), seed, 0)
        rx = synth.receiver_pixels(synth.SIZE, settings.grid)
        rows, cols = np.meshgrid(rx, rx, indexing="ij")
        outdoor = city.buildings[rows, cols] == 0
        points = synth.pixel_to_world(rows[outdoor], cols[outdoor], settings.rx_height)
        tracer = synth.city_tracer(city, settings, cull_candidates=False)
        for label in ("sionna", "culled", "restored"):
            if label == "culled":
                candidate_culling.apply()
                candidate_culling.apply()
                result["applied_during"] = candidate_culling.is_applied()
            if label == "restored":
                candidate_culling.remove()
            gain = tracer.path_gain_db(points)
            result[f"{style}/{label}"] = [[float(g) if np.isfinite(g) else None for g in row] for row in gain]
    result["applied_after"] = candidate_culling.is_applied()
    return result


@pytest.fixture(scope="module")
def traced() -> dict:
    return run_sim_script(__file__, timeout=900)


def gains(traced: dict, key: str) -> np.ndarray:
    return np.array([[-np.inf if g is None else g for g in row] for row in traced[key]])


@pytest.mark.sim
def test_apply_and_remove_switch_the_loop(traced):
    assert not traced["applied_before"] and traced["applied_during"] and not traced["applied_after"]


@pytest.mark.sim
@pytest.mark.parametrize("style", ["oldtown", "grid"])
def test_culled_search_finds_the_same_paths_or_more(traced, style):
    sionna, culled = gains(traced, f"{style}/sionna"), gains(traced, f"{style}/culled")
    finite = np.isfinite(sionna)
    assert finite.mean() > 0.1 and (sionna[finite] < -60).any()  # a real map: lit and shadowed cells
    np.testing.assert_array_equal(np.isfinite(culled), finite)
    change = culled[finite] - sionna[finite]
    # only paths that Sionna's search lost to a taken hash slot come back (module docstring)
    assert change.min() > -1e-6, change.min()
    assert change.max() < 0.5 and (change > 1e-3).mean() < 0.1, change[change > 1e-3]
    np.testing.assert_allclose(gains(traced, f"{style}/restored"), sionna, rtol=0, atol=1e-9)  # reversible


if __name__ == "__main__":
    print(json.dumps(trace_both()))
