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

apply() puts this method in place of Sionna's (RayTracer does so with cull_candidates); remove() puts
Sionna's back. Targets sionna-rt 2.2.x, as the culling does.
"""

from __future__ import annotations

import sys

_MODULE = "sionna.rt.path_solvers.sb_deterministic"
_original = None  # Sionna's method while this one is in place


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

    # step 1: record the candidates
    self._sampler.seed(seed, num_samples)
    with dr.scoped_set_flag(dr.JitFlag.OptimizeLoops, False):
        slots, min_thread_per_hash = self._shoot_and_bounce_loop(
            *loop_args, self._sampler, counting_mode=True, src_boxes=src_boxes
        )

    # step 2: output offsets, on the recorded slots only (slot = (depth, thread, target), target fastest)
    output_offset, thread_has_output, num_new_paths = _order_recorded(
        sionna,
        slots,
        min_thread_per_hash,
        paths,
        paths_counter_per_source,
        samples_per_src=samples_per_src,
        num_samples=num_samples,
        num_targets=num_targets,
        max_num_paths_per_src=max_num_paths_per_src,
    )

    # step 3: the same rays again, writing the kept paths (Sionna's own step)
    with dr.scoped_set_flag(dr.JitFlag.OptimizeLoops, False):
        self._sampler.seed(seed, num_samples)
        self._shoot_and_bounce_loop(
            *loop_args,
            self._sampler,
            output_offset=output_offset,
            thread_has_output=thread_has_output,
            src_boxes=src_boxes,
        )
    paths.advance_paths_counter(
        min(paths.buffer_size - paths.paths_counter, dr.opaque(mi.UInt32, num_new_paths))
    )


def _order_recorded(
    sionna,
    slots,
    min_thread_per_hash,
    paths,
    paths_counter_per_source,
    *,
    samples_per_src: int,
    num_samples: int,
    num_targets: int,
    max_num_paths_per_src: int,
):
    """(output_offset over all slots, thread_has_output per ray, number of new paths), as Sionna's
    step 2 computes them; paths_counter_per_source is advanced by the paths that fit the buffer."""
    import drjit as dr
    import mitsuba as mi

    uint32_max = sionna.UINT32_MAX
    index = dr.compress(slots != sionna.NO_PATH_RECORDED_MARKER)  # ascending: the output order
    if dr.width(index) == 0:  # no candidate in this call (Dr.Jit refuses arithmetic on empty arrays)
        return dr.full(mi.UInt32, uint32_max, dr.width(slots)), dr.zeros(mi.Bool, num_samples), 0
    recorded = dr.gather(mi.UInt64, slots, index)
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

    # the non-specular flag rides in the offset's top bit (Sionna's step 3 reads it there)
    output_offset = dr.full(mi.UInt32, uint32_max, dr.width(slots))
    dr.scatter(output_offset, offset | (mi.UInt32(non_specular) << 31), index, active=fits)
    has_output = dr.zeros(mi.UInt32, num_samples)
    dr.scatter(has_output, mi.UInt32(1), thread, active=fits)
    return output_offset, has_output > 0, num_new_paths


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
