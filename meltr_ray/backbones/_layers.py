"""Small layers shared by the backbones: stochastic depth, the transformer MLP, two-layer heads, masks.

Everything here has a double backward (no fused kernels), because the MELTR meta step differentiates twice
through the parameters in its scope.
"""
from __future__ import annotations

import torch
from torch import nn

# Added to attention scores of padding keys. BERT's 2021-era value: finite, so no -inf ever reaches softmax
# (a fully masked row stays well defined and its double backward stays finite).
MASKED_SCORE = -10000.0


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): zero a residual branch per sample with probability ``p``.

    y = x · b / (1 − p), b ~ Bernoulli(1 − p) per sample, so E[y] = x; identity in eval mode.
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        mask = x.new_empty(shape).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """Transformer feed-forward: fc2(drop(GELU(fc1(x)))), named ``fc1``/``fc2`` as in Swin checkpoints."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def two_layer_head(dim: int, out: int, dropout: float = 0.1) -> nn.Sequential:
    """Violet's task head Dropout → Linear(d, 2d) → ReLU → Linear(2d, out).

    A ``Sequential`` so the parameter names are ``1.*`` and ``3.*``, as in the official checkpoints.
    """
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, out))


def additive_key_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, N) 1/0 key mask → (B, 1, 1, N) scores offset: 0 where attended, ``MASKED_SCORE`` where padded."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * MASKED_SCORE


def choose_positions(candidate: torch.Tensor, prob: float, generator: torch.Generator | None) -> torch.Tensor:
    """Bernoulli(``prob``) over the ``candidate`` (…, N) positions — BERT-style masking's choice — forcing one
    position (the candidate with the largest independent random key) in a row that has candidates but drew
    none, so every row carries a loss."""
    import torch.nn.functional as F
    draw = torch.rand(candidate.shape, generator=generator).to(candidate.device)
    chosen = candidate & (draw < prob)
    empty = candidate.any(-1) & ~chosen.any(-1)
    if bool(empty.any()):
        keys = torch.rand(candidate.shape, generator=generator).to(candidate.device).masked_fill(~candidate, -1.0)
        chosen = chosen | (F.one_hot(keys.argmax(-1), candidate.shape[-1]).bool() & empty.unsqueeze(-1))
    return chosen


def init_bert_style(module: nn.Module) -> None:
    """BERT's init (``module.apply(init_bert_style)``): N(0, 0.02) weights of linear and embedding layers, zero
    biases, LayerNorm (1, 0)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
