"""Finite-difference hypergradients against the exact ones, per radius R, on every test-sized backbone.

    python benchmarks/bench_fd_radius.py                         # R ∈ {1e-1, 1e-2, 1e-3, 1e-4}, K = 1, α = 0.1
    python benchmarks/bench_fd_radius.py --radii 1e-3,3e-3 --seeds 0,1,2 --neumann-lr 3e-5 --start mtl
    ... --json out.json                                          # the numbers as JSON too

``meta.products="finite_difference"`` takes the Hessian-vector products H·v and the mixed product
∇_φ⟨∇_w L_inner, p⟩ as central differences of first-order gradients at w ± εu, ε = R/‖u‖ (so every step in w
has length R). Truncation error grows like R², float32 rounding like 1/R; this measures where the two meet.

Per (variant, task) of :func:`meltr_ray.backbones.tiny_variants` and seed: the backbone in train mode (its
random masking and dropout on) and a ``meltr_tiny`` MELTR in train mode (dropout 0.1); L_outer = the primary
loss on one example batch, L_inner = MELTR(ℓ) on another, w = the spec's default meta scope, K Neumann terms
of step α, float32. Exact (double backward) and finite differences start L_inner from the same RNG state, and
the finite differences replay it for every ± evaluation (``hypergradient``'s own replay), so both see the same
masks. Reported: ‖h_FD − h_exact‖ / ‖h_exact‖ per radius, median over seeds (worst seed in brackets).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from meltr_ray.backbones import create_backbone, get_spec, import_plugin, tiny_variants  # noqa: E402
from meltr_ray.core.hypergrad import hypergradient, select_scope  # noqa: E402
from meltr_ray.core.meltr import MELTR, stack_losses  # noqa: E402

RADII = (1e-1, 1e-2, 1e-3, 1e-4)
BATCH = 2


def cases() -> list[tuple[str, str]]:
    """Every (tiny variant, task) in the registry."""
    return [(name, task) for name in tiny_variants() for task in get_spec(name).tasks]


def build_case(name: str, task: str, seed: int, start: str, dtype=torch.float32):
    """(backbone, MELTR, outer batch, inner batch, scope, losses) in ``dtype``, both in train mode."""
    spec = get_spec(name)
    losses = list(spec.tasks[task].losses)
    torch.manual_seed(seed)
    model = create_backbone(name, task=task).to(dtype).train()
    meltr = MELTR.from_preset("meltr_tiny", num_tasks=len(losses), start=start).to(dtype).train()
    outer_batch = _cast(spec.example_batch(task, BATCH, torch.Generator().manual_seed(seed + 101)), dtype)
    inner_batch = _cast(spec.example_batch(task, BATCH, torch.Generator().manual_seed(seed + 202)), dtype)
    scope = select_scope(model, spec.meta_scope(model))
    return model, meltr, outer_batch, inner_batch, scope, losses


def _cast(batch: dict, dtype) -> dict:
    """Floating-point tensors of the batch in ``dtype`` (ids and labels untouched)."""
    return {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}


def hypergradients(case, radii, steps: int, lr: float, rng_seed: int) -> tuple[torch.Tensor, dict]:
    """The exact hypergradient and the finite-difference one per radius, all from the same RNG state."""
    model, meltr, outer_batch, inner_batch, scope, losses = case
    phi = list(meltr.parameters())

    def once(products: str, radius: float) -> torch.Tensor:
        torch.manual_seed(rng_seed)
        with sdpa_kernel(SDPBackend.MATH):          # double backward everywhere, as the trainer's meta step
            outer = model(outer_batch, tasks=[losses[0]])[losses[0]]

            def inner():
                return meltr(stack_losses(model(inner_batch), losses))
            grads = hypergradient(outer, inner() if products == "exact" else inner, scope, phi,
                                  neumann_steps=steps, neumann_lr=lr, products=products, fd_radius=radius)
        return torch.cat([g.flatten() for g in grads]).double()

    exact = once("exact", 1.0)                       # the radius is unused by exact products
    return exact, {radius: once("finite_difference", radius) for radius in radii}


def relative_errors(name: str, task: str, radii, seeds, steps: int, lr: float, start: str,
                    dtype=torch.float32) -> dict:
    """{radius: [‖h_FD − h_exact‖ / ‖h_exact‖ per seed]}."""
    errors = {radius: [] for radius in radii}
    for seed in seeds:
        exact, fd = hypergradients(build_case(name, task, seed, start, dtype), radii, steps, lr, rng_seed=seed + 7)
        for radius, value in fd.items():
            errors[radius].append(float((value - exact).norm() / exact.norm()))
    return errors


def _cell(values: list) -> str:
    """``median (worst)`` over seeds; one value alone."""
    median = statistics.median(values)
    return f"{median:.1e}" if len(values) == 1 else f"{median:.1e} ({max(values):.1e})"


def table(rows: dict, radii) -> str:
    """Markdown: one row per variant/task, one column per radius (median over seeds, worst in brackets); the
    last rows count the cases under 1e-2 by median and by worst seed."""
    head = "| backbone / task | " + " | ".join(f"R = {r:g}" for r in radii) + " |"
    lines = [head, "|---|" + "---|" * len(radii)]
    for key, errors in rows.items():
        lines.append(f"| {key} | " + " | ".join(_cell(errors[r]) for r in radii) + " |")
    for label, pick in (("median", statistics.median), ("worst seed", max)):
        good = [sum(pick(errors[r]) < 1e-2 for errors in rows.values()) for r in radii]
        lines.append(f"| cases < 1e-2 ({label}) | " + " | ".join(f"{g}/{len(rows)}" for g in good) + " |")
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--radii", default=",".join(f"{r:g}" for r in RADII), help="comma-separated radii R")
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds (model, MELTR, batches, masks)")
    p.add_argument("--neumann-steps", type=int, default=1, help="K")
    p.add_argument("--neumann-lr", type=float, default=0.1, help="α, the Neumann step")
    p.add_argument("--start", default="official", choices=["official", "mtl"], help="MELTR start")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                   help="float64 separates float32 rounding from the non-smoothness of the losses")
    p.add_argument("--only", help="comma-separated backbone names to run (default: every tiny variant)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--plugin", action="append", default=[], help="import a backbone plugin module first")
    p.add_argument("--json", help="also write the numbers here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    for plugin in args.plugin:
        import_plugin(plugin)
    radii = [float(r) for r in args.radii.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    started, rows = time.time(), {}
    dtype = getattr(torch, args.dtype)
    torch.set_default_dtype(dtype)                  # tensors the backbones create inside forward follow it
    only = set(args.only.split(",")) if args.only else None
    for name, task in cases():
        if only and name not in only:
            continue
        try:
            rows[f"{name} / {task}"] = relative_errors(name, task, radii, seeds, args.neumann_steps,
                                                       args.neumann_lr, args.start, dtype)
        except RuntimeError as error:
            if dtype == torch.float32:
                raise
            print(f"{name} / {task}: skipped, not runnable in {args.dtype} ({str(error).splitlines()[0]})")
            continue
        print(f"{name} / {task}: " + ", ".join(f"{r:g}: {_cell(e)}" for r, e in rows[f'{name} / {task}'].items()),
              flush=True)
    print(f"\nK = {args.neumann_steps}, α = {args.neumann_lr:g}, start = {args.start}, seeds {seeds}, {args.dtype}, "
          f"torch {torch.__version__}, {time.time() - started:.0f} s\n")
    print(table(rows, radii))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "errors": {k: {f"{r:g}": e for r, e in v.items()}
                                                      for k, v in rows.items()}}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
