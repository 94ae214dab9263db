"""Video Swin Transformer (Liu et al. 2022) as Violet uses it: temporal stride 1, so T frames in → T steps out.

Input (B, 3, T, H, W) normalised frames → output (B, T, H/32, W/32, 8·C) channels-last features.

* Patch embedding: the clip is padded with one zero frame at the end and a Conv3d with kernel (2, 4, 4) and
  stride (1, 4, 4) gives T temporal positions (Violet's change to Video Swin's stride-2 tubelets).
* Four stages of (shifted-)window attention blocks; patch merging (2×2 spatial, 4C → 2C) after stages 1–3.
* Window attention in 3-D windows (Wd, Wh, Ww) with a learned relative position bias
  B[i, j] = table[idx(Δd, Δh, Δw)], Δ = pos_i − pos_j; odd blocks cyclically shift the grid by ⌊W/2⌋ and mask
  attention across the wrapped borders. When a stage is smaller than the window along an axis, the window
  shrinks to the stage size there and that axis is not shifted.

Parameter and buffer names follow the official checkpoints (``patch_embed.proj``, ``layers.{i}.blocks.{j}.attn
.relative_position_bias_table`` …, ``norm``), so the official ``enc_img.swin.*`` weights load unchanged.
Attention is written out (no fused SDPA), so every op has a double backward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._layers import DropPath, Mlp


# ---- window helpers (pure functions of shapes) ---------------------------------------------------------
def effective_window(size, window, shift):
    """Shrink the window to the input along axes where the input is not larger; no shift along those."""
    win = tuple(s if s <= w else w for s, w in zip(size, window))
    sh = tuple(0 if s <= w else h for s, w, h in zip(size, window, shift))
    return win, sh


def window_partition(x: torch.Tensor, window) -> torch.Tensor:
    """(B, D, H, W, C) → (B·nW, Wd·Wh·Ww, C); D, H, W must be multiples of the window."""
    b, d, h, w, c = x.shape
    wd, wh, ww = window
    x = x.view(b, d // wd, wd, h // wh, wh, w // ww, ww, c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, wd * wh * ww, c)


def window_reverse(windows: torch.Tensor, window, b: int, d: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`."""
    wd, wh, ww = window
    x = windows.view(b, d // wd, h // wh, w // ww, wd, wh, ww, -1)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, d, h, w, -1)


def relative_position_index(window, table_window) -> torch.Tensor:
    """(N, N) row index into a bias table built for ``table_window`` of every pair of positions in ``window``.

    idx = (Δd + Td − 1)(2Th − 1)(2Tw − 1) + (Δh + Th − 1)(2Tw − 1) + (Δw + Tw − 1). For ``window ==
    table_window`` this is Video Swin's buffer; for a smaller window it is the correct sub-pattern (the
    official code slices ``index[:N, :N]``, which agrees only when the temporal axis alone shrinks).
    """
    coords = torch.stack(torch.meshgrid(*[torch.arange(n) for n in window], indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :]
    td, th, tw = table_window
    return ((rel[0] + td - 1) * (2 * th - 1) * (2 * tw - 1) + (rel[1] + th - 1) * (2 * tw - 1)
            + (rel[2] + tw - 1))


def _region_labels(size: int, window: int, shift: int) -> torch.Tensor:
    label = torch.zeros(size, dtype=torch.long)
    if shift > 0:                      # after the cyclic shift the last `shift` positions came from the start
        label[size - window:size - shift] = 1
        label[size - shift:] = 2
    return label


def shift_attention_mask(padded_size, window, shift, device) -> torch.Tensor:
    """(nW, N, N) additive mask: −100 between positions that the cyclic shift brought from different regions."""
    ld, lh, lw = (_region_labels(s, w, h) for s, w, h in zip(padded_size, window, shift))
    regions = (ld[:, None, None] * 9 + lh[None, :, None] * 3 + lw[None, None, :]).to(device)
    windows = window_partition(regions[None, ..., None].float(), window).squeeze(-1)
    diff = windows[:, None, :] - windows[:, :, None]
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)


# ---- modules ---------------------------------------------------------------------------------------------
class WindowAttention3D(nn.Module):
    """Multi-head self-attention inside 3-D windows with a relative position bias (softmax written out)."""

    def __init__(self, dim: int, window, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.window, self.num_heads = tuple(window), num_heads
        self.scale = (dim // num_heads) ** -0.5
        rows = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(rows, num_heads))
        # persistent because the official checkpoints carry it; recomputable from the window
        self.register_buffer("relative_position_index", relative_position_index(self.window, self.window))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop, self.proj_drop = nn.Dropout(attn_drop), nn.Dropout(proj_drop)
        nn.init.normal_(self.relative_position_bias_table, std=0.02)
        self._index_cache: dict = {}

    def _bias(self, window) -> torch.Tensor:
        """(heads, N, N) relative position bias for the (possibly shrunk) ``window``."""
        if tuple(window) == self.window:
            index = self.relative_position_index
        else:
            key = (tuple(window), str(self.relative_position_index.device))
            if key not in self._index_cache:
                self._index_cache[key] = relative_position_index(window, self.window).to(
                    self.relative_position_index.device)
            index = self._index_cache[key]
        n = index.shape[0]
        return self.relative_position_bias_table[index.reshape(-1)].view(n, n, -1).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, window, mask: torch.Tensor | None = None) -> torch.Tensor:
        """softmax(q·kᵀ/√d_h + B + M)·v over windows x: (B·nW, N, C); M: (nW, N, N) or None."""
        bw, n, c = x.shape
        qkv = self.qkv(x).view(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        scores = q @ k.transpose(-2, -1) + self._bias(window).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            scores = (scores.view(bw // nw, nw, self.num_heads, n, n) + mask[None, :, None]).view(bw, -1, n, n)
        attn = self.attn_drop(scores.softmax(dim=-1))
        return self.proj_drop(self.proj((attn @ v).transpose(1, 2).reshape(bw, n, c)))


class SwinBlock3D(nn.Module):
    """x + DropPath(W-MSA(LN(x))), then x + DropPath(MLP(LN(x))); odd blocks use shifted windows."""

    def __init__(self, dim, num_heads, window, shift, mlp_ratio=4.0, drop=0.0, attn_drop=0.0, drop_path=0.0):
        super().__init__()
        self.window, self.shift = tuple(window), tuple(shift)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention3D(dim, window, num_heads, attn_drop, drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def _windowed_attention(self, x: torch.Tensor, mask_for) -> torch.Tensor:
        b, d, h, w, _ = x.shape
        window, shift = effective_window((d, h, w), self.window, self.shift)
        pads = [(-s) % wn for s, wn in zip((d, h, w), window)]
        x = F.pad(x, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))     # zeros after LN, as Video Swin
        dp, hp, wp = x.shape[1:4]
        shifted = any(shift)
        if shifted:
            x = torch.roll(x, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
        out = self.attn(window_partition(x, window), window, mask_for((dp, hp, wp), window, shift)
                        if shifted else None)
        x = window_reverse(out, window, b, dp, hp, wp)
        if shifted:
            x = torch.roll(x, shifts=shift, dims=(1, 2, 3))
        return x[:, :d, :h, :w]

    def forward(self, x: torch.Tensor, mask_for) -> torch.Tensor:
        x = x + self.drop_path(self._windowed_attention(self.norm1(x), mask_for))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2×2 spatial merge: concat the four neighbours (4C) → LN → Linear(4C → 2C, no bias)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2:4]
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """``depth`` blocks alternating regular / shifted windows, then an optional patch merging."""

    def __init__(self, dim, depth, num_heads, window, mlp_ratio, drop, attn_drop, drop_paths, downsample):
        super().__init__()
        shift = tuple(w // 2 for w in window)
        self.blocks = nn.ModuleList([
            SwinBlock3D(dim, num_heads, window, (0, 0, 0) if i % 2 == 0 else shift, mlp_ratio, drop, attn_drop,
                        drop_paths[i]) for i in range(depth)])
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        masks: dict = {}

        def mask_for(padded, window, shift):       # one mask per stage, shared by its shifted blocks
            key = (padded, window, shift)
            if key not in masks:
                masks[key] = shift_attention_mask(padded, window, shift, x.device).to(x.dtype)
            return masks[key]
        for block in self.blocks:
            x = block(x, mask_for)
        return self.downsample(x) if self.downsample is not None else x


class PatchEmbed3D(nn.Module):
    """Pad one zero frame at the end, Conv3d kernel (2, 4, 4) stride (1, 4, 4), LayerNorm: T frames → T steps."""

    def __init__(self, embed_dim: int, patch=(2, 4, 4), in_chans: int = 3):
        super().__init__()
        self.patch = tuple(patch)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=self.patch, stride=(1,) + self.patch[1:])
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, 0, 0, 0, 0, self.patch[0] - 1))
        x = self.proj(x).permute(0, 2, 3, 4, 1)                 # (B, T, H/4, W/4, C)
        return self.norm(x)


class SwinTransformer3D(nn.Module):
    """The Video Swin encoder: (B, 3, T, H, W) → (B, T, H/32, W/32, embed_dim·8), channels last."""

    def __init__(self, embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), window=(8, 7, 7),
                 mlp_ratio=4.0, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.2, patch=(2, 4, 4)):
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f"swin depths {depths} and num_heads {num_heads} must have the same length")
        self.patch_embed = PatchEmbed3D(embed_dim, patch)
        self.pos_drop = nn.Dropout(drop_rate)
        total = sum(depths)      # stochastic depth rising linearly 0 → drop_path_rate (plain floats: meta-safe)
        rates = [drop_path_rate * i / max(1, total - 1) for i in range(total)]
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            start = sum(depths[:i])
            self.layers.append(SwinStage(embed_dim * 2 ** i, depth, heads, window, mlp_ratio, drop_rate,
                                         attn_drop_rate, rates[start:start + depth], i < len(depths) - 1))
        self.num_features = embed_dim * 2 ** (len(depths) - 1)
        self.stride = patch[1] * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(self.num_features)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pos_drop(self.patch_embed(x))
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


def _init_weights(module: nn.Module) -> None:
    """Video Swin's init. Its ``trunc_normal_(std=0.02)`` cuts at ±2 absolute (100σ), i.e. it *is* N(0, 0.02²);
    plain ``normal_`` gives the same distribution several times faster on CPU."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
