"""Proof that MELTR learns something MTL cannot, and that this test notices when it does not.

The problem: a shared trunk (one tanh unit: the tasks compete for it) with a separate linear head per task,
  primary  y = s(x) + 0.5 noise         s(x) = tanh(1.5 x·a)        the target task
  helpful  y = s(x) + 0.1 noise         the primary's signal, cleaner labels (about neutral here)
  harmful  y = 3 tanh(1.5 x·b) + noise  b at 60° from a, three times the scale
With separate heads the harmful task hurts only through the trunk: summing the losses (MTL) lets its 9×
larger loss turn the trunk towards b, and the primary keeps only part of its signal. Dropping the harmful task,
or training on the primary alone, keeps the trunk on a. MELTR, meta-trained on the primary loss, must find
that out from the hypergradient alone.

The criterion (one number): on held-out batches, MELTR's primary loss closes at least half of the gap between
MTL and the best fixed choice (primary only, or drop the harmful task). A frozen MELTR (never meta-trained:
meltr_lr = 0 — with the MTL start it *is* MTL) and a sign-flipped hypergradient are run through the same
criterion and asserted to fail it. Measured over seeds 0–9 (the slow test): MELTR closes 54–102 % of the gap
(with MELTR's dropout 0.1 rather than 0, 9 of 10 seeds pass). The learned weights mostly raise the primary's
weight rather than lower the harmful one: only the ratios matter to the trunk, so the test checks the harmful
task's share w_harmful / Σ|w_t| (1/3 for MTL).
"""
from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

import meltr_ray.core.bilevel as bilevel
from meltr_ray.config import JobConfig
from meltr_ray.core.loop import fit
from meltr_ray.core.meltr import build_combiner

TASKS = ["primary", "helpful", "harmful"]
EXACT = bilevel.hypergradient          # the unpatched hypergradient the ``flipped`` variant negates
BASELINES = {"mtl": ("mtl", None), "primary_only": ("fixed", [1.0, 0.0, 0.0]),
             "drop_harmful": ("fixed", [1.0, 1.0, 0.0])}


class TrunkWithHeads(nn.Module):
    """x → tanh(trunk(x)) (``width`` units, shared) → one Linear head per task; MSE losses."""
    task_names, primary_task, default_meta_scope = TASKS, "primary", "all"

    def __init__(self, in_dim: int = 8, width: int = 1):
        super().__init__()
        self.trunk = nn.Linear(in_dim, width)
        self.heads = nn.ModuleDict({t: nn.Linear(width, 1) for t in TASKS})

    def forward(self, batch, tasks=None):
        features = torch.tanh(self.trunk(batch["x"]))
        return {t: (self.heads[t](features).squeeze(-1) - batch[f"y_{t}"]).pow(2).mean()
                for t in (tasks or TASKS)}


def make_data(num_batches: int, seed: int, batch_size: int = 32, in_dim: int = 8, angle: float = 60.0):
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(in_dim, 2, generator=g))
    a = basis[:, 0]
    b = math.cos(math.radians(angle)) * a + math.sin(math.radians(angle)) * basis[:, 1]
    batches = []
    for _ in range(num_batches):
        x = torch.randn(batch_size, in_dim, generator=g)
        signal, conflict = torch.tanh(1.5 * x @ a), torch.tanh(1.5 * x @ b)

        def noise(scale):
            return scale * torch.randn(batch_size, generator=g)
        batches.append({"x": x, "y_primary": signal + noise(0.5), "y_helpful": signal + noise(0.1),
                        "y_harmful": 3.0 * conflict + noise(0.1)})
    return batches


def train(combiner: str, seed: int, fixed_weights=None, meltr_lr: float = 1e-2) -> tuple[float, dict]:
    """(mean held-out primary loss, last epoch's metrics) after 120 inner steps with a meta step each."""
    cfg = JobConfig().with_overrides({
        "meltr.combiner": combiner, "meltr.preset": "meltr_tiny", "meltr.fixed_weights": fixed_weights,
        "meltr.dropout": 0.0,
        "optim.backbone_lr": 1e-2, "optim.meltr_lr": meltr_lr, "optim.schedule": "constant",
        "meta.meta_every": 1, "meta.neumann_steps": 0, "meta.scope": "all", "meta.reg_weight": 0.0,
        "train.epochs": 6, "train.seed": seed})
    torch.manual_seed(seed)
    model = TrunkWithHeads()
    combiner_module = build_combiner(cfg.meltr, len(TASKS))
    data = make_data(28, seed + 100)
    train_data, val_data = data[:20], data[20:]
    last = fit(model, combiner_module, cfg, lambda epoch: train_data)
    with torch.no_grad():
        val = sum(model(b)["primary"].item() for b in val_data) / len(val_data)
    return val, last


@functools.lru_cache(maxsize=None)
def baselines(seed: int) -> dict:
    return {name: train(combiner, seed, weights)[0] for name, (combiner, weights) in BASELINES.items()}


def train_meltr(variant: str, seed: int, monkeypatch) -> tuple[float, dict]:
    """``real``; ``frozen`` (meltr_lr = 0: φ never moves); ``flipped`` (the hypergradient's sign reversed)."""
    if variant == "flipped":
        monkeypatch.setattr(bilevel, "hypergradient", lambda *a, **kw: tuple(-g for g in EXACT(*a, **kw)))
    try:
        return train("meltr", seed, meltr_lr=0.0 if variant == "frozen" else 1e-2)
    finally:
        monkeypatch.undo()


def gap_closed(meltr_val: float, base: dict) -> float:
    """Share of MTL's excess primary loss over the best fixed choice that MELTR removes (1 = as good)."""
    best_fixed = min(base["primary_only"], base["drop_harmful"])
    return (base["mtl"] - meltr_val) / (base["mtl"] - best_fixed)


def harmful_share(last: dict) -> float:
    """w_harmful / Σ_t |w_t| over the last epoch (1/3 for MTL)."""
    weights = [last[f"weight_{t}"] for t in TASKS]
    return weights[2] / sum(abs(w) for w in weights)


def outcome(variant: str, seed: int, monkeypatch) -> tuple[bool, str, dict]:
    """(passes the criterion, a report, the last epoch's metrics)."""
    base = baselines(seed)
    assert base["mtl"] > 1.5 * min(base["primary_only"], base["drop_harmful"]), base   # the problem is real
    val, last = train_meltr(variant, seed, monkeypatch)
    closed = gap_closed(val, base)
    report = (f"{variant} seed {seed}: MELTR {val:.3f}, closed {closed:.2f} of the gap, harmful share "
              f"{harmful_share(last):.2f}; baselines {base}")
    return closed >= 0.5, report, last


@pytest.mark.parametrize("variant", ["real", "frozen", "flipped"])
def test_meltr_closes_the_gap_to_the_best_fixed_choice_and_broken_meltrs_do_not(variant, monkeypatch):
    passed, report, last = outcome(variant, 1, monkeypatch)
    if variant == "real":
        assert passed, report
        assert harmful_share(last) < 1 / 3, report      # and its weights moved off the harmful task
    else:
        assert not passed, f"the broken {variant} MELTR passed the criterion: {report}"


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["real", "frozen", "flipped"])
def test_meltr_learns_over_ten_seeds(variant, monkeypatch):
    """Seeds 0–9: the real MELTR passes on at least 8 (measured: 10, from 54 % to 102 % of the gap; with
    MELTR's default dropout 0.1 instead of 0, 9 — seed 6 closes 15 %); the broken ones pass on none."""
    results = [outcome(variant, seed, monkeypatch) for seed in range(10)]
    passes = sum(passed for passed, _, _ in results)
    reports = "\n".join(report for _, report, _ in results)
    assert (passes >= 8) if variant == "real" else (passes == 0), reports
