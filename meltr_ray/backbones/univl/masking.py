"""UniVL's masking for CMLM and CMFM (reference §3.3).

* **Text** (CMLM): each real token that is not [CLS], [SEP] or [PAD] is chosen with probability 0.15; a chosen
  token becomes [MASK] with probability 0.8, a random vocabulary id with 0.1, and stays itself with 0.1 (BERT).
  Label = the original id at chosen positions, −1 elsewhere. A row with candidates but no draw gets one random
  candidate (the official code redrew until one token was chosen).
* **Frames** (CMFM): each valid frame is chosen with probability 0.15, at least one per clip; its feature
  vector is zeroed *before* the feature LayerNorm. Label = the frame's index in the flattened (B·F) batch at
  chosen positions, −1 elsewhere (the NCE target is the frame itself among all frames of the batch).
"""
from __future__ import annotations

import torch

from .._layers import choose_positions

IGNORE = -1


def mask_text(ids: torch.Tensor, attention: torch.Tensor, special_ids, mask_id: int, vocab_size: int,
              prob: float = 0.15, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of ``ids`` (B, L): (masked ids, labels), both (B, L)."""
    special = torch.as_tensor(list(special_ids), device=ids.device)
    chosen = choose_positions(attention.bool() & ~torch.isin(ids, special), prob, generator)
    action = torch.rand(ids.shape, generator=generator).to(ids.device)
    random_ids = torch.randint(0, vocab_size, ids.shape, generator=generator).to(ids.device)
    masked = torch.where(chosen & (action < 0.8), torch.full_like(ids, mask_id), ids)
    masked = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, masked)
    return masked, ids.masked_fill(~chosen, IGNORE)


def mask_frames(features: torch.Tensor, feature_mask: torch.Tensor, prob: float = 0.15,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(features with chosen frames zeroed, labels (B, F): flattened index of each chosen frame, −1 elsewhere)."""
    chosen = choose_positions(feature_mask.bool(), prob, generator)
    index = torch.arange(chosen.numel(), device=features.device).view_as(chosen)
    return features.masked_fill(chosen.unsqueeze(-1), 0.0), index.masked_fill(~chosen, IGNORE)
