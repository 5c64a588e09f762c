"""bench/RESULTS.md from the result files of bench/run.py: one section per device (the newest file of
each), a table per stage. Older result files (records only, no sections) render too."""

from __future__ import annotations

import json
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS_DIR = BENCH / "results"
RESULTS_MD = BENCH / "RESULTS.md"


def _fmt(value, spec: str, suffix: str = "") -> str:
    return "" if value is None else format(value, spec) + suffix


def _time(ms: float | None) -> str:
    if ms is None:
        return ""
    return f"{ms / 1e3:.3g} s" if ms >= 1e3 else f"{ms:.3g} ms"


def _spread(r: dict) -> str:
    if r.get("p20_ms") is None or r["p20_ms"] == r["p80_ms"]:
        return ""
    return f" ({_time(r['p20_ms'])}-{_time(r['p80_ms'])})"


def model_table(recs: list[dict]) -> str:
    """Sampling or training rows: time per batch, rate, ratio to the reference, roofline, errors."""
    lines = [
        "| provider | dtype | batch | time per batch (p20-p80) | rate | vs reference | TFLOP/s | of peak "
        "| rel. err | max abs err | peak MiB | runs | 1st call s | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in recs:
        c = r.get("config", {})
        tflops = c.get("tflop_per_s", c["gflop_per_s"] / 1e3 if c.get("gflop_per_s") else None)
        rate = "" if r["rate"] is None else f"{r['rate']:.3g} {r['rate_unit']}"
        lines.append(
            f"| {r['provider']} | {r['dtype']} | {c.get('batch', '')} | "
            f"{_time(r['median_ms'])}{_spread(r)} | "
            f"{rate} | {_fmt(r.get('vs_reference'), '.2f', 'x')} | {_fmt(tflops, '.3g')} | "
            f"{_fmt(r.get('of_peak'), '.1%')} | {_fmt(c.get('rel_err'), '.1e')} | "
            f"{_fmt(c.get('max_abs_err'), '.1e')} | {_fmt(c.get('peak_mib'), '.0f')} | "
            f"{c.get('timed_runs', '')} | {_fmt(r.get('first_call_s'), '.1f')} | "
            f"{r.get('skipped') or c.get('note', '')} |"
        )
    return "\n".join(lines)


def kernel_table(recs: list[dict]) -> str:
    lines = [
        "| op | case | dtype | provider | mode | median | rate | of copy bw | vs eager | vs compile | note |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in recs:
        rate = "" if r["rate"] is None else f"{r['rate']:.3g} {r['rate_unit']}"
        lines.append(
            f"| {r['op']} | {r['case']} | {r['dtype']} | {r['provider']} | {r['mode']} | "
            f"{_time(r['median_ms'])} | {rate} | {_fmt(r.get('of_peak'), '.0%')} | "
            f"{_fmt(r.get('vs_eager'), '.2f', 'x')} | {_fmt(r.get('vs_compile'), '.2f', 'x')} | "
            f"{r.get('skipped') or ''} |"
        )
    return "\n".join(lines)


def flops_table(flops_per_map: dict[str, int], roofline_tflops: float | None) -> str:
    lines = ["| per map | GFLOP | floor at the measured peak |", "|---|---:|---:|"]
    for name, flops in flops_per_map.items():
        floor = _time(flops / roofline_tflops / 1e9) if roofline_tflops else ""
        lines.append(f"| {name} | {flops / 1e9:.2f} | {floor} |")
    return "\n".join(lines)


STAGE_TITLES = {
    "peak": "Peak: a large matrix product",
    "sampling": "Sampling (the whole sampler + VAE decode)",
    "training": "Training (one optimizer step of the UNet)",
    "kernels": "Kernels at the model's shapes",
}


def device_section(result: dict) -> str:
    meta = result["meta"]
    lines = [
        f"## {meta['device']}",
        "",
        f"- machine: {meta.get('machine', '')} {meta['device_description']}".replace("  ", " "),
        f"- date: {meta['date']}; torch {meta['torch_version']}; irt4 {meta['irt4_version']}; "
        f"git {meta['git_sha']}",
        f"- preset: {meta['preset']}{' (quick)' if meta.get('quick') else ''}; `vs reference` is the "
        "reference's time / the row's time at the same batch, measured in the same run",
    ]
    sections = result.get("sections", {})
    if sections:
        lines.append(
            "- sections: "
            + ", ".join(
                f"{name} {s['status']}" + (f" ({s['seconds']:.0f} s)" if s.get("seconds") is not None else "")
                for name, s in sections.items()
            )
        )
    lines += [f"- {note}" for note in result.get("notes", [])]
    by_stage: dict[str, list[dict]] = {}
    for r in result["records"]:
        by_stage.setdefault(r["stage"], []).append(r)
    if result.get("flops_per_map"):
        lines += [
            "",
            "### FLOPs (FlopCounterMode)",
            "",
            flops_table(result["flops_per_map"], result.get("roofline_tflops")),
        ]
    for stage, recs in by_stage.items():
        lines += ["", f"### {STAGE_TITLES.get(stage, stage)}", ""]
        lines.append(kernel_table(recs) if stage == "kernels" else model_table(recs))
    if result.get("profile"):
        from bench.profile import markdown

        lines += ["", "### Profile (bench/profile.py)", "", markdown(result["profile"])]
    if result.get("profile_levers"):
        from bench.profile import markdown

        title = "### Profile with the levers (bench/profile.py)"
        lines += ["", title, "", markdown(result["profile_levers"])]
    return "\n".join(lines) + "\n"


def regenerate_results_md(results_dir: Path = RESULTS_DIR, path: Path = RESULTS_MD) -> str:
    """`path` from the newest JSON of each device in `results_dir`."""
    newest: dict[str, dict] = {}
    for file in sorted(results_dir.glob("*.json")):
        result = json.loads(file.read_text())
        device = result["meta"]["device"]
        if device not in newest or result["meta"]["date"] >= newest[device]["meta"]["date"]:
            newest[device] = result
    text = "\n".join(
        [
            "# Benchmark results",
            "",
            "Generated by `python -m bench.run` (`make bench` for the quick CPU run; `bench/gpu.sh` on a",
            "GPU) from the newest `bench/results/*.json` of each device; do not edit by hand.",
            "bench/README.md says what each row measures. `reference` is the eager fp32 reference sampler /",
            "training recipe (contracts.md); a row with a note and no time was skipped or failed, for the",
            "reason given.",
            "",
        ]
        + [device_section(newest[d]) for d in sorted(newest)]
    )
    if "cuda" not in newest:
        text += (
            "\n## cuda\n\nNo GPU result yet: run `bench/gpu.sh OUTDIR` on a GPU machine, then copy its JSON"
            " into bench/results/ and run `python -m bench.run --regenerate`.\n"
        )
    path.write_text(text)
    return text


def write_dated(out: Path, kind: str, results: dict, table: str) -> Path:
    """Write <out>/<today>-<kind>.json (the results) and .md (the table), print the table and the path;
    for the standalone benchmarks (bench/synth_speed.py, bench/channels.py) that RESULTS.md leaves out."""
    import datetime as dt

    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{dt.date.today().isoformat()}-{kind}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    path.with_suffix(".md").write_text(table + "\n")
    print(table)
    print(f"wrote {path}")
    return path
