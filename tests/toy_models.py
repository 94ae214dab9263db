"""Small models that follow the backbone contract, for testing the core without a video backbone."""
from __future__ import annotations

import torch
from torch import nn


class ToyMultiTask(nn.Module):
    """A shared trunk with one linear head per task; each task's loss is a mean-squared error.

    ``batch = {"x": (B, D), "y_<task>": (B,)}``. Task order = MELTR input order; the first is primary.
    ``dropout`` > 0 drops trunk features in train mode (a random forward, for the finite-difference tests).
    """

    def __init__(self, in_dim: int = 8, hidden: int = 16, tasks=("primary", "helpful", "harmful"),
                 depth: int = 1, dropout: float = 0.0):
        super().__init__()
        self.task_names = list(tasks)
        self.primary_task = self.task_names[0]
        layers = []
        for i in range(depth):
            layers += [nn.Linear(in_dim if i == 0 else hidden, hidden), nn.Tanh()]
        self.trunk = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({t: nn.Linear(hidden, 1) for t in self.task_names})
        self.default_meta_scope = ["heads.*", f"trunk.{2 * (depth - 1)}.*"]

    def forward(self, batch, tasks=None):
        h = self.dropout(self.trunk(batch["x"]))
        names = self.task_names if tasks is None else tasks
        return {t: (self.heads[t](h).squeeze(-1) - batch[f"y_{t}"]).pow(2).mean() for t in names}

    def evaluate(self, batches):
        losses = [self(b)[self.primary_task].item() for b in batches]
        return {"primary_mse": sum(losses) / len(losses)}


def toy_batches(num_batches: int, batch_size: int = 16, in_dim: int = 8, seed: int = 0,
                tasks=("primary", "helpful", "harmful")):
    """Deterministic batches: primary and helpful targets share a signal; harmful is pure noise."""
    g = torch.Generator().manual_seed(seed)
    w_true = torch.randn(in_dim, generator=g)
    out = []
    for _ in range(num_batches):
        x = torch.randn(batch_size, in_dim, generator=g)
        signal = torch.tanh(x @ w_true)
        batch = {"x": x, "y_primary": signal + 0.05 * torch.randn(batch_size, generator=g),
                 "y_helpful": signal + 0.05 * torch.randn(batch_size, generator=g)}
        for t in tasks[2:]:
            batch[f"y_{t}"] = 3.0 * torch.randn(batch_size, generator=g)
        out.append(batch)
    return out
