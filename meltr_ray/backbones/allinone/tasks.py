"""All-in-one's retrieval losses (reference §5.3, with B-A1 fixed) and evaluation (§5.6, with B-A4 fixed).

* **VTM** (the code's ``ind_itc``; primary): with t_i, v_j the L2-normalised text and video features of a batch,
  x_ij = t_i·v_j (cosine similarity) and τ = 0.05,

      L_VTM = −(1/B) Σ_i log softmax_j(x/τ)_ii  −  (1/B) Σ_j log softmax_i(x/τ)_jj

  — the **sum** of the text→video and video→text cross-entropies (not their mean), per batch (no all-gather).
* **MLM**: 80/10/10 masking (:mod:`.masking`) of the caption; CE of ``mlm_score`` at the masked text positions of
  the joint (rolled, frame-averaged) pass.

Evaluation: cosine similarities of every (text, video) pair of the evaluation set, text→video R@1/5/10, MedR, MnR
(:func:`meltr_ray.metrics.retrieval_metrics`). The frames are the ones the batches hold: the data layer samples
val/test frames at the **segment centres** (deterministic, fixing B-A4's random evaluation frames).
:func:`evaluate_views` averages the similarity matrices of several passes over the evaluation set ("views",
the official 3-view averaging) — with deterministic views from :func:`view_indices` each pass sees other frames.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ...metrics.retrieval import retrieval_metrics
from .masking import labelled_ce, mask_tokens


def contrastive_loss(similarity: torch.Tensor, temperature: float) -> torch.Tensor:
    """Σ of both directions' CE on (B, B) similarities x/τ, matching pairs on the diagonal (see module doc)."""
    logits = similarity / temperature
    target = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)


def similarity(text_features: torch.Tensor, video_features: torch.Tensor) -> torch.Tensor:
    """Cosine similarity matrix (texts × videos)."""
    return F.normalize(text_features, dim=-1) @ F.normalize(video_features, dim=-1).t()


def special_ids(cfg) -> tuple:
    return (cfg.pad_token_id, cfg.cls_token_id, cfg.sep_token_id, cfg.mask_token_id)


def retrieval_losses(m, batch, wanted: set) -> dict:
    frames = m.frames(batch["frames"])
    ids, mask = m.text(batch)
    out = {}
    if "vtm" in wanted:
        sims = similarity(m.text_features(ids, mask), m.video_features(frames))
        out["vtm"] = contrastive_loss(sims, m.cfg.itc_temperature)
    if "mlm" in wanted:
        c = m.cfg
        masked, labels = mask_tokens(ids, mask, special_ids=special_ids(c), mask_id=c.mask_token_id,
                                     vocab_size=c.vocab_size, random_low=max(special_ids(c)) + 1,
                                     prob=c.mlm_prob, generator=m.mask_generator)
        hidden = m.joint(frames, masked, mask)[:, :ids.shape[1]]
        out["mlm"] = labelled_ce(m.mlm_score, hidden, labels)
    return out


# ---- evaluation ----------------------------------------------------------------------------------------------
def view_indices(n_frames: int, k: int, view: int = 0, views: int = 1) -> np.ndarray:
    """Frame indices of deterministic view ``view`` of ``views``: in each of k equal segments of
    ``range(n_frames)`` the point at fraction (view + ½)/views — one view = the segment centres."""
    if not 0 <= view < views or n_frames <= 0 or k <= 0:
        raise ValueError(f"view {view} of {views} over {n_frames} frames, {k} per view: out of range")
    idx = np.floor((np.arange(k) + (view + 0.5) / views) * n_frames / k).astype(np.int64)
    return np.clip(idx, 0, n_frames - 1)


def similarity_matrix(m, batches) -> tuple[torch.Tensor, torch.Tensor, list]:
    """(texts × unique videos) cosine similarities, each text's ground-truth column, the video ids in order."""
    texts, videos, index, gt = [], [], {}, []
    for batch in batches:
        ids, mask = m.text(batch)
        texts.append(m.text_features(ids, mask))
        fresh = []
        for i, vid in enumerate(batch["video_id"]):
            if vid not in index:                  # a video's first appearance (also within one batch)
                index[vid] = len(index)
                fresh.append(i)
        if fresh:
            videos.append(m.video_features(m.frames(torch.as_tensor(batch["frames"])[fresh])))
        gt.extend(index[vid] for vid in batch["video_id"])
    scores = similarity(torch.cat(texts), torch.cat(videos)).float().cpu()
    return scores, torch.tensor(gt), list(index)


def evaluate_retrieval(m, batches) -> dict:
    """Text→video R@1/5/10, MedR, MnR from one pass over ``batches``."""
    scores, gt, _ = similarity_matrix(m, batches)
    return retrieval_metrics(scores, gt)


@torch.no_grad()
def evaluate_views(m, views) -> dict:
    """Metrics of the mean similarity matrix over several passes (each an iterable of batches of the same
    texts and videos in the same order, e.g. decoded at :func:`view_indices` ``v``)."""
    was_training = m.training
    m.eval()
    try:
        results = [similarity_matrix(m, batches) for batches in views]
    finally:
        m.train(was_training)
    first_gt, first_ids = results[0][1], results[0][2]
    for n, (_, gt, ids) in enumerate(results[1:], start=1):
        if ids != first_ids or not torch.equal(gt, first_gt):
            raise ValueError(f"view {n} holds other texts or videos than view 0: every view must cover the same "
                             f"evaluation set in the same order")
    return retrieval_metrics(torch.stack([r[0] for r in results]).mean(0), first_gt)
