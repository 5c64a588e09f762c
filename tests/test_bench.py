"""The benchmark runner's logic (bench/run.py) on the tiny preset: its rows, the result file written as
it goes, failures and caps recorded as skipped rows without ending the run, and RESULTS.md. No timing
is asserted."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import report, run  # noqa: E402
from bench.measure import TimeLimitExceeded, check_deadlines, time_limit  # noqa: E402

FIELDS = {
    "stage", "provider", "mode", "median_ms", "p20_ms", "p80_ms", "rate", "rate_unit", "vs_reference",
    "skipped", "device", "preset", "torch_version", "irt4_version", "git_sha", "date",
}  # fmt: skip
CPU = torch.device("cpu")


def _settings(**changes) -> run.Settings:
    settings = dict(
        device=CPU, preset="tiny", quick=True, steps=1, batches=[1], train_batch=1, repeats=1, warmup=0,
        row_seconds=0.01, paths=["reference", "torch", "cudagraph-bf16", "engine-aoti"],
        train_paths=["reference"], cpu_batches=[1], compile_batches=[1], compile_timeout=30,
        section_timeouts={}, first_call_may_count=True,
    )  # fmt: skip
    return run.Settings(**(settings | changes))


def _new_run(tmp_path: Path) -> run.Run:
    return run.Run(run.run_metadata(CPU, "tiny", quick=True), tmp_path / "2000-01-01-cpu.json")


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("bench")
    result = _new_run(folder)
    # FLOPs per map as the flops section leaves them (made-up numbers: counting them costs seconds)
    result.flops_per_map = {
        "condition encoder (once per map)": 10, "UNet step (condition hoisted)": 100, "VAE encode": 500,
        "VAE decode": 1000, "reference call (condition recomputed)": 110,
    }  # fmt: skip
    run.run_sections(result, _settings(), ["sampling", "training"])
    return json.loads(result.path.read_text())


def test_runner_rows_have_their_fields_and_the_maps_of_the_reference(measured):
    recs = measured["records"]
    assert [(r["stage"], r["provider"]) for r in recs] == [
        ("sampling", "reference"),
        ("sampling", "torch"),
        ("sampling", "cudagraph-bf16"),
        ("sampling", "engine-aoti"),
        ("training", "reference"),
    ]
    for rec in recs:
        assert FIELDS <= rec.keys()
    measured_recs = [r for r in recs if r["skipped"] is None]
    assert len(measured_recs) == 3
    for rec in measured_recs:
        assert rec["config"]["batch"] == 1 and rec["config"]["flops"] > 0 and rec["median_ms"] > 0
        assert rec["vs_reference"] is not None and rec["config"]["tflop_per_s"] > 0
    torch_row = recs[1]
    assert torch_row["config"]["steps"] == 1
    assert torch_row["config"]["rel_err"] < 1e-4  # the same maps as the reference for the same noise
    assert recs[2]["skipped"] == "needs CUDA"
    assert recs[3]["skipped"]  # irt4.Engine missing, or no engine folder given
    assert measured["sections"]["sampling"]["status"] == "ok"


def test_a_failing_section_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    def broken(result, settings):
        raise RuntimeError("boom\nsecond line")

    def one_row(result, settings, cfg):
        result.flops_per_map["UNet step (condition hoisted)"] = 1

    monkeypatch.setattr(run, "peak_section", broken)
    monkeypatch.setattr(run, "flops_section", one_row)
    result = _new_run(tmp_path)
    run.run_sections(result, _settings(), ["peak", "flops"])
    saved = json.loads(result.path.read_text())
    assert saved["sections"]["peak"]["status"] == "failed"
    assert saved["sections"]["flops"]["status"] == "ok"
    assert saved["flops_per_map"] == {"UNet step (condition hoisted)": 1}
    [rec] = saved["records"]
    assert rec["stage"] == "peak" and rec["skipped"] == "failed: RuntimeError: boom"


def test_a_section_past_its_cap_keeps_its_rows_and_says_so(tmp_path, monkeypatch):
    def slow(result, settings):
        result.add(run.Row("peak", "first", "float32", "matmul", "fwd", 1.0, 1.0, "products/s"))
        time.sleep(10)

    monkeypatch.setattr(run, "peak_section", slow)
    result = _new_run(tmp_path)
    start = time.monotonic()
    run.run_sections(result, _settings(section_timeouts={"peak": 0.3}), ["peak"])
    assert time.monotonic() - start < 5
    saved = json.loads(result.path.read_text())
    assert saved["sections"]["peak"]["status"] == "over its cap"
    assert [r["case"] for r in saved["records"]] == ["first", "rest of the section"]
    assert "past its cap" in saved["records"][1]["skipped"]


def test_a_section_that_swallows_its_cap_stops_at_its_next_row(tmp_path, monkeypatch):
    def swallowing(result, settings):
        for _ in range(50):
            try:
                time.sleep(0.2)
            except TimeLimitExceeded:
                pass  # as a kernel benchmark that skips a failing case and goes on
            result.add(run.Row("peak", "case", "float32", "matmul", "fwd", 1.0, 1.0, "products/s"))

    monkeypatch.setattr(run, "peak_section", swallowing)
    result = _new_run(tmp_path)
    start = time.monotonic()
    run.run_sections(result, _settings(section_timeouts={"peak": 0.5}), ["peak"])
    assert time.monotonic() - start < 5
    assert json.loads(result.path.read_text())["sections"]["peak"]["status"] == "over its cap"


def test_a_cap_wrapped_in_another_error_still_ends_the_enclosing_block():
    # Inductor turns any exception into an InductorError: the row's handler must not swallow the cap
    with pytest.raises(TimeLimitExceeded, match="outer"):
        with time_limit(0.2, "outer"):
            with time_limit(30, "row") as row_scope:
                try:
                    try:
                        time.sleep(5)
                    except TimeLimitExceeded as error:
                        raise RuntimeError("wrapped") from error
                except RuntimeError:
                    check_deadlines(row_scope)


def test_results_md_has_a_table_per_stage_the_skip_reasons_and_older_files(measured, tmp_path):
    (tmp_path / "2000-01-01-cpu.json").write_text(json.dumps(measured))
    old = {
        "meta": measured["meta"] | {"device": "cuda", "device_description": "old GPU"},
        "notes": [],
        "records": [
            {k: v for k, v in measured["records"][0].items() if k not in ("skipped", "of_peak")}
            | {"config": {"batch": 1, "gflop_per_s": 2.0}}
        ],
    }
    (tmp_path / "1999-01-01-cuda.json").write_text(json.dumps(old))
    text = report.regenerate_results_md(tmp_path, tmp_path / "RESULTS.md")
    assert "## cpu" in text and "## cuda" in text and "old GPU" in text
    assert "### Sampling" in text and "### Training" in text
    assert "| torch | float32 | 1 |" in text and "| needs CUDA |" in text
    assert (tmp_path / "RESULTS.md").read_text() == text


def test_section_timeouts_parse_one_for_all_or_per_section():
    assert run.parse_timeouts("120", None) == dict.fromkeys(run.SECTIONS, 120.0)
    timeouts = run.parse_timeouts("sampling=170,kernels=30", 60.0)
    assert timeouts["sampling"] == 170 and timeouts["kernels"] == 30 and timeouts["peak"] == 60
    with pytest.raises(ValueError, match="unknown section"):
        run.parse_timeouts("sampler=1", None)


def test_engine_rows_carry_the_precision_their_engine_was_built_in(tmp_path):
    from bench import sampling

    path = sampling.PATHS["engine-aoti"]
    assert sampling.with_engine_precision(path, None) is path
    (tmp_path / "engine.json").write_text('{"precision": "fp32"}')
    assert sampling.with_engine_precision(path, tmp_path).dtype == torch.float32
    assert sampling.with_engine_precision(sampling.PATHS["torch"], tmp_path) is sampling.PATHS["torch"]


def test_channel_bench_writes_its_table_and_compares_with_the_reference(committed_dataset, tmp_path):
    from bench import channels as channel_bench

    threads = torch.get_num_threads()
    try:
        argv = ["--root", str(committed_dataset), "--pairs", "2", "--repeats", "1", "--reference-pairs", "1"]
        assert channel_bench.main([*argv, "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    (result,) = tmp_path.glob("*-channels.json")
    data = json.loads(result.read_text())
    assert data["pairs"] == 2 and data["all_channels_ms"]["median"] > 0
    assert 0.9 < data["rows"][0]["los_agreement"] <= 1.0 and "reference_ms" not in data["rows"][1]
    assert "| all 7 channels |" in result.with_suffix(".md").read_text()


def test_floors_bench_scores_resize_and_vae_per_style(committed_dataset, tmp_path):
    from bench import floors

    argv = ["--root", str(committed_dataset), "--pairs", "3", "--out", str(tmp_path)]
    assert floors.main(argv) == 0
    (result,) = tmp_path.glob("*-floors.json")
    rows = json.loads(result.read_text())["roots"][str(committed_dataset)]
    assert len(rows) == 3 and {r["style"] for r in rows} <= {"perimeter", "grid", "detached", "oldtown"}
    for row in rows:
        assert 0 < row["resize_rmse_db"] < 20 and 0 < row["vae_ssim"] <= 1
    table = result.with_suffix(".md").read_text()
    assert f"| {committed_dataset} / all | 3 |" in table


def test_floors_bench_measures_another_vae_in_the_models_place(committed_dataset, tmp_path):
    """--vae: the same pairs through another VAE of the model's VAE config (here the shipped model's,
    perturbed, in a bundle made by the test); the resize floor is the model's and does not change."""
    from bench import floors
    from irt4.models.bundle import load_model, save_bundle

    model, _ = load_model(Path("irt4/assets/default-small.safetensors"))
    torch.manual_seed(0)
    for value in model.vae.parameters():
        value.data.add_(0.05 * value.data.std() * torch.randn_like(value))
    vae = tmp_path / "other.safetensors"
    save_bundle(vae, model)
    argv = ["--root", str(committed_dataset), "--pairs", "2"]
    assert floors.main([*argv, "--out", str(tmp_path / "own")]) == 0
    assert floors.main([*argv, "--out", str(tmp_path / "other"), "--vae", str(vae)]) == 0
    (own,), (other,) = (tmp_path / "own").glob("*.json"), (tmp_path / "other").glob("*.json")
    own, other = (json.loads(p.read_text())["roots"][str(committed_dataset)] for p in (own, other))
    assert [r["resize_rmse_db"] for r in own] == [r["resize_rmse_db"] for r in other]
    assert [r["vae_rmse_db"] for r in own] != [r["vae_rmse_db"] for r in other]


def test_ablation_bench_scores_each_model_and_free_space_on_the_same_pairs(committed_dataset, tmp_path):
    from bench import ablation

    assets = Path(__file__).resolve().parents[1] / "irt4" / "assets"
    argv = ["--model", f"diffusion={assets / 'default-small.safetensors'}"]
    argv += [
        "--model",
        f"regressor={assets / 'baseline-small.safetensors'}",
        "--root",
        str(committed_dataset),
    ]
    argv += ["--pairs", "2", "--steps", "1", "--work", str(tmp_path / "maps"), "--out", str(tmp_path)]
    assert ablation.main(argv) == 0
    (result,) = tmp_path.glob("*-ablation.json")
    data = json.loads(result.read_text())
    rows = data["roots"][str(committed_dataset)]
    assert set(rows) == {"diffusion, 1 steps", "regressor", ablation.FREE_SPACE}
    pairs = [{(r["map_id"], r["tx_index"]) for r in model_rows} for model_rows in rows.values()]
    assert all(p == pairs[0] for p in pairs) and len(pairs[0]) == 2
    assert (
        data["models"]["diffusion"]["kind"] == "diffusion"
        and data["models"]["regressor"]["kind"] == "regressor"
    )
    table = result.with_suffix(".md").read_text()
    assert "| regressor |" in table and " / 2 |" in table


def test_ablation_bench_refuses_a_missing_model(tmp_path, capsys):
    from bench import ablation

    with pytest.raises(SystemExit):
        ablation.main(["--model", f"x={tmp_path / 'none.safetensors'}", "--out", str(tmp_path)])
    assert "no such file" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name, group",
    [
        ("aten::mkldnn_convolution", "convolutions"),
        ("aten::cudnn_convolution", "convolutions"),
        ("aten::addmm", "matrix products"),
        ("aten::bmm", "matrix products"),
        ("aten::native_group_norm", "norms"),
        ("aten::_softmax", "attention"),
        ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
        ("aten::_fft_r2c", "FFT"),
        ("aten::silu", "elementwise"),
        ("aten::add_", "elementwise"),
        ("aten::copy_", "copies and layout"),
        ("aten::cat", "copies and layout"),
        ("aten::upsample_nearest2d", "copies and layout"),
        ("aten::view", None),
        ("aten::permute", None),
        ("aten::randn", "other"),
    ],
)
def test_profile_groups_operators_by_what_they_spend_time_on(name, group):
    from bench.profile import op_group

    assert op_group(name) == group


def test_profile_of_the_tiny_preset_accounts_for_the_call(tmp_path):
    from bench import profile

    assert profile.main(["--preset", "tiny", "--device", "cpu", "--repeat", "1", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("*-profile-cpu.json")
    result = json.loads(path.read_text())
    for name in ("UNet step", "VAE decode"):
        part = result["networks"][name]
        groups = {row["group"]: row for row in part["rows"]}
        assert set(groups) == {*profile.GROUPS, "outside operators"}
        assert groups["convolutions"]["ms"] > 0 and groups["convolutions"]["gflop"] > 0
        assert part["wall_ms"] > 0 and all(row["ms"] >= 0 for row in part["rows"])
    assert result["networks"]["UNet step"]["rows"][4]["group"] == "FFT"  # the decouple branches
    assert result["networks"]["UNet step"]["rows"][4]["calls"] > 0
    table = path.with_suffix(".md").read_text()
    assert "| convolutions |" in table and "UNet step:" in table and "VAE decode:" in table


def test_profile_section_lands_in_the_run_file_and_results_md(tmp_path):
    result = _new_run(tmp_path)
    run.run_sections(result, _settings(), ["profile"])
    saved = json.loads(result.path.read_text())
    assert saved["sections"]["profile"]["status"] == "ok"
    assert saved["profile"]["preset"] == "tiny" and "UNet step" in saved["profile"]["networks"]
    assert saved["profile_levers"]["levers"] == ["nhwc"]  # after: the CPU's lever, same preset and batch
    assert saved["profile_levers"]["batch"] == saved["profile"]["batch"]
    text = report.regenerate_results_md(tmp_path, tmp_path / "RESULTS.md")
    assert "### Profile (bench/profile.py)" in text and "| convolutions |" in text
    assert "### Profile with the levers (bench/profile.py)" in text and "levers: nhwc" in text


@pytest.mark.parametrize("levers", ["nhwc", "nhwc,triton"])
def test_profile_with_levers_records_them_and_keeps_the_model_output(tmp_path, levers):
    """The levers change how the calls run, not what they compute (bf16 tolerance), and name the table."""
    from bench import profile

    cpu = torch.device("cpu")
    plain, _ = profile.build_calls("tiny", cpu, 1, "bf16")
    lever, _ = profile.build_calls("tiny", cpu, 1, "bf16", levers=tuple(levers.split(",")))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for name in plain:
            a, b = plain[name](), lever[name]()
            a, b = (a[0], b[0]) if isinstance(a, tuple) else (a, b)
            assert ((a.float() - b.float()).norm() / a.float().norm()) < 0.03, name
    argv = ["--preset", "tiny", "--device", "cpu", "--repeat", "1", "--levers", levers]
    argv += ["--out", str(tmp_path)]
    assert profile.main(argv) == 0
    (path,) = tmp_path.glob("*-profile-cpu.json")
    assert json.loads(path.read_text())["levers"] == levers.split(",")
    assert f"levers: {levers.replace(',', ' + ')}" in path.with_suffix(".md").read_text()
    assert list(profile.newest_tables(tmp_path)) == [f"cpu ({levers.replace(',', ' + ')})"]


def test_profile_refuses_an_unknown_lever(capsys):
    from bench import profile

    with pytest.raises(SystemExit):
        profile.main(["--preset", "tiny", "--device", "cpu", "--levers", "warp-drive"])
    assert "warp-drive" in capsys.readouterr().err


def test_cpu_preset_bench_builds_both_engines_and_reports_a_table_per_step_count(
    measured, tmp_path, monkeypatch
):
    """bench/cpu_preset.py's stages with each command replaced by one that writes what the real one
    would (a bundle, engine manifests, bench.run result files); a second run finds them and runs none."""
    from bench import cpu_preset

    sampling_row = next(r for r in measured["records"] if r["stage"] == "sampling")
    commands = []

    def fake_run(command: list[str]) -> float:
        commands.append(command)
        if "--prepare" in command:
            (tmp_path / "work" / "bundle.done").touch()
            return 1.5
        out = Path(command[command.index("--out") + 1])
        out.mkdir(parents=True)
        if "irt4.cli.build_engine" in command:
            backends = command[command.index("--backends") + 1 : command.index("--compile-workers")]
            manifest = {
                "precision": command[command.index("--precision") + 1], "batch": {"min": 1, "max": 32},
                "backends": {name: {} for name in backends},
                "aoti_build": {"seconds": {"unet_step": 3.0}, "compile_workers": 2},
            }  # fmt: skip
            (out / "engine.json").write_text(json.dumps(manifest))
        else:
            providers = command[command.index("--paths") + 1].split(",")
            records = [dict(sampling_row, provider=provider) for provider in providers]
            (out / "2000-01-01-cpu.json").write_text(
                json.dumps({"meta": measured["meta"], "records": records})
            )
        return 1.5

    monkeypatch.setattr(cpu_preset, "run", fake_run)
    argv = ["--work", str(tmp_path / "work"), "--steps", "3,50", "--out", str(tmp_path / "out")]
    assert cpu_preset.main([*argv, "--compile-workers", "2"]) == 0
    builds = [c for c in commands if "irt4.cli.build_engine" in c]
    assert [c[c.index("--precision") + 1] for c in builds] == ["fp32", "bf16"]
    assert len(commands) == 1 + 2 + 2 * 2  # the bundle, two engines, two runs per step count
    (report_md,) = (tmp_path / "out").glob("*-cpu-preset.md")
    text = report_md.read_text()
    assert "### 3 steps" in text and "### 50 steps" in text
    assert text.count("| reference |") == 2  # one per step count: the bf16 run's own reference is left out
    assert text.count("| engine-aoti |") == 4 and text.count("| torch-nhwc-bf16 |") == 2
    assert "- engine-bf16/: bf16, batch 1..32, aoti;" in text and "unet_step 3 s; the whole build 2 s" in text
    commands.clear()
    assert cpu_preset.main(argv) == 0 and commands == []


def test_ablation_bench_scores_only_the_maps_named(committed_dataset, tmp_path):
    from bench import ablation

    assert ablation.map_id_list("0-2,5, 7-8") == [0, 1, 2, 5, 7, 8]
    with pytest.raises(argparse.ArgumentTypeError, match="'x'"):
        ablation.map_id_list("1,x")
    assets = Path(__file__).resolve().parents[1] / "irt4" / "assets"
    last = max(int(p.stem) for p in (committed_dataset / "png/buildings_complete").glob("*.png"))
    argv = ["--model", f"regressor={assets / 'baseline-small.safetensors'}", "--root", str(committed_dataset)]
    argv += [
        "--map-ids",
        str(last),
        "--name",
        "fit",
        "--work",
        str(tmp_path / "maps"),
        "--out",
        str(tmp_path),
    ]
    assert ablation.main(argv) == 0
    (result,) = tmp_path.glob("*-fit.json")
    rows = json.loads(result.read_text())["roots"][str(committed_dataset)]
    assert {r["map_id"] for model_rows in rows.values() for r in model_rows} == {last}
