"""Retrieval ranks and recalls, and full-set accuracy, on hand-made inputs with closed-form answers."""
from __future__ import annotations

import pytest
import torch

from meltr_ray.metrics import AccuracyMeter, accuracy, ground_truth_ranks, qa_accuracy, retrieval_metrics


def test_perfect_diagonal():
    assert retrieval_metrics(torch.eye(4)) == {"r1": 100.0, "r5": 100.0, "r10": 100.0, "medr": 1.0, "mnr": 1.0}


def test_small_matrix_by_hand():
    scores = torch.tensor([[0.9, 0.1, 0.5],     # gt 0.9 is the best          -> rank 1
                           [0.8, 0.2, 0.7],     # gt 0.2 is the worst         -> rank 3
                           [0.3, 0.6, 0.1]])    # gt 0.1 is the worst         -> rank 3
    assert ground_truth_ranks(scores).tolist() == [1, 3, 3]
    m = retrieval_metrics(scores)
    assert m["r1"] == pytest.approx(100 / 3) and m["r5"] == 100.0
    assert m["medr"] == 3.0 and m["mnr"] == pytest.approx(7 / 3)


def test_ranks_one_to_n_closed_form():
    """Text i has exactly i videos above its ground truth (column 0): ranks 1..12."""
    n = 12
    scores = -torch.ones(n, n)
    scores[:, 0] = 0.0
    for i in range(n):
        scores[i, 1:i + 1] = 1.0
    gt = torch.zeros(n, dtype=torch.long)
    m = retrieval_metrics(scores, gt)
    assert m == pytest.approx({"r1": 100 / 12, "r5": 500 / 12, "r10": 1000 / 12, "medr": 6.5, "mnr": 6.5})


def test_ties_count_against_the_ground_truth():
    m = retrieval_metrics(torch.zeros(5, 5))
    assert m["r1"] == 0.0 and m["medr"] == 5.0 and m["mnr"] == 5.0


def test_several_captions_per_video():
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.6, 0.4]])
    assert ground_truth_ranks(scores, torch.tensor([0, 1, 1, 1])).tolist() == [1, 1, 2, 2]


def test_bad_retrieval_inputs():
    with pytest.raises(ValueError, match="matrix"):
        retrieval_metrics(torch.zeros(3))
    with pytest.raises(ValueError, match="gt"):
        retrieval_metrics(torch.zeros(2, 2), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="2 videos for 3 texts"):
        retrieval_metrics(torch.zeros(3, 2))


def test_accuracy_over_uneven_batches_counts_every_example():
    meter = AccuracyMeter()
    meter.update(torch.tensor([1, 2, 0]), torch.tensor([1, 2, 3]))
    meter.update(torch.tensor([4]), torch.tensor([4]))             # the last, partial batch counts
    assert meter.result() == 75.0                                  # 3/4, not mean(2/3, 1/1)
    assert accuracy([0, 1], [0, 0]) == 50.0 and qa_accuracy([2], [2]) == 100.0


def test_accuracy_bad_inputs():
    with pytest.raises(ValueError, match="same shape"):
        accuracy(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="empty"):
        AccuracyMeter().result()
