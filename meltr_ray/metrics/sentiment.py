"""Multimodal sentiment metrics (CMU-MOSI), from real-valued predictions and labels in [−3, 3].

Binary (Acc-2, F1): positive = score ≥ 0, negative = score < 0 over all samples (the "non-negative" split,
as the MOSI papers' Acc-2 with zeros counted positive). F1 is the weighted F1 of the two classes.
MAE = mean |ŷ − y|; Corr = Pearson correlation of ŷ and y; Acc-7 = accuracy of round(clip(·, −3, 3)) into
the 7 classes −3..3. Accuracies and F1 in percent; predictions are clipped to [−3, 3] for Acc-7 only.
"""
from __future__ import annotations

import numpy as np


def _arrays(predictions, labels) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(predictions, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    if p.shape != y.shape or p.size == 0:
        raise ValueError(f"sentiment metrics need as many predictions as labels (> 0), got {p.size} and {y.size}")
    if not (np.isfinite(p).all() and np.isfinite(y).all()):
        raise ValueError("sentiment predictions and labels must be finite")
    return p, y


def weighted_f1(pred: np.ndarray, true: np.ndarray) -> float:
    """F1 per class weighted by the class's support (sklearn's ``average='weighted'``)."""
    total = 0.0
    for cls in (False, True):
        tp = np.sum((pred == cls) & (true == cls))
        precision = tp / max(np.sum(pred == cls), 1)
        recall = tp / max(np.sum(true == cls), 1)
        f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
        total += f1 * np.sum(true == cls)
    return float(total / true.size)


def pearson(p: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; 0 when either side is constant (undefined correlation)."""
    if p.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(p, y)[0, 1])


def sentiment_metrics(predictions, labels) -> dict:
    """``{"acc2", "f1", "mae", "corr", "acc7"}`` (see the module docstring)."""
    p, y = _arrays(predictions, labels)
    pos_p, pos_y = p >= 0, y >= 0
    return {
        "acc2": float(100.0 * np.mean(pos_p == pos_y)),
        "f1": 100.0 * weighted_f1(pos_p, pos_y),
        "mae": float(np.mean(np.abs(p - y))),
        "corr": pearson(p, y),
        "acc7": float(100.0 * np.mean(np.round(np.clip(p, -3, 3)) == np.round(np.clip(y, -3, 3)))),
    }
