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


def run_with_positive_primary_weight(recipe: str, task: str, batch_size: int = 4, **overrides):
    """``build_run`` of ``recipe`` for ``task`` and a fixed example batch, at the first seed whose MELTR gives the
    primary loss a positive initial weight ∂MELTR/∂ℓ_pri: MELTR's initial weights have random signs, and a
    negative one would make the first inner steps *ascend* the primary loss until the meta steps turn it (this
    test is about the backbone training under the bilevel step, not about MELTR's starting point)."""
    base = get_recipe(recipe).with_overrides({
        "backbone.task": task, "optim.backbone_lr": 1e-3, "optim.schedule": "constant", "meta.meta_every": 2,
        "meta.neumann_steps": 1, "train.batch_size": batch_size, **overrides})
    spec = get_spec(base.backbone.name)
    batch = spec.example_batch(task, batch_size, torch.Generator().manual_seed(0), **base.backbone.overrides)
    for seed in range(20):
        run = build_run(base.with_overrides({"train.seed": seed}), steps_per_epoch=10)
        with torch.no_grad():
            losses = stack_losses(run.model(batch), spec.task(task).losses)
        if float(run.combiner.eval().task_weights(losses)[0]) > 0:
            run.combiner.train()
            return run, batch
    raise AssertionError("no seed gave MELTR a positive initial primary weight")


def assert_bilevel_steps_lower_the_primary_loss(recipe: str, task: str, steps: int = 4) -> tuple[float, float]:
    run, batch = run_with_positive_primary_weight(recipe, task)
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
