"""A run-time fix for diffraction that sionna-rt 2.2.x loses at corners that are not axis-aligned.

The bug (../shared/spec/sionna.md, "A silent diffraction bug"). PathSolver's shoot-and-bounce
candidate search (`sionna/rt/path_solvers/sb_candidate_generator.py`, `_shoot_and_bounce_loop`, and
the same loop in `sb_deterministic.py`) moves a ray that hit a wall near an edge onto that edge
(`_sample_radio_material` -> `_sample_diffraction_point` -> `sample_wedge_diffraction_point`), then
proposes a path only if the receiver is visible from that edge point: `si_scene.spawn_ray_to(target)`
and `ray_test`. Mitsuba's `spawn_ray_to` pushes the ray origin along `si.n`, the normal of the wall
that was hit, by (1 + max |p|) x 8.9e-5 m (2.3 cm at 256 m), towards the receiver's side of that
wall. A receiver in the shadow behind a convex corner lies behind the hit wall, so the push goes
into the building:
- at a 90-degree corner the push runs along the other wall's plane: exactly on it when the walls
  are axis-aligned, on either side of it by float rounding otherwise (a box turned by 5, 10, ...,
  85 degrees lost the shadow of at least one corner at 10 of the 17 angles);
- at an obtuse corner (interior angle a > 90 degrees, common in real footprints) the origin lands
  push x sin(a - 90 deg) inside the building, up to cm at city coordinates.
The other wall then blocks the test ray and the diffracted path into the shadow is never proposed;
the image method only validates candidates, it does not create them.

The fix. On the samples that become a diffraction on a wedge between two faces, the edge point is
moved `OUTSIDE_OFFSET_M` along the wedge's exterior bisector n0 + nn (Sionna orients both normals
away from the wedge's interior, whose angle is <= pi, and its image method offsets its own occlusion
tests by 1 mm along the same vector), and `si.n` is set to zero there, so Mitsuba adds no offset of
its own. The origin is then outside both face planes, and no segment from it to a point outside the
wedge can cross the wedge. Only the candidate search sees the moved point (its visibility tests and
the next bounce's origin): the image method recomputes every diffraction point on the edge from the
wedge and validates the whole path, so a candidate the fix lets through is kept only if it is a real
path. Screens (one face, prim0 == primn) have no bisector and keep Sionna's behaviour.

What is replaced: `SBCandidateGenerator._sample_diffraction_point`, inherited by
`SBDeterministicCandidateGenerator`, by a function that calls the original and adjusts its point
and the normal on the lanes where diffraction was sampled. Targets sionna-rt 2.2.x only.
"""

from __future__ import annotations

import inspect
import sys
from importlib.metadata import PackageNotFoundError, version

SUPPORTED_VERSION = "2.2."  # the release series whose candidate search this was written against
# far above float32 rounding at 256 m (~3e-5 m), far below the size of a street or a wall
OUTSIDE_OFFSET_M = 0.01
_EXPECTED_PARAMETERS = tuple(
    "self si loc_en_inter ray_origin ki_world sample2 edge_diffraction active".split()
)
_original_sample_diffraction_point = None  # Sionna's method, kept while the fix is applied


def _sionna_rt_version() -> str:
    try:
        return version("sionna-rt")
    except PackageNotFoundError:
        return "missing"


def _candidate_generator_class():
    from irt4.data.raytrace import pin_libllvm

    pin_libllvm()  # before drjit is first imported (sionna.md, "Install")
    from sionna.rt.path_solvers.sb_candidate_generator import SBCandidateGenerator

    return SBCandidateGenerator


def _sample_diffraction_point_outside(
    self, si, loc_en_inter, ray_origin, ki_world, sample2, edge_diffraction, active
):
    """Sionna's diffraction point sampling, with the point moved off the wedge (module docstring)."""
    import drjit as dr
    import mitsuba as mi

    diffraction, probs, diff_point, wedges = _original_sample_diffraction_point(
        self, si, loc_en_inter, ray_origin, ki_world, sample2, edge_diffraction, active
    )
    bisector = wedges.n0 + wedges.nn  # exterior bisector, not normalized
    bisector_norm2 = dr.squared_norm(bisector)
    on_wedge = diffraction & (wedges.prim0 != wedges.primn) & (bisector_norm2 > 1e-6)
    outward = bisector * dr.rsqrt(dr.maximum(bisector_norm2, 1e-6))
    diff_point = dr.select(on_wedge, diff_point + OUTSIDE_OFFSET_M * outward, diff_point)
    # Mitsuba's spawn_ray_to (visibility of each receiver) and spawn_ray (next bounce) push the origin
    # along si.n: a zero normal leaves it where it was put
    si.n = dr.select(on_wedge, mi.Normal3f(0.0), si.n)
    return diffraction, probs, diff_point, wedges


def is_applied() -> bool:
    """Whether the fix is in place in this process (never imports Sionna)."""
    module = sys.modules.get("sionna.rt.path_solvers.sb_candidate_generator")
    if module is None:
        return False
    return (
        module.SBCandidateGenerator.__dict__.get("_sample_diffraction_point")
        is _sample_diffraction_point_outside
    )


def apply() -> None:
    """Replace sionna-rt 2.2's diffraction point sampling by the fixed one; a second call does nothing.

    Raises RuntimeError if sionna-rt is missing, is not 2.2.x, or its method is not the expected one.
    """
    global _original_sample_diffraction_point
    installed = _sionna_rt_version()
    if not installed.startswith(SUPPORTED_VERSION):
        raise RuntimeError(
            f"irt4's diffraction fix targets sionna-rt {SUPPORTED_VERSION}x, found sionna-rt {installed}: "
            "check whether the new version still loses diffraction at rotated corners, then update "
            "irt4/data/diffraction_fix.py"
        )
    generator = _candidate_generator_class()
    current = generator.__dict__.get("_sample_diffraction_point")
    if current is _sample_diffraction_point_outside:
        return
    if current is None or tuple(inspect.signature(current).parameters) != _EXPECTED_PARAMETERS:
        found = "missing" if current is None else str(inspect.signature(current))
        raise RuntimeError(
            f"sionna-rt {installed}: SBCandidateGenerator._sample_diffraction_point is {found}, expected "
            f"parameters {_EXPECTED_PARAMETERS}; irt4's diffraction fix cannot be applied"
        )
    overriding = [
        cls.__name__ for cls in generator.__subclasses__() if "_sample_diffraction_point" in cls.__dict__
    ]
    if overriding:
        raise RuntimeError(
            f"sionna-rt {installed}: {', '.join(overriding)} override _sample_diffraction_point; irt4's "
            "diffraction fix would not reach them"
        )
    _original_sample_diffraction_point = current
    generator._sample_diffraction_point = _sample_diffraction_point_outside
