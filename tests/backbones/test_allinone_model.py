"""All-in-one's own behaviour: the contrastive loss against its definition, 80/10/10 MLM masking, the temporal
roll, input checks naming the limit, deterministic evaluation and multi-view averaging, spec = built sizes."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from meltr_ray.backbones import create_backbone, get_spec
from meltr_ray.backbones.allinone.masking import IGNORE, mask_tokens, mlm_candidates
from meltr_ray.backbones.allinone.tasks import (contrastive_loss, evaluate_views, similarity_matrix,
                                                view_indices)
from meltr_ray.backbones.allinone.vit import temporal_roll
from meltr_ray.data.video import uniform_indices
from meltr_ray.metrics.retrieval import retrieval_metrics

PAD, CLS, SEP, MASK = 0, 101, 102, 103


def tiny(**overrides):
    torch.manual_seed(0)
    return create_backbone("allinone_tiny", **overrides)


def batch(seed: int = 0, size: int = 3, ids=None):
    b = get_spec("allinone_tiny").example_batch("retrieval", size, torch.Generator().manual_seed(seed))
    b["video_id"] = [f"s{seed}_{i}" for i in range(size)] if ids is None else ids
    return b


def test_contrastive_loss_equals_its_definition_on_a_hand_made_matrix():
    x = torch.tensor([[0.9, 0.1, -0.3], [0.2, 0.5, 0.4], [-0.1, 0.6, 0.7]])
    tau = 0.05

    def neg_log_softmax(row, j):
        return -(row[j] / tau - math.log(sum(math.exp(v / tau) for v in row)))
    rows = [[float(v) for v in r] for r in x]
    cols = [[rows[i][j] for i in range(3)] for j in range(3)]
    t2v = sum(neg_log_softmax(rows[i], i) for i in range(3)) / 3
    v2t = sum(neg_log_softmax(cols[j], j) for j in range(3)) / 3
    assert float(contrastive_loss(x, tau)) == pytest.approx(t2v + v2t, rel=1e-5)   # the sum, not the mean


def test_vtm_is_the_contrastive_loss_of_the_unimodal_features():
    model, b = tiny().eval(), batch()
    with torch.no_grad():
        ids, mask = model.text(b)
        t = torch.nn.functional.normalize(model.text_features(ids, mask), dim=-1)
        v = torch.nn.functional.normalize(model.video_features(model.frames(b["frames"])), dim=-1)
        expected = contrastive_loss(t @ v.t(), 0.05)
        assert float(model(b, tasks=["vtm"])["vtm"]) == pytest.approx(float(expected), rel=1e-5)


def test_mlm_masking_never_touches_special_tokens_or_padding_and_splits_80_10_10():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(200, 1000, (400, 30), generator=g)
    mask = torch.ones_like(ids)
    ids[:, 0], ids[:, 20], ids[:, 21:], mask[:, 21:] = CLS, SEP, PAD, 0
    ids[:, 5] = MASK                                            # a [MASK] already in the text is special too
    masked, labels = mask_tokens(ids, mask, special_ids=(PAD, CLS, SEP, MASK), mask_id=MASK, vocab_size=1000,
                                 random_low=104, prob=0.15, generator=g)
    candidate = mlm_candidates(ids, mask, (PAD, CLS, SEP, MASK))
    chosen = labels != IGNORE
    assert not bool((chosen & ~candidate).any())                # never special tokens, never padding
    assert torch.equal(masked[~chosen], ids[~chosen])           # unchosen tokens stay as they are
    assert torch.equal(labels[chosen], ids[chosen])
    assert bool(chosen.any(-1).all())                           # every row carries a label
    frac = chosen.sum().item() / candidate.sum().item()
    assert 0.13 < frac < 0.18
    to_mask = (masked[chosen] == MASK).float().mean().item()
    kept = (masked[chosen] == ids[chosen]).float().mean().item()
    assert 0.75 < to_mask < 0.85 and 0.06 < kept < 0.14         # the rest (≈ 10 %) are random tokens
    replaced = masked[chosen & (masked != MASK) & (masked != ids)]
    assert len(replaced) and int(replaced.min()) >= 104         # random replacements are regular tokens


def test_temporal_roll_moves_the_first_and_last_fold_of_image_tokens_in_time():
    b, t, text, image = 1, 3, 2, 17                              # 17 image tokens: [CLS] + 16 patches, fold 2
    x = torch.arange(t, dtype=torch.float).view(1, t, 1, 1).expand(b, t, text + image, 1).clone()
    rolled = temporal_roll(x, image_start=text)[0, :, :, 0]      # value = source frame index
    frame = torch.arange(t, dtype=torch.float)
    assert torch.equal(rolled[:, :text + 1], frame[:, None].expand(t, text + 1))       # text and [CLS] stay
    assert torch.equal(rolled[:, text + 1:text + 3], torch.roll(frame, 1)[:, None].expand(t, 2))    # from t−1
    assert torch.equal(rolled[:, -2:], torch.roll(frame, -1)[:, None].expand(t, 2))                 # from t+1
    assert torch.equal(rolled[:, text + 3:-2], frame[:, None].expand(t, image - 5))


def test_bad_input_names_the_limit():
    model, b = tiny(), batch()
    too_many = dict(b, frames=torch.zeros(3, 4, 32, 32, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="temporal_embed has 3 rows"):
        model(too_many)
    with pytest.raises(ValueError, match="pos_embed"):
        model(dict(b, frames=torch.zeros(3, 3, 64, 64, 3, dtype=torch.uint8)))
    long_text = dict(b, text_ids=torch.full((3, 17), 200), text_mask=torch.ones(3, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="position_embeddings"):
        model(long_text)
    with pytest.raises(ValueError, match="unknown loss"):
        model(b, tasks=["mtm"])


def test_spec_limits_are_the_built_sizes():
    for name in ("allinone_tiny",):
        spec, model = get_spec(name), tiny()
        data = spec.tasks["retrieval"].data
        assert data.max_frames == model.transformer.temporal_embed.shape[1] == data.num_frames
        assert data.text_positions == model.text_embeddings.position_embeddings.weight.shape[0]
        assert data.max_image_size == data.image_size == model.cfg.image_size
        assert spec.tasks["retrieval"].losses == ("vtm", "mlm") and spec.tasks["retrieval"].primary == "vtm"
    base = get_spec("allinone_base").tasks["retrieval"].data
    assert (base.num_frames, base.image_size, base.text_len, base.text_positions) == (3, 224, 40, 40)
    assert get_spec("allinone_base").tasks["retrieval"].meltr_preset == "allinone"


def test_evaluation_is_deterministic_and_counts_every_text():
    model = tiny().train()
    val = [batch(1), batch(2, size=2)]
    first, second = model.evaluate(val), model.evaluate(val)
    assert first == second                                      # eval mode, no sampling inside the model
    scores, gt, ids = similarity_matrix(model.eval(), val)
    assert scores.shape == (5, 5) and ids == [f"s1_{i}" for i in range(3)] + ["s2_0", "s2_1"]
    assert first == retrieval_metrics(scores, gt)


def test_the_same_video_twice_is_one_retrieval_target():
    model = tiny().eval()
    b = batch(3, ids=["a", "b", "a"])
    scores, gt, ids = similarity_matrix(model, [b])
    assert ids == ["a", "b"] and gt.tolist() == [0, 1, 0] and scores.shape == (3, 2)


def test_view_indices_are_deterministic_segment_points():
    assert np.array_equal(view_indices(30, 3), uniform_indices(30, 3))            # one view = segment centres
    views = [view_indices(30, 3, v, 3) for v in range(3)]
    assert [list(v) for v in views] == [[1, 11, 21], [5, 15, 25], [8, 18, 28]]
    with pytest.raises(ValueError):
        view_indices(30, 3, 3, 3)


def test_multi_view_averaging_is_the_mean_similarity():
    model = tiny().eval()
    view_a, view_b = [batch(4)], [batch(4)]
    view_b[0]["frames"] = batch(5)["frames"]                    # same texts and videos, other frames
    sa, gt, _ = similarity_matrix(model, view_a)
    sb, _, _ = similarity_matrix(model, view_b)
    assert evaluate_views(model, [view_a, view_b]) == retrieval_metrics((sa + sb) / 2, gt)
    other = [batch(6)]
    with pytest.raises(ValueError, match="view 1"):
        evaluate_views(model, [view_a, other])
