"""Order the candidate paths of sionna-rt 2.2's deterministic search over the recorded slots only.

`SBDeterministicCandidateGenerator._shoot_and_bounce` runs in three steps: (1) the shoot-and-bounce
loop records, in one slot per (depth, ray, receiver), whether that lane found a candidate and under
which hashes; (2) the slots are ordered into output offsets: a candidate is kept if it is not
specular or its ray won both hash races, and while its transmitter's path budget lasts, and each kept
one gets the next offset; (3) the loop runs again and writes the paths to their offsets.

Sionna does step 2 on every slot: at the default settings (100,000 rays per transmitter, 2
transmitters, depth 4, 256 receivers per call) that is 205 M slots, and a dozen passes over arrays of
that size (gathers into source-major order, block prefix sums, a prefix sum, the per-ray reduction)
took about half of a call once irt4.data.candidate_culling had made the loop cheap. Yet only a small
fraction of the slots hold a candidate. Here the recorded slots are compressed into a short list first
(one pass), and the same rules run on that list: the order of the list is the output order, and within
one transmitter it is also Sionna's source-major order, so the per-transmitter budget counts the same
candidates. Every kept candidate gets the offset Sionna gives it, so the paths, their order and the
gains are the same (tests/test_candidate_culling.py compares the two).

Step 3 needs, per (depth, ray, receiver) slot, that slot's offset. Sionna hands it a dense array over
all slots and runs the receiver loop of every ray again to look them up. The kept candidates are few
(a specular chain is kept once per receiver, for the lowest ray that found it), so here they go to
step 3 as a list grouped by (depth, ray) (KeptPaths), and the culled loop (candidate_culling edit 5)
visits only a ray's own entries. Without the culled loop the list is expanded into Sionna's array.

apply() puts this method in place of Sionna's (RayTracer does so with cull_candidates); remove() puts
Sionna's back. Targets sionna-rt 2.2.x, as the culling does.
"""

from __future__ import annotations

import sys

_MODULE = "sionna.rt.path_solvers.sb_deterministic"
_original = None  # Sionna's method while this one is in place
RECORD_COMPACTLY = True  # step 1 appends to a CompactRecord where the culled loop is in place


def _shoot_and_bounce(
    self,
    mi_scene,
    src_positions,
    tgt_positions,
    paths,
    samples_per_src: int,
    max_num_paths_per_src: int,
    max_depth: int,
    paths_counter_per_source,
    specular_reflection: bool,
    diffuse_reflection: bool,
    refraction: bool,
    diffraction: bool,
    edge_diffraction: bool,
    seed: int,
    src_boxes=None,
):
    """Sionna's three steps with step 2 on the recorded slots (module docstring)."""
    import drjit as dr
    import mitsuba as mi

    from irt4.data import candidate_culling

    sionna = sys.modules[_MODULE]
    loop_args = (
        mi_scene,
        src_positions,
        tgt_positions,
        samples_per_src,
        max_num_paths_per_src,
        max_depth,
        paths,
        paths_counter_per_source,
        specular_reflection,
        diffuse_reflection,
        refraction,
        diffraction,
        edge_diffraction,
    )
    num_samples = samples_per_src * dr.width(src_positions)
    num_targets = dr.width(tgt_positions)

    # step 1: record the candidates (as a list where the culled loop is in place: CompactRecord)
    num_slots = max_depth * num_samples * num_targets
    if RECORD_COMPACTLY and candidate_culling.is_applied():
        candidate_culling.start_compact_record(num_slots, num_groups=max_depth * num_samples)
    self._sampler.seed(seed, num_samples)
    try:
        with dr.scoped_set_flag(dr.JitFlag.OptimizeLoops, False):
            slots, min_thread_per_hash = self._shoot_and_bounce_loop(
                *loop_args, self._sampler, counting_mode=True, src_boxes=src_boxes
            )
    finally:
        candidate_culling.stop_compact_record()

    # step 2: output offsets, on the recorded slots only (slot = (depth, thread, target), target fastest)
    if isinstance(slots, candidate_culling.CompactRecord):
        index, recorded = _in_slot_order(slots, num_targets)
    else:
        index = dr.compress(slots != sionna.NO_PATH_RECORDED_MARKER)  # ascending: the output order
        recorded = dr.gather(mi.UInt64, slots, index) if dr.width(index) else None
    kept, thread_has_output, num_new_paths = _order_recorded(
        sionna,
        index,
        recorded,
        min_thread_per_hash,
        paths,
        paths_counter_per_source,
        samples_per_src=samples_per_src,
        num_samples=num_samples,
        num_targets=num_targets,
        num_groups=max_depth * num_samples,
        max_num_paths_per_src=max_num_paths_per_src,
    )

    # step 3: the same rays again, writing the kept paths (Sionna's step; with the culled loop each
    # ray visits its own kept candidates only, candidate_culling edit 5)
    with dr.scoped_set_flag(dr.JitFlag.OptimizeLoops, False):
        self._sampler.seed(seed, num_samples)
        self._shoot_and_bounce_loop(
            *loop_args,
            self._sampler,
            output_offset=kept if candidate_culling.is_applied() else kept.dense(num_slots),
            thread_has_output=thread_has_output,
            src_boxes=src_boxes,
        )
    paths.advance_paths_counter(
        min(paths.buffer_size - paths.paths_counter, dr.opaque(mi.UInt32, num_new_paths))
    )


class KeptPaths:
    """The kept candidates of one call in output order, grouped by (depth, ray): group g = (depth - 1)
    * num_samples + ray holds entries group_start[g] .. group_start[g + 1] - 1, each with its slot
    (depth, ray, target), its target and its output offset (the non-specular flag in the top bit, as
    Sionna's step 3 reads it)."""

    def __init__(self, group_start, slot, offset, num_targets: int):
        self.group_start, self.slot, self.offset = group_start, slot, offset
        self.target = slot - (slot // num_targets) * num_targets

    def dense(self, num_slots: int):
        """Sionna's step-2 array: the offset of every (depth, ray, target) slot, UINT32_MAX where none."""
        import drjit as dr
        import mitsuba as mi

        output_offset = dr.full(mi.UInt32, 0xFFFFFFFF, num_slots)
        dr.scatter(output_offset, self.offset, self.slot, active=self.offset != 0xFFFFFFFF)
        return output_offset


def _in_slot_order(record, num_targets: int):
    """(slot, hash pair) of a CompactRecord's candidates in ascending slot order, as Sionna's slot
    array compressed gives them: a group's (depth, ray) candidates start after those of every lower
    group (a prefix sum of the counts) and follow each other by rank, which is receiver order."""
    import drjit as dr
    import mitsuba as mi

    count = int(record.counter[0])
    if count == 0:
        return mi.UInt32(), None
    entry = dr.arange(mi.UInt32, count)
    slot = dr.gather(mi.UInt32, record.slot, entry)
    group_start = dr.prefix_reduce(dr.ReduceOp.Add, record.per_group, exclusive=False)
    position = dr.gather(mi.UInt32, group_start, slot // num_targets) + dr.gather(
        mi.UInt32, record.rank, entry
    )
    index, recorded = dr.empty(mi.UInt32, count), dr.empty(mi.UInt64, count)
    dr.scatter(index, slot, position)
    dr.scatter(recorded, dr.gather(mi.UInt64, record.value, entry), position)
    return index, recorded


def _order_recorded(
    sionna,
    index,
    recorded,
    min_thread_per_hash,
    paths,
    paths_counter_per_source,
    *,
    samples_per_src: int,
    num_samples: int,
    num_targets: int,
    num_groups: int,
    max_num_paths_per_src: int,
):
    """From the recorded candidates' slots (ascending: the output order) and hash pairs: (the kept
    candidates as KeptPaths, thread_has_output per ray, number of new paths), as Sionna's step 2
    computes them; paths_counter_per_source is advanced by the paths that fit the buffer."""
    import drjit as dr
    import mitsuba as mi

    if dr.width(index) == 0:  # no candidate in this call (Dr.Jit refuses arithmetic on empty arrays)
        return _no_kept_paths(num_groups, num_targets), dr.zeros(mi.Bool, num_samples), 0
    thread = (index // num_targets) % num_samples
    source = thread // samples_per_src

    non_specular = recorded == sionna.NON_SPECULAR_PATH_MARKER
    hash0, hash1 = sionna.extract_hashes_from_u64(recorded)
    won = (
        ~non_specular
        & (dr.gather(mi.UInt32, min_thread_per_hash[0], hash0, active=~non_specular) == thread)
        & (dr.gather(mi.UInt32, min_thread_per_hash[1], hash1, active=~non_specular) == thread)
    )
    kept = non_specular | won

    # the per-source budget: candidates of the same source before this one (in output order, which
    # within one source is Sionna's source-major order) plus the paths the source already has
    budget_ok = mi.Bool(True)
    for src in range(dr.width(paths_counter_per_source)):
        mine = kept & (source == src)
        before = dr.prefix_reduce(dr.ReduceOp.Add, mi.UInt32(mine), exclusive=True)
        already = dr.gather(mi.UInt32, paths_counter_per_source, mi.UInt32(src))
        budget_ok &= ~mine | (already + before < max_num_paths_per_src)
    kept &= budget_ok

    count = dr.prefix_reduce(dr.ReduceOp.Add, mi.UInt32(kept), exclusive=False)
    num_new_paths = int(count[dr.width(count) - 1]) if dr.width(count) else 0
    offset = paths.paths_counter + (count - 1)
    fits = kept & (offset < paths.buffer_size)
    dr.scatter_reduce(dr.ReduceOp.Add, paths_counter_per_source, mi.UInt32(1), source, active=fits)

    has_output = dr.zeros(mi.UInt32, num_samples)
    dr.scatter(has_output, mi.UInt32(1), thread, active=fits)
    entry = dr.compress(fits)  # positions in the recorded list, still in output order
    if dr.width(entry) == 0:
        return _no_kept_paths(num_groups, num_targets), has_output > 0, num_new_paths
    slot = dr.gather(mi.UInt32, index, entry)
    group = slot // num_targets
    flagged = offset | (mi.UInt32(non_specular) << 31)  # the non-specular flag rides in the top bit
    per_group = dr.zeros(mi.UInt32, num_groups + 1)
    dr.scatter_reduce(dr.ReduceOp.Add, per_group, mi.UInt32(1), group + 1)
    kept_paths = KeptPaths(
        group_start=dr.prefix_reduce(dr.ReduceOp.Add, per_group, exclusive=False),
        slot=slot,
        offset=dr.gather(mi.UInt32, flagged, entry),
        num_targets=num_targets,
    )
    return kept_paths, has_output > 0, num_new_paths


def _no_kept_paths(num_groups: int, num_targets: int) -> KeptPaths:
    """No kept candidate: every group empty; one placeholder entry that no lane reads (Dr.Jit cannot
    gather from an empty array), its offset "none"."""
    import drjit as dr
    import mitsuba as mi

    return KeptPaths(
        dr.zeros(mi.UInt32, num_groups + 1), mi.UInt32([0]), mi.UInt32([0xFFFFFFFF]), num_targets
    )


def is_applied() -> bool:
    """Whether this ordering is in place in this process (never imports Sionna)."""
    module = sys.modules.get(_MODULE)
    if module is None or _original is None:
        return False
    return module.SBDeterministicCandidateGenerator.__dict__.get("_shoot_and_bounce") is _shoot_and_bounce


def apply() -> None:
    """Put the sparse ordering in place of sionna-rt 2.2's step 2; a second call does nothing.
    Raises RuntimeError where the culling would (irt4.data.candidate_culling.apply)."""
    global _original
    from irt4.data import candidate_culling

    candidate_culling.check_version()
    if is_applied():
        return
    from irt4.data.raytrace import pin_libllvm

    pin_libllvm()
    import importlib

    generator = importlib.import_module(_MODULE).SBDeterministicCandidateGenerator
    _original = generator.__dict__["_shoot_and_bounce"]
    generator._shoot_and_bounce = _shoot_and_bounce


def remove() -> None:
    """Put Sionna's own step 2 back; nothing happens if the sparse ordering is not applied."""
    if is_applied():
        sys.modules[_MODULE].SBDeterministicCandidateGenerator._shoot_and_bounce = _original
