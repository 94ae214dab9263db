"""UniVL's losses (reference §3.3, B-U6 fixed) for retrieval, captioning and multimodal sentiment.

With S, V the text and visual encoder outputs of the clean inputs and S̃, Ṽ those of the masked inputs
(:mod:`.masking`; one mask draw shared by every masked loss of a step):

* **Joint** (S, V): mean-pool text (without [CLS]) and valid frames, L2-normalise, s = cosine matrix (B×B);
  L = mean_ij [relu(m + s_ij − s_ii) + relu(m + s_ij − s_jj)], m = 0.1 (max-margin ranking).
* **Align** (S, V): a_ij = similarity_dense(pool(cross(S_i, V_j))) over all B×B pairs;
  L = mean_i −log softmax_j(a_i·)_i (text→video, no temperature).
* **CMLM** / **CMFM** on cross(S̃, Ṽ): MLM cross-entropy on the masked text tokens; for each masked frame k
  the MFM head predicts p_k ∈ ℝ^D and L = mean_k −log softmax_j(p_k · x_j)_k over all valid frames j of the
  batch (x = LayerNorm'd clean features): an NCE whose negatives are the batch's other frames. Both are
  ≥ 0 here (cross-entropies).
* **M-Joint** / **M-Align**: Joint and Align on (S̃, Ṽ).
* **Decoder** on cross(S, V), **M-Decoder** on cross(S̃, Ṽ): teacher-forced CE of ``[CLS] caption`` →
  ``caption [SEP]``; [PAD] targets carry no loss (the official code counted them, B-U6;
  ``count_pad_targets=True`` restores that).
* **Sentiment** (CMU-MOSI): ŷ = sentiment_head(pool(cross(S, V))), L = mean (ŷ − y)², y ∈ [−3, 3] (MSE:
  unlike L1 its curvature is not zero almost everywhere, which the Neumann terms of the hypergradient use).

The encoder text is the caption (retrieval: the decoder then reconstructs its own input, as officially),
the row's text for sentiment, and for captioning the ASR transcript ``batch["transcript_ids"]`` when the batch
has one, else the empty text ``[CLS] [SEP]`` (the official fallback: transcripts were never released). With
an empty text CMLM has nothing to mask and is a graph-connected 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .masking import IGNORE, mask_frames, mask_text

CLEAN = {"joint", "align", "decoder", "sentiment"}
MASKED = {"cmlm", "cmfm", "m_joint", "m_align", "m_decoder"}
NCE_MASKED = -1e8        # logit of padded frames in the CMFM NCE (official value; finite: safe twice-backward)


# ---- inputs --------------------------------------------------------------------------------------------------
def encoder_text(m, batch: dict, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of the text the encoders read (see the module docstring)."""
    if m.task != "captioning":
        return caption(m, batch)
    if batch.get("transcript_ids") is not None:
        ids = m.check_text(batch["transcript_ids"], "transcript_ids")
        return ids, torch.as_tensor(batch["transcript_mask"]).to(m.device).long()
    ids = torch.tensor([[m.cfg.cls_token_id, m.cfg.sep_token_id]], device=m.device).expand(batch_size, -1)
    return ids, torch.ones_like(ids)


def caption(m, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    if "text_ids" not in batch:
        raise ValueError("UniVL needs batch['text_ids'] / batch['text_mask'] (set data.vocab_path so the "
                         "data layer tokenises the captions)")
    return m.check_text(batch["text_ids"]), torch.as_tensor(batch["text_mask"]).to(m.device).long()


def graph_zero(tensor: torch.Tensor) -> torch.Tensor:
    """A 0 that still depends on ``tensor`` (so DDP and the contract see the path used)."""
    return tensor.sum() * 0.0


# ---- the pieces ----------------------------------------------------------------------------------------------
def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def joint_loss(S, text_mask, V, video_mask, margin: float) -> torch.Tensor:
    """Max-margin ranking of cosine similarities of the mean-pooled text (without [CLS]) and video."""
    text_mask = text_mask.clone()
    text_mask[:, 0] = 0
    t = F.normalize(masked_mean(S, text_mask), dim=-1)
    v = F.normalize(masked_mean(V, video_mask), dim=-1)
    s = t @ v.t()
    d = s.diag()
    return (F.relu(margin + s - d.view(-1, 1)) + F.relu(margin + s - d.view(1, -1))).mean()


def pair_logits(m, S, text_mask, V, video_mask) -> torch.Tensor:
    """(Bt, Bv) Align logits of every (text i, video j) pair: one cross pass per pair."""
    bt, bv = S.shape[0], V.shape[0]
    _, pooled = m.cross_pair(S.repeat_interleave(bv, 0), text_mask.repeat_interleave(bv, 0),
                             V.repeat(bt, 1, 1), video_mask.repeat(bt, 1))
    return m.similarity_dense(pooled).view(bt, bv)


def align_loss(m, S, text_mask, V, video_mask) -> torch.Tensor:
    logits = pair_logits(m, S, text_mask, V, video_mask)
    return F.cross_entropy(logits, torch.arange(logits.shape[0], device=logits.device))


def decoder_targets(m, ids: torch.Tensor, mask: torch.Tensor) -> tuple:
    """(decoder input ``[CLS] caption``, its mask, targets ``caption [SEP]`` with [PAD] → ignored)."""
    target = ids[:, 1:]
    if not m.cfg.count_pad_targets:
        target = target.masked_fill(mask[:, 1:] == 0, IGNORE)
    return ids[:, :-1], mask[:, :-1], target


def decoder_loss(m, memory, memory_mask, ids, mask) -> torch.Tensor:
    inputs, inputs_mask, target = decoder_targets(m, ids, mask)
    logits = m.decode_logits(inputs, inputs_mask, memory, memory_mask)
    if not bool((target != IGNORE).any()):
        return graph_zero(logits)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE)


def cmlm_loss(m, text_hidden, labels) -> torch.Tensor:
    keep = labels >= 0
    if not bool(keep.any()):
        return graph_zero(m.cls(text_hidden[:, :1]))
    return F.cross_entropy(m.cls(text_hidden[keep]), labels[keep])


def cmfm_loss(m, video_hidden, clean_features, video_mask, labels) -> torch.Tensor:
    """NCE of each masked frame's prediction against every valid frame of the batch (module docstring)."""
    dim = clean_features.shape[-1]
    pred = m.cls_visual(video_hidden).reshape(-1, dim)
    logits = pred @ clean_features.reshape(-1, dim).t()
    logits = logits.masked_fill(video_mask.reshape(1, -1) == 0, NCE_MASKED)
    labels = labels.reshape(-1)
    keep = labels >= 0
    if not bool(keep.any()):
        return graph_zero(logits)
    return F.cross_entropy(logits[keep], labels[keep])


def sentiment_scores(m, pooled: torch.Tensor) -> torch.Tensor:
    return m.sentiment_head(pooled).squeeze(-1)


def sentiment_loss(m, pooled: torch.Tensor, batch: dict) -> torch.Tensor:
    if batch.get("score") is None:
        raise ValueError("the sentiment loss needs batch['score'] (a float in [-3, 3] per sample; ingest "
                         "--format cmu-mosi)")
    target = torch.as_tensor(batch["score"]).to(m.device).float()
    return F.mse_loss(sentiment_scores(m, pooled), target)


# ---- the losses of one batch ---------------------------------------------------------------------------------
def _clean_losses(m, x: dict, batch: dict, wanted: set) -> dict:
    out = {}
    S, V = m.encode_text(x["ids"], x["mask"]), m.encode_video(x["features"], x["video_mask"])
    if "joint" in wanted:
        out["joint"] = joint_loss(S, x["mask"], V, x["video_mask"], m.cfg.margin)
    if "align" in wanted:
        out["align"] = align_loss(m, S, x["mask"], V, x["video_mask"])
    if wanted & {"decoder", "sentiment"}:
        hidden, pooled = m.cross_pair(S, x["mask"], V, x["video_mask"])
        memory_mask = torch.cat([x["mask"], x["video_mask"]], dim=1)
        if "decoder" in wanted:
            out["decoder"] = decoder_loss(m, hidden, memory_mask, x["caption"], x["caption_mask"])
        if "sentiment" in wanted:
            out["sentiment"] = sentiment_loss(m, pooled, batch)
    return out


def _masked_losses(m, x: dict, wanted: set) -> dict:
    c, out = m.cfg, {}
    ids, text_labels = mask_text(x["ids"], x["mask"], (c.pad_token_id, c.cls_token_id, c.sep_token_id),
                                 c.mask_token_id, c.vocab_size, c.mask_prob, m.mask_generator)
    features, frame_labels = mask_frames(x["features"], x["video_mask"], c.mask_prob, m.mask_generator)
    S, V = m.encode_text(ids, x["mask"]), m.encode_video(features, x["video_mask"])
    if "m_joint" in wanted:
        out["m_joint"] = joint_loss(S, x["mask"], V, x["video_mask"], c.margin)
    if "m_align" in wanted:
        out["m_align"] = align_loss(m, S, x["mask"], V, x["video_mask"])
    if wanted & {"cmlm", "cmfm", "m_decoder"}:
        hidden, _ = m.cross_pair(S, x["mask"], V, x["video_mask"])
        n_text = ids.shape[1]
        if "cmlm" in wanted:
            out["cmlm"] = cmlm_loss(m, hidden[:, :n_text], text_labels)
        if "cmfm" in wanted:
            clean = m.normalize_video.visual_norm2d(x["features"])
            out["cmfm"] = cmfm_loss(m, hidden[:, n_text:], clean, x["video_mask"], frame_labels)
        if "m_decoder" in wanted:
            memory_mask = torch.cat([x["mask"], x["video_mask"]], dim=1)
            out["m_decoder"] = decoder_loss(m, hidden, memory_mask, x["caption"], x["caption_mask"])
    return out


def batch_inputs(m, batch: dict) -> dict:
    """The checked tensors every loss reads: features, masks, encoder text, caption."""
    features, video_mask = m.check_features(batch)
    ids, mask = encoder_text(m, batch, features.shape[0])
    m.check_pair_length(ids.shape[1], features.shape[1])
    cap, cap_mask = caption(m, batch) if m.task == "captioning" else (ids, mask)
    return {"features": features, "video_mask": video_mask, "ids": ids, "mask": mask, "caption": cap,
            "caption_mask": cap_mask}


def univl_losses(m, batch: dict, wanted: set) -> dict:
    """The ``wanted`` losses of one batch (only the passes they need are run)."""
    x = batch_inputs(m, batch)
    out = {}
    if wanted & CLEAN:
        out.update(_clean_losses(m, x, batch, wanted))
    if wanted & MASKED:
        out.update(_masked_losses(m, x, wanted))
    return out
