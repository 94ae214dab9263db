"""UniVL on univl_tiny: the eight losses, their order and subsets, B-U6, bad input, negative losses in MELTR."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _univl_common import batch, tiny

from meltr_ray.backbones import get_spec
from meltr_ray.backbones.univl.config import LOSSES
from meltr_ray.backbones.univl.tasks import batch_inputs, decoder_targets
from meltr_ray.config import MeltrConfig
from meltr_ray.core.bilevel import regulariser
from meltr_ray.core.meltr import build_combiner

ORIGINAL_FIVE = ("joint", "align", "cmlm", "cmfm", "decoder")


def test_the_spec_lists_the_eight_losses_primary_first_then_the_official_order():
    spec = get_spec("univl_base")
    assert spec.tasks["retrieval"].losses == ("align", "joint", "cmlm", "cmfm", "m_joint", "m_align", "decoder",
                                              "m_decoder")
    assert spec.tasks["captioning"].losses == ("decoder",) + tuple(x for x in LOSSES if x != "decoder")
    assert spec.tasks["sentiment"].losses == ("sentiment",) + LOSSES
    assert spec.tasks["retrieval"].data.modality == "features" and spec.tasks["retrieval"].data.feature_dim == 1024
    assert spec.tasks["sentiment"].data.items == "scores" and spec.tasks["captioning"].data.items == "captions"


def test_losses_override_selects_a_subset_in_meltr_order():
    model = tiny("captioning", losses=list(ORIGINAL_FIVE) + ["m_decoder"])
    assert model.task_names == ["decoder", "joint", "align", "cmlm", "cmfm", "m_decoder"]
    losses = model(batch("captioning"))
    assert list(losses) == model.task_names


def test_a_subset_builds_only_the_heads_it_uses():
    model = tiny("retrieval", losses=["align", "joint"])
    assert not any(hasattr(model, part) for part in ("cls", "cls_visual", "decoder"))
    sum(model(batch()).values()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_primary_override_moves_align_first_for_sentiment():
    model = tiny("sentiment", primary="align")
    assert model.task_names[:2] == ["align", "sentiment"] and model.primary_task == "align"


@pytest.mark.parametrize("bad, message", [(dict(losses=["align", "nope"]), "unknown"),
                                          (dict(losses=["joint"]), "primary loss 'align'"),
                                          (dict(losses=["align", "align"]), "distinct")])
def test_bad_loss_selections_are_clear_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        tiny("retrieval", **bad)


def test_pad_targets_carry_no_decoder_loss_unless_the_official_quirk_is_on():
    """B-U6: the loss equals the CE over real caption targets; count_pad_targets=True also averages PADs."""
    for official in (False, True):
        model = tiny("captioning", count_pad_targets=official).eval()
        b = batch("captioning")
        with torch.no_grad():
            loss = model(b, tasks=["decoder"])["decoder"]
            x = batch_inputs(model, b)
            hidden, _ = model.cross_pair(model.encode_text(x["ids"], x["mask"]), x["mask"],
                                         model.encode_video(x["features"], x["video_mask"]), x["video_mask"])
            ids, mask = x["caption"], x["caption_mask"]
            logits = model.decode_logits(ids[:, :-1], mask[:, :-1], hidden, torch.cat([x["mask"], x["video_mask"]], 1))
            per_token = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
            real = mask[:, 1:].bool()
            expected = per_token.mean() if official else per_token[real].mean()
        assert torch.allclose(loss, expected, atol=1e-5)
        assert (mask[:, 1:] == 0).any()                                  # the batch does have PAD targets
    _, _, target = decoder_targets(tiny("captioning"), ids, mask)
    assert bool((target[mask[:, 1:] == 0] == -1).all())


def test_primary_alone_matches_the_full_forward_in_eval_mode():
    model = tiny("retrieval").eval()
    b = batch()
    with torch.no_grad():
        full, alone = model(b), model(b, tasks=["align"])
    assert torch.allclose(full["align"], alone["align"])


def test_captioning_without_a_transcript_encodes_the_empty_text_and_cmlm_is_zero():
    model = tiny("captioning")
    b = {k: v for k, v in batch("captioning").items() if not k.startswith("transcript")}
    losses = model(b)
    assert float(losses["cmlm"].detach()) == 0.0 and torch.isfinite(torch.stack(list(losses.values()))).all()
    x = batch_inputs(model, b)
    assert x["ids"].tolist() == [[101, 102]] * 3 and not torch.equal(x["caption"], x["ids"])


# ---- bad input -----------------------------------------------------------------------------------------------
def test_features_of_the_wrong_width_name_feature_dim():
    b = batch()
    b["features"] = torch.randn(3, 6, 1024)
    with pytest.raises(ValueError, match=r"features must be \(B, F, 16\) \(feature_dim\)"):
        tiny()(b)


def test_clips_longer_than_the_position_table_are_an_error():
    b = batch()
    b["features"], b["feature_mask"] = torch.randn(3, 65, 16), torch.ones(3, 65, dtype=torch.long)
    with pytest.raises(ValueError, match="visual_positions"):
        tiny()(b)


def test_text_plus_frames_longer_than_the_cross_table_are_an_error():
    b = batch()
    b["features"], b["feature_mask"] = torch.randn(3, 60, 16), torch.ones(3, 60, dtype=torch.long)
    with pytest.raises(ValueError, match="cross_positions"):
        tiny(cross_positions=70)(b)


def test_captions_longer_than_the_decoder_position_table_are_an_error():
    b = batch("captioning")
    b["text_ids"] = torch.cat([b["text_ids"]] * 5, dim=1)          # 80 tokens > 64 text/decoder positions
    b["text_mask"] = torch.cat([b["text_mask"]] * 5, dim=1)
    with pytest.raises(ValueError, match="text_positions"):
        tiny("captioning")(b)


def test_out_of_vocabulary_ids_and_missing_scores_are_errors():
    b = batch()
    b["text_ids"][0, 1] = 500
    with pytest.raises(ValueError, match="vocab_size"):
        tiny()(b)
    b = batch("sentiment")
    del b["score"]
    with pytest.raises(ValueError, match="score"):
        tiny("sentiment")(b)


def test_unknown_override_and_vocab_disagreement_are_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown UniVL override"):
        tiny(hidden=3)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]) + "\n")
    model = tiny(vocab_path=str(vocab))
    assert (model.cfg.vocab_size, model.cfg.cls_token_id, model.cfg.sep_token_id) == (7, 2, 3)
    with pytest.raises(ValueError, match="disagrees"):
        tiny(vocab_path=str(vocab), vocab_size=120)


# ---- negative losses -----------------------------------------------------------------------------------------
def test_meltr_and_the_regulariser_take_negative_losses():
    """CMLM/CMFM are cross-entropies (≥ 0) here, but MELTR's input is any real vector: negative values give a
    finite output, finite task weights and finite gradients, and the regulariser is |Σℓ − MELTR(ℓ)| ≥ 0."""
    torch.manual_seed(0)
    combiner = build_combiner(MeltrConfig(preset="univl"), 8)
    losses = torch.tensor([2.0, -3.5, 0.7, -12.0, 1.0, 0.2, -0.1, 4.0], requires_grad=True)
    out = combiner(losses)
    reg = regulariser(losses, out)
    (out + reg).backward()
    assert torch.isfinite(out) and torch.isfinite(losses.grad).all() and losses.grad.abs().sum() > 0
    assert float(reg.detach()) == pytest.approx(abs(float(losses.sum().detach()) - float(out.detach())), rel=1e-6)
    assert all(torch.isfinite(p.grad).all() for p in combiner.parameters() if p.grad is not None)
    assert torch.isfinite(combiner.task_weights(losses.detach())).all()


def test_cmlm_and_cmfm_are_non_negative_cross_entropies():
    losses = tiny()(batch())
    assert float(losses["cmlm"].detach()) >= 0 and float(losses["cmfm"].detach()) >= 0
