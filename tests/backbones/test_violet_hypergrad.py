"""Finite-difference hypergradients on violet_tiny, whose forward draws random MTM/MVM masks (issue 9.5)."""
from __future__ import annotations

import pytest
import torch
from _violet_common import make_batch, one_torch_thread, tiny  # noqa: F401 (autouse fixture)

from meltr_ray.core import hypergrad
from meltr_ray.core.hypergrad import hypergradient, select_scope
from meltr_ray.core.meltr import MELTR, stack_losses


def _flat(tensors):
    return torch.cat([t.flatten() for t in tensors])


@pytest.mark.parametrize("replay", [True, False])
@pytest.mark.parametrize("steps", [0, 1])
def test_finite_difference_replays_violets_random_masking(monkeypatch, replay, steps):
    """Retrieval in train mode: MTM/MVM masks redrawn every forward, head dropout 0.1, MELTR dropout 0.1.
    Exact and FD each start L_inner from the same RNG state; FD replays it for every ± evaluation (float32:
    measured 3.6e-4 with the replay, 77–5e4 without — the ``replay=False`` case shows the test can fail)."""
    if not replay:
        monkeypatch.setattr(hypergrad, "_ReplayedRandomness", lambda fn, *args, **kwargs: fn)
    model = tiny("retrieval").train()
    meltr = MELTR.from_preset("meltr_tiny", num_tasks=3, start="official").train()
    train, meta = make_batch("retrieval", batch=2, seed=1), make_batch("retrieval", batch=2, seed=2)
    params, phi = select_scope(model, model.default_meta_scope), list(meltr.parameters())
    results = {}
    for method in ("neumann", "finite_difference"):
        torch.manual_seed(7)
        outer = model(meta, tasks=["vtm"])["vtm"]

        def inner():
            return meltr(stack_losses(model(train), model.task_names))
        results[method] = _flat(hypergradient(outer, inner() if method == "neumann" else inner, params, phi,
                                              neumann_steps=steps, neumann_lr=0.1, method=method,
                                              fd_radius=1e-3))
    exact = results["neumann"]
    error = ((results["finite_difference"] - exact).norm() / exact.norm()).item()
    assert (error < 1e-2) if replay else (error > 1.0), error
