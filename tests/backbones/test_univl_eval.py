"""UniVL retrieval (chunked cross-encoder scoring) and sentiment evaluation, and the sentiment metrics."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from _univl_common import batch, tiny

from meltr_ray.backbones.univl.evaluation import _collect_retrieval, align_scores
from meltr_ray.backbones.univl.tasks import batch_inputs, pair_logits
from meltr_ray.metrics.sentiment import sentiment_metrics


def retrieval_batches() -> list[dict]:
    """Two batches; the second repeats video v0 with another caption (two texts, one video)."""
    first, second = batch(size=3, seed=0), batch(size=2, seed=1)
    second["features"][0], second["feature_mask"][0] = first["features"][0], first["feature_mask"][0]
    second["video_id"] = ["v0", "v9"]
    return [first, second]


def test_every_text_video_pair_is_scored_in_bounded_chunks():
    model = tiny("retrieval").eval()
    with torch.no_grad():
        videos, video_mask, text, text_mask, gt = _collect_retrieval(model, retrieval_batches())
        assert videos.shape[0] == 4 and text.shape[0] == 5 and gt.tolist() == [0, 1, 2, 0, 3]
        model.cfg.eval_pair_batch = 3                       # 20 pairs in passes of ≤ 3
        chunked = align_scores(model, videos, video_mask, text, text_mask)
        whole = pair_logits(model, text, text_mask, videos, video_mask)
    assert chunked.shape == (5, 4) and torch.allclose(chunked, whole, atol=1e-5)


def test_clips_are_told_apart_by_their_shard_row_not_their_video():
    """YouCook2: two clips of one video are two rows (``sample_id`` "video#clip#item"), two retrieval targets."""
    b = batch(size=3)
    b["video_id"] = ["yc0", "yc0", "yc1"]
    b["sample_id"] = ["yc0#0#0", "yc0#1#0", "yc1#0#0"]
    with torch.no_grad():
        videos, _, text, _, gt = _collect_retrieval(tiny("retrieval").eval(), [b])
    assert videos.shape[0] == 3 and gt.tolist() == [0, 1, 2]


def test_retrieval_metrics_do_not_depend_on_the_chunk_size():
    results = [tiny("retrieval", eval_pair_batch=size).evaluate(retrieval_batches()) for size in (1, 7, 1000)]
    assert set(results[0]) == {"r1", "r5", "r10", "medr", "mnr"}
    assert results[1] == pytest.approx(results[0]) and results[2] == pytest.approx(results[0])
    assert 1.0 <= results[0]["mnr"] <= 4.0


def test_sentiment_evaluation_reports_the_mosi_metrics():
    model = tiny("sentiment")
    metrics = model.evaluate([batch("sentiment", seed=0), batch("sentiment", seed=1)])
    assert set(metrics) == {"acc2", "f1", "mae", "corr", "acc7"}
    b = batch("sentiment", seed=0)
    with torch.no_grad():
        model.eval()
        x = batch_inputs(model, b)
        _, pooled = model.cross_pair(model.encode_text(x["ids"], x["mask"]), x["mask"],
                                     model.encode_video(x["features"], x["video_mask"]), x["video_mask"])
        predicted = model.sentiment_head(pooled).squeeze(-1)
    assert model.evaluate([b])["mae"] == pytest.approx(float((predicted - b["score"]).abs().mean()), rel=1e-5)


def test_sentiment_metrics_on_hand_made_predictions():
    labels = [2.6, -1.2, 0.0, -2.9, 1.4, -0.3]
    predictions = [1.9, -0.4, -0.2, -3.6, 0.4, 0.6]
    m = sentiment_metrics(predictions, labels)
    # signs (≥ 0 positive): labels + - + - + -, predictions + - - - + +  → 4 of 6 right
    assert m["acc2"] == pytest.approx(100 * 4 / 6)
    # positives: TP 2, FP 1, FN 1 → F1 2/3; negatives: TP 2, FP 1, FN 1 → F1 2/3; weighted by support 3/3
    assert m["f1"] == pytest.approx(100 * 2 / 3)
    assert m["mae"] == pytest.approx(np.mean([0.7, 0.8, 0.2, 0.7, 1.0, 0.9]))
    assert m["corr"] == pytest.approx(np.corrcoef(predictions, labels)[0, 1])
    # 7 classes: round(clip(p)) = 2, -0, -0, -3, 0, 1 vs round(y) = 3, -1, 0, -3, 1, -0 → 2 of 6
    assert m["acc7"] == pytest.approx(100 * 2 / 6)


def test_sentiment_metrics_weight_f1_by_class_support():
    m = sentiment_metrics([1.0, 1.0, 1.0, -1.0], [1.0, 1.0, -1.0, -1.0])
    # positive: P 2/3 R 1 F1 0.8 (support 2); negative: P 1 R 1/2 F1 2/3 (support 2)
    assert m["f1"] == pytest.approx(100 * (0.8 + 2 / 3) / 2)
    assert sentiment_metrics([0.5, 0.5], [1.0, -1.0])["corr"] == 0.0       # constant predictions


def test_sentiment_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="as many predictions as labels"):
        sentiment_metrics([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        sentiment_metrics([float("nan")], [1.0])
