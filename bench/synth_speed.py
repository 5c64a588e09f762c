"""Data generator throughput: irt4-data synth's tracer as it was (a fresh scene per map, literal mesh
sizes and positions, so Dr.Jit compiles each map's kernels; Sionna's candidate search as it ships)
against the tracer that keeps its kernels (one scene per process, padded meshes, opaque positions)
and culls shadow rays that cannot yield a path (irt4.data.candidate_culling), on the same maps and
settings, in one run.

Each path runs in its own process with an empty Dr.Jit kernel cache (HOME points at a fresh folder),
so neither profits from kernels the other, or an earlier run, compiled. A second part traces many
maps with the new path at a small receiver grid (the solver call has the same size as at the default
grid, since receivers go in fixed chunks) and records the process's resident memory after each map.

  python -m bench.synth_speed                       # 3 maps each, default settings, 50 maps for RSS
  python -m bench.synth_speed --maps 2 --rss-maps 10 --out /tmp/synth-speed

Writes <out>/<date>-synth-speed.json and .md (default out: bench/results/synth) and prints the table.
Timing is measured, never asserted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench.report import write_dated


def trace_maps(path: str, map_ids: list[int], settings_json: str, seed: int) -> list[dict]:
    """Trace map_ids with the old or new path in this process; per map: seconds and resident memory."""
    import psutil

    from irt4.data import synth

    settings = synth.SynthSettings(**json.loads(settings_json))
    settings = replace(settings, gain_db_range=tuple(settings.gain_db_range))
    process = psutil.Process()
    rows = []
    for map_id in map_ids:
        start = time.perf_counter()
        city = synth.make_city(settings, seed, map_id)
        synth.trace_map(city, settings, keep_kernels=path == "new", cull_candidates=path == "new")
        rows.append(
            {
                "map": map_id,
                "seconds": time.perf_counter() - start,
                "rss_gb": process.memory_info().rss / 1e9,
                "style": city.layout.style if city.layout is not None else synth.BOXES,
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def run_path(path: str, map_ids: list[int], settings, seed: int) -> list[dict]:
    """trace_maps in a fresh process with an empty kernel cache."""
    from dataclasses import asdict

    with tempfile.TemporaryDirectory(prefix="irt4-bench-home-") as home:
        code = (
            "import json, sys; from bench.synth_speed import trace_maps; "
            "rows = trace_maps(sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4])); "
            "print(json.dumps(rows))"
        )
        command = [
            sys.executable,
            "-c",
            code,
            path,
            json.dumps(map_ids),
            json.dumps(asdict(settings)),
            str(seed),
        ]
        env = {**os.environ, "HOME": home}
        result = subprocess.run(
            command, capture_output=True, text=True, env=env, cwd=Path(__file__).parent.parent
        )
    if result.returncode != 0:
        raise RuntimeError(f"the {path} path failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def summary(rows: list[dict]) -> dict:
    seconds = [row["seconds"] for row in rows]
    return {
        "maps": len(rows),
        "seconds_per_map": sum(seconds) / len(seconds),
        "maps_per_hour": 3600 * len(seconds) / sum(seconds),
        "peak_rss_gb": max(row["rss_gb"] for row in rows),
    }


def main(argv: list[str] | None = None) -> int:
    from irt4.data import synth

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--maps", type=int, default=3, help="maps traced by each path (default: %(default)s)")
    parser.add_argument("--style", default="mixed", help="style mix of the maps (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=2026, help="data set seed (default: %(default)s)")
    parser.add_argument("--grid", type=int, default=synth.SynthSettings().grid, help="receiver grid")
    parser.add_argument("--rss-maps", type=int, default=50, help="maps of the memory run (default: 50)")
    parser.add_argument(
        "--rss-grid", type=int, default=16, help="receiver grid of the memory run (default: 16)"
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/synth"), help="folder of the results")
    args = parser.parse_args(argv)

    settings = synth.SynthSettings(style=args.style, grid=args.grid)
    map_ids = list(range(args.maps))
    results = {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": platform.processor()}
    results["cpus"] = os.cpu_count()
    results["settings"] = json.loads(json.dumps(settings.__dict__))
    results["versions"] = synth_versions()
    for path in ("old", "new"):
        rows = run_path(path, map_ids, settings, args.seed)
        results[path] = {"rows": rows, **summary(rows)}
    results["speedup_maps_per_hour"] = results["new"]["maps_per_hour"] / results["old"]["maps_per_hour"]
    if args.rss_maps:
        rss_settings = replace(settings, grid=args.rss_grid)
        rows = run_path("new", list(range(1000, 1000 + args.rss_maps)), rss_settings, args.seed)
        results["rss"] = {"grid": args.rss_grid, "rows": rows, **summary(rows)}
    write_dated(args.out, "synth-speed", results, markdown(results))
    return 0


def synth_versions() -> dict:
    from irt4.data.raytrace import sionna_versions

    return sionna_versions()


def markdown(results: dict) -> str:
    s = results["settings"]
    lines = [
        f"irt4-data synth throughput, {results['date']}, {results['cpus']} CPU cores, grid {s['grid']}, "
        f"depth {s['max_depth']}, {s['samples_per_src']:g} samples per source, "
        f"{s['tx_per_map']} transmitters per map, style {s['style']}",
        "",
        "| tracer | maps | s per map | maps per hour | peak RSS (GB) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for path in ("old", "new"):
        r = results[path]
        cells = [path, r["maps"], f"{r['seconds_per_map']:.1f}", f"{r['maps_per_hour']:.0f}"]
        lines.append("| " + " | ".join(map(str, [*cells, f"{r['peak_rss_gb']:.2f}"])) + " |")
    lines.append(f"\nnew / old in maps per hour: {results['speedup_maps_per_hour']:.2f}x")
    if "rss" in results:
        rss = [row["rss_gb"] for row in results["rss"]["rows"]]
        third = max(1, len(rss) // 3)
        lines.append(
            f"\nmemory over {len(rss)} maps (new tracer, grid {results['rss']['grid']}): RSS after map 1 "
            f"{rss[0]:.2f} GB, mean of the first third {sum(rss[:third]) / third:.2f} GB, of the last "
            f"third {sum(rss[-third:]) / third:.2f} GB, max {max(rss):.2f} GB "
            f"({results['rss']['seconds_per_map']:.1f} s per map)"
        )
        from irt4.data.raytrace import FLUSH_EVERY

        cycles = [rss[i : i + FLUSH_EVERY] for i in range(0, len(rss), FLUSH_EVERY)]
        lines.append(
            f"\nper {FLUSH_EVERY} maps (Dr.Jit's allocation cache is emptied after every {FLUSH_EVERY}th): "
            "lowest / highest RSS "
            + ", ".join(f"{min(cycle):.2f} / {max(cycle):.2f}" for cycle in cycles)
            + " GB"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
