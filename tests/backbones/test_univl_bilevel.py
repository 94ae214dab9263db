"""A few MELTR bilevel steps (inner updates + meta steps, K = 1) on univl_tiny lower each task's primary loss."""
from __future__ import annotations

import pytest
import torch
from _univl_common import batch

from meltr_ray.config import JobConfig
from meltr_ray.core.meltr import stack_losses
from meltr_ray.run import build_run


def primary_loss(model, b) -> float:
    """The primary loss in eval mode (no dropout; primary losses see no masks), so it is deterministic."""
    model.eval()
    with torch.no_grad():
        value = float(model(b, tasks=[model.primary_task])[model.primary_task])
    model.train()
    return value


def job(task: str, seed: int, **overrides) -> JobConfig:
    return JobConfig().with_overrides({
        "backbone.name": "univl_tiny", "backbone.task": task, "meltr.preset": None, "meltr.d_model": 16,
        "meltr.d_ffn": 16, "meltr.d_scale": 8, "meltr.n_heads": 2, "meta.meta_every": 2, "meta.neumann_steps": 1,
        "optim.backbone_lr": 1e-3, "optim.schedule": "constant", "train.seed": seed, **overrides})


def run_with_positive_primary_weight(task: str, b: dict, **overrides):
    """MELTR's initial weights ∂MELTR/∂ℓ_t have random signs; with a negative primary weight the first inner
    steps *ascend* the primary loss until the meta steps turn it. The test is about the backbone training
    under the bilevel step, so it takes the first seed whose initial primary weight is positive."""
    for seed in range(50):
        run = build_run(job(task, seed, **overrides))
        with torch.no_grad():
            losses = stack_losses(run.model(b), run.trainer.task_names)
        if float(run.combiner.eval().task_weights(losses)[0]) > 0:
            run.combiner.train()
            return run
    raise AssertionError("no seed gave MELTR a positive initial primary weight")


@pytest.mark.parametrize("task", ["retrieval", "captioning", "sentiment"])
def test_bilevel_steps_lower_the_primary_loss(task):
    b = batch(task, size=3)
    run = run_with_positive_primary_weight(task, b)
    phi = [p.detach().clone() for p in run.trainer.meta_params]
    before = primary_loss(run.model, b)
    for _ in range(4):
        metrics = run.trainer.step(b)
        assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values()), metrics
    assert run.trainer.counters.meta_steps == 2 and run.trainer.counters.skipped_meta == 0
    assert any(not torch.equal(a, p.detach()) for a, p in zip(phi, run.trainer.meta_params))
    assert primary_loss(run.model, b) < before


def test_a_run_with_a_loss_subset_and_another_primary_combines_exactly_those_losses():
    """Supplementary Table 4's 'Ori.' row (five losses) and the sentiment task with Align primary: the run
    builds MELTR for the model's own loss list, primary first."""
    run = build_run(job("captioning", 0, **{"backbone.overrides": {
        "losses": ["joint", "align", "cmlm", "cmfm", "decoder"]}}))
    assert run.trainer.task_names == ["decoder", "joint", "align", "cmlm", "cmfm"]
    assert run.combiner.num_tasks == 5
    run.trainer.step(batch("captioning"))
    sentiment = build_run(job("sentiment", 0, **{"backbone.overrides": {"primary": "align"}}))
    assert sentiment.trainer.primary_task == "align" and sentiment.combiner.num_tasks == 9
