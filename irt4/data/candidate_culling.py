"""Skip work in sionna-rt 2.2's candidate search whose outcome is known: shadow rays, bookkeeping (same maps).

Where the time goes. `irt4-data synth` traces with PathSolver(deterministic=True); 97 % of a solver
call was the first pass of `SBDeterministicCandidateGenerator._shoot_and_bounce_loop`: for each ray
(samples_per_src per transmitter), at each bounce, for each of the call's receivers, a shadow ray from
the hit point to the receiver (`ray_test`), then the bookkeeping of a candidate (two hashes, a race
for a slot, a write). Without the receiver loop a 256-receiver call of an old-town map took 0.19 s
instead of 6.4 s. Four edits of that loop remove work whose outcome is already known:

1. The loop over receivers runs only on rays that are still active. Sionna runs it for every lane,
   including rays that left the scene, whose every test and write is masked off.
2. After a specular reflection, a receiver behind the reflecting surface (on the far side of its
   plane from the incident ray) is taken as not visible without tracing. Sionna traces that ray: it
   starts on the incident side and crosses the plane next to the hit point, so the surface itself
   blocks it, except within a few mm of the surface's edge; and a candidate that did get through
   there is a reflection whose receiver lies behind the mirror, which the image method rejects. So
   no path is lost. Diffraction lanes keep every test (a diffracted ray reaches the shadow side).
3. A shadow ray that passes through the inside of a building is taken as blocked without tracing.
   The tracer hands over a raster of the cells that lie wholly inside a footprint, with that
   building's height (irt4.data.city.raster.solid_cells, set_solid_cells()); SEGMENT_SAMPLES points
   along the segment from the hit point to the receiver are looked up in it, and one below the roof
   of a solid cell means the segment enters the building, which a ray from outside can only do
   through a wall or the roof. Cells on a wall stay out of the raster, so the lookup never says
   "blocked" where tracing could say otherwise. On an old-town map it settles 94 % of the tests
   and a street-grid map 85 %; the gains are the ones edits 1 and 2 give (to 1e-14 dB). No raster
   (None): edit 3 is off.
4. The candidate bookkeeping runs inside a Dr.Jit symbolic `if` on "this lane has a valid path or a
   new specular chain for this receiver", which few lanes have once edits 2 and 3 settle most
   tests: packets of lanes with none skip it. The writes were masked by that condition already.
5. Step 3 (the same rays again, writing the kept candidates) visits, per ray and depth, only that
   ray's kept candidates when irt4.data.sparse_ordering hands it their list (KeptPaths), instead of
   every receiver with a lookup of a dense per-slot offset. A (chain, receiver) pair is kept once,
   for the lowest ray that found it, so most rays have none at a depth: step 3 shrinks to the bounces.
   The inner loop walks "entries" for this: in step 1, and with Sionna's dense offsets, entry =
   receiver index, as before.
6. Step 1 appends its candidates to a list (CompactRecord: slot, hashes, rank among the ray's
   candidates at that depth) while irt4.data.sparse_ordering has one open, instead of writing them
   into Sionna's array of one slot per (depth, ray, receiver), 1.6 GB at the default settings,
   filled before and scanned after every call. The sparse ordering puts the list in slot order.

After these edits the loop is no longer most of a call: Sionna's ordering of the candidates over
every (depth, ray, receiver) slot is, which irt4.data.sparse_ordering does on the recorded slots only.
Measured on 256-receiver calls at the default settings (2 cores), Sionna's search as shipped ->
edits 1-2 -> 1-4 -> 1-4 with the sparse ordering: an old-town map 8.2 -> 6.4-7.6 -> 3.0-3.3 -> 2.2 s,
a street-grid map 5.4 -> 4.5-4.8 -> 4.1-4.6 -> 3.1 s.

What changes in the result. Sionna keeps a candidate only if its thread wins a slot, per specular
chain and receiver, in two hash tables (lowest thread index wins), and only while the per-transmitter
path budget lasts. Candidates of the second kind used to claim slots and budget too; without them a
valid candidate that collided with one is kept. So the culled search finds the same paths or more,
never fewer, and gains can only rise: on a 16 x 16-receiver street-grid test map, 8 of 300 cells
rose by 0.02-0.14 dB, the rest were equal to 1e-14 dB (tests/test_candidate_culling.py); on the
256-receiver calls above, at most 1.4e-4 dB over 512 and 768 receivers. Edits 3 and 4 change nothing
further: they only skip work whose outcome edits 1 and 2 already fix.

How: the loop's source is read from the installed module, the edits are applied as exact text
replacements (each must match once, else nothing is changed and RuntimeError says why; edit 4
indents the lines from BOOKKEEPING_FIRST to BOOKKEEPING_LAST under BOOKKEEPING_GUARD), and the
edited method is compiled with Dr.Jit's @dr.syntax as Sionna's own is. Targets sionna-rt 2.2.x only.
"""

from __future__ import annotations

import inspect
import linecache
import sys
import textwrap
from importlib.metadata import PackageNotFoundError, version

SUPPORTED_VERSION = "2.2."
_MODULE = "sionna.rt.path_solvers.sb_deterministic"
_METHOD_START = "    @dr.syntax\n    def _shoot_and_bounce_loop("
_METHOD_END = "\ndef hash_for_target("
_FILENAME = "<irt4.data.candidate_culling: SBDeterministicCandidateGenerator._shoot_and_bounce_loop>"
# (text in Sionna's method, replacement), by the numbers of the module docstring
EDITS = (
    (  # edits 1 and 5: the inner loop walks entries, all targets (step 1) or a ray's kept paths (step 3)
        "            t_idx = mi.UInt(0)\n",
        "            k_idx, k_end = _irt4_entry_range(\n"
        "                output_offset, depth, num_samples, num_targets, active\n"
        "            )\n"
        "            t_idx = _irt4_entry_target(output_offset, k_idx, k_end, active)\n"
        "            k_rank = mi.UInt32(0)\n",
    ),
    (
        "                t_idx < num_targets,\n",
        "                (k_idx < k_end) & active,\n",
    ),
    (  # edits 2 and 3
        "                    los_blocked = mi_scene.ray_test(los_ray, active=active)\n",
        "                    facing = diffraction | (dr.dot(n, los_ray.d) > 0.0)\n"
        "                    inside = _irt4_through_solid(si_scene.p, tgt_position, active & facing)\n"
        "                    los_blocked = mi_scene.ray_test(los_ray, active=active & facing & ~inside)\n"
        "                    los_blocked |= ~facing | inside\n",
    ),
    # edit 4 (with _guard_bookkeeping): a `del` inside a Dr.Jit symbolic `if` is not allowed
    ("                    del thread_idx, hashes_to_combine\n", ""),
    (  # edit 5: step 3 reads the entry's offset
        "                    output_offset_i = dr.gather(\n"
        "                        mi.UInt32, output_offset, current_path_i, active=active\n"
        "                    )\n",
        "                    output_offset_i = _irt4_entry_offset(\n"
        "                        output_offset, k_idx, current_path_i, active\n"
        "                    )\n",
    ),
    (
        "                t_idx += 1\n",
        "                k_idx += 1\n"
        "                t_idx = _irt4_entry_target(output_offset, k_idx, k_end, active)\n",
    ),
    (  # edit 6: step 1 appends its candidates to a CompactRecord while one is active
        "            candidate_hashes = dr.full(\n"
        "                mi.UInt64,\n"
        "                NO_PATH_RECORDED_MARKER,\n"
        "                max_depth * num_samples * num_targets,\n"
        "            )\n",
        "            candidate_hashes = _irt4_slot_array(\n"
        "                max_depth * num_samples * num_targets, NO_PATH_RECORDED_MARKER\n"
        "            )\n",
    ),
    (
        "                    dr.scatter(\n"
        "                        candidate_hashes, to_store, current_path_i, active=store\n"
        "                    )\n",
        "                    _irt4_record(candidate_hashes, to_store, current_path_i, k_rank, store)\n"
        "                    k_rank += mi.UInt32(store)\n",
    ),
    (
        "            depth += 1\n",
        "            _irt4_record_count(k_rank, depth, num_samples, active)\n            depth += 1\n",
    ),
    (
        "            return candidate_hashes, min_thread_index_per_hash\n",
        "            return _irt4_recorded(candidate_hashes), min_thread_index_per_hash\n",
    ),
)
# edit 4: the candidate bookkeeping from its first line to its last, run under this condition
BOOKKEEPING_FIRST = "                    assert num_hashes == 2\n"
BOOKKEEPING_LAST = "                    k_rank += mi.UInt32(store)\n"  # (after edit 6)
BOOKKEEPING_GUARD = (
    "                    if dr.hint(active & (valid | new_specular), "
    "exclude=[min_thread_index_per_hash, candidate_hashes]):\n"
)
SEGMENT_SAMPLES = 12  # points of each shadow segment looked up in the solid raster (edit 3)
_solid = None  # (heights as a Dr.Jit Float, raster width) of the city being traced, or None
_record = None  # the CompactRecord step 1 appends to (edit 6), or None: Sionna's slot per candidate
_original_loop = None  # Sionna's method, kept while the culling is applied
_culled_loop = None


def _sionna_rt_version() -> str:
    try:
        return version("sionna-rt")
    except PackageNotFoundError:
        return "missing"


def edited_source(source: str) -> str:
    """The loop method's source (dedented to module level) with EDITS applied; RuntimeError if the
    method or any edit's text is not found exactly once."""
    if source.count(_METHOD_START) != 1 or _METHOD_END not in source:
        raise RuntimeError(
            "sionna-rt: _shoot_and_bounce_loop is not where irt4's candidate culling expects it"
        )
    start = source.index(_METHOD_START)
    method = source[start : source.index(_METHOD_END, start)]
    for old, new in EDITS:
        count = method.count(old)
        if count != 1:
            raise RuntimeError(
                f"sionna-rt: {old.strip()!r} occurs {count} times in _shoot_and_bounce_loop, expected once; "
                "irt4's candidate culling cannot be applied"
            )
        method = method.replace(old, new)
    return textwrap.dedent(_guard_bookkeeping(method))


def _guard_bookkeeping(method: str) -> str:
    """Edit 4: the lines from BOOKKEEPING_FIRST to BOOKKEEPING_LAST indented under BOOKKEEPING_GUARD."""
    for text in (BOOKKEEPING_FIRST, BOOKKEEPING_LAST):
        if method.count(text) != 1:
            raise RuntimeError(
                f"sionna-rt: {text.strip()!r} occurs {method.count(text)} times in _shoot_and_bounce_loop, "
                "expected once; irt4's candidate culling cannot be applied"
            )
    start = method.index(BOOKKEEPING_FIRST)
    end = method.index(BOOKKEEPING_LAST) + len(BOOKKEEPING_LAST)
    if end <= start:
        raise RuntimeError("sionna-rt: the candidate bookkeeping of _shoot_and_bounce_loop is not in order")
    block = textwrap.indent(method[start:end], "    ")
    return method[:start] + BOOKKEEPING_GUARD + block + method[end:]


def set_solid_cells(heights) -> None:
    """The raster of solid building cells of the city being traced (irt4.data.city.raster.solid_cells,
    1 m cells, cell (row, col) spanning x in [col, col + 1], y in [row, row + 1]), or None to look
    nothing up. A raster of the same size each time keeps the compiled kernels."""
    global _solid
    if heights is None:
        _solid = None
        return
    import mitsuba as mi
    import numpy as np

    heights = np.ascontiguousarray(heights, dtype=np.float32)
    _solid = (mi.Float(heights.ravel()), heights.shape[1])


def _through_solid(origin, target, active):
    """Per lane: whether the segment origin -> target passes through a solid building cell below its
    roof (edit 3), judged at SEGMENT_SAMPLES points; False where unsure."""
    import drjit as dr
    import mitsuba as mi

    if _solid is None:
        return mi.Bool(False)
    heights, width = _solid
    step = target - origin
    inside = mi.Bool(False)
    for k in range(SEGMENT_SAMPLES):
        point = origin + step * ((k + 0.5) / SEGMENT_SAMPLES)
        col, row = mi.Int32(dr.floor(point.x)), mi.Int32(dr.floor(point.y))
        on_tile = (col >= 0) & (col < width) & (row >= 0) & (row < width)
        roof = dr.gather(mi.Float, heights, mi.UInt32(row * width + col), active & on_tile)
        inside |= on_tile & (point.z < roof)
    return inside


def _ray_group(depth, num_samples: int):
    """Each lane's (depth, ray) group, (depth - 1) * num_samples + ray: KeptPaths' and
    CompactRecord's grouping."""
    import drjit as dr
    import mitsuba as mi

    return (depth - 1) * num_samples + dr.arange(mi.UInt32, num_samples)


def _entry_range(output_offset, depth, num_samples: int, num_targets: int, active):
    """(first, end) entry of each lane's inner loop at this depth (edit 5): the targets 0 .. num_targets
    in step 1 (output_offset None) and with Sionna's dense step-2 offsets, or the ray's kept
    candidates at this depth where output_offset is irt4.data.sparse_ordering's KeptPaths."""
    import drjit as dr
    import mitsuba as mi

    group_start = getattr(output_offset, "group_start", None)
    if group_start is None:
        return mi.UInt32(0), mi.UInt32(num_targets)
    group = _ray_group(depth, num_samples)
    return dr.gather(mi.UInt32, group_start, group, active), dr.gather(
        mi.UInt32, group_start, group + 1, active
    )


def _entry_target(output_offset, entry, end, active):
    """The target of each lane's entry: the entry itself, or the kept candidate's target."""
    import drjit as dr
    import mitsuba as mi

    targets = getattr(output_offset, "target", None)
    if targets is None:
        return mi.UInt32(entry)  # a copy: the loop increments the entry in place
    return dr.gather(mi.UInt32, targets, entry, active & (entry < end))


def _entry_offset(output_offset, entry, current_path_i, active):
    """Step 3: the output offset (with the non-specular flag in its top bit) of each lane's entry."""
    import drjit as dr
    import mitsuba as mi

    offsets = getattr(output_offset, "offset", None)
    if offsets is None:
        return dr.gather(mi.UInt32, output_offset, current_path_i, active=active)
    return dr.gather(mi.UInt32, offsets, entry, active=active)


class CompactRecord:
    """Step 1's candidates as a list instead of one slot per (depth, ray, receiver) (edit 6): each
    candidate's slot, hash pair (or non-specular marker) and rank among its ray's candidates at that
    depth, appended as found (in no fixed order), and per (depth, ray) group the number of them.
    Sionna's slot array is 205 M entries (1.6 GB) at the default settings, filled before and
    scanned after every call, for a few million candidates; irt4.data.sparse_ordering puts the list
    in slot order from the counts and ranks instead."""

    def __init__(self, num_slots: int, num_groups: int):
        import drjit as dr
        import mitsuba as mi

        self.counter = dr.zeros(mi.UInt32, 1)
        # as long as the slot array, so it cannot overflow; left uninitialized, so only the pages
        # the candidates are written to are ever touched
        self.slot = dr.empty(mi.UInt32, num_slots)
        self.value = dr.empty(mi.UInt64, num_slots)
        self.rank = dr.empty(mi.UInt32, num_slots)
        self.per_group = dr.zeros(mi.UInt32, num_groups + 1)  # group g's count at g + 1


def start_compact_record(num_slots: int, num_groups: int) -> CompactRecord:
    """Let the next step 1 append to a fresh CompactRecord (until stop_compact_record)."""
    global _record
    _record = CompactRecord(num_slots, num_groups)
    return _record


def stop_compact_record() -> None:
    global _record
    _record = None


def _slot_array(num_slots: int, marker):
    """Step 1's candidate_hashes: Sionna's slot array, or a placeholder while recording compactly."""
    import drjit as dr
    import mitsuba as mi

    return dr.full(mi.UInt64, marker, num_slots if _record is None else 1)


def _record_candidate(candidate_hashes, value, slot, rank, store) -> None:
    """Edit 6: the candidate into its slot (Sionna), or appended to the CompactRecord."""
    import drjit as dr
    import mitsuba as mi

    if _record is None:
        dr.scatter(candidate_hashes, value, slot, active=store)
        return
    position = dr.scatter_inc(_record.counter, mi.UInt32(0), store)
    dr.scatter(_record.slot, slot, position, store)
    dr.scatter(_record.value, value, position, store)
    dr.scatter(_record.rank, rank, position, store)


def _record_count(rank, depth, num_samples: int, active) -> None:
    """Edit 6, after a depth's receiver loop: each ray's number of candidates at that depth."""
    import drjit as dr

    if _record is not None:
        dr.scatter(_record.per_group, rank, _ray_group(depth, num_samples) + 1, active & (rank > 0))


def _recorded(candidate_hashes):
    """What step 1 returns: Sionna's slot array, or the CompactRecord."""
    return candidate_hashes if _record is None else _record


def _compile_loop(module, source: str):
    # @dr.syntax rewrites the function from its source, which it reads through linecache
    linecache.cache[_FILENAME] = (len(source), None, source.splitlines(True), _FILENAME)
    namespace = {
        **vars(module),
        "_irt4_through_solid": _through_solid,
        "_irt4_entry_range": _entry_range,
        "_irt4_entry_target": _entry_target,
        "_irt4_entry_offset": _entry_offset,
        "_irt4_slot_array": _slot_array,
        "_irt4_record": _record_candidate,
        "_irt4_record_count": _record_count,
        "_irt4_recorded": _recorded,
    }
    exec(compile(source, _FILENAME, "exec"), namespace)
    return namespace["_shoot_and_bounce_loop"]


def is_applied() -> bool:
    """Whether the culling is in place in this process (never imports Sionna)."""
    module = sys.modules.get(_MODULE)
    if module is None or _culled_loop is None:
        return False
    return module.SBDeterministicCandidateGenerator.__dict__.get("_shoot_and_bounce_loop") is _culled_loop


def check_version() -> None:
    """RuntimeError unless the installed sionna-rt is the one these edits were written for."""
    installed = _sionna_rt_version()
    if not installed.startswith(SUPPORTED_VERSION):
        raise RuntimeError(
            f"irt4's candidate culling targets sionna-rt {SUPPORTED_VERSION}x, found sionna-rt {installed}: "
            "update irt4/data/candidate_culling.py or trace with cull_candidates=False"
        )


def apply() -> None:
    """Put the edited loop in place of sionna-rt 2.2's; a second call does nothing.

    Raises RuntimeError if sionna-rt is missing, is not 2.2.x, or its loop is not the expected one.
    """
    global _original_loop, _culled_loop
    check_version()
    if is_applied():
        return
    from irt4.data.raytrace import pin_libllvm

    pin_libllvm()  # before drjit is first imported (sionna.md, "Install")
    import importlib

    module = importlib.import_module(_MODULE)
    generator = module.SBDeterministicCandidateGenerator
    loop = _compile_loop(module, edited_source(inspect.getsource(module)))
    _original_loop = generator.__dict__["_shoot_and_bounce_loop"]
    _culled_loop = loop
    generator._shoot_and_bounce_loop = loop


def remove() -> None:
    """Put Sionna's own loop back (for comparisons); nothing happens if the culling is not applied."""
    if is_applied():
        sys.modules[_MODULE].SBDeterministicCandidateGenerator._shoot_and_bounce_loop = _original_loop
