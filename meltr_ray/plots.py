"""What MELTR learned, as pictures (supplementary Fig. 1 and Fig. 3), from a checkpoint.

* **Fig. 1** — ∂MELTR/∂ℓ_t against the loss scale: for each task t, sweep ℓ_t over a log range with the other
  losses held at a reference value and plot the effective weight ∂MELTR/∂ℓ_t (:meth:`LossCombiner.task_weights`).
  One panel per task, all on one y-axis; MTL's weight (1 for every task) is the dashed line, and the band is
  the range of ℓ_t the run actually saw in the checkpoint's epoch — outside it the curve is extrapolation.
* **Fig. 3** — MELTR's output surface over two losses (the others at the reference) next to MTL's plane
  ℓ_a + ℓ_b + const, on one z-scale and one colour scale, and their difference MELTR − MTL as a map.

Every figure says which checkpoint it shows (experiment, trial, epoch, step) and where the other losses were
held. The checkpoint holds MELTR's state (``state["combiner"]``), the job config (``state["config"]``), the task
names (``state["task_names"]``), and the per-task range of the training losses of its epoch on rank 0
(``state["observed_losses"]``: ``{task: {"min", "mean", "max"}}``); by default the other losses are held at those
epoch means. matplotlib runs on the Agg backend.
"""
from __future__ import annotations

import math
import os
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .config import JobConfig
from .core.checkpoint import load_checkpoint
from .core.meltr import MTLSum, build_combiner

TRAIN_RUN_PREFIX = "train-"          # the Train run of Tune trial <id> is named train-<id> (cluster/driver.py)
TRAIN_RUNS_SUFFIX = "__train_runs"   # … and lives in <experiment>__train_runs (cluster/tuner.py)


# ---- what the checkpoint is ------------------------------------------------------------------------------
@dataclass
class CheckpointInfo:
    """Where a checkpoint comes from and what the run saw, for figure captions."""
    name: str                          # the checkpoint folder, e.g. epoch_003
    trial: str | None = None           # Tune trial id (from the Train run folder train-<id>)
    experiment: str | None = None
    epoch: int | None = None           # 1-based, as reported to Tune
    epochs: int | None = None
    step: int | None = None
    combiner: str = "meltr"
    observed: dict = field(default_factory=dict)   # {task: {"min", "mean", "max"}}

    def caption(self) -> str:
        parts = [f"checkpoint {self.name}"]
        if self.experiment:
            parts.append(f"experiment {self.experiment}")
        parts.append(f"trial {self.trial}" if self.trial else "no Tune trial")
        if self.epoch is not None:
            parts.append(f"epoch {self.epoch}" + (f"/{self.epochs}" if self.epochs else ""))
        if self.step is not None:
            parts.append(f"step {self.step}")
        return " · ".join(parts)


def checkpoint_info(path: str | os.PathLike, state: dict) -> CheckpointInfo:
    """Caption facts from the checkpoint's path (``<exp>__train_runs/train-<trial>/epoch_NNN``) and state."""
    folder = Path(path)
    folder = folder.parent if folder.is_file() else folder
    run, parent = folder.parent.name, folder.parent.parent.name
    cfg = state.get("config") or {}
    epoch = state.get("epoch")
    return CheckpointInfo(
        name=folder.name,
        trial=run[len(TRAIN_RUN_PREFIX):] if run.startswith(TRAIN_RUN_PREFIX) else None,
        experiment=parent[: -len(TRAIN_RUNS_SUFFIX)] if parent.endswith(TRAIN_RUNS_SUFFIX) else None,
        epoch=None if epoch is None else int(epoch) + 1,
        epochs=cfg.get("train", {}).get("epochs"),
        step=(state.get("counters") or {}).get("step"),
        combiner=cfg.get("meltr", {}).get("combiner", "meltr"),
        observed=dict(state.get("observed_losses") or {}))


# ---- the combiner and the numbers ------------------------------------------------------------------------
def combiner_from_state(state: dict, source: str = "the checkpoint"):
    """(MELTR in eval mode, task names) rebuilt from a checkpoint's config (legacy defaults filled, see
    :func:`meltr_ray.config.with_legacy_defaults`) and state dict."""
    cfg = JobConfig.from_saved(state["config"], source).meltr
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


def held_values(task_names, reference: dict | float | str | None = "observed", observed: dict | None = None) -> dict:
    """``{task: value}`` the losses not being swept are held at.

    ``"observed"`` (or ``None``): each task's mean training loss in the checkpoint's epoch (1.0 for a task the
    checkpoint has no record of); a number: that value for every task; a dict: per task (1.0 where missing).
    """
    if reference is None or reference == "observed":
        observed = observed or {}
        return {t: float(observed[t]["mean"]) if t in observed else 1.0 for t in task_names}
    if isinstance(reference, dict):
        return {t: float(reference.get(t, 1.0)) for t in task_names}
    return {t: float(reference) for t in task_names}


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


def output_surface(combiner, task_names, a: int, b: int, grid, reference: dict | float = 1.0,
                   grid_b=None) -> np.ndarray:
    """Combiner output over ``grid × grid_b`` values of losses ``a`` and ``b`` (others at ``reference``);
    ``grid_b`` defaults to ``grid``."""
    base = reference_losses(task_names, reference)
    la, lb = np.meshgrid(grid, grid if grid_b is None else grid_b, indexing="ij")
    batch = base.repeat(la.size, 1)
    batch[:, a] = torch.as_tensor(la.ravel(), dtype=batch.dtype)
    batch[:, b] = torch.as_tensor(lb.ravel(), dtype=batch.dtype)
    with torch.no_grad():
        return combiner(batch).reshape(la.shape).numpy()


def sweep_scales(observed: dict, points: int = 80) -> np.ndarray:
    """Log-spaced loss scales from 0.01 to 20, widened to cover every observed loss by a factor 3."""
    lows = [r["min"] for r in observed.values() if r["min"] > 0]
    highs = [r["max"] for r in observed.values()]
    low = min([0.01, *(x / 3 for x in lows)])
    high = max([20.0, *(x * 3 for x in highs)])
    return np.logspace(math.log10(low), math.log10(high), points)


def surface_grid(observed_range: dict | None, points: int = 40) -> np.ndarray:
    """0 … 2·(largest observed loss) for one axis of the surface (0.05 … 5 without a record)."""
    if not observed_range:
        return np.linspace(0.05, 5.0, points)
    return np.linspace(0.0, 2.0 * max(observed_range["max"], 1e-3), points)


# ---- figures -------------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _held_text(held: dict, swept=(), from_epoch: bool = False, recorded: bool = True) -> str:
    values = ", ".join(f"{t}={v:.3g}" for t, v in held.items() if t not in swept)
    text = f"other losses held at {values}" + (" (their means in this epoch)" if from_epoch else "")
    text = text if recorded else text + " · no training-loss record in this checkpoint"
    return textwrap.fill(text, 150)


def _held_from_epoch(task_names, reference, observed: dict) -> bool:
    """True when every held value is the task's observed epoch mean."""
    return (reference is None or reference == "observed") and all(t in observed for t in task_names)


def task_weight_figure(combiner, task_names, info: CheckpointInfo | None = None, scales=None,
                       reference: dict | float | str | None = "observed"):
    """Supplementary Fig. 1 as a matplotlib Figure: one panel per task, ∂MELTR/∂ℓ_t against ℓ_t (log x),
    y shared by all panels; the observed range of ℓ_t shaded, its epoch mean dotted, MTL's weight 1 dashed."""
    plt = _pyplot()
    info = info or CheckpointInfo(name="(unnamed)")
    held = held_values(task_names, reference, info.observed)
    scales = sweep_scales(info.observed) if scales is None else np.asarray(scales)
    cols = min(len(task_names), 4)
    rows = math.ceil(len(task_names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols + 0.4, 2.8 * rows + 1.2), sharex=True, sharey=True,
                             layout="constrained", squeeze=False)
    curves = weight_curves(combiner, task_names, scales, held)
    for ax, name in zip(axes.flat, task_names):
        _weight_panel(ax, name, scales, curves[name], info.observed.get(name))
    for ax in axes.flat[len(task_names):]:
        ax.set_visible(False)
    mtl_note = _mtl_reference(axes.flat[: len(task_names)])
    for ax in axes[:, 0]:
        ax.set_ylabel("∂MELTR/∂ℓ_t")
    for ax in axes[-1, :]:
        ax.set_xlabel("loss scale ℓ_t")
    from_epoch = _held_from_epoch(task_names, reference, info.observed)
    fig.suptitle(f"{info.combiner.upper()} task weight vs loss scale{mtl_note}\n{info.caption()}\n"
                 f"{_held_text(held, from_epoch=from_epoch, recorded=bool(info.observed))}", fontsize=9)
    _legend(fig, axes.flat[0])
    return fig


def _weight_panel(ax, name: str, scales, weights, observed_range: dict | None) -> None:
    ax.plot(scales, weights, color="C0", label="∂MELTR/∂ℓ_t")
    ax.axhline(0.0, color="black", linewidth=0.5)
    if observed_range:
        ax.axvspan(observed_range["min"], observed_range["max"], color="C1", alpha=0.25,
                   label="ℓ_t seen in this epoch")
        ax.axvline(observed_range["mean"], color="C1", linestyle=":", linewidth=1.0, label="epoch mean")
    ax.set_xscale("log")
    ax.set_title(name, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)


def _mtl_reference(axes) -> str:
    """Draw MTL's weight (1 for every task) when it fits the shared scale without crushing the curves to less
    than half the height; else say in the title where it is."""
    low, high = axes[0].get_ylim()
    if high >= 0.5 and low <= 1.0:
        for ax in axes:
            ax.axhline(1.0, color="grey", linestyle="--", linewidth=0.8, label="MTL (sum): 1")
        return ""
    return " (MTL weights every task 1: off this scale)"


def _legend(fig, ax) -> None:
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=8, frameon=False)


def surface_figure(combiner, task_names, info: CheckpointInfo | None = None, tasks=None,
                   reference: dict | float | str | None = "observed", grid=None):
    """Supplementary Fig. 3 as a Figure: MELTR's and MTL's output over losses a and b on one z- and colour
    scale (3-D), and MELTR − MTL as a map with the observed loss ranges boxed and the epoch means marked."""
    plt = _pyplot()
    info = info or CheckpointInfo(name="(unnamed)")
    a, b = _task_pair(task_names, tasks)
    held = held_values(task_names, reference, info.observed)
    names = task_names[a], task_names[b]
    grids = [surface_grid(info.observed.get(n)) if grid is None else np.asarray(grid) for n in names]
    meltr = output_surface(combiner, task_names, a, b, grids[0], held, grids[1])
    mtl = output_surface(MTLSum(len(task_names)), task_names, a, b, grids[0], held, grids[1])
    mesh = np.meshgrid(*grids, indexing="ij")
    fig = plt.figure(figsize=(13, 5.4), layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[2, 1])
    _surface_pair(left, *mesh, meltr, mtl, names, info.combiner.upper())
    _difference_map(right, *mesh, meltr - mtl, names, info)
    from_epoch = _held_from_epoch([t for t in task_names if t not in names], reference, info.observed)
    fig.suptitle(f"{info.combiner.upper()} vs MTL output over ℓ_{names[0]} and ℓ_{names[1]}\n{info.caption()}\n"
                 f"{_held_text(held, names, from_epoch, bool(info.observed))}", fontsize=9)
    return fig


def _surface_pair(fig, la, lb, meltr, mtl, names, label: str) -> None:
    """Two 3-D surfaces sharing z-limits and one colour normalisation (so heights compare across panels)."""
    from matplotlib.colors import Normalize
    from matplotlib.ticker import MaxNLocator
    low, high = float(min(meltr.min(), mtl.min())), float(max(meltr.max(), mtl.max()))
    norm = Normalize(low, high)
    axes = fig.subplots(1, 2, subplot_kw={"projection": "3d"})
    for ax, title, z in zip(axes, (label, "MTL (sum)"), (meltr, mtl)):
        mappable = ax.plot_surface(la, lb, z, cmap="viridis", norm=norm, linewidth=0, antialiased=True)
        ax.set_zlim(low, high)
        ax.set_xlabel(f"ℓ_{names[0]}", labelpad=8)
        ax.set_ylabel(f"ℓ_{names[1]}", labelpad=18)
        ax.set_zlabel("combined loss", labelpad=6)
        ax.set_box_aspect(None, zoom=0.78)        # room inside the axes for the z label (3-D labels clip)
        # inside the axes: a 3-D axes' own title floats above the box the layout engine reserves
        ax.text2D(0.5, 0.98, title, transform=ax.transAxes, ha="center", va="top", fontsize=10)
        ax.tick_params(labelsize=7, pad=0)
        for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
            axis.set_major_locator(MaxNLocator(5))
    fig.colorbar(mappable, ax=axes, shrink=0.5, location="bottom", label="combined loss (one scale for both)")


def _difference_map(fig, la, lb, diff, names, info: CheckpointInfo) -> None:
    """MELTR − MTL over the grid, a diverging map centred on 0 (0 contour drawn when it crosses)."""
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.patches import Rectangle
    from matplotlib.ticker import MaxNLocator
    ax = fig.subplots()
    low, high = float(diff.min()), float(diff.max())
    if low < 0 < high:          # red where MELTR is above MTL, blue below, white at equality
        image = ax.contourf(la, lb, diff, levels=21, cmap="RdBu_r", norm=TwoSlopeNorm(0.0, low, high))
        ax.contour(la, lb, diff, levels=[0.0], colors="black", linewidths=0.8)
    else:                       # one sign everywhere: a sequential map over the range actually present
        image = ax.contourf(la, lb, diff, levels=21, cmap="Blues_r" if high <= 0 else "Reds")
    ra, rb = (info.observed.get(n) for n in names)
    if ra and rb:
        ax.add_patch(Rectangle((ra["min"], rb["min"]), ra["max"] - ra["min"], rb["max"] - rb["min"], fill=False,
                               edgecolor="black", linestyle="--", label="losses seen in this epoch"))
        ax.plot([ra["mean"]], [rb["mean"]], "k+", markersize=10, label="epoch means")
        ax.legend(fontsize=7, loc="upper right")
    ax.set_xlabel(f"ℓ_{names[0]}")
    ax.set_ylabel(f"ℓ_{names[1]}")
    ax.set_title(f"{info.combiner.upper()} − MTL", fontsize=10)
    fig.colorbar(image, ax=ax, location="bottom", ticks=MaxNLocator(6), label="difference of combined losses")


def _task_pair(task_names, tasks) -> tuple[int, int]:
    if tasks is None:
        if len(task_names) < 2:
            raise ValueError("the output surface needs at least two tasks")
        return 0, len(task_names) - 1
    unknown = [t for t in tasks if t not in task_names]
    if len(tasks) != 2 or unknown:
        raise ValueError(f"tasks must be two of {task_names}, got {list(tasks)}")
    return task_names.index(tasks[0]), task_names.index(tasks[1])


def _save(fig, path: str) -> str:
    plt = _pyplot()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def plot_task_weights(combiner, task_names, path: str, scales=None, reference: dict | float | str | None = "observed",
                      info: CheckpointInfo | None = None) -> str:
    """Write supplementary Fig. 1 (:func:`task_weight_figure`) to ``path``."""
    return _save(task_weight_figure(combiner, task_names, info, scales, reference), path)


def plot_surface(combiner, task_names, path: str, tasks=None, grid=None,
                 reference: dict | float | str | None = "observed", info: CheckpointInfo | None = None) -> str:
    """Write supplementary Fig. 3 (:func:`surface_figure`) to ``path``."""
    return _save(surface_figure(combiner, task_names, info, tasks, reference, grid), path)


def inspect_checkpoint(checkpoint: str, out_dir: str, tasks=None,
                       reference: dict | float | str | None = "observed") -> list[str]:
    """Write ``meltr_task_weights.png`` (Fig. 1) and ``meltr_surface.png`` (Fig. 3) for a checkpoint."""
    state = load_checkpoint(checkpoint)
    combiner, names = combiner_from_state(state, f"checkpoint {checkpoint}")
    info = checkpoint_info(checkpoint, state)
    os.makedirs(out_dir, exist_ok=True)
    paths = [plot_task_weights(combiner, names, os.path.join(out_dir, "meltr_task_weights.png"),
                               reference=reference, info=info)]
    if len(names) >= 2:
        paths.append(plot_surface(combiner, names, os.path.join(out_dir, "meltr_surface.png"), tasks=tasks,
                                  reference=reference, info=info))
    return paths
