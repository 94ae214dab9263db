"""ALPRO's losses for MSVD-QA with its four pretext losses as MELTR auxiliaries, and QA evaluation.

Per batch of (video, question) pairs (the question is the text every pretext loss reads):

* **OE** (primary): CE of ``classifier(h_[CLS])`` over the answer vocabulary (MSVD-QA: the 1,000 most frequent
  answers); h = the multimodal encoder over [question ; video]. Targets −1 (an answer outside the vocabulary)
  carry no loss; at evaluation they count as wrong, never dropped.
* **VTC**: v_i, t_j = L2-normalised ``vision_proj(video [CLS])``, ``text_proj(text [CLS])``; s = v·tᵀ / temp (temp
  learnt, clamped to [0.001, 0.5]); L = ½ (CE_rows(s, q) + CE_rows(sᵀ, qᵀ)) with soft targets q_ij = 1/|P_i| over
  the pairs P_i of the same video — several questions of one clip in a batch are not negatives of each other
  (ALPRO's identity targets assume one text per video).
* **VTM** with hard negatives: the positive pairs plus, for every text, one video drawn from softmax_j(s_tv) and,
  for every video, one text drawn from softmax_j(s_vt), same-video pairs excluded (ALPRO/ALBEF's in-batch hard
  negative mining; drawn with the model's ``mask_generator``, weights without gradient); CE of ``itm_head(h_[CLS])``
  with labels 1 / 0. A row with no other video in the batch has no negative.
* **MLM**: 80/10/10 masking of the question (All-in-one's :mod:`~meltr_ray.backbones.allinone.masking`); CE of
  the MLM head at the masked text positions of the multimodal encoder over [masked question ; video].
* **PEM** (task ``qa_oe_pem``): the batch column ``entity_scores`` (B, num_entities) holds, per video, the
  entity distribution of ALPRO's *prompter* (a separate pretrained video–text model the user runs beforehand:
  softmax over entities of the similarity between the video and the prompts "A video of {entity}"). Rows are
  renormalised; an all-zero row carries no loss. L = −Σ_e q_e log softmax(mpm_head(ĥ))_e with ĥ the mean of the
  multimodal encoder's video-patch outputs (ALPRO averages over a random crop's patches and prompts that crop;
  a per-video column means the whole frame).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...metrics.classification import AccuracyMeter
from ..allinone.masking import labelled_ce, mask_tokens

ENTITY_COLUMN = "entity_scores"
PEM_HELP = (f"prompting-entity modelling (task 'qa_oe_pem') needs batch[{ENTITY_COLUMN!r}]: per video, the "
            f"ALPRO prompter's entity distribution, shape (B, num_entities). Compute it beforehand with the "
            f"prompter, or use task 'qa_oe' (the three other pretext losses)")


def answers(m, batch) -> torch.Tensor:
    """Answer ids in [0, num_answers) or −1 (outside the vocabulary); anything else is an error."""
    values = torch.as_tensor(batch["answer"]).to(m.device).long()
    if values.numel() and (int(values.min()) < -1 or int(values.max()) >= m.cfg.num_answers):
        raise ValueError(f"batch['answer'] must lie in [0, {m.cfg.num_answers}) (num_answers) or be -1 (outside "
                         f"the answer vocabulary), got [{int(values.min())}, {int(values.max())}]")
    return values


def same_video(batch, size: int, device) -> torch.Tensor:
    """(B, B) bool: pairs of samples from one video (the identity when the batch has no ``video_id``)."""
    ids = batch.get("video_id")
    if ids is None:
        return torch.eye(size, dtype=torch.bool, device=device)
    ids = [str(v) for v in ids]
    return torch.tensor([[a == b for b in ids] for a in ids], dtype=torch.bool, device=device)


def soft_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of −Σ_j q_ij log softmax(logits)_ij."""
    return -(F.log_softmax(logits, dim=1) * targets).sum(dim=1).mean()


def vtc_loss(m, video: torch.Tensor, text: torch.Tensor, positives: torch.Tensor) -> tuple:
    """(VTC loss, video→text similarities) — see the module doc."""
    v = F.normalize(m.vision_proj(video[:, 0]), dim=-1)
    t = F.normalize(m.text_proj(text[:, 0]), dim=-1)
    sim_vt = v @ t.t() / m.temp.clamp(0.001, 0.5)
    targets = positives.float() / positives.float().sum(dim=1, keepdim=True)
    return 0.5 * (soft_ce(sim_vt, targets) + soft_ce(sim_vt.t(), targets.t())), sim_vt


def _draw(weights: torch.Tensor, allowed: torch.Tensor, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row one column index ~ softmax(weights) over ``allowed`` columns; rows without one are dropped."""
    rows = allowed.any(dim=1)
    if not bool(rows.any()):
        empty = rows.nonzero().flatten()
        return empty, empty
    probs = weights.detach().float().masked_fill(~allowed, float("-inf"))[rows].softmax(dim=1)
    picks = torch.multinomial(probs.cpu(), 1, generator=generator).flatten().to(weights.device)
    return rows.nonzero().flatten(), picks


def vtm_loss(m, video, text, mask, fused_pos, sim_vt, positives) -> torch.Tensor:
    """CE of itm_head over positives (label 1) and drawn hard negatives (label 0)."""
    negatives = ~positives
    t_rows, v_picks = _draw(sim_vt.t(), negatives, m.mask_generator)         # a negative video per text
    v_rows, t_picks = _draw(sim_vt, negatives, m.mask_generator)             # a negative text per video
    cls = [fused_pos[:, 0]]
    if len(t_rows):
        cls.append(m.fuse(text[t_rows], mask[t_rows], video[v_picks])[:, 0])
    if len(v_rows):
        cls.append(m.fuse(text[t_picks], mask[t_picks], video[v_rows])[:, 0])
    logits = m.itm_head(torch.cat(cls))
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    labels[:fused_pos.shape[0]] = 1
    return F.cross_entropy(logits, labels)


def entity_targets(m, batch) -> torch.Tensor:
    """The prompter's entity distributions, checked and renormalised; ``ValueError`` names the column."""
    if batch.get(ENTITY_COLUMN) is None:
        raise ValueError(PEM_HELP)
    scores = torch.as_tensor(batch[ENTITY_COLUMN]).to(m.device).float()
    b = torch.as_tensor(batch["text_ids"]).shape[0]
    if tuple(scores.shape) != (b, m.cfg.num_entities):
        raise ValueError(f"batch[{ENTITY_COLUMN!r}] has shape {tuple(scores.shape)}, expected "
                         f"{(b, m.cfg.num_entities)} (batch, num_entities)")
    if not bool(torch.isfinite(scores).all()) or bool((scores < 0).any()):
        raise ValueError(f"batch[{ENTITY_COLUMN!r}] must hold finite non-negative scores (a distribution per video)")
    return scores / scores.sum(dim=1, keepdim=True).clamp_min(1e-12)


def pem_loss(m, batch, fused: torch.Tensor, text_len: int) -> torch.Tensor:
    targets = entity_targets(m, batch)
    keep = targets.sum(dim=1) > 0
    logits = m.mpm_head(fused[:, text_len + 1:].mean(dim=1))
    if not bool(keep.any()):
        return logits.sum() * 0.0
    return soft_ce(logits[keep], targets[keep])


def oe_loss(m, batch, fused: torch.Tensor) -> torch.Tensor:
    target = answers(m, batch)
    logits = m.classifier(fused[:, 0])
    keep = target >= 0
    if not bool(keep.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[keep], target[keep])


def mlm_loss(m, video, ids, mask) -> torch.Tensor:
    c = m.cfg
    special = (c.pad_token_id, c.cls_token_id, c.sep_token_id, c.mask_token_id)
    masked, labels = mask_tokens(ids, mask, special_ids=special, mask_id=c.mask_token_id, vocab_size=c.vocab_size,
                                 random_low=max(special) + 1, prob=c.mlm_prob, generator=m.mask_generator)
    hidden = m.fuse(m.encode_text(masked, mask), mask, video)[:, :ids.shape[1]]
    return labelled_ce(m.text_encoder.cls, hidden, labels)


def qa_losses(m, batch, wanted: set) -> dict:
    if "pem" in wanted and batch.get(ENTITY_COLUMN) is None:
        raise ValueError(PEM_HELP)                       # before any forward: the column is a data problem
    video = m.encode_video(m.frames(batch["frames"]))
    ids, mask = m.text(batch)
    text = m.encode_text(ids, mask)
    fused = m.fuse(text, mask, video) if wanted & {"oe", "vtm", "pem"} else None
    positives = same_video(batch, ids.shape[0], ids.device)
    out = {}
    if "oe" in wanted:
        out["oe"] = oe_loss(m, batch, fused)
    if wanted & {"vtc", "vtm"}:
        out["vtc"], sim_vt = vtc_loss(m, video, text, positives)
        if "vtm" in wanted:
            out["vtm"] = vtm_loss(m, video, text, mask, fused, sim_vt, positives)
    if "mlm" in wanted:
        out["mlm"] = mlm_loss(m, video, ids, mask)
    if "pem" in wanted:
        out["pem"] = pem_loss(m, batch, fused, ids.shape[1])
    return out


def oe_logits(m, batch) -> torch.Tensor:
    """(B, num_answers) answer scores of the multimodal [CLS] over [question ; video]."""
    ids, mask = m.text(batch)
    video = m.encode_video(m.frames(batch["frames"]))
    return m.classifier(m.fuse(m.encode_text(ids, mask), mask, video)[:, 0])


def evaluate_qa(m, batches) -> dict:
    """Accuracy over every example: a target −1 (answer outside the vocabulary) is never predicted → wrong."""
    meter = AccuracyMeter()
    for batch in batches:
        meter.update(oe_logits(m, batch).argmax(dim=-1), answers(m, batch))
    return {"accuracy": meter.result()}
