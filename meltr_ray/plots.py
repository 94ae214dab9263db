"""What MELTR learned, as pictures (supplementary Fig. 1 and Fig. 3), from a checkpoint.

* **Fig. 1** — ∂MELTR/∂ℓ_t against the loss scale: for each task t, sweep ℓ_t over a log range with the other
  losses held at a reference value and plot the effective weight ∂MELTR/∂ℓ_t (:meth:`LossCombiner.task_weights`).
  A flat line per task is a fixed weighting; MELTR's curves bend: it re-weights by how large a loss is.
* **Fig. 3** — MELTR's output surface over two losses (the others at the reference) next to MTL's, which is
  the plane ℓ_a + ℓ_b + const.

The checkpoint holds MELTR's state (``state["combiner"]``), the job config (``state["config"]``) and, when
written by the Ray worker, the task names (``state["task_names"]``). matplotlib runs on the Agg backend.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from .core.checkpoint import load_checkpoint
from .config import JobConfig
from .core.meltr import MTLSum, build_combiner


def combiner_from_state(state: dict):
    """(MELTR in eval mode, task names) rebuilt from a checkpoint's config and state dict."""
    cfg = JobConfig.from_dict(state["config"]).meltr
    weights = state["combiner"]
    names = state.get("task_names")
    num_tasks = len(names) if names else _num_tasks(weights)
    combiner = build_combiner(cfg, num_tasks)
    combiner.load_state_dict(weights)
    combiner.eval()
    return combiner, list(names or [f"task_{i}" for i in range(num_tasks)])


def _num_tasks(weights: dict) -> int:
    for key, value in weights.items():
        if "task_emb" in key or "task_embedding" in key:
            return int(value.shape[0])
    raise ValueError("checkpoint has no task_names and no task embedding to count the tasks from")


def reference_losses(task_names, reference: dict | float = 1.0) -> torch.Tensor:
    """The point the sweeps go through: a value per task (``{task: value}``) or one value for all."""
    if isinstance(reference, dict):
        return torch.tensor([float(reference.get(t, 1.0)) for t in task_names])
    return torch.full((len(task_names),), float(reference))


def weight_curves(combiner, task_names, scales, reference: dict | float = 1.0) -> dict:
    """``{task: ∂MELTR/∂ℓ_t at ℓ_t = s for s in scales}`` with the other losses at ``reference``."""
    base = reference_losses(task_names, reference)
    curves = {}
    for t, name in enumerate(task_names):
        batch = base.repeat(len(scales), 1)
        batch[:, t] = torch.as_tensor(scales, dtype=batch.dtype)
        curves[name] = combiner.task_weights(batch)[:, t].numpy()
    return curves


def output_surface(combiner, task_names, a: int, b: int, grid, reference: dict | float = 1.0) -> np.ndarray:
    """Combiner output over ``grid × grid`` values of losses ``a`` and ``b`` (others at ``reference``)."""
    base = reference_losses(task_names, reference)
    la, lb = np.meshgrid(grid, grid, indexing="ij")
    batch = base.repeat(la.size, 1)
    batch[:, a] = torch.as_tensor(la.ravel(), dtype=batch.dtype)
    batch[:, b] = torch.as_tensor(lb.ravel(), dtype=batch.dtype)
    with torch.no_grad():
        return combiner(batch).reshape(la.shape).numpy()


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_task_weights(combiner, task_names, path: str, scales=None, reference: dict | float = 1.0) -> str:
    """Supplementary Fig. 1: ∂MELTR/∂ℓ_t against loss scale, one line per task."""
    plt = _pyplot()
    scales = np.logspace(-2, np.log10(20.0), 60) if scales is None else np.asarray(scales)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, weights in weight_curves(combiner, task_names, scales, reference).items():
        ax.plot(scales, weights, label=name)
    ax.set(xscale="log", xlabel="loss scale ℓ_t", ylabel="∂MELTR/∂ℓ_t", title="MELTR task weight vs loss scale")
    ax.axhline(0.0, color="grey", linewidth=0.5)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_surface(combiner, task_names, path: str, tasks=None, grid=None, reference: dict | float = 1.0) -> str:
    """Supplementary Fig. 3: MELTR's output over two losses (left) next to MTL's plane (right)."""
    plt = _pyplot()
    a, b = _task_pair(task_names, tasks)
    grid = np.linspace(0.05, 5.0, 30) if grid is None else np.asarray(grid)
    la, lb = np.meshgrid(grid, grid, indexing="ij")
    surfaces = [("MELTR", output_surface(combiner, task_names, a, b, grid, reference)),
                ("MTL (sum)", output_surface(MTLSum(len(task_names)), task_names, a, b, grid, reference))]
    fig = plt.figure(figsize=(10, 4.5))
    for i, (title, z) in enumerate(surfaces, start=1):
        ax = fig.add_subplot(1, 2, i, projection="3d")
        ax.plot_surface(la, lb, z, cmap="viridis", linewidth=0)
        ax.set(xlabel=task_names[a], ylabel=task_names[b], zlabel="combined loss", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _task_pair(task_names, tasks) -> tuple[int, int]:
    if tasks is None:
        if len(task_names) < 2:
            raise ValueError("the output surface needs at least two tasks")
        return 0, len(task_names) - 1
    unknown = [t for t in tasks if t not in task_names]
    if len(tasks) != 2 or unknown:
        raise ValueError(f"tasks must be two of {task_names}, got {list(tasks)}")
    return task_names.index(tasks[0]), task_names.index(tasks[1])


def inspect_checkpoint(checkpoint: str, out_dir: str, tasks=None, reference: dict | float = 1.0) -> list[str]:
    """Write ``meltr_task_weights.png`` (Fig. 1) and ``meltr_surface.png`` (Fig. 3) for a checkpoint."""
    state = load_checkpoint(checkpoint)
    combiner, names = combiner_from_state(state)
    os.makedirs(out_dir, exist_ok=True)
    paths = [plot_task_weights(combiner, names, os.path.join(out_dir, "meltr_task_weights.png"),
                               reference=reference)]
    if len(names) >= 2:
        paths.append(plot_surface(combiner, names, os.path.join(out_dir, "meltr_surface.png"), tasks=tasks,
                                  reference=reference))
    return paths
