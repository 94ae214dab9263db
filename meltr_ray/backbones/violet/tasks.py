"""Violet's task losses (reference §4.3, without bugs B-V2..B-V4) and evaluation (§4.6, plus MnR).

All losses are cross-entropies; masked positions only (labels −1 carry no loss). With ``m`` a :class:`Violet`:

* VTM over the B×B (video i, text j) pairs of a batch: s_ij = head_vtm(h_[CLS](v_i, t_j)),
  L = CE_i(s_i· / 0.05, target i) — video→text classification among the batch's texts (official);
  ``vtm_symmetric`` averages it with the text→video CE_j(s_·j / 0.05, target j).
* MTM + MVM: one cross pass on (masked video, masked text); MLM head on text positions, the 8192-way MVM head on
  video positions.
* Retrieval [VTM, MTM, MVM]: VTM is primary, so it sees clean frames (B-V2; ``masked_primary=True`` restores
  the official masked frames).
* QA-OE [OE, VTM, MTM, MVM]: OE = CE(head_oe(h_[CLS](clean video, question)), answer); VTM pairs videos with
  the questions; auxiliaries use the masked video (official).
* QA-MC [MC, VTM, MTM, MVM] with prompts (B, O, L): MC = CE over the O option scores head_mc(h_[CLS](v, p_k));
  VTM pairs each video with the ground-truth prompt of every question of the batch (B-V4 fixed); MTM masks
  each option row token by token (B-V3 fixed); MVM reads the ground-truth option's row (official).
  The data layer builds ``[CLS] question [SEP] options [SEP] answer_k [SEP]`` and never cuts the answer (B-V5);
  padding options (``option_mask`` 0) score −10⁴.
* Targets −1 (an open-ended answer outside the top-K vocabulary, a clip without a label or visual tokens) carry
  no loss; in evaluation such an example counts as wrong.
* Action [CLS, MVM] (supplementary §H, video only): the "text" is a lone [CLS] token whose output feeds the
  classifier, as the text [CLS] feeds every other head.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...metrics.classification import AccuracyMeter
from ...metrics.retrieval import all_pair_scores, retrieval_metrics
from .._layers import MASKED_SCORE
from .masking import color_vq_ids, mask_text, mvm_labels, sample_video_blocks, zero_patches

VQ_HELP = ("the MVM loss needs batch['vq_ids'] (B, T, H/32, W/32): visual-token ids of every frame, stored in "
           "the shards at ingest (`meltr-ray ingest ... --vq codes.npz`). Compute them once with a DALL-E dVAE "
           "encoder and meltr_ray.backbones.violet.masking.video_vq_ids (README, Violet section), or build the "
           "backbone with mvm_targets='color' (a stand-in for demos only)")


# ---- shared pieces -------------------------------------------------------------------------------------------
def _labelled_ce(head, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE of ``head`` at positions with a label ≥ 0 (the head only runs there); 0 when there are none."""
    keep = labels >= 0
    if not bool(keep.any()):     # a zero that still touches the head, so DDP sees every parameter used
        return head(hidden.reshape(-1, hidden.shape[-1])[:1]).sum() * 0.0
    return F.cross_entropy(head(hidden[keep]), labels[keep])


def _text(m, batch, dims: int):
    ids = torch.as_tensor(batch["text_ids"])
    if ids.dim() != dims:
        raise ValueError(f"text_ids must have {dims} dimensions for Violet task {m.task!r}, "
                         f"got shape {tuple(ids.shape)}")
    return m.check_text(ids), torch.as_tensor(batch["text_mask"]).to(m.device).long()


def _targets(m, batch, key: str, classes: int, name: str) -> torch.Tensor:
    """Class targets; −1 = none (an open-ended answer outside the top-K vocabulary): no loss, wrong in eval."""
    values = torch.as_tensor(batch[key]).to(m.device).long()
    if values.numel() and (int(values.min()) < -1 or int(values.max()) >= classes):
        raise ValueError(f"batch[{key!r}] must lie in [0, {classes}) ({name}) or be -1 (none), got "
                         f"[{int(values.min())}, {int(values.max())}]")
    return values


def _ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean CE over examples with a target (≥ 0); a graph-connected 0 when there is none."""
    keep = targets >= 0
    if not bool(keep.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[keep], targets[keep])


def _vq_ids(m, frames: torch.Tensor, batch) -> torch.Tensor:
    stride = m.enc_img.swin.stride
    if m.cfg.mvm_targets == "color":
        return color_vq_ids(frames, patch=stride)
    vq = batch.get("vq_ids")
    if vq is None:
        raise ValueError(VQ_HELP)
    b, t, _, h, w = frames.shape
    expected = (b, t, h // stride, w // stride)
    if tuple(vq.shape) != expected:
        raise ValueError(f"batch['vq_ids'] has shape {tuple(vq.shape)}, expected {expected} "
                         f"(B, T, H/{stride}, W/{stride}) for frames of shape {tuple(batch['frames'].shape)}")
    # −1 marks a row the shards hold no codes for (the data layer's filler): those cells carry no MVM loss
    if int(vq.max()) >= m.cfg.mvm_vocab or int(vq.min()) < -1:
        raise ValueError(f"batch['vq_ids'] must lie in [0, {m.cfg.mvm_vocab}) (mvm_vocab) or be -1 (no code), "
                         f"got [{int(vq.min())}, {int(vq.max())}]")
    return vq.to(m.device)


def _masked_video(m, frames: torch.Tensor, batch, need_labels: bool):
    """(frames with masked patches zeroed, MVM labels or None)."""
    b, t, _, h, w = frames.shape
    stride = m.enc_img.swin.stride
    blocks = sample_video_blocks(b, t, h // stride, w // stride, m.mask_generator).to(frames.device)
    labels = mvm_labels(_vq_ids(m, frames, batch), blocks) if need_labels else None
    return zero_patches(frames, blocks, stride), labels


def _masked_text_pass(m, video: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor):
    """Cross pass on (video, MTM-masked text): (hidden states, MTM labels)."""
    c = m.cfg
    masked, labels = mask_text(ids, mask, (c.pad_token_id, c.cls_token_id, c.sep_token_id), c.mask_token_id,
                               c.mtm_prob, m.mask_generator)
    return m.cross(video, m.encode_text(masked), mask), labels


def pair_scores(m, video: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
    """(Bv, Bt) VTM scores of every (video, text) pair: head_vtm at the text [CLS] of one cross pass each."""
    bv, bt, nv = video.shape[0], text.shape[0], video.shape[1]
    v = video.unsqueeze(1).expand(-1, bt, -1, -1).reshape(bv * bt, nv, -1)
    t = text.unsqueeze(0).expand(bv, -1, -1, -1).reshape(bv * bt, text.shape[1], -1)
    tm = text_mask.unsqueeze(0).expand(bv, -1, -1).reshape(bv * bt, -1)
    return m.head("vtm")(m.cross(v, t, tm)[:, nv]).view(bv, bt)


def _vtm_loss(m, video, text, text_mask) -> torch.Tensor:
    scores = pair_scores(m, video, text, text_mask) / m.cfg.vtm_temperature
    target = torch.arange(scores.shape[0], device=scores.device)
    if m.cfg.vtm_symmetric:              # (video→text CE + text→video CE) / 2
        return (F.cross_entropy(scores, target) + F.cross_entropy(scores.t(), target)) / 2
    return F.cross_entropy(scores, target)


def _videos(m, frames, batch, wanted: set, primary: str):
    """(clean-or-masked video for the primary loss, masked video or None, MVM labels or None)."""
    aux = bool(wanted - {primary})
    masked, labels, video_m = None, None, None
    if aux or m.cfg.masked_primary:
        masked, labels = _masked_video(m, frames, batch, "mvm" in wanted)
        video_m = m.encode_video(masked)
    video = None
    if primary in wanted:
        video = video_m if m.cfg.masked_primary else m.encode_video(frames)
    return video, video_m, labels


# ---- the four tasks ------------------------------------------------------------------------------------------
def retrieval_losses(m, batch, wanted: set) -> dict:
    frames = m.frames01(batch["frames"])
    ids, mask = _text(m, batch, 2)
    video, video_m, vlabels = _videos(m, frames, batch, wanted, "vtm")
    out = {}
    if "vtm" in wanted:
        out["vtm"] = _vtm_loss(m, video, m.encode_text(ids), mask)
    out.update(_mtm_mvm(m, video_m, ids, mask, vlabels, wanted))
    return out


def _mtm_mvm(m, video_m, ids, mask, vlabels, wanted: set) -> dict:
    """MTM and MVM from one cross pass over (masked video, masked text); {} when neither is wanted."""
    out = {}
    if not wanted & {"mtm", "mvm"}:
        return out
    hidden, tlabels = _masked_text_pass(m, video_m, ids, mask)
    nv = video_m.shape[1]
    if "mtm" in wanted:
        out["mtm"] = _labelled_ce(m.head("mtm"), hidden[:, nv:], tlabels)
    if "mvm" in wanted:
        out["mvm"] = _labelled_ce(m.head("mvm"), hidden[:, :nv], vlabels)
    return out


def qa_oe_losses(m, batch, wanted: set) -> dict:
    frames = m.frames01(batch["frames"])
    ids, mask = _text(m, batch, 2)
    video, video_m, vlabels = _videos(m, frames, batch, wanted, "oe")
    out = {}
    if "oe" in wanted:
        answer = _targets(m, batch, "answer", m.cfg.size_vocab, "size_vocab")
        hidden = m.cross(video, m.encode_text(ids), mask)
        out["oe"] = _ce(m.head("oe")(hidden[:, video.shape[1]]), answer)
    if "vtm" in wanted:
        out["vtm"] = _vtm_loss(m, video_m, m.encode_text(ids), mask)
    out.update(_mtm_mvm(m, video_m, ids, mask, vlabels, wanted))
    return out


def _per_option(video: torch.Tensor, options: int) -> torch.Tensor:
    """(B, N, d) → (B·O, N, d): each video once per option, option-major within a video."""
    return video.repeat_interleave(options, dim=0)


def mc_scores(m, video: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, option_mask=None) -> torch.Tensor:
    """(B, O) scores head_mc(h_[CLS](v_b, prompt_bk)); padding options (``option_mask`` 0) score −10⁴."""
    b, o, length = ids.shape
    hidden = m.cross(_per_option(video, o), m.encode_text(ids.reshape(b * o, length)), mask.reshape(b * o, -1))
    scores = m.head("mc")(hidden[:, video.shape[1]]).view(b, o)
    if option_mask is not None:
        scores = scores.masked_fill(~torch.as_tensor(option_mask, device=scores.device).bool(), MASKED_SCORE)
    return scores


def qa_mc_losses(m, batch, wanted: set) -> dict:
    frames = m.frames01(batch["frames"])
    ids, mask = _text(m, batch, 3)
    b, o, length = ids.shape
    answer = _targets(m, batch, "answer", o, "number of options")
    video, video_m, vlabels = _videos(m, frames, batch, wanted, "mc")
    out = {}
    if "mc" in wanted:
        out["mc"] = _ce(mc_scores(m, video, ids, mask, batch.get("option_mask")), answer)
    rows, gt = torch.arange(b, device=ids.device), answer.clamp(min=0)      # −1 (no answer): any row will do
    if "vtm" in wanted:
        out["vtm"] = _vtm_loss(m, video_m, m.encode_text(ids[rows, gt]), mask[rows, gt])
    if wanted & {"mtm", "mvm"}:
        hidden, tlabels = _masked_text_pass(m, _per_option(video_m, o), ids.reshape(b * o, length),
                                            mask.reshape(b * o, length))
        nv = video_m.shape[1]
        if "mtm" in wanted:
            out["mtm"] = _labelled_ce(m.head("mtm"), hidden[:, nv:], tlabels)
        if "mvm" in wanted:
            gt_rows = hidden.view(b, o, hidden.shape[1], -1)[rows, gt, :nv]
            out["mvm"] = _labelled_ce(m.head("mvm"), gt_rows, vlabels)
    return out


def _cls_text(m, batch_size: int):
    ids = torch.full((batch_size, 1), m.cfg.cls_token_id, dtype=torch.long, device=m.device)
    return m.encode_text(ids), torch.ones_like(ids)


def action_logits(m, video: torch.Tensor) -> torch.Tensor:
    text, mask = _cls_text(m, video.shape[0])
    return m.head("cls")(m.cross(video, text, mask)[:, video.shape[1]])


def action_losses(m, batch, wanted: set) -> dict:
    frames = m.frames01(batch["frames"])
    video, video_m, vlabels = _videos(m, frames, batch, wanted, "cls")
    out = {}
    if "cls" in wanted:
        label = _targets(m, batch, "label", m.cfg.num_classes, "num_classes")
        out["cls"] = _ce(action_logits(m, video), label)
    if "mvm" in wanted:
        text, mask = _cls_text(m, frames.shape[0])
        hidden = m.cross(video_m, text, mask)
        out["mvm"] = _labelled_ce(m.head("mvm"), hidden[:, :video_m.shape[1]], vlabels)
    return out


# ---- evaluation ----------------------------------------------------------------------------------------------
def _collect_retrieval(m, batches):
    """Unique videos' features (V, Nv, d), every text's embedding, mask and ground-truth video column."""
    videos, index, texts, masks, gt = [], {}, [], [], []
    for batch in batches:
        frames = m.frames01(batch["frames"])
        ids, mask = _text(m, batch, 2)
        new = [i for i, vid in enumerate(batch["video_id"]) if vid not in index]
        feats = m.encode_video(frames[new]) if new else None
        for row, i in enumerate(new):
            if batch["video_id"][i] not in index:           # the same video twice in one batch
                index[batch["video_id"][i]] = len(videos)
                videos.append(feats[row])
        texts.append(m.encode_text(ids))
        masks.append(mask)
        gt.extend(index[vid] for vid in batch["video_id"])
    width = max(t.shape[1] for t in texts)
    text = torch.cat([F.pad(t, (0, 0, 0, width - t.shape[1])) for t in texts])
    mask = torch.cat([F.pad(k, (0, width - k.shape[1])) for k in masks])
    return torch.stack(videos), text, mask, torch.tensor(gt)


def evaluate_retrieval(m, batches) -> dict:
    """Text→video R@1/5/10, MedR, MnR, scoring every (text, video) pair with the VTM head, in chunks."""
    videos, text, mask, gt = _collect_retrieval(m, batches)
    scores = all_pair_scores(text.shape[0], videos.shape[0], m.cfg.eval_pair_batch,
                             lambda t, v: pair_scores(m, videos[v], text[t], mask[t]).t())
    return retrieval_metrics(scores, gt)


def _evaluate_accuracy(m, batches, predict, target_key: str) -> dict:
    meter = AccuracyMeter()
    for batch in batches:
        meter.update(predict(batch), batch[target_key])
    return {"accuracy": meter.result()}


def evaluate_qa_oe(m, batches) -> dict:
    def predict(batch):
        ids, mask = _text(m, batch, 2)
        video = m.encode_video(m.frames01(batch["frames"]))
        return m.head("oe")(m.cross(video, m.encode_text(ids), mask)[:, video.shape[1]]).argmax(-1)
    return _evaluate_accuracy(m, batches, predict, "answer")


def evaluate_qa_mc(m, batches) -> dict:
    def predict(batch):
        ids, mask = _text(m, batch, 3)
        video = m.encode_video(m.frames01(batch["frames"]))
        return mc_scores(m, video, ids, mask, batch.get("option_mask")).argmax(-1)
    return _evaluate_accuracy(m, batches, predict, "answer")


def evaluate_action(m, batches) -> dict:
    def predict(batch):
        return action_logits(m, m.encode_video(m.frames01(batch["frames"]))).argmax(-1)
    return _evaluate_accuracy(m, batches, predict, "label")


TASK_FORWARD = {"retrieval": retrieval_losses, "qa_mc": qa_mc_losses, "qa_oe": qa_oe_losses,
                "action": action_losses}
TASK_EVALUATE = {"retrieval": evaluate_retrieval, "qa_mc": evaluate_qa_mc, "qa_oe": evaluate_qa_oe,
                 "action": evaluate_action}
