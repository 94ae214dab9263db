"""Task metrics with flat keys: retrieval ``r1``/``r5``/``r10``/``medr``/``mnr`` and ``accuracy`` (percent)."""
from .classification import AccuracyMeter, accuracy
from .qa import qa_accuracy
from .retrieval import ground_truth_ranks, retrieval_metrics

__all__ = ["AccuracyMeter", "accuracy", "qa_accuracy", "ground_truth_ranks", "retrieval_metrics"]
