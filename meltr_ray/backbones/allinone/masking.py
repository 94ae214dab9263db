"""BERT masked-language-model masking with the 80/10/10 rule (Devlin et al. 2019), as All-in-one and ALPRO use.

Candidates are the attended tokens (``attention == 1``) that are not special tokens ([PAD], [CLS], [SEP],
[MASK], …); padding is never a candidate because it is not attended and its id is special. Each candidate is
chosen with probability p (0.15); a chosen token becomes [MASK] with probability 0.8, a random *regular* token
(an id ≥ ``random_low``, never a special one) with probability 0.1, and stays itself with probability 0.1. Its
label is the original id; every other position gets :data:`IGNORE` (no loss).

One change from HF's ``DataCollatorForLanguageModeling`` (the official collator): a text row that has candidates
but no draw gets one candidate chosen (the one with the largest independent random key), so short texts in small
batches always carry an MLM label — a batch without any would make the loss undefined (HF: NaN).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._layers import choose_positions

IGNORE = -100          # label of positions without an MLM loss (HF's value)


def mlm_candidates(ids: torch.Tensor, attention: torch.Tensor, special_ids) -> torch.Tensor:
    """Bool mask of the tokens that may be masked: attended and not special."""
    special = torch.as_tensor(sorted(set(int(i) for i in special_ids)), device=ids.device)
    return attention.bool() & ~torch.isin(ids, special)


def mask_tokens(ids: torch.Tensor, attention: torch.Tensor, *, special_ids, mask_id: int, vocab_size: int,
                random_low: int, prob: float = 0.15, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked ids, labels) for ``ids`` (..., L); random replacements are drawn from [random_low, vocab_size)."""
    if not 0 <= random_low < vocab_size:
        raise ValueError(f"random_low {random_low} must lie in [0, vocab_size={vocab_size})")
    chosen = choose_positions(mlm_candidates(ids, attention, special_ids), prob, generator)
    roll = torch.rand(ids.shape, generator=generator).to(ids.device)
    random_ids = torch.randint(random_low, vocab_size, ids.shape, generator=generator).to(ids.device)
    masked = torch.where(chosen & (roll < 0.8), torch.full_like(ids, mask_id), ids)
    masked = torch.where(chosen & (roll >= 0.8) & (roll < 0.9), random_ids, masked)
    return masked, ids.masked_fill(~chosen, IGNORE)


def labelled_ce(head, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE of ``head`` at the labelled positions only (the vocabulary projection runs there alone)."""
    keep = labels != IGNORE
    if not bool(keep.any()):     # a zero that still touches the head, so DDP sees every parameter used
        return head(hidden.reshape(-1, hidden.shape[-1])[:1]).sum() * 0.0
    return F.cross_entropy(head(hidden[keep]), labels[keep])
