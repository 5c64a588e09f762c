"""Sionna RT on the CPU: the one place irt4 imports sionna/mitsuba/drjit (inside functions only).

Measured behaviour this relies on: ../shared/spec/sionna.md. In short: Dr.Jit's LLVM backend
aborts the whole process with libLLVM 14-16 and works with 19, so libLLVM 19 is pinned through
DRJIT_LIBLLVM_PATH (unless the user set it) and the backend is probed with a tiny solve in a
subprocess before any real work; PathSolver's path buffer is shared by all receivers of a call and
overflows silently, so receivers go in fixed-size chunks with a buffer sized per receiver.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import dataclass

import numpy as np

from irt4.errors import InputError

LLVM_ENV = "DRJIT_LIBLLVM_PATH"
MIN_LLVM = 19  # 14-16 abort at the first solve (sionna.md); 19 and 22 measured to work
# Debian's libllvm19 installs /usr/lib/<triplet>/libLLVM.so.19.1; upstream packages use llvm-N/lib
_LLVM_GLOBS = ("/usr/lib/*/libLLVM.so.*", "/usr/lib/*/libLLVM-*.so", "/usr/lib/llvm-*/lib/libLLVM*.so*")
INSTALL_HINT = (
    "install Debian's libLLVM 19 (`apt-get install -y libllvm19`) or set DRJIT_LIBLLVM_PATH to a "
    "libLLVM.so of version 19 or newer"
)
SIM_HINT = "pip install 'irt4[sim]' (sionna-rt 2.2)"
_probe_error: str | None = None  # cached failure of the backend probe
_probe_done = False
MIN_PADDED = 16_384  # faces a mesh is padded to (pad_mesh); a map's oldtown mesh has ~8,000
PAD_DEPTH = 100.0  # m under the ground where pad_mesh puts its padding triangles


@dataclass(frozen=True)
class TraceSettings:
    """PathSolver settings (sionna.md, "Solvers")."""

    frequency: float = 5.9e9
    max_depth: int = 4
    samples_per_src: int = 100_000
    paths_per_rx: int = 4_000  # path slots per receiver; the buffer levels off near ~4,000 (sionna.md)
    seed: int = 42  # the solver's sampling seed (per map: the map's own)
    wall_thickness: float = 0.2


def llvm_version(path: str) -> int | None:
    match = re.search(r"libLLVM[.-](?:so\.)?(\d+)", os.path.basename(path))
    return int(match.group(1)) if match else None


def find_libllvm() -> str | None:
    """The libLLVM to pin: version 19 if present (the measured one), else the newest >= 19."""
    found = {}
    for pattern in _LLVM_GLOBS:
        for path in glob.glob(pattern):
            version = llvm_version(path)
            if version is not None and version >= MIN_LLVM and os.path.isfile(path):
                found.setdefault(version, path)
    if not found:
        return None
    return found[MIN_LLVM] if MIN_LLVM in found else found[max(found)]


def pin_libllvm() -> str | None:
    """Set DRJIT_LIBLLVM_PATH (before drjit is imported) unless the user set it; returns the path."""
    if not os.environ.get(LLVM_ENV):
        path = find_libllvm()
        if path is not None:
            os.environ[LLVM_ENV] = path
    return os.environ.get(LLVM_ENV)


def sionna_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in ("sionna-rt", "mitsuba", "drjit"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "missing"
    return versions


def missing_backend_reason() -> str | None:
    """Why irt4-data synth cannot run here (sionna-rt or libLLVM >= 19 missing), or None; cheap: it
    imports nothing of Sionna. The tests skip with it."""
    if sionna_versions()["sionna-rt"] == "missing":
        return f"sionna-rt not installed: {SIM_HINT}"
    if not os.environ.get(LLVM_ENV) and find_libllvm() is None:
        return f"sionna-rt installed but libLLVM >= {MIN_LLVM} not found: {INSTALL_HINT}"
    return None


def require_backend() -> None:
    """Raise a clear error unless sionna-rt is installed and a tiny solve works (checked once, in a
    subprocess: a bad libLLVM aborts the process it runs in)."""
    global _probe_done, _probe_error
    # find_spec("sionna.rt") would import sionna, and with it Dr.Jit: look at the metadata only
    if sionna_versions()["sionna-rt"] == "missing" or importlib.util.find_spec("sionna") is None:
        raise InputError(f"sionna-rt is not installed: {SIM_HINT}")
    if not _probe_done:
        _probe_error = _run_probe()
        _probe_done = True
    if _probe_error is not None:
        raise RuntimeError(_probe_error)


def _run_probe() -> str | None:
    llvm = pin_libllvm()
    code = "from irt4.data.raytrace import probe_solve; probe_solve()"
    try:
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=os.environ.copy()
        )
    except subprocess.TimeoutExpired:
        return "the Sionna RT backend probe (a tiny solve in a subprocess) did not finish in 600 s"
    if result.returncode == 0:
        return None
    tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
    if result.returncode >= 0:  # a Python error, not a crashed backend
        hint = f". Dr.Jit needs libLLVM >= {MIN_LLVM}: {INSTALL_HINT}" if "LLVM" in tail else ""
        return f"Sionna RT's tiny test solve failed (exit code {result.returncode}): {tail}{hint}"
    return (
        f"Sionna RT's CPU backend crashed in a tiny test solve (signal {-result.returncode}; "
        f"{LLVM_ENV}={llvm or 'unset'}): {tail}. Dr.Jit needs libLLVM >= {MIN_LLVM}: {INSTALL_HINT}"
    )


def probe_solve() -> None:
    """A one-box scene with one transmitter and two receivers, solved at depth 1 (run by the probe)."""
    from irt4.data.scene import boxes_mesh, ground_mesh

    vertices, faces = boxes_mesh(np.array([[10, 10, 20, 20]]), 10.0)
    tracer = RayTracer(
        (vertices, faces),
        ground_mesh(32),
        np.array([[5.5, 5.5, 1.5]]),
        rx_per_call=2,
        settings=TraceSettings(max_depth=1, samples_per_src=1000, paths_per_rx=64),
    )
    gain_db = tracer.path_gain_db(np.array([[25.5, 5.5, 1.5], [25.5, 25.5, 1.5]]))
    assert gain_db.shape == (1, 2) and np.isfinite(gain_db[0, 0]), gain_db


def _mi_mesh(name: str, vertices: np.ndarray, faces: np.ndarray, material):
    import drjit as dr
    import mitsuba as mi

    props = mi.Properties()
    props["face_normals"] = True
    props["bsdf"] = material
    mesh = mi.Mesh(name, vertex_count=len(vertices), face_count=len(faces), props=props)
    params = mi.traverse(mesh)
    params["vertex_positions"] = dr.ravel(mi.Point3f(np.ascontiguousarray(vertices.T, dtype=np.float32)))
    params["faces"] = dr.ravel(mi.Point3u(np.ascontiguousarray(faces.T, dtype=np.uint32)))
    params.update()
    return mesh


def padded_size(count: int) -> int:
    """The size a mesh's face count is padded to: the next power of two, at least MIN_PADDED."""
    return max(MIN_PADDED, 1 << int(np.ceil(np.log2(max(count, 1)))))


def pad_mesh(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mesh with padded_size(F) faces and 4 x that many vertices. Dr.Jit bakes the meshes' vertex
    and face counts into the solver's kernels, so cities whose meshes pad to the same sizes (all of
    them below MIN_PADDED faces per material) reuse the kernels compiled for the first one instead of
    compiling for ~15-40 s. The extra faces are 1 cm triangles PAD_DEPTH m under the ground plane,
    each with its own three vertices (no shared edge, so no wedge); no ray above the ground reaches
    them. Unused vertices fill the rest."""
    vertices = np.asarray(vertices, dtype=np.float32).reshape(-1, 3)
    faces = np.asarray(faces, dtype=np.uint32).reshape(-1, 3)
    face_total = padded_size(len(faces))
    extra_faces = face_total - len(faces)
    vertex_total = max(4 * face_total, padded_size(len(vertices) + 3 * extra_faces))
    k = np.arange(extra_faces)
    # spread the padding triangles over the tile's footprint so the BVH stays balanced
    corner = np.stack([(k % 256) + 0.5, (k // 256) % 256 + 0.5, np.full(extra_faces, -PAD_DEPTH)], axis=1)
    triangle = np.array([[0, 0, 0], [0.01, 0, 0], [0, 0.01, 0]])
    pad_vertices = (corner[:, None, :] + triangle[None]).reshape(-1, 3)
    pad_faces = len(vertices) + np.arange(3 * extra_faces).reshape(-1, 3)
    filler = np.tile([0.5, 0.5, -PAD_DEPTH], (vertex_total - len(vertices) - len(pad_vertices), 1))
    return (
        np.concatenate([vertices, pad_vertices, filler]).astype(np.float32),
        np.concatenate([faces, pad_faces]).astype(np.uint32),
    )


def _opaque_point(point):
    """A mi.Point3f whose value is a kernel input, not a literal: moving a device between calls then
    keeps the compiled kernels."""
    import drjit as dr
    import mitsuba as mi

    x, y, z = (dr.opaque(mi.Float, float(value)) for value in point)
    return mi.Point3f(x, y, z)


FLUSH_EVERY = 10  # path_gain_db calls (maps) between emptyings of Dr.Jit's allocation cache


class RayTracer:
    """A scene (ground, buildings by material, transmitters) and a fixed pool of receivers moved chunk
    by chunk over the receiver points, so every solver call has the same size.

    One tracer serves many cities: set_city() swaps the buildings and moves the transmitters. With
    keep_kernels (the default) the scene keeps one mesh per material of `materials` (empty ones too),
    mesh sizes are padded (pad_mesh) and device positions are opaque, so the kernels Dr.Jit compiled
    for one city are reused for the next. keep_kernels=False builds the scene as irt4 did before:
    each city's own mesh sizes and literal positions (a fresh compile per city); bench/synth_speed.py
    measures one against the other. cull_candidates applies irt4.data.candidate_culling and
    irt4.data.sparse_ordering to the process (for good: a later tracer built without it still uses
    them) and looks shadow rays up in the `solid` raster given with each city (only while this
    tracer traces).
    """

    def __init__(
        self,
        buildings_mesh: tuple[np.ndarray, np.ndarray] | dict[str, tuple[np.ndarray, np.ndarray]],
        ground: tuple[np.ndarray, np.ndarray],
        tx_points: np.ndarray,
        rx_per_call: int,
        settings: TraceSettings,
        threads: int | None = None,
        keep_kernels: bool = True,
        materials: tuple[str, ...] = ("concrete",),
        fix_diffraction: bool = True,
        cull_candidates: bool = True,
        solid: np.ndarray | None = None,
    ):
        pin_libllvm()
        import drjit as dr
        import mitsuba as mi
        import sionna.rt as rt

        from irt4.data import candidate_culling, diffraction_fix, sparse_ordering

        if fix_diffraction:  # walls at any angle (irt4.data.diffraction_fix); once applied, for good
            diffraction_fix.apply()
        if cull_candidates:  # the same paths, found with less work (the two modules' docstrings)
            candidate_culling.apply()
            sparse_ordering.apply()
        if threads is not None:
            dr.set_thread_count(threads)
        self.settings = settings
        self.rx_per_call = rx_per_call
        self.keep_kernels = keep_kernels
        self.cull_candidates = cull_candidates
        self._maps_traced = 0
        self.scene = rt.load_scene(None, merge_shapes=False)
        self.scene.frequency = settings.frequency
        for array in ("tx_array", "rx_array"):
            setattr(
                self.scene,
                array,
                rt.PlanarArray(num_rows=1, num_cols=1, pattern="iso", polarization="V"),
            )
        # object and material names share one namespace, and a "mat-" prefix is stripped (sionna.md)
        self.materials = {
            name: rt.ITURadioMaterial(f"{name}-walls", name, thickness=settings.wall_thickness)
            for name in dict.fromkeys([*materials, *self._mesh_dict(buildings_mesh)])
        }
        soil = rt.ITURadioMaterial("dry-soil", "medium_dry_ground", thickness=1.0)
        ground_mesh = pad_mesh(*ground) if keep_kernels else ground
        self.scene.edit(
            add=[
                rt.SceneObject(
                    mi_mesh=_mi_mesh("ground", *ground_mesh, soil), name="ground", radio_material=soil
                )
            ]
        )
        self.building_objects: list = []
        self.transmitters = [
            rt.Transmitter(name=f"tx{k}", position=mi.Point3f(0.0, 0.0, 1.5)) for k in range(len(tx_points))
        ]
        for transmitter in self.transmitters:
            self.scene.add(transmitter)
        self.num_tx = len(tx_points)
        self.receivers = [
            rt.Receiver(name=f"rx{i}", position=mi.Point3f(0.0, 0.0, 1.5)) for i in range(rx_per_call)
        ]
        for receiver in self.receivers:
            self.scene.add(receiver)
        self.solver = rt.PathSolver(deterministic=True)
        self.set_city(buildings_mesh, tx_points, solid)

    @staticmethod
    def _mesh_dict(buildings_mesh) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        if isinstance(buildings_mesh, dict):
            return buildings_mesh
        return {"concrete": buildings_mesh}

    def set_city(
        self,
        buildings_mesh: tuple[np.ndarray, np.ndarray] | dict[str, tuple[np.ndarray, np.ndarray]],
        tx_points: np.ndarray,
        solid: np.ndarray | None = None,
    ) -> None:
        """Replace the buildings (one mesh, concrete, or material name -> mesh) and move the
        transmitters (same count as at construction) to tx_points (K, 3). `solid`: the buildings'
        interiors as irt4.data.city.raster.solid_cells gives them, which lets the candidate culling
        skip shadow rays that pass through a building (None: every shadow ray is traced)."""
        from irt4.data import candidate_culling

        meshes = self._mesh_dict(buildings_mesh)
        unknown = set(meshes) - set(self.materials)
        if unknown:
            raise ValueError(f"materials {sorted(unknown)} were not declared when the tracer was built")
        if len(tx_points) != self.num_tx:
            raise ValueError(f"{len(tx_points)} transmitters, the tracer was built for {self.num_tx}")
        empty = (np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint32))
        if self.keep_kernels:
            padded = {name: pad_mesh(*meshes.get(name, empty)) for name in self.materials}
            if not self._update_in_place(padded):
                self._replace_buildings(padded)
        else:
            self._replace_buildings({name: mesh for name, mesh in meshes.items() if len(mesh[1])})
        for transmitter, point in zip(self.transmitters, np.asarray(tx_points, dtype=np.float64)):
            transmitter.position = self._position(point)
        candidate_culling.set_solid_cells(solid if self.cull_candidates else None)

    def _replace_buildings(self, meshes: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        """New building objects (one per material) in place of the old ones."""
        import sionna.rt as rt

        objects = []
        for name, (vertices, faces) in meshes.items():
            material = self.materials[name]
            mesh = _mi_mesh(f"buildings-{name}", vertices, faces, material)
            objects.append(rt.SceneObject(mi_mesh=mesh, name=f"buildings-{name}", radio_material=material))
        self.scene.edit(remove=[obj.name for obj in self.building_objects] or None, add=objects)
        self.building_objects = objects

    def _update_in_place(self, meshes: dict[str, tuple[np.ndarray, np.ndarray]]) -> bool:
        """Write the meshes into the existing building objects when their sizes match (padded meshes
        always do after the first city), then rebuild the BVH and the wedge table. Objects made anew
        would get new registry ids, which Dr.Jit also bakes into the kernels. False: sizes differ."""
        import drjit as dr
        import mitsuba as mi
        from sionna.rt.utils.meshes import build_mesh_directed_edges

        by_name = {obj.name: obj for obj in self.building_objects}
        targets = [(by_name.get(f"buildings-{name}"), mesh) for name, mesh in meshes.items()]
        if len(targets) != len(self.building_objects) or not all(
            obj is not None
            and obj.mi_mesh.vertex_count() == len(mesh[0])
            and obj.mi_mesh.face_count() == len(mesh[1])
            for obj, mesh in targets
        ):
            return False
        params = mi.traverse(self.scene.mi_scene)
        for obj, (vertices, faces) in targets:
            key = obj.mi_mesh.id()
            params[f"{key}.vertex_positions"] = dr.ravel(mi.Point3f(np.ascontiguousarray(vertices.T)))
            params[f"{key}.faces"] = dr.ravel(mi.Point3u(np.ascontiguousarray(faces.T)))
        params.update()
        for obj, _ in targets:
            build_mesh_directed_edges(obj.mi_mesh)
        return True

    def _position(self, point):
        import mitsuba as mi

        return _opaque_point(point) if self.keep_kernels else mi.Point3f(*map(float, point))

    def path_gain_db(self, rx_points: np.ndarray) -> np.ndarray:
        """(num_tx, N) path gain in dB at the (N, 3) receiver points: the power of all paths summed
        incoherently (|a|^2 added, phases ignored); -inf where no path arrives."""
        import drjit as dr

        rx_points = np.asarray(rx_points, dtype=np.float64).reshape(-1, 3)
        gain = np.zeros((self.num_tx, len(rx_points)))
        s = self.settings
        for start in range(0, len(rx_points), self.rx_per_call):
            chunk = rx_points[start : start + self.rx_per_call]
            # pad the last chunk with copies of its last point: same call size, no recompilation
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], self.rx_per_call - len(chunk), axis=0)])
            for receiver, point in zip(self.receivers, padded):
                receiver.position = self._position(point)
            paths = self.solver(
                self.scene,
                max_depth=s.max_depth,
                max_num_paths_per_src=s.paths_per_rx * self.rx_per_call,
                samples_per_src=s.samples_per_src,
                los=True,
                specular_reflection=True,
                diffuse_reflection=False,
                refraction=False,
                diffraction=True,
                seed=s.seed,
            )
            a_real, a_imag = (np.asarray(part.numpy(), dtype=np.float64) for part in paths.a)
            power = a_real**2 + a_imag**2  # (rx, rx_ant, tx, tx_ant, paths)
            valid = np.asarray(paths.valid.numpy(), dtype=bool)  # (rx, tx, paths) with synthetic arrays
            power *= valid.reshape(len(valid), 1, self.num_tx, 1, -1) if valid.ndim == 3 else valid
            per_rx = power.sum(axis=(1, 3, 4))  # (rx, tx)
            gain[:, start : start + len(chunk)] = per_rx[: len(chunk)].T
        # Dr.Jit keeps freed blocks for reuse by size, and the candidate lists differ in size from call
        # to call: the cache (and the process) would creep up from map to map. Emptying it costs the
        # next call ~4 s of fresh allocations, so it is done every FLUSH_EVERY maps.
        self._maps_traced += 1
        if self._maps_traced % FLUSH_EVERY == 0:
            dr.flush_malloc_cache()
        with np.errstate(divide="ignore"):
            return 10.0 * np.log10(gain)
