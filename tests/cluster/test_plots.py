"""`meltr-ray inspect CHECKPOINT`: PNGs of what MELTR learned (supplementary Fig. 1 and Fig. 3)."""
from __future__ import annotations

import numpy as np
import torch

from meltr_ray.core.checkpoint import save_checkpoint
from meltr_ray.cli import main
from meltr_ray.config import JobConfig
from meltr_ray.core.meltr import MTLSum, build_combiner
from meltr_ray.plots import combiner_from_state, output_surface, weight_curves

TASKS = ["vtm", "mtm", "mvm"]


def _checkpoint(tmp_path, with_names: bool = True) -> str:
    cfg = JobConfig().with_overrides({"meltr.d_model": 32, "meltr.d_ffn": 32, "meltr.d_scale": 16,
                                      "meltr.n_heads": 4})
    torch.manual_seed(0)
    combiner = build_combiner(cfg.meltr, len(TASKS))
    state = {"combiner": combiner.state_dict(), "config": cfg.to_dict()}
    if with_names:
        state["task_names"] = TASKS
    save_checkpoint(state, tmp_path / "ckpt")
    return str(tmp_path / "ckpt")


def test_inspect_writes_both_figures(tmp_path):
    assert main(["inspect", _checkpoint(tmp_path), "--out", str(tmp_path / "plots"), "--tasks", "vtm", "mvm"]) == 0
    for name in ("meltr_task_weights.png", "meltr_surface.png"):
        data = (tmp_path / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_curves_are_the_derivative_and_mtl_is_flat(tmp_path):
    from meltr_ray.core.checkpoint import load_checkpoint
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
    from meltr_ray.core.checkpoint import load_checkpoint
    _, names = combiner_from_state(load_checkpoint(_checkpoint(tmp_path, with_names=False)))
    assert names == ["task_0", "task_1", "task_2"]
