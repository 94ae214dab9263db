"""A damaged checkpoint does not end a Ray Train run: the worker group falls back to the run's previous intact
checkpoint (real 2-worker runs; the storage folder is damaged between two fits of the same run name), and only
when none is intact does the run fail, naming every file tried."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import ray.train
import torch

from meltr_ray import api
from meltr_ray.cluster import worker
from meltr_ray.core.checkpoint import DamagedCheckpointError, load_checkpoint, save_checkpoint

from tests.cluster._common import toy_kwargs
from tests.cluster.ray_plugins import STEPS_PER_EPOCH


def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:                                       # one bit flipped in the middle (tensor data): torch.load accepts it
        data[len(data) // 2] ^= 0x01
        path.write_bytes(data)


# ---- without a cluster: choosing the checkpoint and naming the redone epochs ----------------------------------
def _checkpoints(tmp_path, epochs):
    """Two-rank checkpoints epoch_001..epoch_<epochs>, newest first, as Train's Checkpoint objects."""
    found = []
    for epoch in range(epochs):
        directory = tmp_path / f"epoch_{epoch + 1:03d}"
        for rank in (0, 1):
            save_checkpoint({"buffer": {}, "rng": {}, "epoch": epoch}, directory, rank=rank, world_size=2)
        found.append(ray.train.Checkpoint.from_directory(str(directory)))
    return found[::-1]


def test_first_intact_skips_a_damaged_checkpoint_and_says_which(tmp_path, caplog):
    newest, previous = _checkpoints(tmp_path, 2)
    damage(Path(newest.path) / "rank_1.pt", "bit flip")
    with caplog.at_level(logging.WARNING, logger="meltr_ray.cluster.worker"):
        assert worker.first_intact([newest, previous]) is previous
    assert f"checkpoint {newest.path} fails verification" in caplog.text and "rank_1.pt: sha256" in caplog.text


def test_no_intact_checkpoint_names_every_file_tried(tmp_path):
    newest, previous = _checkpoints(tmp_path, 2)
    damage(Path(newest.path) / "state.pt", "truncate")
    (Path(previous.path) / "manifest_rank_1.json").unlink()
    with pytest.raises(DamagedCheckpointError, match="no intact checkpoint to resume from; tried 2") as error:
        worker.first_intact([newest, previous])
    assert str(Path(newest.path) / "state.pt") in str(error.value)
    assert str(Path(previous.path) / "manifest_rank_1.json") in str(error.value)


def test_redone_epochs_never_reuse_a_name_train_still_holds(tmp_path, monkeypatch):
    """Train deletes old checkpoints by folder: a redone epoch_003 written into the damaged epoch_003's folder
    would be deleted with it."""
    monkeypatch.setattr(worker, "committed_checkpoints", lambda: _checkpoints(tmp_path, 3)[:2])  # 003 and 002
    io = worker.RayCheckpointIO(rank=0, task_names=["a"], start_epoch=2)
    assert [io.dir_name(e) for e in (2, 3, 4)] == ["epoch_002-2", "epoch_003-2", "epoch_004"]


def test_keeping_fewer_than_two_checkpoints_is_warned_about(caplog):
    from meltr_ray.cluster.driver import checkpoint_config
    from meltr_ray.config import JobConfig
    assert JobConfig().cluster.checkpoints_to_keep >= 2                 # the default leaves one to fall back to
    with caplog.at_level(logging.WARNING, logger="meltr_ray.cluster.driver"):
        assert checkpoint_config(JobConfig()).num_to_keep == 2
        assert not caplog.text
        assert checkpoint_config(JobConfig().with_overrides({"cluster.checkpoints_to_keep": 1})).num_to_keep == 1
    assert "no earlier one to resume from" in caplog.text


# ---- real 2-worker runs ---------------------------------------------------------------------------------------
@pytest.mark.ray
# the bit-flip case (3 more Ray fits) runs with `-m slow`; the unit tests above cover a bit flip without Ray
@pytest.mark.parametrize("how", ["truncate", pytest.param("bit flip", marks=pytest.mark.slow)])
def test_damaged_latest_checkpoint_resumes_from_the_previous_epoch(ray_cluster, tmp_path, how):
    kwargs = toy_kwargs(tmp_path, **{"meltr.dropout": 0.2})          # keeps 2 checkpoints
    first = api.train(name="damaged", epochs=3, **kwargs)
    assert first.error is None
    latest = Path(first.checkpoint.path)
    assert latest.name == "epoch_003"
    intact = load_checkpoint(latest)
    damage(latest / "state.pt", how)

    resumed = api.train(name="damaged", epochs=3, **kwargs)         # same name: Train resumes the run
    assert resumed.error is None
    assert resumed.metrics["attempt_start_epoch"] == 2               # from epoch_002 (epochs 0 and 1 done)
    assert resumed.metrics["epoch"] == 3
    redone = Path(resumed.checkpoint.path)
    assert redone.name == "epoch_003-2"
    final = load_checkpoint(redone)
    assert final["counters"] == intact["counters"] and final["counters"]["step"] == 3 * STEPS_PER_EPOCH
    for part in ("backbone", "combiner"):              # the redone epoch ends where the damaged one had
        for key, value in intact[part].items():
            assert torch.equal(value, final[part][key]), (part, key)


@pytest.mark.ray
@pytest.mark.slow
def test_run_fails_naming_every_file_when_no_checkpoint_is_intact(ray_cluster, tmp_path):
    kwargs = toy_kwargs(tmp_path)
    first = api.train(name="all-damaged", epochs=2, **kwargs)
    assert first.error is None
    run = Path(first.checkpoint.path).parent
    damage(run / "epoch_002" / "state.pt", "truncate")
    damage(run / "epoch_001" / "rank_1.pt", "bit flip")
    with pytest.raises(ray.train.WorkerGroupError, match="no intact checkpoint to resume from; tried 2") as error:
        api.train(name="all-damaged", epochs=3, **kwargs)
    full = str(error.value.worker_failures[0])        # Train's message keeps 500 characters at each end
    assert str(run / "epoch_002" / "state.pt") in full and str(run / "epoch_001" / "rank_1.pt") in full
