"""TimeSformer (Bertasius et al. 2021) with *divided space-time attention*, as ALPRO's video encoder.

Parameter names follow ALPRO's ``visual_encoder.model.*`` (``patch_embed.proj``, ``cls_token``, ``pos_embed``,
``time_embed``, ``blocks.N.{temporal_norm1, temporal_attn.{qkv, proj}, temporal_fc, norm1, attn.{qkv, proj},
norm2, mlp.fc1, mlp.fc2}``, ``norm``). Tokens after the embedding are [CLS] followed by the N·T patch tokens in
patch-major, frame-minor order (index p·T + t). One block:

    temporal:  x_p ← x_p + temporal_fc(DropPath(Attn_t(LN(x_p,1..T))))       (each patch over its T frames)
    spatial:   per frame t, [CLS ; x_·t] → DropPath(Attn_s(LN(·)));  patches add their row, [CLS] adds the
               mean over frames of its T rows
    MLP:       x ← x + DropPath(MLP(LN(x)))

The encoder's output is temporally pooled as ALPRO feeds it to the multimodal encoder: [CLS] followed by the
frame mean of each patch, (B, 1 + N, d). ``temporal_fc`` starts at zero in every block but the first
(TimeSformer's initialisation, so an image ViT's weights start as a per-frame ViT).
"""
from __future__ import annotations

import torch
from torch import nn

from .._layers import DropPath, Mlp
from ..allinone.vit import Attention, PatchEmbed, drop_path_rates


class DividedBlock(nn.Module):
    """One TimeSformer block: temporal attention, then spatial attention, then the MLP (see module doc)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop: float, drop_path: float):
        super().__init__()
        self.temporal_norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.temporal_attn = Attention(dim, heads, proj_drop=drop)
        self.temporal_fc = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, proj_drop=drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        b, _, d = x.shape
        cls, patches = x[:, :1], x[:, 1:]
        n = patches.shape[1] // frames
        along_time = patches.reshape(b * n, frames, d)
        res_t = self.drop_path(self.temporal_attn(self.temporal_norm1(along_time)))
        xt = patches + self.temporal_fc(res_t.reshape(b, n * frames, d))
        per_frame = xt.view(b, n, frames, d).transpose(1, 2).reshape(b * frames, n, d)
        per_frame = torch.cat([cls.expand(b, frames, d).reshape(b * frames, 1, d), per_frame], dim=1)
        res_s = self.drop_path(self.attn(self.norm1(per_frame)))
        cls_res = res_s[:, 0].view(b, frames, d).mean(dim=1, keepdim=True)
        patch_res = res_s[:, 1:].reshape(b, frames, n, d).transpose(1, 2).reshape(b, n * frames, d)
        x = torch.cat([cls + cls_res, xt + patch_res], dim=1)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class TimeSformerModel(nn.Module):
    """``visual_encoder.model``: patch embedding, [CLS], spatial ``pos_embed``, ``time_embed`` (one row per frame),
    divided blocks, final norm. TimeSformer's Kinetics ``head`` is not built (ALPRO never uses it)."""

    def __init__(self, image_size: int, patch: int, frames: int, dim: int, depth: int, heads: int,
                 mlp_ratio: float = 4.0, drop: float = 0.0, drop_path: float = 0.1):
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch}")
        self.grid = image_size // patch
        self.patch_embed = PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, 1 + self.grid ** 2, dim))
        self.time_embed = nn.Parameter(torch.zeros(1, frames, dim))
        self.pos_drop, self.time_drop = nn.Dropout(drop), nn.Dropout(drop)
        self.blocks = nn.ModuleList(DividedBlock(dim, heads, mlp_ratio, drop, p)
                                    for p in drop_path_rates(depth, drop_path))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        for block in list(self.blocks)[1:]:
            nn.init.zeros_(block.temporal_fc.weight)
            nn.init.zeros_(block.temporal_fc.bias)

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """Normalised frames (B, T, 3, H, W) → (B, 1 + N·T, d), patches in (patch, frame) order."""
        b, t = frames.shape[:2]
        patches = self.pos_drop(self.patch_embed(frames.flatten(0, 1)) + self.pos_embed[:, 1:])
        n, d = patches.shape[1:]
        patches = patches.view(b, t, n, d).transpose(1, 2) + self.time_embed[:, None, :t]      # (B, N, T, d)
        cls = self.pos_drop(self.cls_token + self.pos_embed[:, :1]).expand(b, 1, d)
        return torch.cat([cls, self.time_drop(patches).reshape(b, n * t, d)], dim=1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) → temporally pooled tokens (B, 1 + N, d): [CLS] + each patch's frame mean."""
        t = frames.shape[1]
        x = self.embed(frames)
        for block in self.blocks:
            x = block(x, t)
        x = self.norm(x)
        b, _, d = x.shape
        return torch.cat([x[:, :1], x[:, 1:].view(b, -1, t, d).mean(dim=2)], dim=1)


class VisualEncoder(nn.Module):
    """``visual_encoder``: ALPRO's ``TimeSformer`` wrapper, whose only parameters live under ``model``."""

    def __init__(self, **kwargs):
        super().__init__()
        self.model = TimeSformerModel(**kwargs)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.model(frames)
