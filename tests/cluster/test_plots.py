"""`meltr-ray inspect CHECKPOINT`: PNGs of what MELTR learned (supplementary Fig. 1 and Fig. 3).

The figures are checked as matplotlib objects (titles, shared limits, the marked loss ranges, text that does
not overlap once drawn), never as pixels.
"""
from __future__ import annotations

import itertools

import matplotlib.text
import numpy as np
import pytest
import torch

from meltr_ray.cli import main
from meltr_ray.config import JobConfig
from meltr_ray.core.checkpoint import load_checkpoint, save_checkpoint
from meltr_ray.core.loop import fit, local_saver
from meltr_ray.core.meltr import MTLSum, build_combiner
from meltr_ray.plots import (checkpoint_info, combiner_from_state, output_surface, surface_figure,
                             task_weight_figure, weight_curves)
from toy_models import ToyMultiTask, toy_batches

TASKS = ["vtm", "mtm", "mvm"]
SMALL_MELTR = {"meltr.d_model": 32, "meltr.d_ffn": 32, "meltr.d_scale": 16, "meltr.n_heads": 4}
OBSERVED = {"vtm": {"min": 0.4, "mean": 0.7, "max": 1.1}, "mtm": {"min": 2.0, "mean": 2.5, "max": 3.2},
            "mvm": {"min": 5.0, "mean": 6.25, "max": 8.0}}


def _state(tasks=TASKS, observed=OBSERVED, with_names: bool = True) -> dict:
    cfg = JobConfig().with_overrides({**SMALL_MELTR, "train.epochs": 4})
    torch.manual_seed(0)
    combiner = build_combiner(cfg.meltr, len(tasks))
    state = {"combiner": combiner.state_dict(), "config": cfg.to_dict(), "epoch": 2, "counters": {"step": 30}}
    if with_names:
        state["task_names"] = list(tasks)
    if observed is not None:
        state["observed_losses"] = observed
    return state


def _checkpoint(tmp_path, **kwargs) -> str:
    """A checkpoint where a Tune trial's Train run keeps it: <experiment>__train_runs/train-<trial>/epoch_NNN."""
    folder = tmp_path / "demo-exp__train_runs" / "train-ab12_00003" / "epoch_002"
    save_checkpoint(_state(**kwargs), folder)
    return str(folder)


def _figures(path: str, **kwargs):
    state = load_checkpoint(path)
    combiner, names = combiner_from_state(state)
    info = checkpoint_info(path, state)
    return (task_weight_figure(combiner, names, info, **kwargs), surface_figure(combiner, names, info, **kwargs))


def _undrawn_ticks(fig) -> set:
    """Tick labels matplotlib keeps for ticks outside the view (never drawn)."""
    hidden = set()
    for ax in fig.axes:
        for axis in (getattr(ax, name, None) for name in ("xaxis", "yaxis", "zaxis")):
            if axis is None:
                continue
            low, high = sorted(axis.get_view_interval())
            slack = 1e-9 * (high - low)
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if not low - slack <= tick.get_loc() <= high + slack:
                    hidden.update({tick.label1, tick.label2})
    return hidden


def _overlapping_texts(fig) -> list:
    """Pairs of drawn texts whose boxes overlap by more than 2 px (titles, labels, ticks, legends, colorbars)."""
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    hidden = _undrawn_ticks(fig)
    texts = [t for t in fig.findobj(matplotlib.text.Text)
             if t.get_visible() and t.get_text().strip() and t not in hidden]
    boxes = [(t, t.get_window_extent(renderer).padded(-2)) for t in texts]
    return [(a.get_text(), b.get_text()) for (a, ba), (b, bb) in itertools.combinations(boxes, 2) if ba.overlaps(bb)]


def test_inspect_writes_both_figures(tmp_path):
    assert main(["inspect", _checkpoint(tmp_path), "--out", str(tmp_path / "plots"), "--tasks", "vtm", "mvm"]) == 0
    for name in ("meltr_task_weights.png", "meltr_surface.png"):
        data = (tmp_path / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_task_weight_plot_names_the_checkpoint_and_shares_one_y_axis(tmp_path):
    weights, _ = _figures(_checkpoint(tmp_path))
    title = weights._suptitle.get_text()
    for fact in ("epoch_002", "experiment demo-exp", "trial ab12_00003", "epoch 3/4", "step 30"):
        assert fact in title
    assert "held at vtm=0.7, mtm=2.5, mvm=6.25 (their means in this epoch)" in title
    panels = [ax for ax in weights.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == TASKS
    assert len({ax.get_ylim() for ax in panels}) == 1
    assert all(panels[0].get_shared_y_axes().joined(panels[0], ax) for ax in panels)
    for ax, task in zip(panels, TASKS):
        (band,) = [p for p in ax.patches if p.get_label() == "ℓ_t seen in this epoch"]
        x0, x1 = band.get_x(), band.get_x() + band.get_width()
        assert (x0, x1) == pytest.approx((OBSERVED[task]["min"], OBSERVED[task]["max"]))
        low, high = ax.get_xlim()
        assert low < x0 and x1 < high                              # the sweep covers what the run saw


def test_mtl_weight_line_is_drawn_when_it_fits_the_shared_scale(tmp_path):
    """An untrained MELTR weights every task ~0.01: a line at 1 would flatten its curves, so the title says so;
    an MTL checkpoint (weights exactly 1) gets the line in every panel."""
    small, _ = _figures(_checkpoint(tmp_path))
    assert "MTL weights every task 1: off this scale" in small._suptitle.get_text()
    assert not any(line.get_label() == "MTL (sum): 1" for ax in small.axes for line in ax.lines)
    state = _state()
    state["config"]["meltr"]["combiner"] = "mtl"
    state["combiner"] = {}
    save_checkpoint(state, tmp_path / "mtl")
    mtl, _ = _figures(str(tmp_path / "mtl"))
    assert mtl._suptitle.get_text().startswith("MTL task weight vs loss scale\n")
    for ax in mtl.axes:
        assert any(line.get_label() == "MTL (sum): 1" for line in ax.lines)
        assert np.allclose(ax.lines[0].get_ydata(), 1.0)


def test_surface_puts_meltr_and_mtl_on_one_scale_with_their_difference(tmp_path):
    _, surface = _figures(_checkpoint(tmp_path))
    title = surface._suptitle.get_text()
    assert "trial ab12_00003" in title and "epoch 3/4" in title and "held at mtm=2.5" in title
    three_d = [ax for ax in surface.axes if ax.name == "3d"]
    assert len(three_d) == 2 and three_d[0].get_zlim() == three_d[1].get_zlim()
    norms = [ax.collections[0].norm for ax in three_d]
    assert (norms[0].vmin, norms[0].vmax) == (norms[1].vmin, norms[1].vmax)
    z_low, z_high = three_d[0].get_zlim()
    state = load_checkpoint(_checkpoint(tmp_path))
    combiner, names = combiner_from_state(state)
    plane = output_surface(MTLSum(3), names, 0, 2, np.array([0.0, 2.2]), {"mtm": 2.5}, np.array([0.0, 16.0]))
    assert z_low <= plane.min() and plane.max() <= z_high        # MTL's plane fits the shared scale
    (difference,) = [ax for ax in surface.axes if ax.get_title() == "MELTR − MTL"]
    assert difference.get_xlabel() == "ℓ_vtm" and difference.get_ylabel() == "ℓ_mvm"


@pytest.mark.parametrize("tasks", [TASKS, [f"loss{i}" for i in range(6)]])
def test_no_text_overlaps_in_either_figure(tmp_path, tasks):
    observed = {t: {"min": 0.5 + i, "mean": 1.0 + i, "max": 2.0 + i} for i, t in enumerate(tasks)}
    for fig in _figures(_checkpoint(tmp_path, tasks=tasks, observed=observed)):
        assert _overlapping_texts(fig) == []


def test_a_checkpoint_without_a_loss_record_says_so_and_a_number_reference_is_used(tmp_path):
    weights, surface = _figures(_checkpoint(tmp_path, observed=None), reference=1.5)
    for fig in (weights, surface):
        assert "no training-loss record in this checkpoint" in fig._suptitle.get_text()
    assert "held at vtm=1.5, mtm=1.5, mvm=1.5 ·" in weights._suptitle.get_text()
    assert not any(ax.patches for ax in weights.axes)


def test_a_local_run_records_what_the_plots_need(tmp_path):
    """fit() stores the task names and each loss's min/mean/max of the epoch; inspect names the run folder."""
    cfg = JobConfig().with_overrides({**SMALL_MELTR, "train.epochs": 2, "meta.meta_every": 2,
                                      "meta.neumann_steps": 1})
    torch.manual_seed(0)
    model = ToyMultiTask()
    data = toy_batches(4)
    fit(model, build_combiner(cfg.meltr, 3), cfg, lambda epoch: data, save=local_saver(tmp_path / "run"))
    state = load_checkpoint(tmp_path / "run" / "epoch_001")
    assert state["task_names"] == model.task_names
    for task in model.task_names:
        r = state["observed_losses"][task]
        assert 0 < r["min"] <= r["mean"] <= r["max"]
    info = checkpoint_info(tmp_path / "run" / "epoch_001", state)
    assert (info.trial, info.epoch, info.epochs, info.step) == (None, 2, 2, 8)
    assert "no Tune trial" in info.caption()
    assert main(["inspect", str(tmp_path / "run" / "epoch_001"), "--out", str(tmp_path / "plots")]) == 0


def test_curves_are_the_derivative_and_mtl_is_flat(tmp_path):
    combiner, names = combiner_from_state(load_checkpoint(_checkpoint(tmp_path)))
    assert names == TASKS and not combiner.training
    scales = np.array([0.1, 1.0, 10.0])
    curves = weight_curves(combiner, names, scales)
    for t, name in enumerate(names):                      # matches a finite difference of the output
        for s, w in zip(scales, curves[name]):
            x = torch.ones(len(names), dtype=torch.float64)
            x[t] = s
            c = combiner.double()
            eps = 1e-4
            hi, lo = x.clone(), x.clone()
            hi[t] += eps
            lo[t] -= eps
            with torch.no_grad():
                fd = float((c(hi) - c(lo)) / (2 * eps))
            combiner.float()
            assert abs(fd - w) < 1e-3 * max(1.0, abs(fd))
    flat = weight_curves(MTLSum(3), names, scales)
    assert all(np.allclose(v, 1.0) for v in flat.values())
    plane = output_surface(MTLSum(3), names, 0, 2, np.array([0.5, 1.0, 2.0]))
    assert np.allclose(plane, np.add.outer([0.5, 1.0, 2.0], [0.5, 1.0, 2.0]) + 1.0)


def test_task_count_from_the_embedding_when_names_are_missing(tmp_path):
    _, names = combiner_from_state(load_checkpoint(_checkpoint(tmp_path, with_names=False)))
    assert names == ["task_0", "task_1", "task_2"]
