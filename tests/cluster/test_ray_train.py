"""Ray Train: a 2-worker CPU TorchTrainer run, and a worker killed mid-run that resumes from its checkpoint."""
from __future__ import annotations

import os

import pytest
import torch

from meltr_ray import api
from meltr_ray.core.checkpoint import load_checkpoint

from tests.cluster._common import toy_kwargs
from tests.cluster.ray_plugins import STEPS_PER_EPOCH

pytestmark = pytest.mark.ray


def _final_state(result) -> dict:
    with result.checkpoint.as_directory() as d:
        return load_checkpoint(d)


def test_two_worker_cpu_run_checkpoints_full_state(ray_cluster, tmp_path):
    result = api.train(name="two-workers", epochs=2, **toy_kwargs(tmp_path))
    assert result.error is None
    assert result.metrics["epoch"] == 2
    assert result.metrics["step"] == 2 * STEPS_PER_EPOCH
    for key in ("train_loss", "loss_primary", "weight_helpful", "meta_grad_norm", "val_primary_mse"):
        assert key in result.metrics, key
    state = _final_state(result)
    assert state["task_names"] == ["primary", "helpful", "harmful"]
    assert state["config"]["cluster"]["num_workers"] == 2
    assert state["counters"]["meta_steps"] == 2 * STEPS_PER_EPOCH // 2
    # every rank saved its own replay buffer and RNG states next to the shared state
    with result.checkpoint.as_directory() as d:
        ranks = [torch.load(os.path.join(d, f"rank_{r}.pt"), weights_only=True) for r in (0, 1)]
    assert all(set(r) == {"buffer", "rng"} for r in ranks)
    first = [b["x"] for b in ranks[0]["buffer"]["items"]], [b["x"] for b in ranks[1]["buffer"]["items"]]
    assert len(first[0]) == len(first[1]) > 0
    assert not all(torch.equal(a, b) for a, b in zip(*first))      # each rank buffered its own shard's batches


RANDOM_MELTR = {"meltr.dropout": 0.2, "meta.meta_every": 1}   # dropout: per-rank RNG; meta steps: buffer draws


@pytest.fixture(scope="module")
def uninterrupted(ray_cluster, tmp_path_factory):
    """Final state of a 3-epoch run never killed: what every killed-and-resumed run must end bit-identical to."""
    tmp_path = tmp_path_factory.mktemp("no_crash")
    result = api.train(name="no-crash", epochs=3, **toy_kwargs(tmp_path, **RANDOM_MELTR))
    assert result.error is None
    return _final_state(result)


@pytest.mark.parametrize("crash_rank, crash_step", [(0, 0), (1, 2)], ids=["rank0-epoch-start", "rank1-mid-epoch"])
def test_worker_killed_mid_run_resumes_with_meltr_and_optimizers(uninterrupted, tmp_path, crash_rank, crash_step):
    marker, epoch_log = tmp_path / "crashed", tmp_path / "epochs.log"
    kwargs = toy_kwargs(tmp_path, **RANDOM_MELTR, **{"cluster.max_failures": 1, "backbone.overrides": {
        "crash_marker": str(marker), "crash_epoch": 2, "crash_rank": crash_rank, "crash_step": crash_step,
        "epoch_log": str(epoch_log)}})
    result = api.train(name="crash-resume", epochs=3, **kwargs)
    assert marker.exists(), "the worker was not killed"
    assert int(marker.read_text().split()[1]) == crash_step      # steps rank `crash_rank` took before dying
    assert result.error is None
    assert result.metrics["epoch"] == 3
    # The restarted group resumed from the last *committed* checkpoint: epoch 2's, or epoch 1's when the crash
    # came before the controller had registered epoch 2's (Train's snapshot is the source of truth).
    assert result.metrics["attempt_start_epoch"] in (1, 2)
    started = [int(line.split()[1]) for line in epoch_log.read_text().splitlines()]
    assert started == [0, 1, 2] + list(range(result.metrics["attempt_start_epoch"], 3))   # the killed epoch redone
    state = _final_state(result)
    total_steps, meta_steps = 3 * STEPS_PER_EPOCH, 3 * STEPS_PER_EPOCH      # meta_every 1
    # the steps taken before the kill were lost with the worker and redone, not counted twice
    assert state["counters"] == {**state["counters"], "step": total_steps, "meta_steps": meta_steps}
    # Adam's step counts continue across the crash: both optimizers were restored, not rebuilt.
    backbone_steps = {float(s["step"]) for s in state["backbone_optimizer"]["state"].values()}
    meltr_steps = {float(s["step"]) for s in state["meltr_optimizer"]["state"].values()}
    assert backbone_steps == {float(total_steps)} and meltr_steps == {float(meta_steps)}
    # MELTR's state is the trained one: it differs from a freshly built combiner with the same seed.
    epoch2 = _checkpoint_of_epoch(result, 2)
    assert epoch2["epoch"] == 1 and epoch2["counters"]["meta_steps"] == 2 * STEPS_PER_EPOCH
    moved = [not torch.equal(state["combiner"][k], epoch2["combiner"][k]) for k in state["combiner"]]
    assert any(moved)
    # Each rank got its own replay buffer and RNG back, so the run ends bit-identical to one never killed.
    for part in ("backbone", "combiner"):
        for key, value in uninterrupted[part].items():
            assert torch.equal(value, state[part][key]), (part, key)


def _checkpoint_of_epoch(result, epoch: int) -> dict:
    for checkpoint, metrics in result.best_checkpoints:
        if metrics["epoch"] == epoch:
            with checkpoint.as_directory() as d:
                return load_checkpoint(d)
    raise AssertionError(f"no checkpoint for epoch {epoch}: {[m['epoch'] for _, m in result.best_checkpoints]}")
