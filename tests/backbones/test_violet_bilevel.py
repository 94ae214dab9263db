"""A few MELTR bilevel steps (inner updates + meta steps with K = 1 Neumann term) on violet_tiny per task."""
from __future__ import annotations

import pytest
import torch
from _violet_common import make_batch, one_torch_thread, tiny  # noqa: F401 (autouse fixture)

from meltr_ray.backbones.violet.model import TASK_LOSSES
from meltr_ray.core.loop import build_trainer
from meltr_ray.core.meltr import build_combiner
from meltr_ray.recipes import get_recipe


def primary_loss(model, batch) -> float:
    """The primary loss in eval mode (no dropout; primary losses never see masks), so it is deterministic."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        value = float(model(batch, tasks=[model.primary_task])[model.primary_task])
    model.train(was_training)
    return value


@pytest.mark.parametrize("task", sorted(TASK_LOSSES))
def test_bilevel_steps_lower_the_primary_loss(task):
    model = tiny(task)
    batch = make_batch(task, batch=3)
    cfg = get_recipe("violet_demo").with_overrides({
        "backbone.task": task, "optim.backbone_lr": 1e-3, "optim.schedule": "constant", "meta.meta_every": 2,
        "meta.neumann_steps": 1})
    trainer = build_trainer(model, build_combiner(cfg.meltr, len(model.task_names)), cfg)   # starts at MTL
    phi_before = [p.detach().clone() for p in trainer.meta_params]
    before = primary_loss(model, batch)
    for _ in range(4):
        metrics = trainer.step(batch)
        assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert trainer.counters.meta_steps == 2 and trainer.counters.skipped_meta == 0
    assert any(not torch.equal(a, b.detach()) for a, b in zip(phi_before, trainer.meta_params))   # φ moved
    assert primary_loss(model, batch) < before
