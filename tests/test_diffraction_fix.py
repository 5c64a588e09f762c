"""irt4.data.diffraction_fix: diffraction into the shadow of corners that sionna-rt 2.2 loses.

The traces run in one subprocess (this file run as a script prints JSON): Dr.Jit's state is global
and a bad libLLVM aborts the process it runs in. Each scene is a single building on a ground plane,
a transmitter in the open and receivers at 1.5 m a few metres behind a silhouette corner, inside
the building's geometric shadow, so only a path diffracted at that corner can reach them.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from irt4.data import diffraction_fix
from tests.conftest import run_sim_script

TX = np.array([25.0, 42.0, 1.5])
CENTRE = np.array([60.0, 60.0])
HEIGHT = 20.0  # well above the antennas: no path over the roof
BOX = np.array([[50, 50, 70, 70]])  # [row0, col0, row1, col1): a 20 m square around CENTRE
WAVELENGTH = 299_792_458.0 / 5.9e9  # TraceSettings' default frequency
# with 90-degree corners sionna-rt 2.2's pushed origin lies on the other wall's plane up to float
# rounding, so whether a corner loses its shadow depends on the exact geometry: turned by 5, 10, ..., 85
# degrees this box lost it behind one or both silhouette corners at 10 of the 17 angles, at 70 at both
ROTATION_DEG = 70.0
SHADOW_DISTANCES = (3.0, 6.0)  # m behind the corner
SHADOW_FRACTIONS = (1 / 3, 2 / 3)  # of the angle between the shadow boundary and the hidden wall


def prism_mesh(footprint: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A building on a convex (N, 2) counter-clockwise footprint, HEIGHT high, wound outward like
    boxes_mesh: N vertices at z = 0, N at the roof, a fan roof and two triangles per wall, no floor."""
    count = len(footprint)
    vertices = np.concatenate([np.c_[footprint, np.zeros(count)], np.c_[footprint, np.full(count, HEIGHT)]])
    faces = [(count, count + k, count + k + 1) for k in range(1, count - 1)]
    for a in range(count):
        b = (a + 1) % count
        faces += [(a, b, b + count), (a, b + count, a + count)]
    return vertices.astype(np.float32), np.array(faces, dtype=np.uint32)


def hexagon_footprint() -> np.ndarray:
    """Regular hexagon, 12 m circumradius, turned 25 degrees: 120-degree corners, no wall along x or y,
    and both walls that TX sees next to a silhouette corner span over 15 degrees (rays hit near it)."""
    angles = np.deg2rad(25.0 + 60.0 * np.arange(6))
    return CENTRE + 12.0 * np.c_[np.cos(angles), np.sin(angles)]


def turned(vectors: np.ndarray, angle_rad: float) -> np.ndarray:
    """(..., 2) vectors turned counter-clockwise."""
    rotation = np.array([[np.cos(angle_rad), -np.sin(angle_rad)], [np.sin(angle_rad), np.cos(angle_rad)]])
    return vectors @ rotation.T


def box_mesh(angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """boxes_mesh's box turned by angle_deg about its centre."""
    from irt4.data.scene import boxes_mesh

    vertices, faces = boxes_mesh(BOX, HEIGHT)
    vertices = vertices.astype(np.float64)
    vertices[:, :2] = turned(vertices[:, :2] - CENTRE, np.deg2rad(angle_deg)) + CENTRE
    return vertices.astype(np.float32), faces


def footprint_of(vertices: np.ndarray, corners: int) -> np.ndarray:
    """The counter-clockwise ground ring: both meshes list it first."""
    return vertices[:corners, :2].astype(np.float64)


def outward_normals(footprint: np.ndarray) -> np.ndarray:
    walls = np.roll(footprint, -1, axis=0) - footprint  # wall k runs from corner k to corner k + 1
    normals = np.c_[walls[:, 1], -walls[:, 0]]
    return normals / np.linalg.norm(normals, axis=1, keepdims=True)


def shadow_receivers(footprint: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(R, 3) receivers behind the silhouette corners seen from TX, and (R,) the free-space path length
    TX -> corner -> receiver of each (in 2D: TX, receivers and the diffraction point share z)."""
    normals = outward_normals(footprint)
    lit = np.einsum("ij,ij->i", TX[:2] - footprint, normals) > 0  # wall k faces TX
    receivers, unfolded = [], []
    for k, corner in enumerate(footprint):
        before, after = lit[k - 1], lit[k]  # walls k - 1 and k meet at corner k
        if before == after:
            continue
        hidden_end = footprint[(k + 1) % len(footprint)] if before else footprint[k - 1]
        boundary = (corner - TX[:2]) / np.linalg.norm(corner - TX[:2])
        along_wall = (hidden_end - corner) / np.linalg.norm(hidden_end - corner)
        full_turn = np.arccos(np.clip(boundary @ along_wall, -1.0, 1.0))
        sign = np.sign(boundary[0] * along_wall[1] - boundary[1] * along_wall[0])
        for fraction in SHADOW_FRACTIONS:
            direction = turned(boundary, sign * fraction * full_turn)
            for distance in SHADOW_DISTANCES:
                receivers.append([*(corner + distance * direction), TX[2]])
                unfolded.append(np.linalg.norm(corner - TX[:2]) + distance)
    return np.array(receivers), np.array(unfolded)


def blocked_by(footprint: np.ndarray, point: np.ndarray) -> bool:
    """Whether the straight line TX -> point passes through the convex footprint (2D)."""
    normals = outward_normals(footprint)
    along = TX[:2] + np.linspace(0.0, 1.0, 2001)[:, None] * (point[:2] - TX[:2])  # 2 cm steps or finer
    inside = (np.einsum("pkj,kj->pk", along[:, None, :] - footprint[None], normals) < 0).all(axis=1)
    return bool(inside.any())


def ring_receivers(radius: float, count: int) -> np.ndarray:
    angles = 2 * np.pi * np.arange(count) / count
    return np.c_[CENTRE + radius * np.c_[np.cos(angles), np.sin(angles)], np.full(count, TX[2])]


def scenes() -> dict[str, tuple[tuple[np.ndarray, np.ndarray], np.ndarray, np.ndarray]]:
    """name -> (mesh, receivers, unfolded path lengths; NaN for receivers not in a corner's shadow)."""
    out = {}
    hexagon = prism_mesh(hexagon_footprint())
    rotated = box_mesh(ROTATION_DEG)
    aligned = box_mesh(0.0)
    for name, mesh, corners in (
        ("hexagon", hexagon, 6),
        ("rotated_box", rotated, 4),
        ("aligned_box", aligned, 4),
    ):
        receivers, unfolded = shadow_receivers(footprint_of(mesh[0], corners))
        if name == "aligned_box":  # also lit and reflected paths: nothing that works may change
            ring = ring_receivers(20.0, 24)
            receivers = np.concatenate([receivers, ring])
            unfolded = np.concatenate([unfolded, np.full(len(ring), np.nan)])
        out[name] = (mesh, receivers, unfolded)
    return out


def trace_all() -> dict:
    """Gains of every scene without the fix, then with it (applied twice)."""
    from irt4.data.raytrace import RayTracer, TraceSettings
    from irt4.data.scene import ground_mesh

    settings = TraceSettings(max_depth=1, samples_per_src=10_000, paths_per_rx=64)
    rx_per_call = max(len(receivers) for _, receivers, _ in scenes().values())
    result: dict = {"applied_before": diffraction_fix.is_applied()}
    for label in ("unfixed", "fixed"):
        if label == "fixed":
            diffraction_fix.apply()
            diffraction_fix.apply()
        for name, (mesh, receivers, _) in scenes().items():
            tracer = RayTracer(mesh, ground_mesh(128), TX[None], rx_per_call, settings, fix_diffraction=False)
            gain_db = tracer.path_gain_db(receivers)[0]
            result[f"{label}/{name}"] = [float(g) if np.isfinite(g) else None for g in gain_db]
    original = diffraction_fix._original_sample_diffraction_point
    result["applied_after"] = diffraction_fix.is_applied()
    result["original_module"] = original.__module__ if original is not None else None
    return result


@pytest.fixture(scope="module")
def traced() -> dict:
    return run_sim_script(__file__, timeout=600)


def gains(traced: dict, label: str, name: str) -> np.ndarray:
    return np.array([-np.inf if g is None else g for g in traced[f"{label}/{name}"]])


def free_space_gain_db(length_m: np.ndarray) -> np.ndarray:
    return 20.0 * np.log10(WAVELENGTH / (4 * np.pi * length_m))


def test_shadow_receivers_are_outside_the_building_and_hidden_from_the_transmitter():
    for footprint in (
        hexagon_footprint(),
        footprint_of(box_mesh(ROTATION_DEG)[0], 4),
        footprint_of(box_mesh(0.0)[0], 4),
    ):
        receivers, _ = shadow_receivers(footprint)
        assert len(receivers) == 2 * len(SHADOW_FRACTIONS) * len(SHADOW_DISTANCES)  # two silhouette corners
        normals = outward_normals(footprint)
        for receiver in receivers:
            assert (np.einsum("kj,kj->k", receiver[:2] - footprint, normals) > 0).any()  # outside
            assert blocked_by(footprint, receiver)


def test_diffraction_fix_module_imports_without_sionna():
    code = (
        "import sys; from irt4.data import diffraction_fix as fix; "
        "assert not fix.is_applied(); "
        "print(sorted(m for m in ('sionna', 'mitsuba', 'drjit') if m in sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[]"


def test_apply_refuses_other_sionna_versions(monkeypatch):
    monkeypatch.setattr(diffraction_fix, "_sionna_rt_version", lambda: "2.3.0")
    with pytest.raises(RuntimeError, match=r"found sionna-rt 2\.3\.0"):
        diffraction_fix.apply()


def test_apply_refuses_a_sampling_method_with_another_signature(monkeypatch):
    class ChangedGenerator:
        def _sample_diffraction_point(self, si, ray_origin, ki_world, sample2, active):
            raise AssertionError("never called")

    monkeypatch.setattr(diffraction_fix, "_sionna_rt_version", lambda: "2.2.0")
    monkeypatch.setattr(diffraction_fix, "_candidate_generator_class", lambda: ChangedGenerator)
    with pytest.raises(RuntimeError, match="_sample_diffraction_point is"):
        diffraction_fix.apply()
    assert ChangedGenerator.__dict__["_sample_diffraction_point"].__name__ == "_sample_diffraction_point"


@pytest.mark.sim
def test_apply_twice_wraps_sionna_once(traced):
    assert not traced["applied_before"] and traced["applied_after"]
    assert traced["original_module"] == "sionna.rt.path_solvers.sb_candidate_generator"


@pytest.mark.sim
def test_fix_restores_diffraction_into_the_shadow_of_an_obtuse_corner(traced):
    _, _, unfolded = scenes()["hexagon"]
    unfixed, fixed = gains(traced, "unfixed", "hexagon"), gains(traced, "fixed", "hexagon")
    assert (unfixed == -np.inf).all(), unfixed  # sionna-rt 2.2 proposes no diffracted path
    assert ((fixed > -130.0) & (fixed < free_space_gain_db(unfolded))).all(), fixed


@pytest.mark.sim
def test_fix_restores_diffraction_behind_the_corners_of_a_rotated_box(traced):
    _, _, unfolded = scenes()["rotated_box"]
    unfixed, fixed = gains(traced, "unfixed", "rotated_box"), gains(traced, "fixed", "rotated_box")
    assert (unfixed == -np.inf).all(), unfixed  # measured at ROTATION_DEG (see there)
    assert ((fixed > -130.0) & (fixed < free_space_gain_db(unfolded))).all(), fixed


@pytest.mark.sim
def test_fix_leaves_an_axis_aligned_box_unchanged(traced):
    _, _, unfolded = scenes()["aligned_box"]
    unfixed, fixed = gains(traced, "unfixed", "aligned_box"), gains(traced, "fixed", "aligned_box")
    shadow = np.isfinite(unfolded)
    assert np.isfinite(unfixed[shadow]).all(), unfixed  # axis-aligned corners already diffract
    np.testing.assert_array_equal(np.isfinite(fixed), np.isfinite(unfixed))
    finite = np.isfinite(unfixed)
    np.testing.assert_allclose(fixed[finite], unfixed[finite], atol=0.01)


if __name__ == "__main__":
    print(json.dumps(trace_all()))
