"""Skip shadow rays in sionna-rt 2.2's candidate search that cannot yield a path (same maps, faster).

Where the time goes. `irt4-data synth` traces with PathSolver(deterministic=True); 97 % of a solver
call is the first pass of `SBDeterministicCandidateGenerator._shoot_and_bounce_loop`: for each ray
(samples_per_src per transmitter), at each bounce, for each of the call's receivers, a shadow ray from
the hit point to the receiver (`ray_test`). Without those tests a 256-receiver call of an old-town map
took 0.19 s instead of 6.4 s. Two edits of that loop remove tests whose answer is already known:

1. The loop over receivers runs only on rays that are still active. Sionna runs it for every lane,
   including rays that left the scene, whose every test and write is masked off.
2. After a specular reflection, a receiver behind the reflecting surface (on the far side of its
   plane from the incident ray) is taken as not visible without tracing. Sionna traces that ray: it
   starts on the incident side and crosses the plane next to the hit point, so the surface itself
   blocks it, except within a few mm of the surface's edge; and a candidate that did get through
   there is a reflection whose receiver lies behind the mirror, which the image method rejects. So
   no path is lost. Diffraction lanes keep every test (a diffracted ray reaches the shadow side).

What changes in the result. Sionna keeps a candidate only if its thread wins a slot, per specular
chain and receiver, in two hash tables (lowest thread index wins), and only while the per-transmitter
path budget lasts. Candidates of the second kind used to claim slots and budget too; without them a
valid candidate that collided with one is kept. So the culled search finds the same paths or more,
never fewer, and gains can only rise: on a 16 x 16-receiver street-grid test map, 8 of 300 cells
rose by 0.02-0.14 dB, the rest were equal to 1e-14 dB (tests/test_candidate_culling.py). Measured on
256-receiver calls at the default settings (2 cores): a street-grid map 5.4 -> 4.8 s, an old-town
map 8.2 -> 6.4 s, with at most 1.4e-4 dB difference over their 512 and 768 receivers.

How: the loop's source is read from the installed module, the edits are applied as exact text
replacements (each must match once, else nothing is changed and RuntimeError says why), and the
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
# (text in Sionna's method, replacement): module docstring, edits 1 and 2
EDITS = (
    (
        "                t_idx < num_targets,\n",
        "                (t_idx < num_targets) & active,\n",
    ),
    (
        "                    los_blocked = mi_scene.ray_test(los_ray, active=active)\n",
        "                    facing = diffraction | (dr.dot(n, los_ray.d) > 0.0)\n"
        "                    los_blocked = mi_scene.ray_test(los_ray, active=active & facing) | ~facing\n",
    ),
)
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
    return textwrap.dedent(method)


def _compile_loop(module, source: str):
    # @dr.syntax rewrites the function from its source, which it reads through linecache
    linecache.cache[_FILENAME] = (len(source), None, source.splitlines(True), _FILENAME)
    namespace = dict(vars(module))
    exec(compile(source, _FILENAME, "exec"), namespace)
    return namespace["_shoot_and_bounce_loop"]


def is_applied() -> bool:
    """Whether the culling is in place in this process (never imports Sionna)."""
    module = sys.modules.get(_MODULE)
    if module is None or _culled_loop is None:
        return False
    return module.SBDeterministicCandidateGenerator.__dict__.get("_shoot_and_bounce_loop") is _culled_loop


def apply() -> None:
    """Put the edited loop in place of sionna-rt 2.2's; a second call does nothing.

    Raises RuntimeError if sionna-rt is missing, is not 2.2.x, or its loop is not the expected one.
    """
    global _original_loop, _culled_loop
    installed = _sionna_rt_version()
    if not installed.startswith(SUPPORTED_VERSION):
        raise RuntimeError(
            f"irt4's candidate culling targets sionna-rt {SUPPORTED_VERSION}x, found sionna-rt {installed}: "
            "update irt4/data/candidate_culling.py or trace with cull_candidates=False"
        )
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
