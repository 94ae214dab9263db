"""Accuracy over a whole evaluation set, accumulated batch by batch.

accuracy = 100 · #correct / #examples (percent), counted over every example — never a mean of per-batch
accuracies and never a dropped last batch (the official Violet QA evaluation did both).
"""
from __future__ import annotations

import torch


def accuracy(predictions, targets) -> float:
    """Percent of ``predictions`` equal to ``targets`` (class indices, same shape)."""
    meter = AccuracyMeter()
    meter.update(predictions, targets)
    return meter.result()


class AccuracyMeter:
    """Running count of correct predictions; ``result()`` is the percentage over everything seen."""

    def __init__(self):
        self.correct, self.total = 0, 0

    def update(self, predictions, targets) -> None:
        predictions, targets = torch.as_tensor(predictions).cpu(), torch.as_tensor(targets).cpu()
        if predictions.shape != targets.shape:
            raise ValueError(f"predictions {tuple(predictions.shape)} and targets {tuple(targets.shape)} "
                             f"must have the same shape")
        self.correct += int((predictions == targets).sum())
        self.total += targets.numel()

    def result(self) -> float:
        if self.total == 0:
            raise ValueError("accuracy over an empty evaluation set")
        return 100.0 * self.correct / self.total
