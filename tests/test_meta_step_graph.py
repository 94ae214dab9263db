"""What the meta step records and runs: no graph below the meta scope, math attention only where the products
differentiate twice (fused kernels below the scope), and — on CUDA — few host-device syncs."""
from __future__ import annotations

import contextlib
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from meltr_ray.config import JobConfig
from meltr_ray.core.bilevel import MathAttentionWhereRecorded
from meltr_ray.core.loop import build_trainer
from meltr_ray.core.meltr import build_combiner

LAYERS = 3


class Block(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads, self.norm = heads, nn.LayerNorm(hidden)
        self.qkv, self.mlp = nn.Linear(hidden, 3 * hidden), nn.Linear(hidden, hidden)

    def forward(self, x):
        b, s, h = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, s, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        x = x + F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, s, h)
        return x + torch.tanh(self.mlp(x))


class SdpaMultiTask(nn.Module):
    """A small SDPA transformer following the backbone contract: tasks ``primary`` (classification of the first
    token), ``tagging`` (per token) and ``regression`` (mean-pooled); meta scope = top block + heads."""

    def __init__(self, vocab=20, hidden=8, heads=2, seq=5):
        super().__init__()
        self.task_names, self.primary_task = ["primary", "tagging", "regression"], "primary"
        self.embed = nn.Embedding(vocab, hidden)
        self.blocks = nn.ModuleList(Block(hidden, heads) for _ in range(LAYERS))
        self.heads = nn.ModuleDict({"primary": nn.Linear(hidden, 3), "tagging": nn.Linear(hidden, 4),
                                    "regression": nn.Linear(hidden, 1)})
        self.default_meta_scope = [f"blocks.{LAYERS - 1}.*", "heads.*"]

    def forward(self, batch, tasks=None):
        h = self.embed(batch["tokens"])
        for block in self.blocks:
            h = block(h)
        losses = {"primary": lambda: F.cross_entropy(self.heads["primary"](h[:, 0]), batch["label"]),
                  "tagging": lambda: F.cross_entropy(self.heads["tagging"](h).flatten(0, 1), batch["tags"].flatten()),
                  "regression": lambda: F.mse_loss(self.heads["regression"](h.mean(1)).squeeze(-1), batch["y"])}
        return {t: losses[t]() for t in (tasks or self.task_names)}


def batches(n, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [{"tokens": torch.randint(20, (4, 5), generator=g), "label": torch.randint(3, (4,), generator=g),
             "tags": torch.randint(4, (4, 5), generator=g), "y": torch.randn(4, generator=g, dtype=dtype)}
            for _ in range(n)]


def make_trainer(dtype=torch.float32, device="cpu", overrides=None):
    cfg = JobConfig().with_overrides({"meltr.d_model": 8, "meltr.d_ffn": 8, "meltr.d_scale": 4, "meltr.n_heads": 2,
                                      "meta.scope": "default", "meta.meta_every": 1, "optim.schedule": "constant",
                                      "meltr.eval_mode": True, "meta.clip_norm": None, **(overrides or {})}).validate()
    torch.manual_seed(0)
    model = SdpaMultiTask().to(device=device, dtype=dtype)
    combiner = build_combiner(cfg.meltr, 3).to(device=device, dtype=dtype)
    with torch.no_grad():                       # away from the MTL start, so every MELTR parameter gets gradient
        combiner.head.weight.normal_(0, 0.5)
    return build_trainer(model, combiner, cfg, device=torch.device(device))


def capture_meta(trainer) -> dict:
    """Run one meta step; keep L_outer, L_inner and the hypergradient it computed."""
    seen, hypergradient = {}, trainer._hypergradient

    def spy(outer, inner, reg_batch):
        seen.update(outer=outer, inner=inner.total)
        seen["grads"] = hypergradient(outer, inner, reg_batch)
        return seen["grads"]
    trainer._hypergradient = spy
    a, b = batches(2, seed=1, dtype=next(trainer.model.parameters()).dtype)
    trainer.meta_step(a, b)
    return seen


def graph_leaves(*roots) -> tuple[set, int]:
    """Ids of the leaf tensors autograd would accumulate into, and the number of nodes, reachable from roots."""
    leaves, seen, todo = set(), set(), [r.grad_fn for r in roots if r.grad_fn is not None]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "variable"):
            leaves.add(id(node.variable))
        todo += [n for n, _ in node.next_functions]
    return leaves, len(seen)


def test_meta_forwards_record_no_graph_below_the_scope():
    trainer = make_trainer()
    boundary = {}
    for i, block in enumerate(trainer.model.blocks):
        block.register_forward_hook(lambda m, args, out, i=i: boundary.setdefault(i, []).append(
            (args[0].requires_grad, out.requires_grad)))
    seen = capture_meta(trainer)
    # each block ran twice (A and B); below the top block neither input nor output is part of a graph
    for i in range(LAYERS - 1):
        assert boundary[i] == [(False, False)] * 2, (i, boundary[i])
    assert boundary[LAYERS - 1] == [(False, True)] * 2       # the activation entering the scope has no history
    leaves, nodes = graph_leaves(seen["outer"], seen["inner"])
    scope = {id(p) for p in trainer.scope_params}
    assert leaves <= scope | {id(p) for p in trainer.meta_params}
    assert scope <= leaves
    # the same L_outer and L_inner recorded with every parameter requiring grad: a graph through all blocks
    full = {id(p) for p in trainer.model.parameters()}
    with torch.enable_grad():
        a, b = batches(2, seed=1)
        outer = trainer.model(a, tasks=["primary"])["primary"]
        losses = trainer.model(b)
        inner = trainer.combiner(torch.stack([losses[t] for t in trainer.task_names]))
    all_leaves, all_nodes = graph_leaves(outer, inner)
    assert full <= all_leaves and nodes < all_nodes


def test_attention_mode_sends_only_recorded_calls_to_math():
    q, k, v = (torch.randn(2, 2, 5, 4) for _ in range(3))
    with sdpa_kernel(SDPBackend.MATH):
        math_out = F.scaled_dot_product_attention(q, k, v)
    fused_out = F.scaled_dot_product_attention(q, k, v)
    assert not torch.equal(math_out, fused_out)            # the two kernels round differently on this CPU
    mode = MathAttentionWhereRecorded()
    with mode:
        no_grad_call = F.scaled_dot_product_attention(q, k, v)
        recorded = F.scaled_dot_product_attention(q.requires_grad_(), k, v)
        with torch.no_grad():
            not_recorded = F.scaled_dot_product_attention(q, k, v)
    assert torch.equal(no_grad_call, fused_out) and torch.equal(not_recorded, fused_out)
    assert torch.equal(recorded.detach(), math_out) and "Flash" not in type(recorded.grad_fn).__name__
    assert (mode.math_calls, mode.fused_calls) == (1, 2)


def test_meta_step_keeps_fused_attention_below_the_scope_and_equals_math_everywhere():
    """float64: the hypergradient with fused kernels below the scope equals the one with math everywhere (the two
    kernels differ by rounding only); with no attention context at all the double backward fails."""
    modes = []
    trainer = make_trainer(torch.float64)
    reference = make_trainer(torch.float64)                  # the same initial state (seeded)
    reference.attention_mode = lambda: sdpa_kernel(SDPBackend.MATH)
    original = trainer.attention_mode
    trainer.attention_mode = lambda: modes.append(original()) or modes[-1]
    got, want = capture_meta(trainer)["grads"], capture_meta(reference)["grads"]
    assert sum(float(g.abs().sum()) for g in got) > 0
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert [(m.math_calls, m.fused_calls) for m in modes] == [(2, 2 * (LAYERS - 1))]
    bare = make_trainer(torch.float64)
    bare.attention_mode = contextlib.nullcontext
    with pytest.raises(RuntimeError, match="derivative for .*flash_attention.* is not implemented"):
        capture_meta(bare)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_meta_step_syncs_with_the_host_only_for_its_checks():
    """One meta step on CUDA: the finite checks (L_outer in the trainer; L_outer and L_inner validated by
    hypergradient), the diagnostics' three norms and the update's one — no per-tensor syncs."""
    trainer = make_trainer(device="cuda")
    a, b = ({k: v.cuda() for k, v in x.items()} for x in batches(2, seed=1))
    trainer.meta_step(a, b)                                   # warm-up (optimizer state, kernels)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            trainer.meta_step(a, b)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) <= 7, [str(w.message) for w in syncs]
