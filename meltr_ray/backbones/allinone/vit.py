"""ViT building blocks with timm's parameter names, and All-in-one's video transformer (reference §5.4).

The modules are named as in timm's ``VisionTransformer`` (``patch_embed.proj``, ``cls_token``, ``pos_embed``,
``blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``), so a timm-style state dict —
All-in-one's ``transformer.*`` keys, ALPRO's TimeSformer — maps onto them without renaming. Attention is written
out (scores → softmax → values) with a finite padding offset, so every operation has a double backward, as the
MELTR meta step needs; timm itself is not a dependency.

All-in-one's *temporal token roll* (Wang et al. 2022): before every block of a joint (video + text) pass the
image tokens of each frame are shifted in time — with n image tokens per frame ([CLS] first) and
f = ⌊n / 8⌋, tokens 1..f take the previous frame's values (roll +1 along time) and the last f tokens the next
frame's (roll −1); [CLS], the rest and all text tokens stay. The roll is what lets one shared ViT mix frames.
"""
from __future__ import annotations

import torch
from torch import nn

from .._layers import DropPath, Mlp, additive_key_mask


class Attention(nn.Module):
    """Multi-head self-attention softmax(q·kᵀ/√d_h + mask)·v with one fused ``qkv`` projection (timm names)."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden size {dim} is not divisible by the number of heads {heads}")
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop, self.proj_drop = nn.Dropout(attn_drop), nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        scores = (q @ k.transpose(-2, -1)) * self.scale
        if key_mask is not None:
            scores = scores + additive_key_mask(key_mask, scores.dtype)
        out = self.attn_drop(scores.softmax(dim=-1)) @ v
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))


class Block(nn.Module):
    """Pre-LN transformer block x + DropPath(attn(norm1 x)); x + DropPath(mlp(norm2 x)) (timm's ``Block``)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, drop: float = 0.0, drop_path: float = 0.0,
                 eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads, proj_drop=drop)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), key_mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping p×p patches → linear embedding (a strided Conv2d named ``proj``, as in timm)."""

    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) → (N, H/p · W/p, d), row-major over the patch grid."""
        return self.proj(images).flatten(2).transpose(1, 2)


def drop_path_rates(depth: int, rate: float) -> list[float]:
    """Stochastic depth rising linearly from 0 to ``rate`` over the blocks (timm's rule)."""
    return [rate * i / max(1, depth - 1) for i in range(depth)]


def temporal_roll(x: torch.Tensor, image_start: int, fold_div: int = 8) -> torch.Tensor:
    """All-in-one's roll on (B, T, S, d): image tokens from ``image_start`` ([CLS] there) shifted in time."""
    b, t, s, d = x.shape
    first, fold = image_start + 1, (s - image_start) // fold_div
    if t == 1 or fold == 0:
        return x
    forward = torch.roll(x[:, :, first:first + fold], shifts=1, dims=1)
    backward = torch.roll(x[:, :, s - fold:], shifts=-1, dims=1)
    return torch.cat([x[:, :, :first], forward, x[:, :, first + fold:s - fold], backward], dim=2)


class VideoTransformer(nn.Module):
    """All-in-one's ``transformer``: a ViT with a ``temporal_embed`` of one row per frame, no class head."""

    def __init__(self, image_size: int, patch: int, frames: int, dim: int, depth: int, heads: int,
                 mlp_ratio: float, drop: float, drop_path: float):
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch}")
        self.grid = image_size // patch
        self.patch_embed = PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, 1 + self.grid ** 2, dim))
        self.temporal_embed = nn.Parameter(0.02 * torch.randn(1, frames, dim))
        self.pos_drop = nn.Dropout(drop)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, drop, p)
                                    for p in drop_path_rates(depth, drop_path))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """Normalised frames (B, T, 3, H, W) → tokens (B, T, 1 + N, d): [CLS] + patches, + spatial position,
        + the frame's temporal row on its patches (repeated over the patches of each frame)."""
        b, t = frames.shape[:2]
        patches = self.patch_embed(frames.flatten(0, 1)) + self.pos_embed[:, 1:]
        patches = patches.view(b, t, -1, patches.shape[-1]) + self.temporal_embed[:, :t, None]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(b, t, 1, -1)
        return self.pos_drop(torch.cat([cls, patches], dim=2))

    def run(self, tokens: torch.Tensor, key_mask: torch.Tensor | None = None,
            roll_from: int | None = None) -> torch.Tensor:
        """Blocks + final norm over each frame's sequence (B, T, S, d) → (B, T, S, d); ``key_mask`` (B, S) masks
        padding keys; ``roll_from`` = index of the image [CLS] to apply the temporal roll before each block."""
        b, t, s, d = tokens.shape
        mask = None if key_mask is None else key_mask.repeat_interleave(t, dim=0)
        x = tokens
        for block in self.blocks:
            if roll_from is not None:
                x = temporal_roll(x.view(b, t, s, d), roll_from)
            x = block(x.reshape(b * t, s, d), mask)
        return self.norm(x).view(b, t, s, d)
