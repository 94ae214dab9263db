"""Violet's masking for MTM and MVM (reference §4.2, without bugs B-V3) and its visual-token targets.

* **MTM**: every real token that is not [CLS], [SEP] or [PAD] is selected with probability 0.15 and replaced
  by [MASK] (no 80/10/10 split, as the official code); label = original id there, −1 elsewhere. The draw is
  done per text row — for multiple-choice prompts of shape (B, O, L) per option row and per token (the
  official code masked whole option rows, B-V3) — and a row with candidates but no draw gets one random
  candidate (the official code redrew the whole batch until one token anywhere was selected).
* **MVM**: per video, T times: a block of t ~ U{1..T−1} frames × h ~ U{1..max(1, ⌊2·gh/3⌋−1)} rows × w
  columns at a uniform origin inside the T × gh × gw token grid; the union is masked. Each masked cell zeroes
  the 32×32 pixel patch of the raw [0, 1] frame (before ImageNet normalisation) and its label is the cell's
  visual-token id; every other video position, and each frame's [CLS], gets −1.
* **Targets**: the official targets are DALL-E dVAE codes (8192 classes) of each frame resized to gh·8 px
  (56 px at 224); :func:`dvae_vq_ids` computes them with any dVAE encoder you supply, and the ingest step
  stores them in the shards as ``vq_ids``. :func:`color_vq_ids` is a dependency-free stand-in (quantised
  mean colour of each patch) for demos and tests only — it is not the official target.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._layers import choose_positions

IGNORE = -1          # label of positions that carry no loss (CE ignore_index)
PATCH = 32           # pixels per visual token side (the Swin output stride)


def mask_text(ids: torch.Tensor, attention: torch.Tensor, special_ids, mask_id: int, prob: float = 0.15,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MTM masking of ``ids`` (..., L): returns (masked ids, labels) of the same shape.

    Candidates: attended tokens (``attention == 1``) whose id is not in ``special_ids``.
    """
    candidate = attention.bool() & ~torch.isin(ids, torch.as_tensor(list(special_ids), device=ids.device))
    chosen = choose_positions(candidate, prob, generator)
    masked = ids.masked_fill(chosen, mask_id)
    labels = ids.masked_fill(~chosen, IGNORE)
    return masked, labels


def _randint(low: int, high: int, generator) -> int:
    """Uniform integer in [low, high] (inclusive)."""
    return int(torch.randint(low, high + 1, (1,), generator=generator).item())


def sample_video_blocks(batch: int, frames: int, grid_h: int, grid_w: int,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, T, gh, gw) bool: the union of T random 3-D blocks per video (Violet's blockwise MVM masking)."""
    mask = torch.zeros(batch, frames, grid_h, grid_w, dtype=torch.bool)
    max_h, max_w = max(1, 2 * grid_h // 3 - 1), max(1, 2 * grid_w // 3 - 1)
    for b in range(batch):
        for _ in range(frames):
            t = _randint(1, max(1, frames - 1), generator)
            h, w = _randint(1, max_h, generator), _randint(1, max_w, generator)
            t0 = _randint(0, frames - t, generator)
            h0, w0 = _randint(0, grid_h - h, generator), _randint(0, grid_w - w, generator)
            mask[b, t0:t0 + t, h0:h0 + h, w0:w0 + w] = True
    return mask


def zero_patches(frames: torch.Tensor, blocks: torch.Tensor, patch: int = PATCH) -> torch.Tensor:
    """Zero the ``patch``×``patch`` pixel patch of every masked cell: frames (B, T, 3, H, W) in [0, 1]."""
    pixel_mask = blocks.to(frames.device).repeat_interleave(patch, 2).repeat_interleave(patch, 3)
    return frames * (~pixel_mask).unsqueeze(2).to(frames.dtype)


def mvm_labels(vq_ids: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """(B, T·(1 + gh·gw)) labels in video-token order: −1 at each frame's [CLS] and at unmasked cells.

    Position of cell (t, i, j) = t·(1 + gh·gw) + 1 + i·gw + j, matching the video encoder's token layout.
    """
    b, t = blocks.shape[:2]
    cells = vq_ids.long().masked_fill(~blocks.to(vq_ids.device), IGNORE).view(b, t, -1)
    cls = torch.full((b, t, 1), IGNORE, dtype=torch.long, device=cells.device)
    return torch.cat([cls, cells], dim=2).view(b, -1)


def color_vq_ids(frames: torch.Tensor, levels: int = 8, patch: int = PATCH) -> torch.Tensor:
    """Stand-in visual tokens: each patch's mean RGB quantised to ``levels`` bins per channel.

    frames (B, T, 3, H, W) in [0, 1] → (B, T, H/patch, W/patch) ids in [0, levels³). Demos and tests only.
    """
    b, t, c, h, w = frames.shape
    means = F.avg_pool2d(frames.reshape(b * t, c, h, w), patch)              # (B·T, 3, gh, gw)
    bins = (means * levels).long().clamp_(0, levels - 1)
    ids = (bins[:, 0] * levels + bins[:, 1]) * levels + bins[:, 2]
    return ids.view(b, t, h // patch, w // patch)


def dvae_vq_ids(frames: torch.Tensor, encoder, grid: int) -> torch.Tensor:
    """Official MVM targets: DALL-E dVAE codes of square frames, as ``tools/extract_vq.py`` computes them.

    frames: (N, 3, S, S) RGB in [0, 1] (already padded to a square); ``encoder``: a dVAE encoder returning
    (N, 8192, grid, grid) logits (e.g. ``dall_e.load_model("encoder.pkl")``); ``grid`` = image_size // 32.
    Each frame is resized to grid·8 px (56 px for 224-px training), mapped to [ε, 1 − ε] with ε = 0.1
    (DALL-E's ``map_pixels``), encoded, and the argmax code kept: (N, grid, grid) int64.
    """
    small = F.interpolate(frames, size=(grid * 8, grid * 8), mode="bilinear", align_corners=False)
    eps = 0.1
    with torch.no_grad():
        logits = encoder((1 - 2 * eps) * small + eps)
    return logits.argmax(1)


def pad_to_square(frames: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) → (N, 3, S, S), S = max(H, W), zero padding centred (Violet's frame preprocessing)."""
    h, w = frames.shape[-2:]
    size = max(h, w)
    top, left = (size - h) // 2, (size - w) // 2
    return F.pad(frames, (left, size - w - left, top, size - h - top))


def video_vq_ids(frames, encoder, grid: int, batch: int = 256, device=None) -> torch.Tensor:
    """Every frame of one video → its visual tokens, for the shards' ``vq_ids`` (``meltr-ray ingest --vq``).

    frames: (N, H, W, 3) uint8 RGB (all decoded frames, so any frame sampling finds its codes);
    returns (N, grid, grid) int64 on the CPU. ``grid`` = training image size // 32 (7 for 224 px).
    """
    frames = torch.as_tensor(frames)
    out = []
    for start in range(0, frames.shape[0], batch):
        chunk = frames[start:start + batch].to(device).permute(0, 3, 1, 2).float() / 255.0
        out.append(dvae_vq_ids(pad_to_square(chunk), encoder, grid).cpu())
    return torch.cat(out)
