"""Unit tests of the training parts: LR schedules, EMA, checkpoints, data order, RNG state."""

import logging
import math
import os
import random

import numpy as np
import pytest
import torch

from irt4.config import TrainerConfig
from irt4.train import checkpoint as ckpt
from irt4.train.data import StreamSampler, epoch_permutation
from irt4.train.ema import EMA
from irt4.train.schedule import build_scheduler, lr_at
from irt4.train.trainer import rng_state, set_rng_state


def trainer_cfg(**fields) -> TrainerConfig:
    base = dict(lr=5e-5, min_lr=5e-6, restart_period=100, train_num_steps=1000)
    return TrainerConfig(**{**base, **fields})


# ---- LR schedules -------------------------------------------------------------------------------


def test_cosine_restarts_start_at_lr_reach_the_floor_and_restart():
    cfg = trainer_cfg()
    lrs = [lr_at(step, cfg) for step in range(301)]
    assert lrs[0] == pytest.approx(5e-5)
    assert lrs[50] == pytest.approx((5e-5 + 5e-6) / 2)
    assert lrs[99] == pytest.approx(5e-6, rel=1e-2)
    assert lrs[100] == pytest.approx(5e-5) and lrs[200] == pytest.approx(5e-5)
    assert min(lrs) >= 5e-6  # a true floor
    assert all(a > b for a, b in zip(lrs[:99], lrs[1:100]))


def test_warmup_rises_linearly_then_follows_the_cosine():
    cfg = trainer_cfg(warmup_steps=10)
    assert [lr_at(s, cfg) for s in (0, 4, 9)] == pytest.approx([5e-6, 2.5e-5, 5e-5])
    assert lr_at(10, cfg) == pytest.approx(5e-5)
    assert lr_at(60, cfg) == pytest.approx(lr_at(50, trainer_cfg()))


def test_poly_reference_is_lr_times_max_of_power_and_min_lr_as_written():
    cfg = trainer_cfg(lr_schedule="poly_reference", train_num_steps=50000)
    assert lr_at(0, cfg) == pytest.approx(5e-5)
    assert lr_at(25000, cfg) == pytest.approx(5e-5 * 0.5**0.96)
    assert lr_at(40000, cfg) == pytest.approx(5e-5 * 0.2**0.96)
    # min_lr is a factor in the reference: the lr decays to 5e-5 * 5e-6, far below min_lr
    assert lr_at(50000, cfg) == pytest.approx(5e-5 * 5e-6)
    assert lr_at(49999, cfg) == pytest.approx(5e-5 * max((1 / 50000) ** 0.96, 5e-6))


def test_scheduler_sets_the_optimizer_lr_and_its_state_round_trips(tmp_path):
    cfg = trainer_cfg()
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([param], lr=cfg.lr)
    scheduler = build_scheduler(optimizer, cfg)
    for _ in range(30):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(lr_at(30, cfg))
    torch.save(scheduler.state_dict(), tmp_path / "s.pt")
    fresh = build_scheduler(torch.optim.AdamW([param], lr=cfg.lr), cfg)
    fresh.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    fresh.step()
    assert fresh.get_last_lr()[0] == pytest.approx(lr_at(31, cfg))


# ---- EMA ----------------------------------------------------------------------------------------


def test_ema_starts_as_a_copy_copies_until_the_start_step_then_averages_on_its_cadence():
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, beta=0.9, update_after_step=4, update_every=2)
    assert torch.equal(ema.shadow.weight, model.weight) and not ema.shadow.weight.requires_grad
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(3)  # off cadence: nothing
    assert not torch.equal(ema.shadow.weight, model.weight)
    ema.update(4)  # on cadence, not past the start: a copy
    assert torch.equal(ema.shadow.weight, model.weight)
    with torch.no_grad():
        model.weight.fill_(2.0)
    ema.update(5)
    assert torch.all(ema.shadow.weight == 1.0)
    ema.update(6)  # 0.9 * 1 + 0.1 * 2
    assert torch.allclose(ema.shadow.weight, torch.full_like(model.weight, 1.1))


# ---- checkpoints --------------------------------------------------------------------------------


def test_atomic_save_leaves_no_partial_file_after_a_crash_mid_write(tmp_path, monkeypatch):
    path = tmp_path / "ckpt-0000001.pt"
    ckpt.atomic_save({"step": 1, "w": torch.ones(3)}, path)

    def crash(obj, handle):
        handle.write(b"PK\x03\x04 half a zip")
        raise OSError("disk pulled")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        ckpt.atomic_save({"step": 1, "w": torch.zeros(3)}, path)
    with pytest.raises(OSError):
        ckpt.atomic_save({"step": 2}, tmp_path / "ckpt-0000002.pt")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-0000001.pt"]
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))


def test_save_keeps_the_newest_k_and_last_is_the_newest(tmp_path):
    for step in (10, 20, 30, 40):
        ckpt.save_checkpoint(tmp_path, {"step": step, "stage": "vae"}, keep=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [30, 40]
    assert ckpt.read_checkpoint(tmp_path / "last.pt")["step"] == 40
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "not_ours"])
def test_load_newest_valid_logs_a_damaged_newest_and_uses_the_previous(tmp_path, caplog, damage):
    for step in (1, 2):
        ckpt.save_checkpoint(tmp_path, {"step": step, "w": torch.randn(1000)}, keep=5)
    newest = tmp_path / "ckpt-0000002.pt"
    os.unlink(tmp_path / "last.pt")  # last.pt shares the newest's data (a hard link)
    if damage == "truncate":
        data = newest.read_bytes()
        newest.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        newest.write_bytes(os.urandom(4096))
    else:
        torch.save({"step": 2}, newest)
    with caplog.at_level(logging.WARNING):
        path, checkpoint = ckpt.load_newest_valid(tmp_path)
    assert path.name == "ckpt-0000001.pt" and checkpoint["step"] == 1
    assert "ckpt-0000002.pt" in caplog.text


def test_load_newest_valid_is_none_without_a_readable_checkpoint(tmp_path):
    (tmp_path / "ckpt-0000003.pt").write_bytes(b"nope")
    assert ckpt.load_newest_valid(tmp_path) is None


# ---- data order ---------------------------------------------------------------------------------


def take(sampler, count):
    iterator = iter(sampler)
    return [next(iterator) for _ in range(count)]


def test_stream_is_a_fresh_permutation_per_epoch_without_gaps():
    stream = take(StreamSampler(7, seed=3), 21)
    for epoch in range(3):
        assert stream[7 * epoch : 7 * epoch + 7] == epoch_permutation(7, 3, epoch).tolist()
    assert stream[:7] != stream[7:14]


def test_ranks_interleave_so_their_global_batches_are_the_single_process_batches():
    batch, world = 2, 3
    single = take(StreamSampler(10, seed=1), 6 * batch * world)
    ranks = [take(StreamSampler(10, seed=1, rank=r, world_size=world), 6 * batch) for r in range(world)]
    for step in range(6):
        merged = sorted(i for r in range(world) for i in ranks[r][step * batch : (step + 1) * batch])
        assert merged == sorted(single[step * batch * world : (step + 1) * batch * world])


def test_stream_resumes_mid_epoch_where_it_stopped():
    full = take(StreamSampler(9, seed=5), 30)
    assert take(StreamSampler(9, seed=5, consumed=13), 17) == full[13:]
    assert take(StreamSampler(9, seed=5, consumed=12, rank=1, world_size=2), 5) == full[13:23:2]


# ---- RNG state ----------------------------------------------------------------------------------


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    noise = torch.Generator().manual_seed(7)
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    torch.save({"rng": rng_state(noise)}, tmp_path / "r.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=noise))
    torch.manual_seed(9)
    np.random.seed(9)
    random.seed(9)
    noise.manual_seed(9)
    set_rng_state(torch.load(tmp_path / "r.pt", weights_only=True)["rng"], noise)
    again = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=noise))
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert expected[2] == again[2] and torch.equal(expected[3], again[3])
    assert math.isfinite(expected[2])


def test_in_memory_training_set_gives_the_items_read_from_disk(committed_dataset):
    from irt4.data.radiomapseer import RadioMapSeer
    from irt4.train.data import InMemory, in_memory

    names = ("buildings", "transmitter", "log_distance", "los", "free_space", "walls")
    disk = RadioMapSeer(committed_dataset, split="train", image_size=64, condition=names)
    held = in_memory(disk, cap_gb=1.0)
    assert isinstance(held, InMemory) and len(held) == len(disk)
    for index in (0, len(disk) - 1):
        expected, got = disk[index], held[index]
        assert expected.keys() == got.keys()
        for key, value in expected.items():
            assert torch.equal(value, got[key]) if isinstance(value, torch.Tensor) else value == got[key]


def test_in_memory_is_skipped_when_off_or_over_its_cap(committed_dataset, caplog):
    from irt4.data.radiomapseer import RadioMapSeer
    from irt4.train.data import in_memory

    disk = RadioMapSeer(committed_dataset, split="train", image_size=64)
    assert in_memory(disk, cap_gb=0) is disk
    with caplog.at_level(logging.INFO):
        assert in_memory(disk, cap_gb=1e-6, log=logging.getLogger("t")) is disk
    assert "not held in memory" in caplog.text
