"""local_saver keeps the newest ``train.keep_checkpoints`` epochs plus the best one, and deletes nothing else."""
from __future__ import annotations

import pytest
import torch

from meltr_ray.config import JobConfig
from meltr_ray.core.checkpoint import load_checkpoint
from meltr_ray.core.loop import fit, local_saver
from meltr_ray.core.meltr import build_combiner

from toy_models import ToyMultiTask, toy_batches

TINY_MELTR = {"meltr.d_model": 8, "meltr.d_ffn": 8, "meltr.d_scale": 4, "meltr.n_heads": 2, "meta.meta_every": 2,
              "meta.neumann_steps": 1, "optim.backbone_lr": 1e-2}


def run(tmp_path, epochs: int, scores=None, saver_kwargs=None, **overrides) -> tuple[list, object]:
    """``epochs`` toy epochs saved by a local_saver; ``scores`` are what evaluate() returns, epoch by epoch."""
    torch.manual_seed(0)
    cfg = JobConfig().with_overrides({**TINY_MELTR, "train.epochs": epochs, **overrides})
    model, reports = ToyMultiTask(), []
    scores = list(scores or [])
    saver = local_saver(tmp_path / "ckpts", **(saver_kwargs or {}), report=lambda m, h: reports.append(m))
    evaluate = (lambda m: {"score": scores.pop(0)}) if scores else None
    fit(model, build_combiner(cfg.meltr, 3), cfg, lambda epoch: toy_batches(2, seed=epoch), evaluate=evaluate,
        save=saver, report=saver.report)
    return reports, saver


def folders(tmp_path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "ckpts").iterdir())


def test_keeps_the_newest_two_by_default(tmp_path):
    reports, _ = run(tmp_path, epochs=4)
    assert len(reports) == 4
    assert folders(tmp_path) == ["epoch_002", "epoch_003"]
    assert load_checkpoint(tmp_path / "ckpts" / "epoch_003")["epoch"] == 3


def test_train_keep_checkpoints_sets_how_many_and_zero_keeps_all(tmp_path):
    run(tmp_path / "three", epochs=5, **{"train.keep_checkpoints": 3})
    assert folders(tmp_path / "three") == ["epoch_002", "epoch_003", "epoch_004"]
    run(tmp_path / "all", epochs=3, **{"train.keep_checkpoints": 0})
    assert folders(tmp_path / "all") == ["epoch_000", "epoch_001", "epoch_002"]


@pytest.mark.parametrize("mode, best", [("max", "epoch_001"), ("min", "epoch_000")])
def test_the_best_epoch_by_the_metric_is_kept_too(tmp_path, mode, best):
    _, saver = run(tmp_path, epochs=5, scores=[3.0, 9.0, 4.0, float("nan"), 5.0],
                   saver_kwargs={"best_metric": "val_score", "mode": mode})
    assert folders(tmp_path) == sorted([best, "epoch_003", "epoch_004"])
    assert saver.best == tmp_path / "ckpts" / best
    assert saver.best_score == {"max": 9.0, "min": 3.0}[mode]


def test_the_best_moves_and_the_old_best_goes(tmp_path):
    _, saver = run(tmp_path, epochs=5, scores=[9.0, 1.0, 1.0, 1.0, 10.0], saver_kwargs={"best_metric": "val_score"})
    assert folders(tmp_path) == ["epoch_003", "epoch_004"] and saver.best.name == "epoch_004"


def test_a_metric_the_evaluation_does_not_return_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"best_metric 'val_r1' is not among the epoch's metrics .*val_score"):
        run(tmp_path, epochs=2, scores=[1.0, 2.0], saver_kwargs={"best_metric": "val_r1"})


def test_files_the_saver_did_not_write_are_left_alone(tmp_path):
    (tmp_path / "ckpts" / "epoch_050").mkdir(parents=True)
    (tmp_path / "ckpts" / "notes.txt").write_text("mine")
    run(tmp_path, epochs=4)
    assert folders(tmp_path) == ["epoch_002", "epoch_003", "epoch_050", "notes.txt"]


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="mode must be 'max' or 'min'"):
        local_saver(tmp_path, mode="maximum")
    with pytest.raises(ValueError, match="keep must be an integer >= 0"):
        local_saver(tmp_path, keep=-1)
    with pytest.raises(ValueError, match="train.keep_checkpoints must be an integer >= 0"):
        JobConfig().with_overrides({"train.keep_checkpoints": -2}).validate()
