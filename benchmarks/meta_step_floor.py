"""The physical floor of MELTR's meta step: what it cannot avoid doing, timed next to what it does.

Used by ``bench_meta_step.py --floor``. Per meta step the maths needs, at the post-update w:

* two forwards with no graph below the meta scope: ℓ_pri(A), and ℓ(B) with MELTR(ℓ(B));
* the products, as bare ``torch.autograd.grad`` calls: g = ∇_w L_outer, ∇_w L_inner with ``create_graph``,
  K Hessian-vector products (v_{j+1} = v_j − α·H v_j) and the mixed product ∇_φ⟨∇_w L_inner, Σ_j v_j⟩.

The floor is the sum of those two parts, run through the trainer's own scope and attention contexts but none of
its bookkeeping (finite checks, all-reduces, clipping, the MELTR optimizer step, diagnostics, metrics). In each
round the script times, interleaved: an MTL cycle (``meta_every`` steps), MELTR's ``meta_every`` inner steps, one
full ``meta_step`` and one floor evaluation, and reports the ratio to MTL the full cycle has and the ratio it
would have if the meta step cost only its floor.
"""
from __future__ import annotations

import statistics
import time

import torch

from meltr_ray.core.bilevel import regulariser


def floor_products(trainer, outer, inner_total, neumann_steps: int, lr: float) -> list:
    """g, ∇_w L_inner (create_graph), K HVPs and the mixed product: bare autograd, nothing else."""
    params, phi = trainer.scope_params, trainer.meta_params
    g = torch.autograd.grad(outer, params, retain_graph=True, allow_unused=True)
    v = [torch.zeros_like(p) if x is None else x.detach() for x, p in zip(g, params)]
    first = torch.autograd.grad(inner_total, params, create_graph=True, allow_unused=True)
    keep = [i for i, x in enumerate(first) if x is not None and x.requires_grad]   # as the core: no path, no term
    grads, wrt = [first[i] for i in keep], [params[i] for i in keep]
    v = [v[i] for i in keep]
    total = [x.clone() for x in v]
    for _ in range(neumann_steps):
        hv = torch.autograd.grad(grads, wrt, grad_outputs=v, retain_graph=True)
        v = [a - lr * h for a, h in zip(v, hv)]
        total = [t + a for t, a in zip(total, v)]
    return list(torch.autograd.grad(grads, phi, grad_outputs=total, allow_unused=True))


def floor_forwards(trainer, outer_batch, reg_batch):
    """ℓ_pri(A) and ℓ(B), MELTR(ℓ(B)) with no graph below the scope; returns (L_outer, L_inner)."""
    with trainer.attention_mode():
        primary = trainer.forward(trainer.model, outer_batch, tasks=[trainer.primary_task]).losses[
            trainer.primary_task]
        inner = trainer.forward(trainer.model, reg_batch)
    m = trainer.cfg.meta
    return primary + m.reg_weight * regulariser(inner.vector, inner.total, m.reg_form), inner.total


def _cpu_ms(fn, device) -> tuple[float, float]:
    """(wall ms, CPU ms) of ``fn()``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - wall) * 1e3, (time.process_time() - cpu) * 1e3


def time_floor(mtl_runner, meltr_runner, meta_every: int, rounds: int, device) -> dict:
    """Interleaved per-round times (ms, wall and CPU) of the MTL cycle, MELTR's parts and the floor."""
    trainer, batches = meltr_runner.trainer, meltr_runner.batches
    cfg = trainer.cfg.meta
    lr = cfg.neumann_lr if cfg.neumann_lr is not None else trainer.cfg.optim.backbone_lr
    parts = {k: {"wall": [], "cpu": []} for k in ("mtl_cycle", "inner_steps", "meta_step", "floor_forwards",
                                                   "floor_products")}

    def record(key, fn):
        wall, cpu = _cpu_ms(fn, device)
        parts[key]["wall"].append(wall)
        parts[key]["cpu"].append(cpu)

    for r in range(rounds):
        a, b = trainer.buffer.sample(), trainer.buffer.sample()
        held = {}

        def forwards():
            with trainer._only_scope_requires_grad():
                held["losses"] = floor_forwards(trainer, a, b)

        def products():
            with trainer._only_scope_requires_grad():
                floor_products(trainer, *held.pop("losses"), int(cfg.neumann_steps), lr)

        steps = [("mtl_cycle", lambda: mtl_runner.steps(meta_every)),
                 ("inner_steps", lambda: [trainer.inner_step(batches[(r + i) % len(batches)])
                                          for i in range(meta_every)]),
                 ("meta_step", lambda: trainer.meta_step(a, b))]
        for key, fn in steps[r % 3:] + steps[:r % 3]:
            record(key, fn)
        trainer._train_modes()
        record("floor_forwards", forwards)
        record("floor_products", products)
    return parts


def floor_report(parts: dict, clock: str, meta_every: int) -> list[str]:
    """Markdown lines: medians per part, and the cycle's ratio to MTL measured and at the floor."""
    med = {k: statistics.median(v[clock]) for k, v in parts.items()}
    rounds = range(len(parts["mtl_cycle"][clock]))
    pick = lambda k, i: parts[k][clock][i]  # noqa: E731
    measured = [(pick("inner_steps", i) + pick("meta_step", i)) / pick("mtl_cycle", i) for i in rounds]
    floor = [(pick("inner_steps", i) + pick("floor_forwards", i) + pick("floor_products", i))
             / pick("mtl_cycle", i) for i in rounds]
    floor_ms = med["floor_forwards"] + med["floor_products"]
    return [f"| part ({clock} time, median over {len(measured)} rounds) | ms |", "|---|---|",
            f"| MTL step (cycle / {meta_every}) | {med['mtl_cycle'] / meta_every:.1f} |",
            f"| MELTR inner step | {med['inner_steps'] / meta_every:.1f} |",
            f"| meta step, full | {med['meta_step']:.1f} |",
            f"| floor: two scoped forwards | {med['floor_forwards']:.1f} |",
            f"| floor: the products (g, ∇L_inner, K HVPs, mixed) | {med['floor_products']:.1f} |",
            f"| floor total | {floor_ms:.1f} ({floor_ms / med['meta_step']:.0%} of the meta step) |",
            "",
            f"cycle x MTL ({clock}): measured {statistics.median(measured):.2f}, "
            f"at the floor {statistics.median(floor):.2f} (median of per-round ratios)"]
