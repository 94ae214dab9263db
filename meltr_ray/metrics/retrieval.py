"""Text→video retrieval metrics from a (texts × videos) score matrix.

For text i with ground-truth video g(i), the rank is

    rank_i = #{v : s[i, v] ≥ s[i, g(i)]}        (1 = best)

so ties count *against* the ground truth: a model that scores every pair alike gets rank V, never 1 (an
optimistic tie rule would give an untrained constant model R@1 = 100). Then

    R@K  = 100 · mean_i [rank_i ≤ K]   (percent),   MedR = median_i rank_i,   MnR = mean_i rank_i.
"""
from __future__ import annotations

import numpy as np
import torch


def ground_truth_ranks(scores: torch.Tensor, gt: torch.Tensor | None = None) -> torch.Tensor:
    """(N,) 1-based rank of each text's ground-truth video; ``gt`` defaults to the diagonal (text i ↔ video i)."""
    scores = torch.as_tensor(scores, dtype=torch.float64)
    if scores.dim() != 2:
        raise ValueError(f"scores must be a (texts, videos) matrix, got shape {tuple(scores.shape)}")
    n_text, n_video = scores.shape
    if gt is None and n_video < n_text:
        raise ValueError(f"diagonal ground truth needs at least as many videos as texts, got {n_video} videos "
                         f"for {n_text} texts")
    gt = torch.arange(n_text) if gt is None else torch.as_tensor(gt, dtype=torch.long)
    if gt.shape != (n_text,) or (n_text and (int(gt.min()) < 0 or int(gt.max()) >= n_video)):
        raise ValueError(f"gt must hold one video index in [0, {n_video}) per text ({n_text}), "
                         f"got shape {tuple(gt.shape)}")
    target = scores[torch.arange(n_text), gt].unsqueeze(1)
    return (scores >= target).sum(1)


def retrieval_metrics(scores: torch.Tensor, gt: torch.Tensor | None = None, ks=(1, 5, 10)) -> dict:
    """``{"r1", "r5", "r10", "medr", "mnr"}`` (R@K in percent) from a (texts × videos) score matrix."""
    ranks = ground_truth_ranks(scores, gt).numpy()
    if ranks.size == 0:
        raise ValueError("retrieval metrics need at least one text")
    out = {f"r{k}": float(100.0 * np.mean(ranks <= k)) for k in ks}
    out["medr"] = float(np.median(ranks))
    out["mnr"] = float(np.mean(ranks))
    return out


def all_pair_scores(n_text: int, n_video: int, pair_batch: int, score) -> torch.Tensor:
    """The (texts × videos) score matrix of a cross-encoder, at most ``pair_batch`` pairs per call of
    ``score(text_slice, video_slice) -> (texts, videos)``: every text × video pair is one forward pass, so the
    matrix is filled in blocks of whole video chunks."""
    per_video = min(n_video, pair_batch)
    per_text = max(1, pair_batch // per_video)
    scores = torch.empty(n_text, n_video)
    for t0 in range(0, n_text, per_text):
        for v0 in range(0, n_video, per_video):
            t, v = slice(t0, t0 + per_text), slice(v0, v0 + per_video)
            scores[t, v] = score(t, v).float().cpu()
    return scores
