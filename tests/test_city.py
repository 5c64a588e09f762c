import functools
import hashlib
import json

import numpy as np
import pytest
import shapely

from irt4.data.city import (
    STYLES,
    TRAINING_STYLES,
    CityLayout,
    extrude,
    parse_style_mix,
    random_city,
    random_layout,
    random_transmitter,
    rasterize,
    solid_cells,
)
from irt4.data.city.assemble import assemble, drawn_until_coverage_fits
from irt4.data.city.materials import BUILDING_MATERIALS, MATERIAL_WEIGHTS
from irt4.data.city.mix import STYLE_PARAMS
from irt4.data.city.room import TX_ROOM
from irt4.data.scene import face_normals, transmitter_sites
from irt4.errors import InputError

SIZE = 256
SEEDS = (0, 1, 2)
VERTEX_BUDGET = 4000


@functools.cache
def layout(style: str, seed: int) -> CityLayout:
    return STYLES[style](np.random.default_rng(seed), SIZE)


def directed_edges(faces: np.ndarray) -> np.ndarray:
    """(3 F, 2) directed edges (a, b) of the triangles, in their winding order."""
    return np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).astype(np.int64)


def open_edges(vertices: np.ndarray, faces: np.ndarray) -> list[tuple[int, int]]:
    """Directed edges whose reverse is in no triangle, edges on the ground (z = 0) left out."""
    edges = directed_edges(faces)
    present = set(map(tuple, edges.tolist()))
    on_ground = (vertices[edges[:, 0], 2] == 0) & (vertices[edges[:, 1], 2] == 0)
    return [
        (a, b) for (a, b), ground in zip(edges.tolist(), on_ground) if not ground and (b, a) not in present
    ]


def roof_area(vertices: np.ndarray, faces: np.ndarray) -> float:
    v0, v1, v2 = (vertices[faces[:, i]].astype(np.float64) for i in range(3))
    normals = np.cross(v1 - v0, v2 - v0)
    return 0.5 * float(normals[normals[:, 2] > 0, 2].sum())


def vertical_ray_hits(vertices: np.ndarray, faces: np.ndarray, size: int) -> np.ndarray:
    """(size, size) bool: a vertical ray down through the pixel centre hits an upward-facing triangle."""
    hits = np.zeros((size, size), dtype=bool)
    for triangle in vertices[faces[face_normals(vertices, faces)[:, 2] > 0.5]].astype(np.float64)[:, :, :2]:
        col0, row0 = np.floor(triangle.min(axis=0) - 0.5).astype(int).clip(0, size - 1)
        col1, row1 = np.ceil(triangle.max(axis=0) - 0.5).astype(int).clip(0, size - 1)
        rows, cols = np.mgrid[row0 : row1 + 1, col0 : col1 + 1]
        points = np.stack([cols + 0.5, rows + 0.5], axis=-1)
        a, b, c = triangle
        sides = [
            (q - p)[0] * (points - p)[..., 1] - (q - p)[1] * (points - p)[..., 0]
            for p, q in ((a, b), (b, c), (c, a))
        ]
        hits[rows, cols] |= (sides[0] >= 0) & (sides[1] >= 0) & (sides[2] >= 0)
    return hits


def wall_directions_deg(layout: CityLayout) -> tuple[np.ndarray, np.ndarray]:
    """Directions of all footprint edges modulo 90 degrees, and their lengths."""
    angles, lengths = [], []
    for polygon in layout.polygons:
        for ring in (polygon.exterior, *polygon.interiors):
            steps = np.diff(np.asarray(ring.coords), axis=0)
            angles.append(np.degrees(np.arctan2(steps[:, 1], steps[:, 0])) % 90.0)
            lengths.append(np.linalg.norm(steps, axis=1))
    return np.concatenate(angles), np.concatenate(lengths)


def dominant_directions(layout: CityLayout, share: float = 0.1, separation: float = 5.0) -> list[float]:
    """Street-grid directions (mod 90 deg) holding at least `share` of the wall length, merged within
    `separation` degrees."""
    angles, lengths = wall_directions_deg(layout)
    histogram = np.bincount(np.round(angles).astype(int) % 90, weights=lengths, minlength=90)
    directions: list[float] = []
    for angle in np.argsort(histogram)[::-1]:
        if histogram[angle] < share * lengths.sum():
            break
        if all(min(abs(angle - d), 90 - abs(angle - d)) > separation for d in directions):
            directions.append(float(angle))
    return directions


def gaps_between_blocks(polygons: list[shapely.Polygon]) -> np.ndarray:
    """For each block (a cluster of touching buildings), the distance to the nearest other block: the
    width of the lane or street between them."""
    blocks = list(shapely.get_parts(shapely.union_all(polygons)))
    tree = shapely.STRtree(blocks)
    gaps = []
    for i, block in enumerate(blocks):
        nearest = [j for j in tree.query_nearest(block, exclusive=True, all_matches=False) if j != i]
        gaps += [block.distance(blocks[j]) for j in nearest]
    return np.array(gaps)


# --- the first generator stays as it was: committed data sets were made from it


def test_random_city_and_transmitter_are_unchanged_for_a_seed():
    rng = np.random.default_rng(0)
    city = random_city(256, rng)
    assert hashlib.sha256(city.tobytes()).hexdigest() == (
        "190ec061c48c0efee82f299415e3ba7339a14e3ffafa12aae4ed373dd9cf383e"
    )
    assert random_transmitter(city, rng) == (139, 120)


# --- every style keeps the layout's promises


@pytest.mark.parametrize("style", STYLES)
def test_style_is_deterministic_per_seed(style):
    again = STYLES[style](np.random.default_rng(SEEDS[0]), SIZE)
    assert again.to_json() == layout(style, SEEDS[0]).to_json()
    assert layout(style, SEEDS[1]).to_json() != layout(style, SEEDS[0]).to_json()
    assert again.style == style


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("seed", SEEDS)
def test_style_footprints_are_valid_disjoint_and_inside_the_tile(style, seed):
    polygons = layout(style, seed).polygons
    assert len(polygons) > 0
    assert all(isinstance(p, shapely.Polygon) and p.is_valid and p.area >= 12.0 for p in polygons)
    assert shapely.box(0, 0, SIZE, SIZE).contains(shapely.union_all(polygons))
    union_area = shapely.union_all(polygons).area
    assert sum(p.area for p in polygons) == pytest.approx(union_area, rel=1e-6)


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("seed", SEEDS)
def test_style_coverage_heights_and_materials_stay_in_their_ranges(style, seed):
    city = layout(style, seed)
    params = STYLE_PARAMS[style]
    low, high = params.coverage
    assert low <= city.coverage(SIZE) <= high
    assert city.heights.shape == (len(city.polygons),) and city.heights.dtype == np.float64
    assert params.height[0] - 1e-9 <= city.heights.min() and city.heights.max() <= params.height[1] + 1e-9
    assert len(city.materials) == len(city.polygons) and set(city.materials) <= set(BUILDING_MATERIALS)


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("seed", SEEDS)
def test_style_stays_within_the_vertex_budget_without_short_walls(style, seed):
    city = layout(style, seed)
    assert city.vertex_count() <= VERTEX_BUDGET
    shortest = min(
        np.linalg.norm(np.diff(np.asarray(ring.coords), axis=0), axis=1).min()
        for polygon in city.polygons
        for ring in (polygon.exterior, *polygon.interiors)
    )
    assert shortest >= 0.49  # the 0.5 m rule, up to the 1 mm coordinate grid


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("seed", SEEDS)
def test_style_leaves_room_for_transmitters(style, seed):
    buildings = rasterize(layout(style, seed).polygons, SIZE)
    sites = transmitter_sites(buildings, TX_ROOM, np.random.default_rng(seed))
    assert len(set(sites)) == TX_ROOM


@pytest.mark.parametrize("style", STYLES)
def test_style_mesh_is_closed_and_its_roofs_cover_the_footprints(style):
    city = layout(style, SEEDS[0])
    vertices, faces = extrude(city.polygons, city.heights)
    assert open_edges(vertices, faces) == []
    assert roof_area(vertices, faces) == pytest.approx(sum(p.area for p in city.polygons), rel=1e-5)
    assert np.isfinite(face_normals(vertices, faces)).all()


def test_training_styles_together_span_sparse_to_dense_tiles():
    coverages = [layout(style, seed).coverage(SIZE) for style in TRAINING_STYLES for seed in range(10)]
    assert min(coverages) <= 0.15 and max(coverages) >= 0.50


def test_grid_streets_run_at_any_angle_and_districts_differ():
    directions = [dominant_directions(layout("grid", seed)) for seed in range(6)]
    off_axis = [d for tile in directions for d in tile if min(d, 90 - d) > 1.0]
    assert off_axis, directions
    assert max(len(tile) for tile in directions) >= 2, directions


def test_perimeter_blocks_enclose_courtyards():
    cities = [layout("perimeter", seed) for seed in SEEDS]
    own_courtyards = [sum(len(p.interiors) for p in city.polygons) for city in cities]
    all_courtyards = [
        sum(len(part.interiors) for part in shapely.get_parts(shapely.union_all(city.polygons)))
        for city in cities
    ]
    assert max(own_courtyards) > 0  # buildings with a hole
    # rings of touching buildings: the union has courtyards that no single building has
    assert any(total > own for total, own in zip(all_courtyards, own_courtyards))


def test_oldtown_lanes_are_narrow_and_buildings_small():
    city = layout("oldtown", SEEDS[0])
    assert np.median(gaps_between_blocks(city.polygons)) < 10.0
    assert np.median([p.area for p in city.polygons]) < 200.0


def test_materials_are_itu_building_materials_defined_at_5_9_ghz():
    assert "floorboard" not in BUILDING_MATERIALS  # Sionna defines it for 50-100 GHz only
    assert all(set(weights) <= set(BUILDING_MATERIALS) for weights in MATERIAL_WEIGHTS.values())


# --- raster


def test_rasterize_rotated_square_covers_its_area():
    centre = np.array([100.3, 60.7])
    corners = centre + 10 * np.sqrt(2) * np.array([[1, 0], [0, 1], [-1, 0], [0, -1]])  # 20 m side, at 45 deg
    mask = rasterize([shapely.Polygon(corners)], SIZE)
    assert mask.dtype == np.uint8 and mask.shape == (SIZE, SIZE)
    assert abs(int(mask.sum()) - 400) <= 6
    assert mask[60, 100] == 1  # the centre
    assert mask[60 - 13, 100 - 13] == 0  # inside the bounding box, outside the rotated square
    assert mask[60, 100 + 13] == 1 and mask[60, 100 + 15] == 0  # along the diagonal to the right corner


def test_rasterize_l_with_a_courtyard_counts_pixel_centres_inside():
    outline = [(10, 10), (50, 10), (50, 30), (30, 30), (30, 60), (10, 60)]  # 40 x 20 + 20 x 30
    courtyard = [(15, 15), (25, 15), (25, 25), (15, 25)]
    mask = rasterize([shapely.Polygon(outline, [courtyard])], SIZE)
    assert mask.sum() == 40 * 20 + 20 * 30 - 10 * 10
    assert mask[12, 12] == 1 and mask[20, 20] == 0 and mask[40, 40] == 0 and mask[55, 20] == 1
    assert mask[9, 20] == 0 and mask[10, 20] == 1 and mask[59, 20] == 1 and mask[60, 20] == 0


def test_rasterize_counts_a_centre_on_a_shared_wall_as_building():
    left = shapely.box(10.0, 10.0, 30.5, 20.0)
    right = shapely.box(30.5, 10.0, 40.0, 20.0)  # the shared wall x = 30.5 runs through pixel centres
    mask = rasterize([left, right], SIZE)
    assert mask[15, 30] == 1 and mask[10:20, 10:40].all() and mask.sum() == 10 * 30


def test_rasterize_matches_vertical_rays_into_the_mesh():
    city = layout("perimeter", SEEDS[0])
    vertices, faces = extrude(city.polygons, city.heights)
    np.testing.assert_array_equal(
        vertical_ray_hits(vertices, faces, SIZE), rasterize(city.polygons, SIZE) == 1
    )


def test_rasterize_empty_layout_is_all_street():
    assert rasterize([], 8).sum() == 0


def test_solid_cells_of_an_axis_aligned_box_are_its_inner_cells_at_its_height():
    solid = solid_cells([shapely.box(10.0, 20.0, 15.0, 23.0)], [12.0], SIZE)
    assert solid.dtype == np.float32 and solid.shape == (SIZE, SIZE)
    inside = np.zeros((SIZE, SIZE), bool)
    inside[21:22, 11:14] = True  # the cells along its walls touch them: left out
    np.testing.assert_array_equal(solid > 0, inside)
    np.testing.assert_allclose(solid[inside], 12.0 - 0.02)


def test_solid_cells_of_a_rotated_square_lie_inside_it_and_never_on_its_walls():
    centre = np.array([100.3, 60.7])
    corners = centre + 10 * np.sqrt(2) * np.array([[1, 0], [0, 1], [-1, 0], [0, -1]])
    square = shapely.Polygon(corners)
    solid = solid_cells([square], [30.0], SIZE)
    rows, cols = np.nonzero(solid)
    cells = shapely.box(cols, rows, cols + 1, rows + 1)
    assert shapely.contains(square, cells).all()  # no cell crosses a wall
    # all but the cells the walls cut: 400 m2, less about 4 walls x 28 m x ~1.5 cells
    assert 220 <= len(rows) < 400
    assert (rasterize([square], SIZE)[rows, cols] == 1).all()


def test_solid_cells_of_touching_buildings_keep_their_heights_and_courtyards_stay_open():
    outline = [(10, 10), (50, 10), (50, 30), (10, 30)]
    courtyard = [(20, 15), (30, 15), (30, 25), (20, 25)]
    low = shapely.Polygon(outline, [courtyard])
    high = shapely.box(50.0, 10.0, 60.0, 30.0)  # shares the wall x = 50
    solid = solid_cells([low, high], [8.0, 40.0], SIZE)
    assert solid[20, 12] == pytest.approx(7.98) and solid[20, 55] == pytest.approx(39.98)
    assert solid[20, 48] == pytest.approx(7.98) and solid[20, 51] == pytest.approx(39.98)
    assert solid[20, 49] == 0 and solid[20, 50] == 0  # the shared wall's cells
    assert (solid[15:25, 20:30] == 0).all()  # the courtyard
    assert solid_cells([], [], 8).sum() == 0


# --- mesh


def rotated_pentagon() -> shapely.Polygon:
    angles = np.radians([10, 80, 150, 230, 300])
    return shapely.Polygon(np.stack([70 + 15 * np.cos(angles), 90 + 12 * np.sin(angles)], axis=1))


def courtyard_building() -> shapely.Polygon:
    outer = [(20, 20), (80, 25), (75, 75), (25, 70)]
    courtyard = [(40, 40), (55, 42), (57, 56), (42, 55)]
    return shapely.Polygon(outer, [courtyard])


def test_extrude_convex_building_is_closed_and_faces_point_outward():
    building = rotated_pentagon()
    vertices, faces = extrude([building], [12.5])
    assert vertices.dtype == np.float32 and faces.dtype == np.uint32
    assert vertices.shape == (2 * 5, 3)
    assert len(faces) == 2 * 5 + (5 - 2)  # two per wall, the roof a fan of 3
    assert open_edges(vertices, faces) == []
    centroid = np.array([*building.centroid.coords[0], 12.5 / 2])
    face_centres = vertices[faces].astype(np.float64).mean(axis=1)
    assert (np.einsum("ij,ij->i", face_normals(vertices, faces), face_centres - centroid) > 0).all()
    assert roof_area(vertices, faces) == pytest.approx(building.area, rel=1e-6)


def test_extrude_courtyard_walls_face_the_courtyard():
    building = courtyard_building()
    vertices, faces = extrude([building], [20.0])
    assert len(faces) == 2 * 8 + (8 + 2 * 1 - 2)
    assert open_edges(vertices, faces) == []
    assert roof_area(vertices, faces) == pytest.approx(building.area, rel=1e-6)
    normals = face_normals(vertices, faces)
    centres = vertices[faces].astype(np.float64).mean(axis=1)
    courtyard = shapely.Polygon(building.interiors[0])
    walls = np.abs(normals[:, 2]) < 1e-6
    inner = np.array([courtyard.exterior.distance(shapely.Point(*c[:2])) < 1e-3 for c in centres]) & walls
    assert inner.sum() == 2 * 4
    to_courtyard = np.asarray(courtyard.centroid.coords[0]) - centres[inner, :2]
    assert (np.einsum("ij,ij->i", normals[inner, :2], to_courtyard) > 0).all()
    outer = walls & ~inner
    from_centre = centres[outer, :2] - np.asarray(building.centroid.coords[0])
    assert (np.einsum("ij,ij->i", normals[outer, :2], from_centre) > 0).all()
    assert (normals[~walls, 2] > 0.999).all()  # roof up, no floor


def test_extrude_keeps_vertices_on_straight_walls_in_the_roof():
    # a neighbour's corner on this wall is a vertex of it (the layout nodes shared walls); earcut alone
    # drops such vertices, and the roof would then not share the walls' top edges
    outer = [(0, 0), (10, 0), (20, 0), (20, 10), (20, 15), (0, 15)]
    building = shapely.Polygon(outer, [[(5, 5), (8, 5), (8, 8), (5, 8)]])
    vertices, faces = extrude([building], [9.0])
    assert open_edges(vertices, faces) == []
    assert roof_area(vertices, faces) == pytest.approx(building.area, rel=1e-6)
    assert np.isfinite(face_normals(vertices, faces)).all()


def test_extrude_several_buildings_offsets_their_faces():
    buildings = [rotated_pentagon(), courtyard_building()]
    vertices, faces = extrude(buildings, [5.0, 30.0])
    assert len(vertices) == 2 * 5 + 2 * 8
    assert set(np.unique(vertices[:, 2]).tolist()) == {0.0, 5.0, 30.0}
    assert open_edges(vertices, faces) == []


def test_extrude_nothing_gives_empty_arrays():
    vertices, faces = extrude([], [])
    assert vertices.shape == (0, 3) and faces.shape == (0, 3)
    assert vertices.dtype == np.float32 and faces.dtype == np.uint32


# --- JSON


def test_json_round_trip_gives_the_same_raster_and_mesh():
    city = layout("perimeter", SEEDS[0])
    data = json.loads(json.dumps(city.to_json()))
    again = CityLayout.from_json(data)
    assert again.to_json() == city.to_json()
    assert again.style == "perimeter" and again.materials == city.materials
    np.testing.assert_array_equal(rasterize(again.polygons, SIZE), rasterize(city.polygons, SIZE))
    for mine, theirs in zip(extrude(city.polygons, city.heights), extrude(again.polygons, again.heights)):
        np.testing.assert_array_equal(mine, theirs)
    assert any(building["interiors"] for building in data["buildings"])


# --- assembly


def test_assemble_clears_a_square_when_no_street_is_wide_enough():
    # 7 m houses 1 m apart all over the tile: no pixel is 3 m from a wall
    houses = [
        (shapely.box(x + 0.5, y + 0.5, x + 7.5, y + 7.5), 10.0, "brick")
        for x in range(0, 256, 8)
        for y in range(0, 256, 8)
    ]
    city = assemble(houses, "grid", SIZE)
    assert len(houses) - 16 <= len(city.polygons) < len(houses)
    sites = transmitter_sites(rasterize(city.polygons, SIZE), TX_ROOM, np.random.default_rng(0))
    assert len(sites) == TX_ROOM


def test_assemble_nodes_shared_walls_so_rounding_keeps_them_disjoint():
    skew = np.array([[1.0, 0.3719], [0.0, 1.0]])  # walls off the axes, so rounding moves points off them

    def skewed(corners):
        return shapely.Polygon(np.array(corners) @ skew.T)

    a = skewed([(10, 10), (30, 10), (30, 30), (10, 30)])
    b = skewed([(30, 12.3456789), (50, 12.3456789), (50, 20.987654), (30, 20.987654)])  # corners on a's wall
    city = assemble([(a, 10.0, "brick"), (b, 12.0, "brick")], "grid", SIZE)
    assert len(city.polygons) == 2
    assert city.polygons[0].intersection(city.polygons[1]).area == 0.0
    assert len(city.polygons[0].exterior.coords) == 4 + 2 + 1  # b's corners are a's vertices too


def test_a_tile_outside_its_style_coverage_range_is_drawn_again():
    sides = iter([60, 10, 30, 40])  # one square building on a 64 m tile: coverage 0.88, 0.02, 0.22, 0.39

    def make_once():
        side = next(sides)
        return CityLayout([shapely.box(0, 0, side, side)], np.array([5.0]), ["brick"], "grid")

    assert drawn_until_coverage_fits(make_once, (0.1, 0.5), 64).polygons[0].area == 30 * 30


# --- style mixes


def test_parse_style_mix_reads_names_weights_and_mixed():
    assert parse_style_mix("oldtown") == {"oldtown": 1.0}
    assert parse_style_mix("grid=2, oldtown=1") == {"grid": 2.0, "oldtown": 1.0}
    assert parse_style_mix("mixed") == {style: 1.0 for style in TRAINING_STYLES}
    assert "industrial" not in TRAINING_STYLES and set(TRAINING_STYLES) < set(STYLES)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("suburb", "'suburb'"),
        ("grid=2,villa=1", "'villa'"),
        ("grid=0", "'0'"),
        ("grid=-1", "'-1'"),
        ("grid=two", "'two'"),
        ("grid=nan", "'nan'"),
        ("grid,grid", "twice"),
        ("mixed,grid=1", "'mixed' stands alone"),
        ("", "''"),
    ],
)
def test_parse_style_mix_names_the_bad_part(text, named):
    with pytest.raises(InputError) as error:
        parse_style_mix(text)
    assert named in str(error.value)
    if "unknown" in str(error.value):
        assert all(style in str(error.value) for style in STYLES)


def test_random_layout_draws_styles_by_weight_deterministically():
    styles = [
        random_layout(np.random.default_rng(seed), {"grid": 1.0, "perimeter": 1.0}, SIZE).style
        for seed in range(8)
    ]
    assert set(styles) == {"grid", "perimeter"}
    mostly = [
        random_layout(np.random.default_rng(seed), {"grid": 1.0, "perimeter": 30.0}, SIZE).style
        for seed in range(8)
    ]
    assert mostly.count("perimeter") >= 7
    first = random_layout(np.random.default_rng(5), parse_style_mix("mixed"), SIZE)
    assert (
        random_layout(np.random.default_rng(5), parse_style_mix("mixed"), SIZE).to_json() == first.to_json()
    )
    assert random_layout(np.random.default_rng(5), {"detached": 1.0}, SIZE).style == "detached"
