"""One bilevel step of MELTR fine-tuning, meta-batch sources and the regulariser.

Every step (inner, on w):      L = MELTR(ℓ(batch); φ) → backward → backbone optimizer step.
                               MELTR's own gradients from this backward are discarded.
Every ``meta_every`` steps (outer, on φ):
    L_outer = ℓ_pri(A) + γ·reg(ℓ(B), φ),   reg = |Σ_t ℓ_t(B) − MELTR(ℓ(B); φ)|  (or its square)
    L_inner = MELTR(ℓ(B); φ)
    φ ← φ − β·clip(hypergradient(L_outer, L_inner, w_scope, φ))
A and B come from a replay buffer of recent training batches (``meta.source='replay'``, official behaviour:
drawn independently at random, re-forwarded with the current w), or A from a held-out meta split and B the
current training batch (``'split'``), or both the current batch (``'current'``). With ``meta.share_forward``
the meta iteration reuses the inner step's forward of the current batch as B (see :meth:`shared_step`).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch

from . import distributed as dist_utils
from .hypergrad import hypergradient, select_scope
from .meltr import stack_losses


def regulariser(losses: torch.Tensor, combined: torch.Tensor, form: str = "abs") -> torch.Tensor:
    """reg = |Σ_t ℓ_t − MELTR(ℓ)| (``abs``, the official form) or its square: keeps MELTR near plain MTL."""
    gap = losses.sum(-1) - combined
    return gap.abs() if form == "abs" else gap.pow(2)


class ReplayBuffer:
    """The last ``size`` training batches, sampled uniformly with a generator of its own (checkpointed).

    Eviction when full: ``fifo`` (oldest first, UniVL), ``weighted`` (the official Violet/All-in-one rule:
    among the oldest ``size`` entries index i is evicted with weight (i+1)/size, so newer batches are *more*
    likely to go and the one just added never does — kept for faithfulness, bug B-V6), or ``random``.
    """

    def __init__(self, size: int = 10, eviction: str = "fifo", seed: int = 0):
        if eviction not in ("fifo", "weighted", "random"):
            raise ValueError(f"meta.eviction must be 'fifo', 'weighted' or 'random', got {eviction!r}")
        self.size, self.eviction = size, eviction
        self.items: list = []
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.items)

    def append(self, batch) -> None:
        self.items.append(_detached(batch))
        if len(self.items) > self.size:
            self.items.pop(self._eviction_index())

    def _eviction_index(self) -> int:
        if self.eviction == "fifo":
            return 0
        if self.eviction == "weighted":
            weights = torch.arange(1, self.size + 1, dtype=torch.float64)
        else:
            weights = torch.ones(self.size, dtype=torch.float64)
        return int(torch.multinomial(weights, 1, generator=self.generator).item())

    def sample(self):
        index = int(torch.randint(len(self.items), (1,), generator=self.generator).item())
        return self.items[index]

    def state_dict(self) -> dict:
        return {"items": self.items, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.items = list(state["items"])
        self.generator.set_state(state["generator"])


def _detached(batch):
    if torch.is_tensor(batch):
        return batch.detach()
    if isinstance(batch, dict):
        return {k: _detached(v) for k, v in batch.items()}
    return batch


@dataclass
class StepCounters:
    step: int = 0                 # inner steps taken (skipped ones included)
    meta_steps: int = 0
    skipped_inner: int = 0        # non-finite losses
    skipped_meta: int = 0         # non-finite outer loss or hypergradient
    nonfinite_in_row: int = 0
    last: dict = field(default_factory=dict)


class NonFiniteError(RuntimeError):
    """Raised after ``meta.max_nonfinite`` non-finite steps in a row."""


class BilevelTrainer:
    """Holds the model, MELTR, both optimizers and schedulers, and runs :meth:`step`.

    ``model`` is the plain backbone (the meta step always differentiates the unwrapped module, because DDP does
    not synchronise ``autograd.grad``); ``train_model`` is what the inner step calls — the DDP wrapper when
    distributed, else the same module.
    """

    def __init__(self, model, combiner, cfg, backbone_optimizer, meltr_optimizer, backbone_scheduler=None,
                 meltr_scheduler=None, train_model=None, device=None):
        self.model, self.combiner, self.cfg = model, combiner, cfg
        self.train_model = train_model if train_model is not None else model
        self.backbone_optimizer, self.meltr_optimizer = backbone_optimizer, meltr_optimizer
        self.backbone_scheduler, self.meltr_scheduler = backbone_scheduler, meltr_scheduler
        self.device = device or next(model.parameters()).device
        self.task_names = list(model.task_names)
        self.primary_task = getattr(model, "primary_task", self.task_names[0])
        self.buffer = ReplayBuffer(cfg.meta.buffer_size, cfg.meta.eviction, seed=cfg.train.seed)
        self.counters = StepCounters()
        self.meta_params = [p for p in combiner.parameters() if p.requires_grad]
        self.scope_params = self._scope(cfg.meta.scope)
        self.scope_ids = {id(p) for p in self.scope_params}

    def _scope(self, scope):
        if scope == "default":
            scope = getattr(self.model, "default_meta_scope", "all")
        return select_scope(self.model, scope)

    # ---- helpers --------------------------------------------------------------------------------------
    def _autocast(self):
        if self.cfg.train.precision == "bf16" and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _losses(self, model, batch, tasks=None) -> dict:
        with self._autocast():
            losses = model(batch) if tasks is None else model(batch, tasks=tasks)
        # bf16/fp16 losses (autocast) go up to float32; float64 models keep float64 (exactness tests).
        return {k: v.to(torch.promote_types(v.dtype, torch.float32)) for k, v in losses.items()}

    def _all_finite(self, *tensors) -> bool:
        bad = any(not bool(torch.isfinite(t.detach()).all()) for t in tensors)
        return not dist_utils.any_rank(bad, device=self.device)

    def _note_nonfinite(self, kind: str) -> None:
        setattr(self.counters, kind, getattr(self.counters, kind) + 1)
        self.counters.nonfinite_in_row += 1
        if self.counters.nonfinite_in_row >= self.cfg.meta.max_nonfinite:
            raise NonFiniteError(
                f"{self.counters.nonfinite_in_row} non-finite steps in a row (meta.max_nonfinite="
                f"{self.cfg.meta.max_nonfinite}) at step {self.counters.step}: check learning rates "
                f"(optim.backbone_lr, optim.meltr_lr), meta.reg_weight and the input data")

    # ---- the step ---------------------------------------------------------------------------------------
    def step(self, batch, meta_batch_fn=None) -> dict:
        """One inner step on ``batch``; a meta step too when the step count reaches ``meta_every``.

        ``meta_batch_fn()`` returns the next held-out meta batch (``meta.source='split'``).
        """
        self.counters.step += 1
        is_meta = self.counters.step % self.cfg.meta.meta_every == 0 and bool(self.meta_params)
        if is_meta and self.cfg.meta.share_forward:
            metrics = self.shared_step(batch, meta_batch_fn)
        else:
            metrics = self.inner_step(batch)
            if is_meta:
                metrics.update(self.meta_step(*self._meta_batches(batch, meta_batch_fn)))
        if "skipped_inner" not in metrics:       # a non-finite batch must not poison later meta steps
            self.buffer.append(batch)
        self.counters.last = metrics
        return metrics

    def _outer_batch(self, batch, meta_batch_fn):
        """A, the batch of the primary (outer) loss, from ``meta.source``."""
        source = self.cfg.meta.source
        if source == "split":
            if meta_batch_fn is None:
                raise ValueError("meta.source='split' needs meta batches (data.meta_split)")
            return meta_batch_fn()
        if source == "replay" and len(self.buffer):
            return self.buffer.sample()
        return batch

    def _meta_batches(self, batch, meta_batch_fn):
        """(A, B): A gives the primary (outer) loss, B the regulariser and L_inner (drawn independently of A
        from the replay buffer, else the current batch)."""
        outer = self._outer_batch(batch, meta_batch_fn)
        replay = self.cfg.meta.source == "replay" and len(self.buffer)
        return outer, (self.buffer.sample() if replay else batch)

    def _train_modes(self) -> None:
        self.model.train()
        self.combiner.train(not self.cfg.meltr.eval_mode)

    def _forward(self, batch):
        """ℓ(batch) through the training module (DDP when distributed) and MELTR(ℓ)."""
        losses = self._losses(self.train_model, batch)
        vector = stack_losses(losses, self.task_names)
        return losses, vector, self.combiner(vector)

    def _inner_update(self) -> None:
        """Clip and step the backbone on the gradients already accumulated; MELTR's own are discarded."""
        self.combiner.zero_grad(set_to_none=True)
        if self.cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.backbone_optimizer.step()
        if self.backbone_scheduler is not None:
            self.backbone_scheduler.step()
        self.counters.nonfinite_in_row = 0

    def _inner_metrics(self, losses, vector, total) -> dict:
        metrics = {f"loss_{k}": float(v.detach()) for k, v in losses.items()}
        weights = self.combiner.task_weights(vector.detach())
        metrics.update({f"weight_{k}": float(w) for k, w in zip(self.task_names, weights)})
        metrics["train_loss"] = float(total.detach())
        return metrics

    def inner_step(self, batch) -> dict:
        """w ← w − α∇_w MELTR(ℓ(w)); the gradient MELTR receives here is discarded."""
        self._train_modes()
        losses, vector, total = self._forward(batch)
        self.backbone_optimizer.zero_grad(set_to_none=True)
        if not self._all_finite(vector, total):
            self._note_nonfinite("skipped_inner")
            return {"skipped_inner": 1.0}
        total.backward()
        self._inner_update()
        return self._inner_metrics(losses, vector, total)

    def shared_step(self, batch, meta_batch_fn=None) -> dict:
        """Inner and meta step from *one* forward of the current batch (``meta.share_forward``).

        B = the current batch: its forward gives the inner gradient (``backward(retain_graph=True)``) and then,
        from the same graph, L_inner and the regulariser of the hypergradient, taken at the pre-update w; A
        comes from the usual source (replay buffer or held-out split). This saves the re-forward of B — with a
        small scope, most of the meta step's cost — at the price of keeping the full graph through the
        hypergradient. Then the backbone steps, then MELTR.
        """
        meta = self.cfg.meta
        self._train_modes()
        with self._math_attention():
            losses, vector, total = self._forward(batch)
            self.backbone_optimizer.zero_grad(set_to_none=True)
            if not self._all_finite(vector, total):
                self._note_nonfinite("skipped_inner")
                return {"skipped_inner": 1.0}
            total.backward(retain_graph=True)
            outer_batch = self._outer_batch(batch, meta_batch_fn)
            with self._only_scope_requires_grad():
                primary = (losses[self.primary_task] if outer_batch is batch else
                           self._losses(self.model, outer_batch, tasks=[self.primary_task])[self.primary_task])
            outer = primary + meta.reg_weight * regulariser(vector, total, meta.reg_form)
            grads = self._hypergradient(outer, total) if self._all_finite(outer) else None
        self._inner_update()
        metrics = self._inner_metrics(losses, vector, total)
        metrics.update(self._meta_update(grads, outer, primary))
        return metrics

    @contextlib.contextmanager
    def _only_scope_requires_grad(self):
        """Out-of-scope backbone parameters stop requiring grad during the meta step, so autograd records
        no graph below the lowest in-scope layer: the main lever on the meta step's time and memory."""
        frozen = [p for p in self.model.parameters() if p.requires_grad and id(p) not in self.scope_ids]
        for p in frozen:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in frozen:
                p.requires_grad_(True)

    @staticmethod
    def _math_attention():
        # Double backward is not implemented for the fused attention kernels: use the math backend.
        from torch.nn.attention import SDPBackend, sdpa_kernel
        return sdpa_kernel(SDPBackend.MATH)

    def _meta_context(self):
        stack = contextlib.ExitStack()
        stack.enter_context(self._only_scope_requires_grad())
        stack.enter_context(self._math_attention())
        return stack

    def meta_losses(self, outer_batch, reg_batch):
        """(L_outer, L_inner or its closure, primary) for the meta step; global mode averages the loss
        vectors across ranks (differentiably), so every rank sees the global batch's losses."""
        meta, glob = self.cfg.meta, self.cfg.meta.global_hypergrad
        average = dist_utils.all_reduce_mean_differentiable if glob else (lambda x: x)

        def inner_parts():
            vector = average(stack_losses(self._losses(self.model, reg_batch), self.task_names))
            return vector, self.combiner(vector)

        primary = average(self._losses(self.model, outer_batch, tasks=[self.primary_task])[self.primary_task])
        vector, combined = inner_parts()
        outer = primary + meta.reg_weight * regulariser(vector, combined, meta.reg_form)
        inner = (lambda: inner_parts()[1]) if meta.method == "finite_difference" else combined
        return outer, inner, primary

    def _hypergradient(self, outer, inner) -> list:
        meta = self.cfg.meta
        return list(hypergradient(
            outer, inner, self.scope_params, self.meta_params, neumann_steps=int(meta.neumann_steps),
            neumann_lr=meta.neumann_lr if meta.neumann_lr is not None else self.cfg.optim.backbone_lr,
            convention=meta.convention, include_direct=meta.include_direct, method=meta.method,
            fd_radius=meta.fd_radius, reduce=dist_utils.all_reduce_mean if meta.global_hypergrad else None))

    def meta_step(self, outer_batch, reg_batch) -> dict:
        """φ ← φ − β·clip(hypergradient), with the hypergradient averaged across ranks as one flat vector."""
        self._train_modes()
        with self._meta_context():
            outer, inner, primary = self.meta_losses(outer_batch, reg_batch)
            grads = self._hypergradient(outer, inner) if self._all_finite(outer) else None
        return self._meta_update(grads, outer, primary)

    def _meta_update(self, grads, outer, primary) -> dict:
        """Average the hypergradient across ranks, skip it if non-finite, clip it and step MELTR."""
        if grads is None:
            self._note_nonfinite("skipped_meta")
            return {"skipped_meta": 1.0}
        grads = dist_utils.all_reduce_mean(grads)
        norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
        if not math.isfinite(norm):
            self._note_nonfinite("skipped_meta")
            return {"skipped_meta": 1.0}
        self._apply_meta_gradient(grads, norm)
        self.counters.meta_steps += 1
        self.counters.nonfinite_in_row = 0
        return {"meta_grad_norm": norm, "meta_outer_loss": float(outer.detach()),
                "meta_primary_loss": float(primary.detach())}

    def _apply_meta_gradient(self, grads: list, norm: float) -> None:
        clip = self.cfg.meta.clip_norm
        scale = min(1.0, clip / (norm + 1e-6)) if clip else 1.0
        self.meltr_optimizer.zero_grad(set_to_none=True)
        for p, g in zip(self.meta_params, grads):
            p.grad = (g * scale).to(p.dtype)
        self.meltr_optimizer.step()
        if self.meltr_scheduler is not None:
            self.meltr_scheduler.step()
        self.meltr_optimizer.zero_grad(set_to_none=True)

    # ---- state ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        c = self.counters
        return {
            "backbone": self.model.state_dict(),
            "combiner": self.combiner.state_dict(),
            "backbone_optimizer": self.backbone_optimizer.state_dict(),
            "meltr_optimizer": self.meltr_optimizer.state_dict() if self.meltr_optimizer else None,
            "backbone_scheduler": self.backbone_scheduler.state_dict() if self.backbone_scheduler else None,
            "meltr_scheduler": self.meltr_scheduler.state_dict() if self.meltr_scheduler else None,
            "buffer": self.buffer.state_dict(),
            "counters": {"step": c.step, "meta_steps": c.meta_steps, "skipped_inner": c.skipped_inner,
                         "skipped_meta": c.skipped_meta, "nonfinite_in_row": c.nonfinite_in_row},
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["backbone"])
        self.combiner.load_state_dict(state["combiner"])
        self.backbone_optimizer.load_state_dict(state["backbone_optimizer"])
        if self.meltr_optimizer is not None and state.get("meltr_optimizer"):
            self.meltr_optimizer.load_state_dict(state["meltr_optimizer"])
        if self.backbone_scheduler is not None and state.get("backbone_scheduler"):
            self.backbone_scheduler.load_state_dict(state["backbone_scheduler"])
        if self.meltr_scheduler is not None and state.get("meltr_scheduler"):
            self.meltr_scheduler.load_state_dict(state["meltr_scheduler"])
        self.buffer.load_state_dict(state["buffer"])
        for key, value in state["counters"].items():
            setattr(self.counters, key, value)
