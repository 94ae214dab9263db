"""Violet's own behaviour: spec = model limits, whole-backbone hypergradient, clean primary frames, masking,
evaluation and bad input. What every backbone must do (losses in spec order, primary alone, backward reach,
hypergradient at the default scope, bilevel step, checkpoints) is tests/backbones/test_contract.py."""
from __future__ import annotations

import pytest
import torch
from _violet_common import (CLASSES, CLS, MASK, SEP, make_batch, one_torch_thread,  # noqa: F401
                            tiny)

from meltr_ray.backbones import create_backbone, get_spec, list_backbones
from meltr_ray.backbones.violet.model import TASK_LOSSES
from meltr_ray.backbones.violet.masking import (color_vq_ids, mask_text, mvm_labels, sample_video_blocks,
                                                zero_patches)
from meltr_ray.core.hypergrad import hypergradient, select_scope
from meltr_ray.core.meltr import MELTR, stack_losses

TASKS = sorted(TASK_LOSSES)


@pytest.fixture(scope="module")
def models():
    return {task: tiny(task) for task in TASKS}


def test_registry_has_both_variants():
    assert {"violet_base", "violet_tiny"} <= set(list_backbones("violet*"))


@pytest.mark.parametrize("name", list_backbones("violet*"))
@pytest.mark.parametrize("task", TASKS)
def test_every_variant_builds_and_its_spec_states_the_models_limits(name, task):
    """On the meta device (no memory, no init cost; what the preflight check does). The spec's limits are the
    built model's own sizes (rows of emb_len, emb_pos and the text position table), so the two cannot drift."""
    with torch.device("meta"):
        model = create_backbone(name, task=task)
    spec = get_spec(name)
    data = spec.tasks[task].data
    assert model.task_names == list(TASK_LOSSES[task]) == list(spec.tasks[task].losses)
    assert data.max_frames == model.cfg.max_frames == model.enc_img.emb_len.shape[1]
    stride = model.enc_img.swin.stride
    assert data.max_image_size == stride * model.cfg.max_grid
    assert model.enc_img.emb_pos.shape[2] == 1 + model.cfg.max_grid ** 2
    positions = model.enc_txt.emb_txt.position_embeddings.num_embeddings
    assert data.text_positions == model.cfg.max_text_len == positions
    assert data.num_frames <= data.max_frames and data.text_len <= data.text_positions
    assert data.image_size <= data.max_image_size and data.image_size % stride == 0
    # the default meta scope: the top cross layer and every head, a strict subset of the parameters
    assert spec.meta_scope(model) == model.default_meta_scope
    scoped = select_scope(model, spec.meta_scope(model))
    heads = [n for n, _ in model.named_parameters() if n.startswith("fc")]
    assert heads and len(scoped) < len(list(model.parameters()))
    assert {id(p) for n, p in model.named_parameters() if n.startswith("fc")} <= {id(p) for p in scoped}


def test_hypergradient_through_every_parameter(models):
    """The official recipes put the whole backbone in scope: double backward through Swin (conv3d, shifted
    windows, roll/pad) and the cross encoder."""
    model = models["retrieval"]
    combiner = MELTR(3, d_model=32, d_ffn=32, d_scale=16, n_heads=4)
    batch = make_batch("retrieval", size=64)
    outer = model(batch, tasks=["vtm"])["vtm"]
    inner = combiner(stack_losses(model(batch), model.task_names))
    grads = hypergradient(outer, inner, select_scope(model, "all"), list(combiner.parameters()),
                          neumann_steps=1, neumann_lr=1e-3)
    assert all(torch.isfinite(g).all() for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0


@pytest.mark.parametrize("task", TASKS)
def test_primary_loss_sees_clean_frames(task):
    """B-V2 fixed: in eval mode the primary loss does not depend on the random masks of the other losses."""
    model = tiny(task).eval()
    batch = make_batch(task, size=64)        # a 2×2 token grid, so the random blocks differ between calls
    alone = model(batch, tasks=[model.primary_task])[model.primary_task]
    with_aux = model(batch)[model.primary_task]
    torch.testing.assert_close(alone, with_aux)
    faithful = tiny(task, masked_primary=True).eval()
    a, b = (faithful(batch, tasks=[model.primary_task])[model.primary_task] for _ in range(2))
    assert not torch.equal(a, b)                     # official behaviour: masked frames, different each call


@pytest.mark.parametrize("task", TASKS)
def test_evaluate_counts_every_example(models, task):
    batches = [make_batch(task, batch=3, seed=1), make_batch(task, batch=2, seed=2)]   # uneven last batch
    metrics = models[task].evaluate(batches)
    if task == "retrieval":
        assert set(metrics) == {"r1", "r5", "r10", "medr", "mnr"}
        assert 1 <= metrics["medr"] <= 5 and metrics["r5"] == 100.0
    else:
        assert set(metrics) == {"accuracy"}
        assert any(abs(metrics["accuracy"] - 100 * k / 5) < 1e-9 for k in range(6))


def test_retrieval_evaluation_ranks_unique_videos(models):
    """Two captions of one video: the score matrix has one column per unique video id."""
    batch = make_batch("retrieval", batch=3)
    batch["video_id"] = ["a", "a", "b"]
    batch["frames"][1] = batch["frames"][0]
    metrics = models["retrieval"].evaluate([batch])
    assert metrics["r5"] == 100.0 and metrics["mnr"] <= 2


# ---- masking ------------------------------------------------------------------------------------------
def test_mtm_masks_only_real_tokens_and_every_option_row():
    batch = make_batch("qa_mc", batch=4, length=10)
    ids, attention = batch["text_ids"], batch["text_mask"]
    masked, labels = mask_text(ids, attention, (0, CLS, SEP), MASK, 0.15, torch.Generator().manual_seed(0))
    chosen = labels >= 0
    assert chosen.any(-1).all()                               # per option row, at least one token
    assert not chosen[(ids == CLS) | (ids == SEP) | (attention == 0)].any()
    assert torch.equal(masked[chosen], torch.full_like(masked[chosen], MASK))
    assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(masked[~chosen], ids[~chosen])
    again = mask_text(ids, attention, (0, CLS, SEP), MASK, 0.15, torch.Generator().manual_seed(0))
    assert torch.equal(again[1], labels)                      # deterministic given the generator


def test_mvm_blocks_labels_and_zeroed_patches():
    g = torch.Generator().manual_seed(0)
    blocks = sample_video_blocks(2, 4, 2, 3, g)
    assert blocks.view(2, -1).any(1).all()
    vq = torch.randint(0, 50, (2, 4, 2, 3))
    labels = mvm_labels(vq, blocks)
    assert labels.shape == (2, 4 * (1 + 6))
    per_frame = labels.view(2, 4, 7)
    assert (per_frame[:, :, 0] == -1).all()                    # each frame's [CLS]
    assert torch.equal(per_frame[:, :, 1:][blocks.view(2, 4, 6)], vq.view(2, 4, 6)[blocks.view(2, 4, 6)])
    frames = torch.rand(2, 4, 3, 64, 96) + 0.1
    out = zero_patches(frames, blocks)
    t, i, j = blocks[0].nonzero()[0].tolist()
    assert (out[0, t, :, 32 * i:32 * i + 32, 32 * j:32 * j + 32] == 0).all()
    assert torch.equal(out[~blocks.repeat_interleave(32, 2).repeat_interleave(32, 3).unsqueeze(2)
                           .expand_as(out)], frames[~blocks.repeat_interleave(32, 2).repeat_interleave(32, 3)
                                                    .unsqueeze(2).expand_as(frames)])


def test_color_targets_cover_the_patch_grid():
    ids = color_vq_ids(torch.rand(2, 3, 3, 64, 32))
    assert ids.shape == (2, 3, 2, 1) and int(ids.max()) < 512 and int(ids.min()) >= 0


# ---- bad input ----------------------------------------------------------------------------------------
def test_missing_vq_ids_says_how_to_produce_them(models):
    batch = make_batch("retrieval")
    del batch["vq_ids"]
    with pytest.raises(ValueError, match="vq_ids"):
        models["retrieval"](batch)
    assert list(models["retrieval"](batch, tasks=["vtm", "mtm"])) == ["vtm", "mtm"]    # no MVM, no targets
    assert "mvm" in tiny("action", mvm_targets="color", mvm_vocab=512)(batch)


def test_too_many_frames_names_the_count(models):
    with pytest.raises(ValueError, match="7 frames"):
        models["action"](make_batch("action", frames=7))


def test_image_size_not_multiple_of_32(models):
    with pytest.raises(ValueError, match="48x48"):
        models["action"](make_batch("action", size=48))


def test_text_longer_than_the_position_table(models):
    with pytest.raises(ValueError, match="text length 65"):
        models["qa_oe"](make_batch("qa_oe", length=65))


def test_unknown_task_override_and_loss():
    with pytest.raises(ValueError, match="'captioning'"):
        create_backbone("violet_tiny", task="captioning")
    with pytest.raises(ValueError, match="'depth'"):
        create_backbone("violet_tiny", task="retrieval", depth=3)
    with pytest.raises(ValueError, match="'mc'"):
        tiny("retrieval")(make_batch("retrieval"), tasks=["mc"])


def test_out_of_range_label_names_the_field(models):
    batch = make_batch("action")
    batch["label"][0] = CLASSES
    with pytest.raises(ValueError, match="label"):
        models["action"](batch)


def test_num_answers_alias_sets_the_answer_head():
    model = tiny("qa_oe", num_answers=11)
    assert model.fc_oe[3].out_features == 11 and model.cfg.size_vocab == 11


def test_vq_extraction_pads_resizes_and_maps_pixels():
    """Official extract_vq: square frame → grid·8 px → map_pixels to [0.1, 0.9] → dVAE → argmax per cell."""
    from meltr_ray.backbones.violet.masking import video_vq_ids
    seen = []

    def encoder(x):
        seen.append(x)
        logits = torch.zeros(x.shape[0], 8192, x.shape[-2] // 8, x.shape[-1] // 8)
        logits[:, 42] = 1.0
        return logits
    frames = torch.full((5, 48, 64, 3), 255, dtype=torch.uint8)          # white, wider than high
    codes = video_vq_ids(frames, encoder, grid=2, batch=2)
    assert codes.shape == (5, 2, 2) and (codes == 42).all() and len(seen) == 3
    x = torch.cat(seen)
    assert x.shape[1:] == (3, 16, 16) and float(x.min()) >= 0.1 - 1e-6 and float(x.max()) <= 0.9 + 1e-6
    assert float(x[:, :, 0].mean()) < float(x[:, :, 8].mean())          # zero padding on top (centred)


def test_padding_options_are_never_chosen(models):
    batch = make_batch("qa_mc", batch=4)
    batch["option_mask"] = torch.ones(4, 3, dtype=torch.long)
    batch["option_mask"][:, 2] = 0                           # questions with two real options
    batch["text_ids"][:, 2], batch["text_mask"][:, 2] = 0, 0
    batch["answer"] = torch.tensor([0, 1, 0, 1])
    from meltr_ray.backbones.violet.tasks import mc_scores
    model = models["qa_mc"].eval()
    with torch.no_grad():
        video = model.encode_video(model.frames01(batch["frames"]))
        scores = mc_scores(model, video, batch["text_ids"], batch["text_mask"], batch["option_mask"])
    assert (scores.argmax(-1) < 2).all()
    assert torch.isfinite(models["qa_mc"].train()(batch)["mc"])


def test_answers_outside_the_vocabulary_carry_no_loss_and_count_as_wrong(models):
    batch = make_batch("qa_oe")
    batch["answer"][:] = -1                                  # the data layer's "not in the top-K answers"
    assert float(models["qa_oe"](batch, tasks=["oe"])["oe"].detach()) == 0.0
    assert models["qa_oe"].evaluate([batch]) == {"accuracy": 0.0}


def test_official_geometry_224px_five_frames():
    """Base's window (8, 7, 7) at 224 px and 5 frames: the temporal window shrinks to 5, the spatial windows
    tile 56/28/14/7 exactly, and our bias index for the shrunk window equals the official ``index[:N, :N]``."""
    from meltr_ray.backbones.violet.video_swin import relative_position_index
    full = relative_position_index((8, 7, 7), (8, 7, 7))
    n = 5 * 7 * 7
    assert torch.equal(relative_position_index((5, 7, 7), (8, 7, 7)), full[:n, :n])
    model = tiny("retrieval", window=(8, 7, 7))
    batch = make_batch("retrieval", batch=2, frames=5, size=224)
    assert batch["vq_ids"].shape == (2, 5, 7, 7)
    losses = model(batch)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.enc_img.swin.layers[0].blocks[1].attn.relative_position_bias_table.grad is not None


@pytest.mark.slow
def test_violet_base_forward_backward_at_official_size():
    torch.manual_seed(0)
    model = create_backbone("violet_base", task="qa_oe", mvm_vocab=8192)
    batch = make_batch("qa_oe", batch=2, frames=5, size=224, length=25)
    batch["vq_ids"] = torch.randint(0, 8192, (2, 5, 7, 7))
    batch["text_ids"] = batch["text_ids"].clamp(max=30521)
    losses = model(batch)
    assert list(losses) == ["oe", "vtm", "mtm", "mvm"] and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
