"""A few MELTR bilevel steps (inner updates + meta steps, K = 1) built by ``build_run`` on one fixed example
batch: the primary loss must go down. Shared by the All-in-one and ALPRO tests."""
from __future__ import annotations

import torch

from meltr_ray.backbones import get_spec
from meltr_ray.core.meltr import stack_losses
from meltr_ray.recipes import get_recipe
from meltr_ray.run import build_run


def primary_loss(run, batch) -> float:
    """The primary loss in eval mode (no dropout; the primary losses draw no masks), so it is deterministic."""
    model, primary = run.model, run.spec.task(run.cfg.backbone.task).primary
    was_training = model.training
    model.eval()
    with torch.no_grad():
        value = float(model(batch, tasks=[primary])[primary])
    model.train(was_training)
    return value


def run_on_example_batch(recipe: str, task: str, batch_size: int = 4, **overrides):
    """``build_run`` of ``recipe`` for ``task`` (MELTR starts as MTL: every task weight 1) and a fixed example
    batch of the backbone's spec."""
    cfg = get_recipe(recipe).with_overrides({
        "backbone.task": task, "optim.backbone_lr": 1e-3, "optim.schedule": "constant", "meta.meta_every": 2,
        "meta.neumann_steps": 1, "train.batch_size": batch_size, **overrides})
    spec = get_spec(cfg.backbone.name)
    batch = spec.example_batch(task, batch_size, torch.Generator().manual_seed(0), **cfg.backbone.overrides)
    run = build_run(cfg, steps_per_epoch=10)
    with torch.no_grad():
        losses = stack_losses(run.model(batch), spec.task(task).losses)
    weights = run.combiner.eval().task_weights(losses)
    run.combiner.train()
    assert torch.allclose(weights, torch.ones_like(weights)), weights          # the MTL start
    return run, batch


def assert_bilevel_steps_lower_the_primary_loss(recipe: str, task: str, steps: int = 4) -> tuple[float, float]:
    run, batch = run_on_example_batch(recipe, task)
    phi = [p.detach().clone() for p in run.trainer.meta_params]
    before = primary_loss(run, batch)
    for _ in range(steps):
        metrics = run.trainer.step(batch)
        assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values()), metrics
    counters = run.trainer.counters
    assert counters.meta_steps == steps // 2 and counters.skipped_meta == 0 and counters.skipped_inner == 0
    assert any(not torch.equal(a, b.detach()) for a, b in zip(phi, run.trainer.meta_params))     # φ moved
    after = primary_loss(run, batch)
    assert after < before, (before, after)
    return before, after
