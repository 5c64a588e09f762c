"""End-to-end tests of `irt4-train` on the tiny preset (CPU, one thread per process)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from irt4.cli.train import build_parser, main
from irt4.train.checkpoint import list_checkpoints, read_checkpoint, save_checkpoint

TESTS = Path(__file__).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: oversubscribed threads make steps 30x slower
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_root(committed_dataset) -> Path:
    return committed_dataset


def common(root: Path) -> list[str]:
    return [
        "--data",
        str(root),
        "--config",
        "tiny",
        "--set",
        "data.split=auto",
        "--workers",
        "0",
        "--no-tensorboard",
        "--set",
        "vae_trainer.batch_size=2",
        "--set",
        "trainer.batch_size=2",
    ]


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "irt4.cli.train", *args]


def run_json(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def vae_run(data_root, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "vae"
    assert (
        main(
            [
                "vae",
                *common(data_root),
                "--out",
                str(run),
                "--steps",
                "4",
                "--set",
                "vae_trainer.save_every=2",
            ]
        )
        == 0
    )
    return run


def test_vae_run_writes_config_checkpoints_logs_samples_and_report(vae_run):
    assert [s for s, _ in list_checkpoints(vae_run)] == [2, 4]
    last = read_checkpoint(vae_run / "last.pt")
    assert last["stage"] == "vae" and last["step"] == 4 and last["data"]["consumed"] == 8
    assert set(last) >= {"model", "ema", "optimizer", "scheduler", "scaler", "rng", "config", "irt4_version"}
    assert all(name.startswith("vae.") for name in last["model"])
    assert (vae_run / "config.yaml").is_file() and (vae_run / "report.md").is_file()
    assert sorted(p.name for p in (vae_run / "samples").iterdir()) == ["step-0000002.png", "step-0000004.png"]
    record = run_json(vae_run)
    assert record["status"] == "completed" and record["step"] == 4 and record["precision"] == "fp32"
    assert record["checkpoints"] == ["ckpt-0000002.pt", "ckpt-0000004.pt"]
    assert [row["step"] for row in metrics(vae_run) if "loss" in row] == [1, 4]


def test_ldm_run_trains_the_unet_on_the_frozen_vae_and_saves_both_stages(vae_run, data_root, tmp_path):
    run = tmp_path / "ldm"
    argv = ["ldm", *common(data_root), "--out", str(run), "--vae", str(vae_run / "last.pt"), "--steps", "2"]
    assert main([*argv, "--set", "trainer.save_every=2", "--sample-steps", "2"]) == 0
    last = read_checkpoint(run / "last.pt")
    vae_ema = read_checkpoint(vae_run / "last.pt")["ema"]
    assert last["stage"] == "ldm" and last["step"] == 2
    assert all(torch.equal(last["model"][f"vae.{k}"], v) for k, v in vae_ema.items())  # frozen
    assert any(k.startswith("unet.") for k in last["model"]) and set(last["ema"]) == {
        k.removeprefix("unet.") for k in last["model"] if k.startswith("unet.")
    }
    scale = run_json(run)["scale_factor"]
    assert last["scale_factor"] == pytest.approx(scale) and scale != pytest.approx(0.3)
    assert (run / "report.md").is_file() and (run / "samples" / "step-0000002.png").is_file()


def test_ldm_with_cached_latents_runs(vae_run, data_root, tmp_path):
    run = tmp_path / "ldm"
    argv = ["ldm", *common(data_root), "--out", str(run), "--vae", str(vae_run / "last.pt"), "--steps", "1"]
    assert main([*argv, "--cache-latents", "--sample-steps", "1"]) == 0
    assert run_json(run)["status"] == "completed"


def test_resumed_ldm_with_cached_latents_matches_an_uninterrupted_run(vae_run, data_root, tmp_path):
    """The latent cache of a resumed run is encoded by the checkpoint's VAE, not the freshly built one
    (the bug of 2026-11-26: a resumed H200 run trained 1,600 steps on the latents of a random VAE)."""
    argv = ["ldm", *common(data_root), "--vae", str(vae_run / "last.pt"), "--cache-latents"]
    argv += ["--sample-steps", "1", "--set", "trainer.save_every=2"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main([*argv, "--out", str(straight), "--steps", "4"]) == 0
    assert main([*argv, "--out", str(resumed), "--steps", "2"]) == 0
    assert main([*argv, "--out", str(resumed), "--steps", "4", "--resume"]) == 0
    a, b = read_checkpoint(straight / "last.pt"), read_checkpoint(resumed / "last.pt")
    assert a["step"] == b["step"] == 4
    for key in ("model", "ema", "optimizer"):
        assert _same_tensors(a[key], b[key]), key


def test_ldm_stage_re_caches_latents_when_a_loaded_state_brings_another_vae(data_root):
    """The safety net behind the test above, for code that builds a Trainer itself."""
    from irt4.config import apply_overrides, load_config
    from irt4.train.stages import LDMStage, datasets

    cfg = apply_overrides(load_config("tiny"), ["data.split=auto", "data.num_workers=0"])
    train_set, sample_set = datasets(cfg, data_root)
    torch.manual_seed(0)
    stage = LDMStage(cfg, train_set, sample_set, vae_weights=None, cache_latents=True)
    stage.to(torch.device("cpu"), torch.contiguous_format)
    stale = stage.latent_cache
    torch.manual_seed(1)
    other = LDMStage(cfg, train_set, sample_set, vae_weights=None)  # another random VAE
    stage.load_model_state(other.model_state())
    assert not torch.equal(stage.latent_cache[0], stale[0])
    other.cache_latents = True
    other.to(torch.device("cpu"), torch.contiguous_format)
    for got, want in zip(stage.latent_cache, other.latent_cache):
        torch.testing.assert_close(got, want)
    unchanged = stage.latent_cache
    stage.load_model_state(stage.model_state())  # the same VAE: the cache is kept, not recomputed
    assert stage.latent_cache is unchanged


def _wait_for_step(run: Path, process: subprocess.Popen, step: int) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if run_json(run)["step"] >= step:
                return
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"the run never reached step {step}: {process.poll()}")


def _same_tensors(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_tensors(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_tensors(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def test_sigterm_then_resume_gives_the_parameters_of_an_uninterrupted_run(vae_run, data_root, tmp_path):
    """The interrupted run is started and restarted by the same command with --auto-resume, as a
    preemptible job would be."""
    argv = [
        "ldm",
        *common(data_root),
        "--vae",
        str(vae_run / "last.pt"),
        "--steps",
        "8",
        "--sample-steps",
        "1",
        "--set",
        "trainer.log_every=1",
        "--set",
        "trainer.save_every=3",
    ]
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    subprocess.run(command(*argv, "--out", str(straight)), env=ENV, check=True, capture_output=True)

    job = [*argv, "--out", str(interrupted), "--auto-resume"]
    process = subprocess.Popen(command(*job), env=ENV, stderr=subprocess.PIPE)
    _wait_for_step(interrupted, process, 2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == 143, stderr.decode()[-2000:]
    record = run_json(interrupted)
    assert record["status"] == "interrupted" and 2 <= record["step"] < 8
    stopped_at = record["step"]
    assert read_checkpoint(interrupted / "last.pt")["step"] == stopped_at

    resumed = subprocess.run(command(*job), env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "--auto-resume: continuing from" in resumed.stderr
    assert run_json(interrupted)["resumed_from"] == [stopped_at]
    a, b = read_checkpoint(straight / "last.pt"), read_checkpoint(interrupted / "last.pt")
    assert a["step"] == b["step"] == 8 and a["data"] == b["data"]
    for key in ("model", "ema", "optimizer", "scheduler", "rng"):
        assert _same_tensors(a[key], b[key]), key
    assert [r["step"] for r in metrics(interrupted) if "loss" in r] == list(range(1, 9))


def test_resume_detects_a_corrupted_newest_checkpoint_and_continues_from_the_previous(
    data_root, tmp_path, caplog
):
    run = tmp_path / "run"
    argv = ["vae", *common(data_root), "--out", str(run), "--set", "vae_trainer.save_every=2"]
    assert main([*argv, "--steps", "4"]) == 0
    newest = run / "ckpt-0000004.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    assert main([*argv, "--steps", "5", "--resume"]) == 0
    assert "ckpt-0000004.pt is unreadable" in caplog.text
    assert run_json(run)["resumed_from"] == [2] and read_checkpoint(run / "last.pt")["step"] == 5


def test_nan_skip_policy_skips_the_step_logs_it_and_finishes(data_root, tmp_path, caplog):
    run = tmp_path / "run"
    argv = ["vae", *common(data_root), "--out", str(run), "--steps", "3", "--set", "vae_trainer.log_every=1"]
    assert main([*argv, "--inject-nan-at", "2"]) == 0
    assert "non-finite loss nan at step 2 (skip)" in caplog.text
    assert any(row["step"] == 2 and row.get("nonfinite_loss") == 1 for row in metrics(run))
    last = read_checkpoint(run / "last.pt")
    assert last["step"] == 3 and all(torch.isfinite(v).all() for v in last["model"].values())
    assert run_json(run)["status"] == "completed"


def test_nan_stop_policy_saves_the_last_good_state_and_exits_non_zero(data_root, tmp_path):
    argv = ["vae", *common(data_root), "--set", "vae_trainer.nan_policy=stop"]
    assert main([*argv, "--out", str(tmp_path / "clean"), "--steps", "2"]) == 0
    run = tmp_path / "run"
    assert main([*argv, "--out", str(run), "--steps", "5", "--inject-nan-at", "3"]) == 3
    assert run_json(run)["status"] == "stopped_nan"
    stopped, clean = read_checkpoint(run / "last.pt"), read_checkpoint(tmp_path / "clean" / "last.pt")
    assert stopped["step"] == 2 and stopped["data"] == clean["data"]
    assert _same_tensors(stopped["model"], clean["model"]) and _same_tensors(
        stopped["optimizer"], clean["optimizer"]
    )


def test_two_gloo_processes_match_the_single_process_loss_curve(data_root, tmp_path):
    argv = ["vae", *common(data_root), "--steps", "4", "--set", "vae_trainer.log_every=1"]
    argv += ["--set", "vae_trainer.batch_size=4"]
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert main([*argv, "--out", str(single)]) == 0
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "irt4.cli.train",
            *argv,
            "--out",
            str(ddp),
        ]
        + ["--set", "vae_trainer.batch_size=2"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=500,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = run_json(ddp)
    assert record["world_size"] == 2 and record["status"] == "completed"
    assert read_checkpoint(ddp / "last.pt")["data"]["consumed"] == 16  # 4 steps x 2 ranks x 2
    single_loss = [r["loss"] for r in metrics(single) if "loss" in r]
    ddp_loss = [r["loss"] for r in metrics(ddp) if "loss" in r]
    assert len(single_loss) == len(ddp_loss) == 4
    # same samples per global batch; the ranks draw their own posterior noise, which moves the tiny
    # VAE's loss by up to ~6 % per step, while training lowers it by ~40 % over these 4 steps
    assert ddp_loss == pytest.approx(single_loss, rel=0.1)
    assert ddp_loss[-1] < 0.8 * ddp_loss[0]


@pytest.mark.slow
def test_compile_trains_on_cpu(data_root, tmp_path):
    run = tmp_path / "run"
    assert main(["vae", *common(data_root), "--out", str(run), "--steps", "2", "--compile"]) == 0
    assert run_json(run)["compile"] is True and read_checkpoint(run / "last.pt")["step"] == 2


def test_compile_regions_trains_the_same_steps_as_eager(data_root, vae_run, tmp_path, monkeypatch, caplog):
    """--compile-regions compiles the UNet's blocks in place (Dynamo's `eager` backend here: the
    tracing and the wiring are tested, Inductor's code generation is the GPU bench's), and the run
    takes the steps an uncompiled run takes."""
    import logging

    from irt4.models import regional

    eager_compile = regional.compile_regions
    monkeypatch.setattr(regional, "compile_regions", lambda m, **kw: eager_compile(m, backend="eager", **kw))
    ldm = ["ldm", *common(data_root), "--vae", str(vae_run / "last.pt"), "--steps", "2"]
    assert main([*ldm, "--out", str(tmp_path / "eager")]) == 0
    torch._dynamo.reset()
    with caplog.at_level(logging.INFO):
        assert main([*ldm, "--out", str(tmp_path / "regions"), "--compile-regions"]) == 0
    torch._dynamo.reset()
    assert "--compile-regions:" in caplog.text and "blocks compiled" in caplog.text
    assert run_json(tmp_path / "regions")["compile_regions"] is True
    losses = [[r["loss"] for r in metrics(tmp_path / name) if "loss" in r] for name in ("eager", "regions")]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)


@pytest.mark.parametrize("other", ["--compile", "--cuda-graphs"])
def test_compile_regions_with_another_compiler_is_exit_2(data_root, vae_run, tmp_path, capsys, other):
    argv = ["ldm", *common(data_root), "--vae", str(vae_run / "last.pt"), "--out", str(tmp_path / "run")]
    assert main([*argv, "--steps", "1", "--compile-regions", other]) == 2
    assert "do not combine" in capsys.readouterr().err


def _parsers():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    return [("", parser), *subparsers.items()]


@pytest.mark.parametrize("name", ["", "vae", "ldm", "baseline", "report"])
def test_help_explains_every_option(name, capsys):
    parser = dict(_parsers())[name]
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"] if name else ["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for action in parser._actions:
        assert action.help, action.dest
        for option in action.option_strings:
            assert option in text


def test_console_script_help_lists_the_subcommands():
    result = subprocess.run(
        [str(Path(sys.executable).with_name("irt4-train")), "--help"], capture_output=True, text=True, env=ENV
    )
    assert result.returncode == 0 and all(c in result.stdout for c in ("vae", "ldm", "baseline", "report"))


def test_user_mistakes_print_one_line_and_exit_2(data_root, vae_run, tmp_path, capsys):
    ldm_like = tmp_path / "ldm.pt"
    save_checkpoint(tmp_path, {"step": 1, "stage": "ldm", "model": {}, "config": {}}, keep=1)
    (tmp_path / "ckpt-0000001.pt").rename(ldm_like)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    out = str(tmp_path / "out")
    cases = {
        "no such folder": ["vae", *common(data_root), "--out", out, "--data", str(tmp_path / "missing")],
        "unknown config key trainer.lrr": ["vae", *common(data_root), "--out", out, "--set", "trainer.lrr=1"],
        "not an irt4-train checkpoint": ["ldm", *common(data_root), "--out", out, "--vae", str(garbage)],
        "a ldm-stage checkpoint": ["ldm", *common(data_root), "--out", out, "--vae", str(ldm_like)],
        "--vae is required": ["ldm", *common(data_root), "--out", out],
        "holds no readable checkpoint": ["vae", *common(data_root), "--out", out, "--resume"],
        "already holds checkpoints": ["vae", *common(data_root), "--out", str(vae_run)],
        "drop --resume": ["vae", *common(data_root), "--out", out, "--resume", "--auto-resume"],
        "not a training run folder": ["report", str(tmp_path)],
    }
    for message, argv in cases.items():
        assert main(argv) == 2, message
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("irt4-train: error: ") and message in err[0], err
