"""ALPRO's own behaviour: divided space-time attention, the pretext losses against their definitions, the PEM
column, out-of-vocabulary answers, input checks naming the limit, spec = built sizes."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from meltr_ray.backbones import create_backbone, get_spec
from meltr_ray.backbones.alpro import tasks
from meltr_ray.backbones.alpro.tasks import ENTITY_COLUMN, _draw, same_video, vtc_loss
from meltr_ray.backbones.alpro.timesformer import DividedBlock


def tiny(task: str = "qa_oe", **overrides):
    torch.manual_seed(0)
    return create_backbone("alpro_tiny", task=task, **overrides)


def batch(task: str = "qa_oe", seed: int = 0, size: int = 3) -> dict:
    return get_spec("alpro_tiny").example_batch(task, size, torch.Generator().manual_seed(seed))


def _block(zero: str) -> DividedBlock:
    torch.manual_seed(0)
    block = DividedBlock(8, 2, 2.0, 0.0, 0.0).eval()
    with torch.no_grad():
        if zero == "temporal":
            block.temporal_fc.weight.zero_(), block.temporal_fc.bias.zero_()
        else:                                     # spatial attention and MLP off: only the temporal path remains
            block.attn.proj.weight.zero_(), block.attn.proj.bias.zero_()
            block.mlp.fc2.weight.zero_(), block.mlp.fc2.bias.zero_()
    return block


def test_divided_attention_mixes_space_within_a_frame_and_time_within_a_patch():
    frames, patches = 3, 4
    x = torch.randn(1, 1 + patches * frames, 8)                 # [CLS] + patches in (patch, frame) order
    index = lambda p, t: 1 + p * frames + t                      # noqa: E731
    spatial_only, temporal_only = _block("temporal"), _block("spatial")
    moved = x.clone()
    moved[0, [index(p, 1) for p in range(patches)]] += 1.0       # change frame 1 everywhere
    out, out_moved = spatial_only(x, frames), spatial_only(moved, frames)
    frame0 = [index(p, 0) for p in range(patches)]
    assert torch.allclose(out[0, frame0], out_moved[0, frame0])          # frame 0 never sees frame 1
    assert not torch.allclose(out[0, index(0, 1)], out_moved[0, index(0, 1)])
    moved = x.clone()
    moved[0, [index(1, t) for t in range(frames)]] += 1.0       # change patch 1 in every frame
    out, out_moved = temporal_only(x, frames), temporal_only(moved, frames)
    patch0 = [index(0, t) for t in range(frames)]
    assert torch.allclose(out[0, patch0], out_moved[0, patch0])          # patch 0 never sees patch 1
    assert not torch.allclose(out[0, index(1, 0)], out_moved[0, index(1, 0)])


def test_the_video_encoder_pools_frames_to_cls_plus_one_token_per_patch():
    model = tiny()
    video = model.encode_video(model.frames(batch()["frames"]))
    assert video.shape == (3, 1 + (32 // 8) ** 2, 32)


def test_vtc_uses_soft_targets_over_questions_of_the_same_video():
    model = tiny().eval()
    b = batch()
    b["video_id"] = ["a", "a", "b"]
    with torch.no_grad():
        video = model.encode_video(model.frames(b["frames"]))
        ids, mask = model.text(b)
        text = model.encode_text(ids, mask)
        positives = same_video(b, 3, ids.device)
        loss, sim = vtc_loss(model, video, text, positives)
        v = F.normalize(model.vision_proj(video[:, 0]), dim=-1)
        t = F.normalize(model.text_proj(text[:, 0]), dim=-1)
        s = v @ t.t() / 0.07
        q = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
        expected = 0.5 * (-(F.log_softmax(s, 1) * q).sum(1).mean() - (F.log_softmax(s.t(), 1) * q).sum(1).mean())
    assert torch.allclose(sim, s, atol=1e-5) and float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_hard_negatives_are_never_from_the_same_video():
    allowed = ~same_video({"video_id": ["a", "a", "b", "c"]}, 4, "cpu")
    g = torch.Generator().manual_seed(0)
    weights = torch.randn(4, 4)
    for _ in range(50):
        rows, picks = _draw(weights, allowed, g)
        assert rows.tolist() == [0, 1, 2, 3] and bool(allowed[rows, picks].all())
    rows, picks = _draw(weights[:2, :2], ~same_video({"video_id": ["a", "a"]}, 2, "cpu"), g)
    assert len(rows) == len(picks) == 0                          # one video only: no negative at all


def test_forward_gives_the_losses_in_meltr_order_and_the_primary_alone():
    model = tiny("qa_oe_pem")
    b = batch("qa_oe_pem")
    assert list(model(b)) == ["oe", "vtc", "vtm", "mlm", "pem"]
    assert list(model(b, tasks=["oe"])) == ["oe"]
    assert list(tiny()(batch())) == ["oe", "vtc", "vtm", "mlm"]


def test_pem_needs_the_entity_column_and_checks_it():
    model, b = tiny("qa_oe_pem"), batch("qa_oe_pem")
    with pytest.raises(ValueError, match="entity_scores"):
        model({k: v for k, v in b.items() if k != ENTITY_COLUMN})
    with pytest.raises(ValueError, match=r"entity_scores.*\(3, 5\).*\(3, 12\)"):
        model(dict(b, **{ENTITY_COLUMN: torch.ones(3, 5)}))
    with pytest.raises(ValueError, match="entity_scores.*non-negative"):
        model(dict(b, **{ENTITY_COLUMN: -torch.ones(3, 12)}))
    assert list(model({k: v for k, v in b.items() if k != ENTITY_COLUMN}, tasks=["oe"])) == ["oe"]


def test_an_all_zero_entity_row_carries_no_pem_loss():
    model = tiny("qa_oe_pem").eval()
    b = batch("qa_oe_pem")
    scores = b[ENTITY_COLUMN].clone()
    scores[1] = 0.0
    with torch.no_grad():
        pem = float(model(dict(b, **{ENTITY_COLUMN: scores}), tasks=["pem"])["pem"])
        ids, mask = model.text(b)
        fused = model.fuse(model.encode_text(ids, mask), mask, model.encode_video(model.frames(b["frames"])))
        logits = model.mpm_head(fused[:, ids.shape[1] + 1:].mean(1))
        keep = [0, 2]
        expected = -(F.log_softmax(logits[keep], 1) * scores[keep]).sum(1).mean()
    assert pem == pytest.approx(float(expected), rel=1e-5)


def test_an_answer_outside_the_vocabulary_is_counted_wrong_never_dropped():
    model = tiny().eval()
    with torch.no_grad():                       # the classifier always answers 0
        model.classifier[2].weight.zero_()
        model.classifier[2].bias.copy_(torch.arange(10, 0, -1).float())
    b = dict(batch(), answer=torch.tensor([0, -1, 0]))
    assert model.evaluate([b])["accuracy"] == pytest.approx(200 / 3)
    with torch.no_grad():
        train_loss = float(model(b, tasks=["oe"])["oe"])          # −1 carries no training loss
        logits = tasks.oe_logits(model, b)
    assert train_loss == pytest.approx(float(F.cross_entropy(logits[[0, 2]], torch.tensor([0, 0]))), rel=1e-5)
    with pytest.raises(ValueError, match=r"answer.*\[0, 10\).*num_answers"):
        model(dict(batch(), answer=torch.tensor([0, 10, 1])))


def test_bad_input_names_the_limit():
    model, b = tiny(), batch()
    with pytest.raises(ValueError, match="time_embed has 4 rows"):
        model(dict(b, frames=torch.zeros(3, 5, 32, 32, 3, dtype=torch.uint8)))
    with pytest.raises(ValueError, match="pos_embed"):
        model(dict(b, frames=torch.zeros(3, 4, 48, 48, 3, dtype=torch.uint8)))
    with pytest.raises(ValueError, match="no task 'retrieval'"):
        create_backbone("alpro_tiny", task="retrieval")


def test_spec_limits_are_the_built_sizes():
    spec, model = get_spec("alpro_tiny"), tiny()
    data = spec.tasks["qa_oe"].data
    assert data.max_frames == model.visual_encoder.model.time_embed.shape[1] == data.num_frames
    assert data.text_positions == model.text_encoder.bert.embeddings.position_embeddings.weight.shape[0]
    assert spec.tasks["qa_oe_pem"].data.batch_keys[-1] == ENTITY_COLUMN
    base = get_spec("alpro_base").tasks["qa_oe"].data
    assert (base.num_frames, base.image_size, base.text_len, base.items) == (16, 224, 40, "qa_oe")
