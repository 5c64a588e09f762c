"""Geodata in, GeoTIFF out: footprint files (projected, lon/lat, OpenStreetMap) made here, read, windowed,
rasterized against their polygons, predicted end to end and mosaicked; bad inputs exit 2."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

pyogrio = pytest.importorskip("pyogrio")
pyproj = pytest.importorskip("pyproj")
rasterio = pytest.importorskip("rasterio")
shapely = pytest.importorskip("shapely")

from irt4.cli.infer import main as infer_main  # noqa: E402
from irt4.errors import InputError  # noqa: E402
from irt4.geo.footprints import parse_height, read_footprints  # noqa: E402
from irt4.geo.mosaic import best_server  # noqa: E402
from irt4.geo.sites import Site, read_sites  # noqa: E402
from irt4.geo.window import CENTRE, SIZE, Window, building_raster  # noqa: E402

UTM = "EPSG:32632"  # UTM zone 32N: lon 6-12 E
ORIGIN = (690_000.0, 5_335_000.0)  # near lon 11.6, lat 48.1


def city_polygons() -> list[shapely.Polygon]:
    """Rotated blocks at 23 degrees on a 40 m pitch, one L-shaped building and one with a courtyard."""
    x0, y0 = ORIGIN
    polygons = []
    for i in range(10):
        for j in range(10):
            if (i + j) % 3 == 0:
                continue
            cx, cy = x0 + 40 * i + 20, y0 + 40 * j + 20
            polygons.append(shapely.affinity.rotate(shapely.box(cx - 12, cy - 9, cx + 12, cy + 9), 23))
    polygons.append(shapely.Polygon([(x0 + 405, y0), (x0 + 445, y0), (x0 + 445, y0 + 10), (x0 + 415, y0 + 10),
                                     (x0 + 415, y0 + 40), (x0 + 405, y0 + 40)]))  # fmt: skip
    courtyard = shapely.box(x0 + 300, y0 - 60, x0 + 350, y0 - 10).difference(
        shapely.box(x0 + 315, y0 - 45, x0 + 335, y0 - 25)
    )
    return [*polygons, courtyard]


def write_vector(path, polygons, crs, heights=None, driver=None):
    fields, data = [], []
    if heights is not None:
        fields, data = ["height"], [np.asarray(heights, dtype=np.float64)]
    pyogrio.raw.write(
        path,
        shapely.to_wkb(np.array(polygons, dtype=object)),
        data,
        fields,
        geometry_type="Polygon",
        crs=crs,
        driver=driver,
    )


def to_lonlat(polygons):
    transformer = pyproj.Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)
    return [
        shapely.transform(p, lambda c: np.column_stack(transformer.transform(c[:, 0], c[:, 1])))
        for p in polygons
    ]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("geo")
    polygons = city_polygons()
    heights = np.linspace(8, 40, len(polygons))
    write_vector(folder / "city.gpkg", polygons, UTM, heights, driver="GPKG")
    write_vector(folder / "city-lonlat.geojson", to_lonlat(polygons), "EPSG:4326", driver="GeoJSON")
    x0, y0 = ORIGIN
    # A on a street crossing, B on the street between two block rows, C in the courtyard building's yard
    sites = {"A": (x0 + 160.3, y0 + 200.7), "B": (x0 + 100.0, y0 + 280.0), "C": (x0 + 325.5, y0 - 35.5)}
    (folder / "sites.csv").write_text(
        "site_id,x,y\n" + "".join(f"{k},{x},{y}\n" for k, (x, y) in sites.items())
    )
    to_geo = pyproj.Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)
    lonlat = {k: to_geo.transform(x, y) for k, (x, y) in sites.items()}
    (folder / "sites-lonlat.csv").write_text(
        "site_id,lon,lat\n" + "".join(f"{k},{lon:.9f},{lat:.9f}\n" for k, (lon, lat) in lonlat.items())
    )
    return {"folder": folder, "polygons": polygons, "heights": heights, "sites": sites}


def test_a_projected_file_keeps_its_crs_polygons_and_heights(files):
    footprints = read_footprints(files["folder"] / "city.gpkg")
    assert footprints.crs == pyproj.CRS(UTM) and footprints.file_crs == pyproj.CRS(UTM)
    assert len(footprints.polygons) == len(files["polygons"])
    for have, want in zip(footprints.polygons, files["polygons"]):
        assert have.equals_exact(want, 1e-6)
    np.testing.assert_allclose(footprints.heights, files["heights"])
    assert len(footprints.polygons[-1].interiors) == 1  # the courtyard survives


def test_a_lonlat_file_is_projected_to_its_utm_zone_within_a_centimetre(files):
    footprints = read_footprints(files["folder"] / "city-lonlat.geojson")
    assert footprints.file_crs.is_geographic and footprints.crs == pyproj.CRS(UTM)
    for have, want in zip(footprints.polygons, files["polygons"]):
        assert have.hausdorff_distance(want) < 0.01
    assert np.isnan(footprints.heights).all()  # no height attribute


OSM = """<?xml version="1.0" encoding="UTF-8"?>
<osm version="0.6" generator="irt4 test">
{nodes}
 <way id="100" version="1">{ring1}<tag k="building" v="yes"/><tag k="height" v="12.5 m"/></way>
 <way id="101" version="1">{ring2}</way>
 <way id="102" version="1">{ring3}</way>
 <relation id="200" version="1">
  <member type="way" ref="101" role="outer"/><member type="way" ref="102" role="inner"/>
  <tag k="type" v="multipolygon"/><tag k="building" v="apartments"/><tag k="building:levels" v="5"/>
 </relation>
 <way id="103" version="1">{ring4}<tag k="highway" v="residential"/></way>
</osm>
"""


def test_an_openstreetmap_extract_gives_building_ways_and_multipolygons_with_heights(files, tmp_path):
    x0, y0 = ORIGIN
    rings = [
        shapely.box(x0, y0, x0 + 20, y0 + 30),
        shapely.box(x0 + 50, y0, x0 + 100, y0 + 50),
        shapely.box(x0 + 65, y0 + 15, x0 + 85, y0 + 35),  # the inner ring: a courtyard
        shapely.box(x0 + 200, y0, x0 + 210, y0 + 10),  # a closed way that is no building
    ]
    nodes, refs, node_id = [], [], 1
    for polygon in to_lonlat(rings):
        ids = []
        for lon, lat in list(polygon.exterior.coords)[:-1]:
            nodes.append(f' <node id="{node_id}" lat="{lat:.9f}" lon="{lon:.9f}" version="1"/>')
            ids.append(node_id)
            node_id += 1
        refs.append("".join(f'<nd ref="{i}"/>' for i in [*ids, ids[0]]))
    path = tmp_path / "extract.osm"
    text = OSM.format(nodes="\n".join(nodes), ring1=refs[0], ring2=refs[1], ring3=refs[2], ring4=refs[3])
    path.write_text(text)
    footprints = read_footprints(path)
    assert footprints.crs == pyproj.CRS(UTM)
    assert len(footprints.polygons) == 2
    by_area = sorted(zip(footprints.polygons, footprints.heights), key=lambda item: item[0].area)
    (way, way_height), (relation, relation_height) = by_area
    assert way.area == pytest.approx(600, rel=1e-3) and way_height == 12.5
    assert relation.area == pytest.approx(2500 - 400, rel=1e-3) and relation_height == 15.0  # 5 levels x 3 m
    assert len(relation.interiors) == 1


def test_heights_parse_numbers_and_metre_text_and_nothing_else():
    assert parse_height(12) == 12.0 and parse_height("12.5 m") == 12.5 and parse_height(" 7 ") == 7.0
    assert all(np.isnan(parse_height(v)) for v in (None, "", "tall", "-3", 0, float("nan"), "12 ft"))


def test_sites_in_lonlat_and_in_the_files_crs_land_on_the_same_points(files):
    footprints = read_footprints(files["folder"] / "city.gpkg")
    projected = read_sites(files["folder"] / "sites.csv", footprints.file_crs, footprints.crs)
    lonlat = read_sites(files["folder"] / "sites-lonlat.csv", footprints.file_crs, footprints.crs)
    assert [s.site_id for s in projected] == ["A", "B", "C"]
    for a, b in zip(projected, lonlat):
        assert math.hypot(a.x - b.x, a.y - b.y) < 0.01


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty"),
        ("id,x,y\nA,1,2\n", "header"),
        ("site_id,x,y\n", "no sites"),
        ("site_id,x,y\nA,1\n", "line 2: expected 3 values"),
        ("site_id,x,y\nA,1,b\n", "not numbers"),
        ("site_id,x,y\nA,1,2\nA,3,4\n", "given twice"),
        ("site_id,x,y\na/b,1,2\n", "may hold only"),
        ("site_id,lon,lat\nA,11,95\n", "out of range"),
    ],
)
def test_a_bad_sites_file_is_an_input_error_naming_the_line(tmp_path, text, message):
    path = tmp_path / "sites.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        read_sites(path, pyproj.CRS(UTM), pyproj.CRS(UTM))


@pytest.mark.parametrize("x, y", [(100.0, 200.0), (100.3, 200.7), (99.999, 200.001), (-5.5, -7.25)])
def test_the_site_lies_in_the_windows_centre_pixel_on_the_integer_grid(x, y):
    window = Window.around(Site("s", x, y))
    assert window.left == int(window.left) and window.top == int(window.top)
    assert window.pixel(x, y) == (CENTRE, CENTRE)
    row_x, row_y = window.transform() @ (CENTRE + 0.5, CENTRE + 0.5)  # the centre pixel's centre
    assert abs(row_x - x) <= 0.5 and abs(row_y - y) <= 0.5


def assert_raster_matches(raster: np.ndarray, inside: np.ndarray) -> None:
    """raster == inside (pixel centre in a footprint), but for the slivers of footprints the window's
    edge cuts to under 12 m^2, which the layout drops as the procedural styles' do: there a building
    pixel may read open, within a few pixels of the edge, and never the other way round."""
    differ = raster != inside
    assert not (raster & ~inside).any()
    rows, cols = np.nonzero(differ)
    assert (np.minimum.reduce([rows, cols, SIZE - 1 - rows, SIZE - 1 - cols]) < 4).all()
    assert differ.sum() < 0.01 * inside.sum()


def test_the_window_raster_is_building_exactly_where_a_pixel_centre_lies_in_a_footprint(files):
    footprints = read_footprints(files["folder"] / "city.gpkg")
    union = shapely.union_all(files["polygons"])
    for x, y in files["sites"].values():
        window = Window.around(Site("s", x, y))
        raster = building_raster(footprints, window)
        rows, cols = np.mgrid[0:SIZE, 0:SIZE]
        xs, ys = rasterio.transform.xy(window.transform(), rows.ravel(), cols.ravel())  # pixel centres
        inside = shapely.contains_xy(union, np.asarray(xs), np.asarray(ys)).reshape(SIZE, SIZE)
        assert 0.05 < raster.mean() < 0.6
        assert_raster_matches(raster.astype(bool), inside)


def test_the_mosaic_takes_the_strongest_site_per_pixel_and_names_it():
    windows = [Window(0, 256), Window(100, 300)]
    rng = np.random.default_rng(0)
    gains = [rng.uniform(-140, -60, (SIZE, SIZE)).astype(np.float32) for _ in windows]
    gains[0][:10, :10] = np.nan  # a building in site 0's window
    mosaic = best_server(windows, gains)
    assert mosaic.gain_db.shape == (300, 356) and (mosaic.left, mosaic.top) == (0, 300)
    # x in [150, 151), y in [199, 200): (100, 150) in the mosaic, (56, 150) and (100, 50) in the windows
    want = max(gains[0][56, 150], gains[1][100, 50])
    assert mosaic.gain_db[100, 150] == want
    assert mosaic.server[100, 150] == (0 if gains[0][56, 150] >= gains[1][100, 50] else 1)
    assert mosaic.gain_db[0, 300] == gains[1][0, 200] and mosaic.server[0, 300] == 1  # only site 1's window
    assert mosaic.gain_db[299, 50] == gains[0][255, 50] and mosaic.server[299, 50] == 0  # only site 0's
    assert np.isnan(mosaic.gain_db[0, 0]) and mosaic.server[0, 0] == -1  # no window there
    assert mosaic.server[44, 0] == -1  # site 0's building, outside site 1's window


def run_infer(args, capsys):
    code = infer_main([*map(str, args), "--quiet", "--steps", "1", "--batch-size", "2"])
    return code, capsys.readouterr()


@pytest.mark.parametrize(
    "footprints_file, sites_file",
    [
        ("city.gpkg", "sites.csv"),
        ("city.gpkg", "sites-lonlat.csv"),
        ("city-lonlat.geojson", "sites-lonlat.csv"),
    ],
)
def test_geodata_in_geotiffs_and_mosaic_out_end_to_end(files, tmp_path, capsys, footprints_file, sites_file):
    folder, out = files["folder"], tmp_path / "out"
    code, output = run_infer(
        ["--footprints", folder / footprints_file, "--sites", folder / sites_file, "--out", out], capsys
    )
    assert code == 0, output.err
    summary = json.loads((out / "sites.json").read_text())
    assert [s["site_id"] for s in summary["sites"]] == ["A", "B", "C"] and summary["predicted"] == 3
    footprints = read_footprints(folder / footprints_file)
    union = shapely.union_all(footprints.polygons)
    gains = []
    for entry in summary["sites"]:
        with rasterio.open(out / entry["file"]) as tif:
            assert tif.crs == rasterio.crs.CRS.from_user_input(UTM)
            assert tif.dtypes == ("float32",) and np.isnan(tif.nodata) and tif.shape == (SIZE, SIZE)
            assert tif.res == (1.0, 1.0) and tif.tags()["site_id"] == entry["site_id"]
            gain = tif.read(1)
            transform = tif.transform
        x, y = (
            entry["x"],
            entry["y"],
        )  # the site as read: from lon/lat within a centimetre of where it was put
        assert math.dist((x, y), files["sites"][entry["site_id"]]) < 0.01
        assert rasterio.transform.rowcol(transform, x, y) == (CENTRE, CENTRE)  # the window is centred on it
        rows, cols = np.mgrid[0:SIZE, 0:SIZE]
        xs, ys = rasterio.transform.xy(transform, rows.ravel(), cols.ravel())
        inside = shapely.contains_xy(union, np.asarray(xs), np.asarray(ys)).reshape(SIZE, SIZE)
        assert_raster_matches(np.isnan(gain), inside)  # nodata on buildings
        assert np.isfinite(gain[~inside]).all() and (gain[~inside] < 0).all()
        assert (out / f"{entry['site_id']}.png").is_file()
        gains.append((transform, gain))
    with rasterio.open(out / "mosaic_gain.tif") as tif, rasterio.open(out / "mosaic_server.tif") as srv:
        best, server, mosaic_transform = tif.read(1), srv.read(1), tif.transform
        assert (
            srv.nodata == -1 and srv.tags()["0"] == "A" and tif.crs == rasterio.crs.CRS.from_user_input(UTM)
        )
    for index, (transform, gain) in enumerate(gains):
        col0, row0 = ~mosaic_transform @ (transform.c, transform.f)
        part = best[round(row0) : round(row0) + SIZE, round(col0) : round(col0) + SIZE]
        served = server[round(row0) : round(row0) + SIZE, round(col0) : round(col0) + SIZE]
        outdoor = ~np.isnan(gain)
        assert (part[outdoor] >= gain[outdoor]).all()  # best server: at least this site's gain
        np.testing.assert_array_equal(part[served == index], gain[served == index])
    assert set(np.unique(server)) == {-1, 0, 1, 2}

    again, output = run_infer(
        ["--footprints", folder / footprints_file, "--sites", folder / sites_file, "--out", out], capsys
    )
    assert again == 0 and "wrote 0 site maps (3 already there)" in output.out


def test_a_rerun_predicts_a_site_the_same_whatever_else_is_in_the_file(files, tmp_path, capsys):
    folder = files["folder"]
    (tmp_path / "one.csv").write_text("site_id,x,y\nB,{!r},{!r}\n".format(*files["sites"]["B"]))
    run_infer(
        ["--footprints", folder / "city.gpkg", "--sites", folder / "sites.csv", "--out", tmp_path / "all"],
        capsys,
    )
    run_infer(
        ["--footprints", folder / "city.gpkg", "--sites", tmp_path / "one.csv", "--out", tmp_path / "one"],
        capsys,
    )
    with rasterio.open(tmp_path / "all" / "B.tif") as a, rasterio.open(tmp_path / "one" / "B.tif") as b:
        assert a.transform == b.transform
        # the same noise: equal up to float rounding of a batch of 2 against a batch of 1
        np.testing.assert_allclose(a.read(1), b.read(1), rtol=1e-5)


def bad_footprints(tmp_path, kind):
    path = tmp_path / f"{kind}.geojson"
    if kind == "empty":
        path.write_text('{"type": "FeatureCollection", "features": []}')
    elif kind == "unparsable":
        path.write_text(
            '{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}, "geometry": '
            '{"type": "Polygon", "coordinates": [[[11.6, 48.1], [11.601, 48.1]]]}}]}'
        )
    elif kind == "no-crs":
        path = tmp_path / "no-crs.shp"
        write_vector(path, city_polygons(), UTM, driver="ESRI Shapefile")
        path.with_suffix(".prj").unlink()
    elif kind == "unknown-crs":
        path = tmp_path / "unknown-crs.shp"
        write_vector(path, city_polygons(), UTM, driver="ESRI Shapefile")
        path.with_suffix(".prj").write_text('LOCAL_CS["somewhere",UNIT["metre",1]]')
    elif kind == "not-vector":
        path.write_text("this is not geodata")
    return path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("empty", "holds no building polygons"),
        ("unparsable", "does not parse"),
        ("no-crs", "no coordinate reference system"),
        ("unknown-crs", "coordinate reference system"),
        ("not-vector", "not a vector file GDAL reads"),
    ],
)
def test_bad_footprint_files_exit_2_naming_the_file(files, tmp_path, capsys, kind, message):
    path = bad_footprints(tmp_path, kind)
    code, output = run_infer(
        ["--footprints", path, "--sites", files["folder"] / "sites-lonlat.csv", "--out", tmp_path / "o"],
        capsys,
    )
    assert code == 2 and message in output.err and path.name in output.err, output.err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "site, message",
    [
        ((690_020.0, 5_335_060.0), "stands inside a building"),
        ((700_000.0, 5_335_000.0), "outside the footprints"),
    ],
)
def test_a_site_in_a_building_or_outside_the_extent_exits_2_before_any_prediction(
    files, tmp_path, capsys, site, message
):
    sites = tmp_path / "sites.csv"
    sites.write_text("site_id,x,y\nok,{!r},{!r}\nbad,{!r},{!r}\n".format(*files["sites"]["A"], *site))
    code, output = run_infer(
        ["--footprints", files["folder"] / "city.gpkg", "--sites", sites, "--out", tmp_path / "o"], capsys
    )
    assert code == 2 and "site bad" in output.err and message in output.err, output.err
    assert not (tmp_path / "o").exists()


def test_sites_without_footprints_and_footprints_without_sites_exit_2(files, tmp_path, capsys):
    code, output = run_infer(["--sites", files["folder"] / "sites.csv", "--out", tmp_path / "o"], capsys)
    assert code == 2 and "--footprints" in output.err
    code, output = run_infer(["--footprints", files["folder"] / "city.gpkg", "--out", tmp_path / "o"], capsys)
    assert code == 2 and "--sites" in output.err


def test_sites_as_x_y_in_another_crs_than_the_files_exit_2(files, tmp_path, capsys):
    folder = files["folder"]
    code, output = run_infer(
        [
            "--footprints",
            folder / "city-lonlat.geojson",
            "--sites",
            folder / "sites.csv",
            "--out",
            tmp_path / "o",
        ],
        capsys,
    )
    assert code == 2 and "sites.csv, line 2" in output.err and "WGS 84" in output.err, output.err


# --- your own city as training data (irt4-data synth --footprints) ---


def own_settings(**changes):
    from irt4.data.synth import FOOTPRINTS, SynthSettings

    return SynthSettings(style=FOOTPRINTS, **changes)


def test_a_site_map_is_the_sites_window_rasterized_as_for_inference_with_the_site_as_transmitter(files):
    from irt4.geo.own_city import FootprintCities

    footprints = read_footprints(files["folder"] / "city.gpkg")
    sites = read_sites(files["folder"] / "sites.csv", footprints.file_crs, footprints.crs)
    cities = FootprintCities(footprints, sites)
    for map_id, site in enumerate(sites):
        city = cities(own_settings(tx_per_map=1), 0, map_id)
        np.testing.assert_array_equal(city.buildings, building_raster(footprints, Window.around(site)))
        assert city.transmitters == [(CENTRE, CENTRE)]
        assert city.layout.style == "footprints" and set(city.layout.materials) == {"concrete"}
        # the heights are the file's, clipped parts keep their building's height
        assert set(np.round(city.heights, 2)) <= set(np.round(files["heights"], 2))


def test_random_windows_are_seeded_per_map_and_use_the_default_height_where_the_file_has_none(files):
    from irt4.geo.own_city import FootprintCities

    footprints = read_footprints(files["folder"] / "city-lonlat.geojson")  # no heights
    cities = FootprintCities(footprints)
    settings = own_settings(tx_per_map=2, building_height=17.0)
    first, again, other = cities(settings, 5, 0), cities(settings, 5, 0), cities(settings, 5, 1)
    np.testing.assert_array_equal(first.buildings, again.buildings)
    assert first.transmitters == again.transmitters and first.solver_seed == again.solver_seed
    assert not np.array_equal(first.buildings, other.buildings)
    assert (first.heights == 17.0).all() and first.buildings.mean() > 0.05
    for row, col in first.transmitters:
        assert not first.buildings[row, col]


@pytest.mark.sim
@pytest.mark.slow
def test_synth_traces_windows_of_ones_own_footprints_into_a_checked_root(files, tmp_path):
    import subprocess
    import sys

    from irt4.data.raytrace import missing_backend_reason

    reason = missing_backend_reason()
    if reason:
        pytest.skip(reason)
    folder, root = files["folder"], tmp_path / "own"
    base = [sys.executable, "-m", "irt4.cli.data", "synth", "--out", str(root), "--grid", "8"]
    base += ["--max-depth", "2", "--samples-per-src", "2000", "--no-progress"]
    command = [*base, "--footprints", str(folder / "city.gpkg"), "--sites", str(folder / "sites.csv")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "3 maps generated" in result.stdout
    check = subprocess.run(
        [sys.executable, "-m", "irt4.cli.data", "check", str(root)], capture_output=True, text=True
    )
    assert check.returncode == 0 and "3 maps, 3 samples decoded OK" in check.stdout, check.stderr
    metadata = json.loads((root / "irt4-synth.json").read_text())
    assert metadata["settings"]["style"] == "footprints" and metadata["footprints"]["file"] == "city.gpkg"
    assert json.loads((root / "antenna" / "0.json").read_text()) == [[CENTRE, CENTRE]]
    again = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "0 maps generated, 3 already there" in again.stdout
    # the same root with another footprints file is refused: one root, one input
    other = [
        *base,
        "--footprints",
        str(folder / "city-lonlat.geojson"),
        "--sites",
        str(folder / "sites-lonlat.csv"),
    ]
    refused = subprocess.run(other, capture_output=True, text=True, timeout=900)
    assert refused.returncode == 2 and "footprints" in refused.stderr


@pytest.mark.parametrize(
    "options, message",
    [
        (["--style", "grid"], "either drawn or of your footprints"),
        (["--sites", "x.csv"], "--sites goes with --footprints"),
    ],
)
def test_bad_own_city_synth_options_exit_2(tmp_path, capsys, options, message):
    from irt4.cli.data import main as data_main

    if "--style" in options:
        options = [*options, "--footprints", str(tmp_path / "f.gpkg"), "--maps", "1"]
    else:
        options = [*options, "--maps", "1"]
    assert data_main(["synth", "--out", str(tmp_path / "o"), *options]) == 2
    assert message in capsys.readouterr().err


def test_overlapping_footprints_merge_into_one_building_and_touching_ones_stay_apart():
    from irt4.geo.window import dissolve_overlaps

    polygons = [
        shapely.box(0, 0, 10, 10),
        shapely.box(5, 0, 15, 10),  # overlaps the first: one building, the higher height
        shapely.box(15, 0, 25, 10),  # touches the second along a wall: its own building
        shapely.box(0, 0, 10, 10),  # a duplicate of the first
    ]
    merged, heights = dissolve_overlaps(polygons, np.array([10.0, 20.0, 30.0, np.nan]))
    assert len(merged) == 2
    by_x = sorted(zip(merged, heights), key=lambda item: item[0].bounds[0])
    assert by_x[0][0].equals(shapely.box(0, 0, 15, 10)) and by_x[0][1] == 20.0
    assert by_x[1][0].equals(shapely.box(15, 0, 25, 10)) and by_x[1][1] == 30.0
