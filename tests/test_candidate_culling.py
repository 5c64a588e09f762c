"""irt4.data.candidate_culling: fewer shadow rays in Sionna's candidate search, the same gains.

The traces run in one subprocess (this file run as a script prints JSON): Dr.Jit's state is global and
a bad libLLVM aborts the process it runs in. One old-town and one street-grid city (rotated walls,
several materials, reflections and diffraction) are traced with Sionna's loop and then with the
culled one, on the same tracer.
"""

import contextlib
import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from irt4.data import candidate_culling, sparse_ordering
from tests.conftest import run_sim_script

FAKE_MODULE = (
    "import drjit as dr\n\n"
    "class Generator:\n"
    "    @dr.syntax\n"
    "    def _shoot_and_bounce_loop(self):\n"
    "        if counting_mode:\n"
    "            candidate_hashes = dr.full(\n"
    "                mi.UInt64,\n"
    "                NO_PATH_RECORDED_MARKER,\n"
    "                max_depth * num_samples * num_targets,\n"
    "            )\n"
    "        while active:\n"
    "            t_idx = mi.UInt(0)\n"
    "            while dr.hint(\n"
    "                t_idx < num_targets,\n"
    "                label='inner',\n"
    "            ):\n"
    "                if counting_mode:\n"
    "                    los_blocked = mi_scene.ray_test(los_ray, active=active)\n"
    "                    assert num_hashes == 2\n"
    "                    to_store = hashes\n"
    "                    del thread_idx, hashes_to_combine\n"
    "                    dr.scatter(\n"
    "                        candidate_hashes, to_store, current_path_i, active=store\n"
    "                    )\n"
    "                else:\n"
    "                    output_offset_i = dr.gather(\n"
    "                        mi.UInt32, output_offset, current_path_i, active=active\n"
    "                    )\n"
    "                t_idx += 1\n"
    "            depth += 1\n"
    "        if counting_mode:\n"
    "            return candidate_hashes, min_thread_index_per_hash\n"
    "\n"
    "def hash_for_target(t_idx):\n"
    "    return t_idx\n"
)


def test_edited_source_applies_the_edits_and_keeps_the_rest():
    edited = candidate_culling.edited_source(FAKE_MODULE)
    assert edited.startswith("@dr.syntax\ndef _shoot_and_bounce_loop(self):\n")  # dedented to module level
    assert "k_idx, k_end = _irt4_entry_range(\n" in edited
    assert "output_offset, depth, num_samples, num_targets, active\n" in edited
    assert "(k_idx < k_end) & active," in edited
    assert "output_offset_i = _irt4_entry_offset(\n" in edited
    assert "output_offset, k_idx, current_path_i, active\n" in edited
    assert "k_idx += 1\n            t_idx = _irt4_entry_target(output_offset, k_idx, k_end, active)" in edited
    assert "candidate_hashes = _irt4_slot_array(\n" in edited and "dr.full" not in edited
    assert "_irt4_record(candidate_hashes, to_store, current_path_i, k_rank, store)" in edited
    assert "    _irt4_record_count(k_rank, depth, num_samples, active)\n        depth += 1\n" in edited
    assert "return _irt4_recorded(candidate_hashes), min_thread_index_per_hash" in edited
    assert "k_rank = mi.UInt32(0)\n" in edited
    assert "facing = diffraction | (dr.dot(n, los_ray.d) > 0.0)" in edited
    assert "inside = _irt4_through_solid(si_scene.p, tgt_position, active & facing)" in edited
    assert "ray_test(los_ray, active=active & facing & ~inside)" in edited
    assert "los_blocked |= ~facing | inside" in edited
    assert "del thread_idx" not in edited
    guard = candidate_culling.BOOKKEEPING_GUARD[4:]  # dedented with the method
    assert "if dr.hint(active & (valid | new_specular)" in guard
    assert guard + "                    assert num_hashes == 2\n" in edited
    assert "k_rank += mi.UInt32(store)\n            else:\n" in edited  # the block indented, the rest not
    assert "hash_for_target" not in edited  # the method only
    compile(edited, "<edited>", "exec")


@pytest.mark.parametrize(
    "source, message",
    [
        (FAKE_MODULE.replace("t_idx < num_targets,", "t_idx < count,"), "occurs 0 times"),
        (FAKE_MODULE.replace("active=active)", "active=active & x)"), "occurs 0 times"),
        (FAKE_MODULE.replace("def _shoot_and_bounce_loop", "def _loop"), "not where"),
        (FAKE_MODULE.replace("assert num_hashes == 2", "assert num_hashes > 1"), "occurs 0 times"),
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
    """Per city: outdoor receiver gains with Sionna's loop, then culled (applied twice), then culled
    with the city's solid-cell raster, then also with the sparse ordering (step 1 recorded compactly,
    then into Sionna's slot array, with each call's candidates), then Sionna's again after remove();
    and the synthetic comparison of the two orderings."""
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
        solid = city.solid_cells()
        result[f"{style}/solid_fraction"] = float((solid > 0).mean())
        for label in ("sionna", "culled", "solid", "sparse", "slot-array", "restored"):
            if label == "culled":
                candidate_culling.apply()
                candidate_culling.apply()
                result["applied_during"] = candidate_culling.is_applied()
            if label == "solid":
                candidate_culling.set_solid_cells(solid)
            if label == "sparse":
                sparse_ordering.apply()
                result["sparse_applied"] = sparse_ordering.is_applied()
            if label == "slot-array":  # step 1 into Sionna's slot array instead of a CompactRecord
                sparse_ordering.RECORD_COMPACTLY = False
            if label == "restored":
                sparse_ordering.RECORD_COMPACTLY = True
                candidate_culling.set_solid_cells(None)
                candidate_culling.remove()
                sparse_ordering.remove()
            with recorded_candidates() as calls:
                gain = tracer.path_gain_db(points)
            if label in ("sparse", "slot-array"):
                result[f"{style}/{label}/candidates"] = calls
            result[f"{style}/{label}"] = [[float(g) if np.isfinite(g) else None for g in row] for row in gain]
    result["applied_after"] = candidate_culling.is_applied() or sparse_ordering.is_applied()
    result["ordering"] = compare_orderings()
    result["ordering_empty"] = compare_orderings(empty=True)
    return result


@contextlib.contextmanager
def recorded_candidates():
    """The step-1 candidates (slots in output order, hash pairs) of each solver call made inside, as
    the sparse ordering receives them: a list per call of [slots, hash pairs]."""
    calls = []
    order = sparse_ordering._order_recorded

    def capture(sionna, index, recorded, *args, **kwargs):
        calls.append([index.numpy().tolist(), [] if recorded is None else recorded.numpy().tolist()])
        return order(sionna, index, recorded, *args, **kwargs)

    sparse_ordering._order_recorded = capture
    try:
        yield calls
    finally:
        sparse_ordering._order_recorded = order


def compare_orderings(empty: bool = False) -> dict:
    """Sionna's step 2 and the sparse one on the same synthetic step-1 record (recorded slots,
    hash-race tables, a tight per-source budget and buffer): the offsets, per-ray flags, counters and
    path count each produces, as lists."""
    import drjit as dr
    import mitsuba as mi

    module = sys.modules[sparse_ordering._MODULE]
    sources, per_src, targets, depth, table = 2, 40, 5, 3, 16
    rng = np.random.default_rng(3)
    slots_np = np.full(depth * sources * per_src * targets, module.NO_PATH_RECORDED_MARKER, np.uint64)
    kind = rng.random(len(slots_np))
    hashes = rng.integers(0, table, size=(len(slots_np), 2))
    combined = (hashes[:, 0].astype(np.uint64) << np.uint64(32)) | hashes[:, 1].astype(np.uint64)
    if not empty:  # else no slot holds a candidate
        slots_np[kind < 0.3] = combined[kind < 0.3]
        slots_np[(kind >= 0.3) & (kind < 0.4)] = module.NON_SPECULAR_PATH_MARKER
    thread = (np.arange(len(slots_np)) // targets) % (sources * per_src)
    race = np.full((2, table), 2**31, np.int64)  # lowest claiming thread per hash, some taken by others
    for i in np.flatnonzero(kind < 0.3):
        for h in range(2):
            race[h, hashes[i, h]] = min(race[h, hashes[i, h]], thread[i] - (rng.random() < 0.1))
    race = np.clip(race, 0, None).astype(np.uint32)

    class Paths:
        buffer_size = 80

        def __init__(self):
            self.paths_counter = mi.UInt32(7)
            self.advanced = None

        def advance_paths_counter(self, n):
            self.advanced = int(dr.slice(n)) if not isinstance(n, int) else n

    class Sampler:
        def seed(self, *_):
            pass

    class Fake:
        _sampler = Sampler()

        def _shoot_and_bounce_loop(self, *args, counting_mode=False, output_offset=None, **kw):
            if counting_mode:
                return mi.UInt64(slots_np), [mi.UInt32(race[0]), mi.UInt32(race[1])]
            self.has_output = kw["thread_has_output"].numpy().tolist()
            if isinstance(output_offset, sparse_ordering.KeptPaths):  # the culled loop's input
                self.groups = {
                    "group_start": output_offset.group_start.numpy().tolist(),
                    "slot": output_offset.slot.numpy().tolist(),
                    "target": output_offset.target.numpy().tolist(),
                }
                output_offset = output_offset.dense(len(slots_np))
            self.offsets = output_offset.numpy().tolist()

    out = {}
    original = sparse_ordering._original or module.SBDeterministicCandidateGenerator._shoot_and_bounce
    runs = (("sionna", original), ("sparse", sparse_ordering._shoot_and_bounce), ("kept", None))
    for label, method in runs:
        if label == "kept":  # the sparse ordering hands the culled loop its KeptPaths
            candidate_culling.apply()
            method = sparse_ordering._shoot_and_bounce
        fake, paths, counters = Fake(), Paths(), mi.UInt32([3, 0])
        src = mi.Point3f(np.zeros((3, sources)))
        tgt = mi.Point3f(np.zeros((3, targets)))
        args = (None, src, tgt, paths, per_src, 45, depth, counters, True, False, False, True, False, 0)
        method(fake, *args)
        out[label] = {
            "offsets": fake.offsets,
            "has_output": fake.has_output,
            "counters": counters.numpy().tolist(),
            "advanced": paths.advanced,
            **({"groups": fake.groups} if hasattr(fake, "groups") else {}),
        }
    candidate_culling.remove()
    out["shape"] = {"targets": targets, "groups": depth * sources * per_src}
    return out


@pytest.fixture(scope="module")
def traced() -> dict:
    return run_sim_script(__file__, timeout=900)


def gains(traced: dict, key: str) -> np.ndarray:
    return np.array([[-np.inf if g is None else g for g in row] for row in traced[key]])


@pytest.mark.sim
def test_apply_and_remove_switch_the_loop(traced):
    assert not traced["applied_before"] and traced["applied_during"] and not traced["applied_after"]
    assert traced["sparse_applied"]


@pytest.mark.sim
def test_sparse_ordering_gives_sionnas_offsets_flags_and_counters(traced):
    sionna, sparse = traced["ordering"]["sionna"], traced["ordering"]["sparse"]
    kept = [o & 0x7FFFFFFF for o in sionna["offsets"] if o != 0xFFFFFFFF]
    assert kept == list(range(7, 80))  # the buffer filled from the paths it held, in order
    assert sionna["counters"] == [45, 73 - 42]  # source 0 up to its budget, source 1 to the buffer's end
    assert any(o != 0xFFFFFFFF and o >> 31 for o in sionna["offsets"])  # non-specular flags ride along
    assert sparse == sionna
    kept = {key: value for key, value in traced["ordering"]["kept"].items() if key != "groups"}
    assert kept == sionna  # the same offsets, flags and counters through KeptPaths


@pytest.mark.sim
@pytest.mark.parametrize("case", ["ordering", "ordering_empty"])
def test_kept_paths_list_each_rays_candidates_by_depth(traced, case):
    groups, shape = traced[case]["kept"]["groups"], traced[case]["shape"]
    start, slot, target = (np.array(groups[k]) for k in ("group_start", "slot", "target"))
    assert (
        len(start) == shape["groups"] + 1
        and start[0] == 0
        and start[-1] == len(slot) - (case == "ordering_empty")
    )
    assert (np.diff(start) >= 0).all() and (np.diff(slot) > 0).all()  # in output order
    for group in range(shape["groups"]):
        entries = slot[start[group] : start[group + 1]]
        np.testing.assert_array_equal(entries // shape["targets"], group)  # each entry in its ray's group
    np.testing.assert_array_equal(target, slot % shape["targets"])


@pytest.mark.sim
def test_sparse_ordering_of_a_call_without_candidates(traced):
    sionna, sparse = traced["ordering_empty"]["sionna"], traced["ordering_empty"]["sparse"]
    assert set(sionna["offsets"]) == {0xFFFFFFFF} and sionna["advanced"] == 0
    assert sparse == sionna


@pytest.mark.sim
@pytest.mark.parametrize("style", ["oldtown", "grid"])
def test_sparse_ordering_changes_no_gain(traced, style):
    solid, sparse = gains(traced, f"{style}/solid"), gains(traced, f"{style}/sparse")
    np.testing.assert_array_equal(np.isfinite(sparse), np.isfinite(solid))
    finite = np.isfinite(solid)
    np.testing.assert_allclose(sparse[finite], solid[finite], rtol=0, atol=1e-9)


@pytest.mark.sim
@pytest.mark.parametrize("style", ["oldtown", "grid"])
def test_compact_record_gives_the_slot_arrays_candidates_in_its_order(traced, style):
    compact, dense = traced[f"{style}/sparse/candidates"], traced[f"{style}/slot-array/candidates"]
    assert len(compact) == len(dense) >= 1 and sum(len(slots) for slots, _ in dense) > 1000
    assert compact == dense  # per call: the same slots with the same hashes, in the same order
    slot_array, compact_record = gains(traced, f"{style}/slot-array"), gains(traced, f"{style}/sparse")
    np.testing.assert_array_equal(np.isfinite(compact_record), np.isfinite(slot_array))
    finite = np.isfinite(slot_array)  # the same paths; their powers summed in another order: 1e-14 dB
    np.testing.assert_allclose(compact_record[finite], slot_array[finite], rtol=0, atol=1e-9)


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


@pytest.mark.sim
@pytest.mark.parametrize("style", ["oldtown", "grid"])
def test_solid_cell_lookup_changes_no_gain(traced, style):
    assert traced[f"{style}/solid_fraction"] > 0.05  # the lookup had cells to skip rays in
    culled, solid = gains(traced, f"{style}/culled"), gains(traced, f"{style}/solid")
    np.testing.assert_array_equal(np.isfinite(solid), np.isfinite(culled))
    finite = np.isfinite(culled)
    np.testing.assert_allclose(solid[finite], culled[finite], rtol=0, atol=1e-9)


if __name__ == "__main__":
    print(json.dumps(trace_both()))
