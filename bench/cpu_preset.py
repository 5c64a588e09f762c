"""Sampling at a full-size preset on this machine's CPU, every CPU backend, at several step counts:
the bench model (bench.run --prepare), its engines (irt4-build-engine: ONNX Runtime and AOTInductor
packages in fp32, and AOTInductor packages in bf16; build time per graph from engine.json), then per
step count one `bench.run --only sampling,flops` with the reference, the PyTorch paths (fp32, bf16
autocast, bf16 channels-last), ONNX Runtime and the fp32 engines, and one with the reference and
the bf16 engine, combined into one dated report. bf16 pays on a CPU with bf16 matrix units (AMX,
AVX512-BF16), where oneDNN runs the convolutions in bf16.

A full-size preset is too heavy for CI (the 256 preset's engine directory is ~3 GB and its build
takes minutes), so this is a standalone benchmark, run by hand; each stage is skipped where its output
is already in --work, so an interrupted run picks up where it stopped.

  python -m bench.cpu_preset --work /tmp/cpu-256                      # irt4-radiodiff-256, 3 and 50 steps
  python -m bench.cpu_preset --work /tmp/cpu-small --preset small --steps 3

Writes <out>/<date>-cpu-preset.json and .md (default out: bench/results/cpu-preset).
Timing is measured, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.report import model_table, write_dated

PATHS = "reference,torch,torch-bf16,torch-nhwc-bf16,onnxruntime-cpu,engine-onnxruntime,engine-aoti"
BF16_PATHS = "reference,engine-aoti"  # the C++ engine over AOTInductor packages built in bf16
ENGINES = {"engine": ("fp32", ["onnxruntime", "aoti"]), "engine-bf16": ("bf16", ["aoti"])}


def run(command: list[str]) -> float:
    """Run a command (its output shown), raise if it fails; its wall-clock seconds."""
    print("+", " ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def build_engines(work: Path, preset: str, workers: int) -> None:
    """The bench model and its engines (ENGINES) in work/, each unless there already; the wall time
    of each build is kept beside its engine.json."""
    if not (work / "bundle.done").exists():
        run(
            [sys.executable, "-m", "bench.run", "--device", "cpu", "--preset", preset, "--prepare", str(work)]
        )
    model = str(work / "bench-model.safetensors")
    for name, (precision, backends) in ENGINES.items():
        if (work / name / "engine.json").exists():
            continue
        build = ["--checkpoint", model, "--out", str(work / name), "--precision", precision]
        build += ["--backends", *backends, "--compile-workers", str(workers)]
        seconds = run([sys.executable, "-m", "irt4.cli.build_engine", *build])
        (work / name / "build-seconds.json").write_text(json.dumps({"wall_s": seconds}) + "\n")


def sample(work: Path, preset: str, steps: int, engine: str, paths: str) -> dict:
    """bench.run's sampling rows at `steps`, batch 1, one warm timed call per row after the first."""
    out = work / f"{engine}-steps-{steps}"
    if not list(out.glob("*-cpu.json")):
        flags = ["--device", "cpu", "--preset", preset, "--only", "sampling,flops", "--batches", "1"]
        flags += ["--steps", str(steps), "--paths", paths, "--onnx-dir", str(work / "onnx")]
        flags += ["--engine-dir", str(work / engine), "--warmup", "0", "--repeats", "3", "--row-seconds", "1"]
        run([sys.executable, "-m", "bench.run", *flags, "--out", str(out)])
    return json.loads(sorted(out.glob("*-cpu.json"))[-1].read_text())


def build_line(work: Path, engine: str, manifest: dict) -> str:
    build = manifest.get("aoti_build", {})
    wall = work / engine / "build-seconds.json"
    return (
        f"- {engine}/: {manifest['precision']}, batch {manifest['batch']['min']}.."
        f"{manifest['batch']['max']}, "
        f"{', '.join(manifest['backends'])}; AOTInductor build with {build.get('compile_workers')} compile "
        "workers, no autotuning: "
        + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in build.get("seconds", {}).items())
        + (f"; the whole build {json.loads(wall.read_text())['wall_s']:.0f} s" if wall.exists() else "")
    )


def report(work: Path, preset: str, results: dict[int, list[dict]]) -> tuple[dict, str]:
    """One markdown table per step count: the rows of every run (each ratio is to the reference of
    its own run; the reference rows of the later runs are dropped)."""
    meta = next(iter(results.values()))[0]["meta"]
    manifests = {engine: json.loads((work / engine / "engine.json").read_text()) for engine in ENGINES}
    lines = [
        f"Sampling at {preset} on the CPU ({meta['device_description']}, {meta['machine']}), batch 1, "
        f"{meta['date']}, torch {meta['torch_version']}, git {meta['git_sha']} "
        "(`python -m bench.cpu_preset`); each ratio is to the eager fp32 reference of the same run",
        "",
        "Engines (irt4-build-engine):",
        "",
        *(build_line(work, engine, manifest) for engine, manifest in manifests.items()),
    ]
    for steps, runs in results.items():
        rows = [r for r in runs[0]["records"] if r["stage"] == "sampling"]
        for later in runs[1:]:
            rows += [r for r in later["records"] if r["stage"] == "sampling" and r["provider"] != "reference"]
        lines += ["", f"### {steps} steps", "", model_table(rows)]
    data = {"preset": preset, "engines": manifests, "steps": {str(s): runs for s, runs in results.items()}}
    return data, "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--work", type=Path, required=True, help="folder of the bench model, engines and runs"
    )
    parser.add_argument("--preset", default="irt4-radiodiff-256", help="model preset (default: %(default)s)")
    parser.add_argument("--steps", default="3,50", help="sampling step counts (default: %(default)s)")
    parser.add_argument(
        "--compile-workers", type=int, default=os.cpu_count() or 1, help="AOTInductor compile processes"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("bench/results/cpu-preset"), help="folder of the report"
    )
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    build_engines(args.work, args.preset, args.compile_workers)
    results = {
        int(steps): [
            sample(args.work, args.preset, int(steps), "engine", PATHS),
            sample(args.work, args.preset, int(steps), "engine-bf16", BF16_PATHS),
        ]
        for steps in args.steps.split(",")
    }
    data, table = report(args.work, args.preset, results)
    write_dated(args.out, "cpu-preset", data, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
