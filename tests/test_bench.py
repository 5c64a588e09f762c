"""Smoke test of the benchmark runner (bench/run.py) on the tiny preset: the records have their
fields. No timing is asserted."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import run  # noqa: E402
from bench.kernels import Harness  # noqa: E402
from irt4.config import load_config  # noqa: E402

FIELDS = {
    "stage", "provider", "mode", "median_ms", "p20_ms", "p80_ms", "rate", "rate_unit", "vs_reference",
    "device", "preset", "torch_version", "irt4_version", "git_sha", "date",
}  # fmt: skip


def test_runner_records_have_their_fields(tmp_path):
    cpu = torch.device("cpu")
    harness = Harness(cpu, quick=True, repeats=1, warmup=0)
    model = run.build_model(load_config("tiny"), cpu)
    rows = run.sampling_rows(harness, model, batch=1, steps=1, compile_=False)
    rows += run.training_rows(harness, model, batch=1)
    assert [(r.op, r.provider) for r in rows] == [
        ("sampling", "reference"),
        ("sampling", "torch"),
        ("training", "reference"),
        ("training", "torch-cached"),
    ]
    recs = run.records(rows, run.run_metadata(cpu, "tiny", quick=True))
    for rec in recs:
        assert FIELDS <= rec.keys()
        assert rec["config"]["batch"] == 1 and rec["config"]["flops"] > 0
    torch_row = recs[1]
    assert torch_row["config"]["steps"] == 1
    assert torch_row["config"]["rel_err"] < 1e-4  # the same maps as the reference for the same noise

    (tmp_path / "2000-01-01-cpu.json").write_text(
        json.dumps({"meta": recs[0] | {}, "notes": [], "records": recs})
    )
    text = run.regenerate_results_md(tmp_path, tmp_path / "RESULTS.md")
    assert "## cpu" in text and "| sampling | torch |" in text
