"""A prototype of a lever on the meta step's cost that the core does not have — for measurement only.

**Shared forward.** The core's meta step (after the inner update) re-forwards two replay-buffer batches, A (the
primary loss) and B (the regulariser and L_inner = MELTR(ℓ(B))), through the whole backbone: with a small scope
those two full forwards are most of its cost. :class:`SharedForwardTrainer` instead, on a meta iteration:

1. forwards the *current* training batch once, with the full graph (math attention, for the double backward);
2. takes the inner gradient from it (``backward(retain_graph=True)``) but does not step yet;
3. computes the hypergradient with B = the current batch, reusing that forward's graph, and A either from the
   replay buffer (``outer="buffer"``: one extra forward, out-of-scope layers without a graph, as in the core) or the
   current batch as well (``outer="current"``: no extra forward at all);
4. steps the backbone, then MELTR.

What changes against the core: B is the current batch instead of a random buffered one, and the hypergradient is
evaluated at the pre-update w (one inner step earlier). The maths of the hypergradient itself (g, HVPs, mixed
product, scope) is the core's ``hypergradient``. Single process only (no global mode), no non-finite handling:
this is a benchmark prototype, not a training path.
"""
from __future__ import annotations

import math

from torch.nn.attention import SDPBackend, sdpa_kernel

from meltr_ray import distributed as dist_utils
from meltr_ray.bilevel import BilevelTrainer, regulariser
from meltr_ray.hypergrad import hypergradient
from meltr_ray.meltr import stack_losses


class SharedForwardTrainer(BilevelTrainer):
    """``BilevelTrainer`` whose meta iterations share the inner step's forward (see the module docstring)."""

    def __init__(self, *args, outer: str = "buffer", **kwargs):
        super().__init__(*args, **kwargs)
        if outer not in ("buffer", "current"):
            raise ValueError(f"outer must be 'buffer' or 'current', got {outer!r}")
        self.outer = outer

    @classmethod
    def from_trainer(cls, trainer: BilevelTrainer, outer: str = "buffer") -> "SharedForwardTrainer":
        return cls(trainer.model, trainer.combiner, trainer.cfg, trainer.backbone_optimizer, trainer.meltr_optimizer,
                   trainer.backbone_scheduler, trainer.meltr_scheduler, train_model=trainer.train_model,
                   device=trainer.device, outer=outer)

    def step(self, batch, meta_batch_fn=None) -> dict:
        self.counters.step += 1
        if self.counters.step % self.cfg.meta.meta_every or not self.meta_params:
            metrics = self.inner_step(batch)
        else:
            metrics = self.shared_step(batch)
        self.buffer.append(batch)
        self.counters.last = metrics
        return metrics

    def shared_step(self, batch) -> dict:
        meta = self.cfg.meta
        self.model.train()
        self.combiner.train(not self.cfg.meltr.eval_mode)
        with sdpa_kernel(SDPBackend.MATH):
            losses = self._losses(self.train_model, batch)
            vector = stack_losses(losses, self.task_names)
            total = self.combiner(vector)
            self.backbone_optimizer.zero_grad(set_to_none=True)
            total.backward(retain_graph=True)               # the inner gradient; the graph is reused below
            self.combiner.zero_grad(set_to_none=True)
            if self.outer == "buffer" and len(self.buffer):
                with self._only_scope_requires_grad():
                    outer_batch = self.buffer.sample()
                    primary = self._losses(self.model, outer_batch, tasks=[self.primary_task])[self.primary_task]
            else:
                primary = losses[self.primary_task]
            outer = primary + meta.reg_weight * regulariser(vector, total, meta.reg_form)
            grads = hypergradient(
                outer, total, self.scope_params, self.meta_params, neumann_steps=int(meta.neumann_steps),
                neumann_lr=meta.neumann_lr if meta.neumann_lr is not None else self.cfg.optim.backbone_lr,
                convention=meta.convention, include_direct=meta.include_direct)
        self.backbone_optimizer.step()
        if self.backbone_scheduler is not None:
            self.backbone_scheduler.step()
        grads = dist_utils.all_reduce_mean(list(grads))
        norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
        self._apply_meta_gradient(grads, norm)
        self.counters.meta_steps += 1
        return {"train_loss": float(total.detach()), "meta_grad_norm": norm}


def check_against_core(neumann_steps: int = 3) -> float:
    """Relative max difference between the prototype's φ-gradient and the core's ``hypergradient`` at the same w
    with A = B = the same batch (float64, MELTR in eval mode). Run ``python benchmarks/meta_step_levers.py``."""
    import copy

    import torch

    from meltr_ray.config import JobConfig
    from meltr_ray.loop import build_trainer
    from meltr_ray.meltr import build_combiner
    from bench_meta_step import SIZES, build_model, make_batches

    size = SIZES["cpu"]
    cfg = JobConfig().with_overrides({**size["meltr"], "meta.neumann_steps": neumann_steps, "meta.meta_every": 1,
                                      "meltr.eval_mode": True, "meta.clip_norm": None})
    torch.manual_seed(0)
    model = build_model(size).double()
    batch = {k: v.double() if v.is_floating_point() else v for k, v in make_batches(size, 1, "cpu")[0].items()}
    core = build_trainer(copy.deepcopy(model), build_combiner(cfg.meltr, 3).double(), cfg)
    core.combiner.eval()
    with core._meta_context():
        outer, inner, _ = core.meta_losses(batch, batch)
        expected = hypergradient(outer, inner, core.scope_params, core.meta_params, neumann_steps=neumann_steps,
                                 neumann_lr=cfg.optim.backbone_lr)
    shared = SharedForwardTrainer.from_trainer(
        build_trainer(copy.deepcopy(model), copy.deepcopy(core.combiner), cfg), outer="current")
    captured = []
    shared._apply_meta_gradient = lambda grads, norm: captured.append(grads)
    shared.step(batch)
    got, ref = (torch.cat([g.reshape(-1) for g in gs]) for gs in (captured[0], expected))
    return float((got - ref).abs().max() / ref.abs().max())


if __name__ == "__main__":
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    for k in (0, 3):
        print(f"K={k}: shared-forward prototype vs core hypergradient, relative max difference "
              f"{check_against_core(k):.1e}")
