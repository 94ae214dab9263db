"""MELTR, the meta loss transformer, and the loss combiners it is compared with.

A *loss combiner* maps the vector of a backbone's T scalar task losses ℓ = (ℓ_1..ℓ_T) to one training loss.
MELTR (paper §4, reference §1.1) is

    E_t = MLP_SE(ℓ_t) + TE_t                      scale embedding (1 → d_scale → ReLU → d_model) + task embedding
    H   = EncoderLayer(E_1..E_T)                   one post-LN transformer layer (8 heads)
    MELTR(ℓ; φ) = Σ_t ℓ_t + W_o · mean_t H_t       start="mtl" (default): W_o = 0 at initialisation
    MELTR(ℓ; φ) =           W_o · mean_t H_t       start="official": the released code, PyTorch initialisation

W_o is the bias-free Linear(d_model → 1) ``head``. The losses go in raw (no log, no normalisation, not
detached): the backbone is trained on MELTR's output, so the effective weight of task t is ∂MELTR/∂ℓ_t
(:meth:`LossCombiner.task_weights`), which depends on the loss values themselves — the "non-linear
combination". Negative losses (UniVL's CMLM/CMFM) go in as they are: the residual adds them like MTL does.

**Why MELTR starts as MTL** (issue 9). With the official initialisation a fresh MELTR gives ∂MELTR/∂ℓ_t of
±0.01–0.3 with a random sign (issue 9 measured 35–85 % of seeds with a negative task weight at one loss
vector, every preset; over losses 10⁻³…10² it is 15–20 of 20 seeds) and outputs about −0.9 where Σℓ ≈ 18, so the backbone *ascends* some losses until enough meta steps turn the sign. The default
start adds the parameter-free residual Σ_t ℓ_t and zeroes W_o: a new MELTR is exactly MTL (output Σℓ, every
weight 1, for any loss values and any seed), and the official parameter set and counts are unchanged, so
official weights still load (with ``start="official"`` to get the official forward too). Meta-training moves
it away from MTL only as far as the hypergradient asks.

What the zero W_o costs: ∂MELTR/∂ℓ_t = 1 + W_o·∂(mean H)/∂ℓ_t, so the hypergradient −∇_φ⟨∇_w MELTR, p⟩
has, at W_o = 0, a non-zero component only for W_o (−Σ_t ∂(mean H)/∂ℓ_t·⟨∇_w ℓ_t, p⟩); every other parameter
enters multiplied by W_o. So the *first* meta step
moves W_o alone (Adam moves every coordinate by ≈ β), and from the second on the whole transformer gets
gradient — the "zero-initialised last layer" of ReZero/ControlNet. Alternatives considered: a random W_o
with the residual (every parameter gets gradient at step one, but with the official W_o the output is Σℓ
plus an offset of up to 1.3 and the weights are 1 ± up to 0.29 over losses 10⁻³…10² and 20 seeds — far from
Σℓ when the losses are small; a W_o scaled down far enough to fix that is the zero start with extra noise);
a warm-start fit of the official network to Σℓ (its post-LN output is bounded by ‖W_o‖·√d, so it cannot
follow Σℓ over 10⁻³…10² without a huge W_o, and the fit is seed-dependent); a per-task multiplicative gate (a
different architecture, parameter counts change). The one-step delay is the cheapest of these costs.

The regulariser γ·|Σ_t ℓ_t − MELTR(ℓ)| (``core/bilevel.regulariser``) reads, with the residual,
γ·|W_o·mean_t H_t|: the size of MELTR's learned correction to MTL. It is 0 with zero gradient at the start,
and it keeps MELTR near MTL as the official one was meant to (with the official start it instead pulls an
output of ≈ −0.9 towards Σℓ).

Attention is written out (softmax(QKᵀ/√d)V) rather than calling PyTorch's fused kernels: the hypergradient
needs double backward through MELTR, which the fused SDPA kernels do not implement, and with T ≤ 8 tokens the
explicit form costs nothing. Parameter names match ``nn.TransformerEncoderLayer`` so official MELTR weights load.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Official sizes (reference §1.2): T losses, d_scale (h1), d_model (h2), d_ffn, init. ``meltr_tiny`` is a
# test size; its num_tasks is None: the caller (build_combiner: the backbone) supplies it.
PRESETS = {
    "univl": dict(num_tasks=8, d_scale=128, d_model=256, d_ffn=512, init="default"),
    "violet_retrieval": dict(num_tasks=3, d_scale=256, d_model=512, d_ffn=512, init="default"),
    "violet_qa": dict(num_tasks=4, d_scale=128, d_model=256, d_ffn=256, init="default"),
    "allinone": dict(num_tasks=2, d_scale=128, d_model=128, d_ffn=128, init="normal"),
    "meltr_tiny": dict(num_tasks=None, d_scale=16, d_model=32, d_ffn=32, n_heads=2, init="default"),
}
STARTS = ("mtl", "official")


def stack_losses(losses: dict, task_names) -> torch.Tensor:
    """Stack a ``{task: scalar loss}`` dict into the (T,) vector MELTR expects, in ``task_names`` order.

    Raises ``ValueError`` naming the task when a loss is missing or not a scalar.
    """
    values = []
    for name in task_names:
        if name not in losses:
            raise ValueError(f"losses is missing task {name!r} (expected tasks {list(task_names)})")
        value = losses[name]
        if not torch.is_tensor(value) or value.numel() != 1:
            shape = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
            raise ValueError(f"loss {name!r} must be a scalar tensor, got {shape}")
        values.append(value.reshape(()))
    return torch.stack(values)


class LossCombiner(nn.Module):
    """Base class: ``forward(losses)`` with losses of shape (T,) → scalar, or (B, T) → (B,)."""

    def __init__(self, num_tasks: int):
        super().__init__()
        if not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"num_tasks must be an integer >= 1, got {num_tasks!r}")
        self.num_tasks = num_tasks

    def _check_input(self, losses: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(losses) or losses.dim() not in (1, 2) or losses.shape[-1] != self.num_tasks:
            shape = tuple(losses.shape) if torch.is_tensor(losses) else type(losses).__name__
            raise ValueError(f"losses must have shape ({self.num_tasks},) or (batch, {self.num_tasks}) "
                             f"for {type(self).__name__} with num_tasks={self.num_tasks}, got {shape}")
        return losses

    @property
    def has_meta_params(self) -> bool:
        return any(p.requires_grad for p in self.parameters())

    def task_weights(self, losses: torch.Tensor) -> torch.Tensor:
        """∂combiner/∂ℓ_t at ``losses`` (shape (T,) or (B, T)): the effective weight of each task."""
        x = self._check_input(losses).detach().clone().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self(x).sum(), x, allow_unused=True)
        return torch.zeros_like(x) if grad is None else grad


class MTLSum(LossCombiner):
    """Multi-task learning baseline: Σ_t ℓ_t (no meta parameters)."""

    def forward(self, losses):
        return self._check_input(losses).sum(-1)


class FixedWeights(LossCombiner):
    """Σ_t w_t ℓ_t with hand-set weights w (no meta parameters)."""

    def __init__(self, num_tasks: int, weights=None):
        super().__init__(num_tasks)
        weights = [1.0] * num_tasks if weights is None else list(weights)
        if len(weights) != num_tasks:
            raise ValueError(f"fixed_weights must have {num_tasks} entries, got {len(weights)}")
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32))

    def forward(self, losses):
        return (self._check_input(losses) * self.weights.to(losses.dtype)).sum(-1)


class LinearWeights(LossCombiner):
    """Meta-Weight-Net-style learned linear combination Σ_t ω_t ℓ_t.

    ω_t = 2·sigmoid(MLP(ℓ_t) + b_t) ∈ (0, 2), with the MLP reading the *detached* loss value as in
    Meta-Weight-Net, so the combination is linear in ℓ with loss-dependent weights (∂/∂ℓ_t = ω_t). The MLP's
    last layer and b start at zero, so every ω_t starts at exactly 1 (MTL), like MELTR's default start; the
    factor 2 lets a task be weighted up as well as down.
    """

    def __init__(self, num_tasks: int, hidden: int = 100):
        super().__init__(num_tasks)
        self.weight_net = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.weight_net[-1].weight)
        nn.init.zeros_(self.weight_net[-1].bias)
        self.task_bias = nn.Parameter(torch.zeros(num_tasks))

    def weights(self, losses: torch.Tensor) -> torch.Tensor:
        logits = self.weight_net(losses.detach().unsqueeze(-1)).squeeze(-1) + self.task_bias
        return 2 * torch.sigmoid(logits)

    def forward(self, losses):
        losses = self._check_input(losses)
        return (self.weights(losses) * losses).sum(-1)


class PostLNEncoderLayer(nn.Module):
    """``nn.TransformerEncoderLayer`` (post-LN, ReLU FFN, batch-first) with attention written out.

    Same parameter names as PyTorch's layer (``self_attn.in_proj_weight`` …), so state dicts are interchangeable,
    but every op has a double backward.
    """

    def __init__(self, d_model: int, n_heads: int, d_ffn: int, dropout: float):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.self_attn = nn.Module()
        self.self_attn.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.self_attn.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model))
        self.self_attn.out_proj = nn.Linear(d_model, d_model)
        nn.init.xavier_uniform_(self.self_attn.in_proj_weight)
        nn.init.zeros_(self.self_attn.out_proj.bias)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.attn_dropout = nn.Dropout(dropout)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, d_model = x.shape
        head_dim = d_model // self.n_heads
        qkv = F.linear(x, self.self_attn.in_proj_weight, self.self_attn.in_proj_bias)
        q, k, v = qkv.view(batch, tokens, 3, self.n_heads, head_dim).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-2, -1) / math.sqrt(head_dim)
        context = self.attn_dropout(scores.softmax(-1)) @ v
        return self.self_attn.out_proj(context.transpose(1, 2).reshape(batch, tokens, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.dropout1(self.attention(x)))
        return self.norm2(x + self.dropout2(self.linear2(self.dropout(F.relu(self.linear1(x))))))


class MELTR(LossCombiner):
    """The meta loss transformer (see module docstring).

    Args:
        num_tasks: T, the number of losses (order = the backbone's ``task_names``; row t of the task
            embedding belongs to loss t).
        d_model, d_ffn, d_scale, n_heads, n_layers, dropout: sizes (paper: 1 layer, 8 heads, 512 hidden).
        embedding: ``se_te`` (default), ``se`` (scale embedding only) or ``te`` (task embedding only; the
            output then does not depend on ℓ, so ∇_w MELTR = 0 — the paper's untrainable ablation).
        architecture: ``transformer`` (default) or ``linear`` (a token-wise Linear instead of the encoder).
        init: ``default`` (PyTorch) or ``normal`` (N(0, 0.02), zero biases; the All-in-one official init).
        start: ``mtl`` (default: output Σℓ + W_o·mean H with W_o = 0, so a new MELTR is exactly MTL) or
            ``official`` (output W_o·mean H with W_o initialised by ``init``: the released code, for
            reproduction and for loading official weights). See the module docstring.
    """

    def __init__(self, num_tasks: int, d_model: int = 512, d_ffn: int = 512, d_scale: int = 256,
                 n_heads: int = 8, n_layers: int = 1, dropout: float = 0.1, embedding: str = "se_te",
                 architecture: str = "transformer", init: str = "default", start: str = "mtl"):
        super().__init__(num_tasks)
        if start not in STARTS:
            raise ValueError(f"start (meltr.start) must be one of {list(STARTS)}, got {start!r}")
        if embedding not in ("se_te", "se", "te"):
            raise ValueError(f"embedding must be 'se_te', 'se' or 'te', got {embedding!r}")
        if architecture not in ("transformer", "linear"):
            raise ValueError(f"architecture must be 'transformer' or 'linear', got {architecture!r}")
        self.embedding, self.architecture, self.start = embedding, architecture, start
        self.task_embedding = nn.Embedding(num_tasks, d_model) if embedding != "se" else None
        self.scale_embedding = (nn.Sequential(nn.Linear(1, d_scale), nn.ReLU(), nn.Linear(d_scale, d_model))
                                if embedding != "te" else None)
        if architecture == "transformer":
            self.encoder = nn.ModuleList(PostLNEncoderLayer(d_model, n_heads, d_ffn, dropout)
                                         for _ in range(n_layers))
        else:
            self.encoder = nn.ModuleList([nn.Linear(d_model, d_model)])
        self.head = nn.Linear(d_model, 1, bias=False)
        if init == "normal":
            self._init_normal()
        elif init != "default":
            raise ValueError(f"init must be 'default' or 'normal', got {init!r}")
        if start == "mtl":
            nn.init.zeros_(self.head.weight)     # W_o = 0: MELTR(ℓ) = Σℓ exactly until meta-training moves it

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "MELTR":
        """Build one of the official sizes (``univl``, ``violet_retrieval``, ``violet_qa``, ``allinone``) or the
        test size ``meltr_tiny`` (which needs ``num_tasks=``)."""
        if name not in PRESETS:
            raise ValueError(f"unknown MELTR preset {name!r}; choose from {sorted(PRESETS)}")
        kwargs = {**PRESETS[name], **overrides}
        if kwargs["num_tasks"] is None:
            raise ValueError(f"MELTR preset {name!r} takes its number of losses from the caller: pass num_tasks=")
        return cls(**kwargs)

    def _init_normal(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def embed(self, losses: torch.Tensor) -> torch.Tensor:
        """(B, T) losses → (B, T, d_model) tokens: scale embedding + task embedding."""
        tokens = 0
        if self.scale_embedding is not None:
            tokens = self.scale_embedding(losses.unsqueeze(-1))
        if self.task_embedding is not None:
            task = self.task_embedding.weight.unsqueeze(0)
            tokens = task.expand(losses.shape[0], -1, -1) + tokens
        return tokens

    def forward(self, losses: torch.Tensor) -> torch.Tensor:
        losses = self._check_input(losses)
        batched = losses.dim() == 2
        x = self.embed(losses if batched else losses.unsqueeze(0))
        for layer in self.encoder:
            x = layer(x)
        out = self.head(x.mean(1)).squeeze(-1)
        if self.start == "mtl":
            out = out + (losses if batched else losses.unsqueeze(0)).sum(-1)     # the parameter-free MTL path
        return out if batched else out.squeeze(0)


def build_combiner(cfg, num_tasks: int) -> LossCombiner:
    """A loss combiner from a :class:`~meltr_ray.config.MeltrConfig` for a backbone with ``num_tasks`` losses."""
    if cfg.combiner == "mtl":
        return MTLSum(num_tasks)
    if cfg.combiner == "fixed":
        return FixedWeights(num_tasks, cfg.fixed_weights)
    if cfg.combiner == "linear":
        return LinearWeights(num_tasks)
    common = dict(n_layers=cfg.n_layers, dropout=cfg.dropout, embedding=cfg.embedding,
                  architecture=cfg.architecture, start=cfg.start)
    if cfg.preset is not None:
        return _from_preset_for(cfg, num_tasks, common)
    return MELTR(num_tasks, d_model=cfg.d_model, d_ffn=cfg.d_ffn, d_scale=cfg.d_scale, n_heads=cfg.n_heads,
                 init=cfg.init, **common)


def _from_preset_for(cfg, num_tasks: int, common: dict) -> MELTR:
    """A preset's sizes (and init, and heads where it sets them) win over the matching ``meltr.*`` fields;
    the number of losses must match the backbone's (``meltr_tiny`` takes it from the backbone)."""
    preset = PRESETS.get(cfg.preset, {})
    preset_tasks = preset.get("num_tasks")
    if preset_tasks is not None and preset_tasks != num_tasks:
        raise ValueError(f"meltr.preset {cfg.preset!r} combines {preset_tasks} losses but the backbone "
                         f"has {num_tasks}")
    heads = {} if "n_heads" in preset else {"n_heads": cfg.n_heads}
    return MELTR.from_preset(cfg.preset, num_tasks=num_tasks, **heads, **common)
