"""Video question answering accuracy (multiple-choice and open-ended): exact match of the predicted index.

Multiple-choice predictions are option indices, open-ended ones answer-vocabulary indices; an open-ended
answer outside the top-K vocabulary counts as wrong (its target is never predicted). Accuracy is in percent
over the full test set (see :mod:`meltr_ray.metrics.classification`).
"""
from __future__ import annotations

from .classification import AccuracyMeter, accuracy

qa_accuracy = accuracy

__all__ = ["qa_accuracy", "accuracy", "AccuracyMeter"]
