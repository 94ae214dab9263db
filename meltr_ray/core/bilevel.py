"""One bilevel step of MELTR fine-tuning (the algorithm; the state it acts on is :mod:`.state`).

Every step (inner, on w):      L = MELTR(ℓ(batch); φ) → backward (w only) → backbone optimizer step.
Every ``meta_every`` steps (outer, on φ):
    L_outer = ℓ_pri(A) + γ·reg(ℓ(B), φ),   reg = |Σ_t ℓ_t(B) − MELTR(ℓ(B); φ)|  (or its square)
    L_inner = MELTR(ℓ(B); φ)
    φ ← φ − β·clip(hypergradient(L_outer, L_inner, w_scope, φ))
A and B come from a replay buffer of recent training batches (``meta.source='replay'``, official behaviour:
drawn independently at random, re-forwarded with the current w), or A from a held-out meta split and B the
current training batch (``'split'``), or both the current batch (``'current'``). With ``meta.share_forward``
B is the current batch and its inner forward is reused (taken at the pre-update w): no second forward of B.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode

from . import distributed as dist_utils
from .hypergrad import hypergradient
from .meltr import stack_losses
from .state import BilevelState, NonFiniteError, ReplayBuffer, StepCounters  # noqa: F401  (re-exported)


def regulariser(losses: torch.Tensor, combined: torch.Tensor, form: str = "abs") -> torch.Tensor:
    """reg = |Σ_t ℓ_t − MELTR(ℓ)| (``abs``, the official form) or its square: keeps MELTR near plain MTL."""
    gap = losses.sum(-1) - combined
    return gap.abs() if form == "abs" else gap.pow(2)


class MathAttentionWhereRecorded(TorchFunctionMode):
    """Routes ``F.scaled_dot_product_attention`` to the math backend only for the calls autograd records.

    The hypergradient's products differentiate L_inner twice, and the fused SDPA kernels (flash, efficient,
    the CPU flash kernel) implement only a first backward; the math backend decomposes attention into ops
    that all have a double backward. Below the meta scope nothing requires grad, so those blocks are
    differentiated zero times and keep PyTorch's own (fused) kernel choice; only calls with grad mode on and
    a tensor argument that requires grad (q, k, v or the mask: the in-scope blocks) are sent to math.
    ``math_calls`` / ``fused_calls`` count the two kinds (tests, diagnostics).
    """

    def __init__(self):
        super().__init__()
        self.math_calls = self.fused_calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        if torch.is_grad_enabled() and _any_requires_grad(args, kwargs):
            self.math_calls += 1
            with sdpa_kernel(SDPBackend.MATH):
                return func(*args, **kwargs)
        self.fused_calls += 1
        return func(*args, **kwargs)


def _any_requires_grad(args, kwargs) -> bool:
    return any(torch.is_tensor(x) and x.requires_grad for x in (*args, *kwargs.values()))


@dataclass
class Forward:
    """ℓ(batch) as a dict and as MELTR's input vector, and MELTR(ℓ)."""
    losses: dict
    vector: torch.Tensor
    total: torch.Tensor


class BilevelTrainer(BilevelState):
    """:meth:`step` = :meth:`inner_step`, and every ``meta.meta_every`` steps :meth:`meta_step`."""

    def step(self, batch, meta_batch_fn=None) -> dict:
        """One inner step on ``batch``, and a meta step when due; ``meta_batch_fn()`` gives held-out A batches."""
        self.counters.step += 1
        if not (self.counters.step % self.cfg.meta.meta_every == 0 and self.meta_params):
            metrics = self.inner_step(batch)
        elif self.cfg.meta.share_forward:
            metrics = self.shared_step(batch, meta_batch_fn)
        else:
            metrics = self.inner_step(batch)
            metrics.update(self.meta_step(self._outer_batch(batch, meta_batch_fn), self._reg_batch(batch)))
        if "skipped_inner" not in metrics:       # a non-finite batch must not poison later meta steps
            self.buffer.append(batch)
        self.counters.last = metrics
        return metrics

    def inner_step(self, batch) -> dict:
        """w ← w − α∇_w MELTR(ℓ(w)); MELTR gets no gradient here (``backward(inputs=w)``)."""
        self._train_modes()
        fwd = self.forward(self.train_model, batch)
        if not self._inner_backward(fwd):
            return {"skipped_inner": 1.0}
        self._update_backbone()
        return self._inner_metrics(fwd)

    def meta_step(self, outer_batch, reg_batch, reg_forward: Forward | None = None) -> dict:
        """φ ← φ − β·clip(hypergradient); ``reg_forward`` reuses a forward of B that the caller already has."""
        self._train_modes()
        scope = self._only_scope_requires_grad() if reg_forward is None else contextlib.nullcontext()
        with scope:
            with self.attention_mode():      # only the forwards: the products call no attention forward
                primary = self.primary_loss(outer_batch, reg_batch if reg_forward is not None else None,
                                            reg_forward)
                inner = reg_forward or self.forward(self.model, reg_batch, average=self.cfg.meta.global_hypergrad)
            m = self.cfg.meta
            outer = primary + m.reg_weight * regulariser(inner.vector, inner.total, m.reg_form)
            grads = self._hypergradient(outer, inner, reg_batch) if self._all_finite(outer) else None
        return self._update_meltr(grads, outer, primary)

    def shared_step(self, batch, meta_batch_fn=None) -> dict:
        """Inner and meta step from one forward of the current batch B (``meta.share_forward``)."""
        self._train_modes()
        with self.attention_mode():          # the whole graph is recorded here: every call goes to math
            fwd = self.forward(self.train_model, batch)
            if not self._inner_backward(fwd, retain_graph=True):
                return {"skipped_inner": 1.0}
            metrics = self.meta_step(self._outer_batch(batch, meta_batch_fn), batch, reg_forward=fwd)
        self._update_backbone()
        return {**self._inner_metrics(fwd), **metrics}

    # ---- the pieces -------------------------------------------------------------------------------------
    def forward(self, model, batch, tasks=None, average: bool = False) -> Forward:
        """ℓ(batch) through ``model`` and MELTR(ℓ); ``average`` all-reduces ℓ differentiably (global mode)."""
        with self._autocast():
            losses = model(batch) if tasks is None else model(batch, tasks=tasks)
        # bf16/fp16 losses (autocast) go up to float32; float64 models keep float64 (exactness tests).
        losses = {k: v.to(torch.promote_types(v.dtype, torch.float32)) for k, v in losses.items()}
        if tasks is not None:
            return Forward(losses, None, None)
        vector = stack_losses(losses, self.task_names)
        if average:
            vector = dist_utils.all_reduce_mean_differentiable(vector)
        return Forward(losses, vector, self.combiner(vector))

    def primary_loss(self, outer_batch, current_batch=None, current: Forward | None = None) -> torch.Tensor:
        """ℓ_pri(A), out of ``current`` when A is the batch already forwarded."""
        if current is not None and outer_batch is current_batch:
            return current.losses[self.primary_task]
        with self._only_scope_requires_grad():
            loss = self.forward(self.model, outer_batch, tasks=[self.primary_task]).losses[self.primary_task]
        return dist_utils.all_reduce_mean_differentiable(loss) if self.cfg.meta.global_hypergrad else loss

    def _outer_batch(self, batch, meta_batch_fn):
        """A, the batch of the primary (outer) loss, from ``meta.source``."""
        source = self.cfg.meta.source
        if source == "split":
            if meta_batch_fn is None:
                raise ValueError("meta.source='split' needs meta batches (data.meta_split)")
            return meta_batch_fn()
        return self.buffer.sample() if source == "replay" and len(self.buffer) else batch

    def _reg_batch(self, batch):
        """B, the batch of the regulariser and L_inner: drawn independently of A from the buffer, else current."""
        return self.buffer.sample() if self.cfg.meta.source == "replay" and len(self.buffer) else batch

    def _inner_backward(self, fwd: Forward, retain_graph: bool = False) -> bool:
        """Backward of MELTR(ℓ) into the backbone's ``.grad``; False (and counted) when loss or gradient is
        not finite on any rank (checked after DDP's all-reduce, so every rank agrees)."""
        self.backbone_optimizer.zero_grad(set_to_none=True)
        if self._all_finite(fwd.vector, fwd.total):
            fwd.total.backward(inputs=self.backbone_params, retain_graph=retain_graph)
            if self._all_finite(*(p.grad for p in self.backbone_params if p.grad is not None)):
                self.counters.inner_fail_run = 0
                return True
            self.backbone_optimizer.zero_grad(set_to_none=True)
        self._count_failure("skipped_inner", "inner_fail_run")
        return False

    def _update_backbone(self) -> None:
        if self.cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.backbone_params, self.cfg.optim.grad_clip)
        self.backbone_optimizer.step()
        if self.backbone_scheduler is not None:
            self.backbone_scheduler.step()

    def _hypergradient(self, outer, inner: Forward, reg_batch) -> list:
        """The φ-gradient; its diagnostics (the Neumann correction, ‖g‖) go to ``self.last_hypergrad_info``."""
        meta, self.last_hypergrad_info = self.cfg.meta, {}
        closure = lambda: self.forward(self.model, reg_batch, average=meta.global_hypergrad).total  # noqa: E731
        generator = getattr(self.model, "mask_generator", None)       # a backbone's private masking stream
        return list(hypergradient(
            outer, closure if meta.products == "finite_difference" else inner.total, self.scope_params,
            self.meta_params, neumann_steps=int(meta.neumann_steps),
            neumann_lr=meta.neumann_lr if meta.neumann_lr is not None else self.cfg.optim.backbone_lr,
            convention=meta.convention, include_direct=meta.include_direct, inverse=meta.inverse,
            products=meta.products, fd_radius=meta.fd_radius,
            reduce=dist_utils.all_reduce_mean if meta.global_hypergrad else None,
            generators=[generator] if isinstance(generator, torch.Generator) else (),
            info=self.last_hypergrad_info))

    def _update_meltr(self, grads, outer, primary) -> dict:
        """Average the hypergradient across ranks as one flat vector, skip it if non-finite, clip, step MELTR.

        ‖g‖ and the logged losses reach the host together: one device sync for the whole update."""
        if grads is not None:
            grads = dist_utils.all_reduce_mean(grads)
            squared = torch.stack([g.detach().pow(2).sum().double() for g in grads]).sum()
            norm_sq, outer_value, primary_value = _to_host(squared, outer, primary)
            norm = math.sqrt(norm_sq) if math.isfinite(norm_sq) else math.nan
        if grads is None or not math.isfinite(norm):
            self._count_failure("skipped_meta", "meta_fail_run")
            return {"skipped_meta": 1.0}
        clip = self.cfg.meta.clip_norm
        scale = min(1.0, clip / (norm + 1e-6)) if clip else 1.0
        self.meltr_optimizer.zero_grad(set_to_none=True)
        for p, g in zip(self.meta_params, grads):
            p.grad = (g * scale).to(p.dtype)
        self.meltr_optimizer.step()
        if self.meltr_scheduler is not None:
            self.meltr_scheduler.step()
        self.meltr_optimizer.zero_grad(set_to_none=True)
        self.counters.meta_steps += 1
        self.counters.meta_fail_run = 0
        info = getattr(self, "last_hypergrad_info", {})
        return {"meta_grad_norm": norm, "meta_outer_loss": outer_value, "meta_primary_loss": primary_value,
                # ‖Σ_j v_j − (K+1)g‖ / ‖(K+1)g‖: near 0 means K only rescales the K = 0 hypergradient
                "meta_neumann_correction": info.get("neumann_correction", 0.0)}

    def _inner_metrics(self, fwd: Forward) -> dict:
        """Losses every step (one device sync for all); the task weights ∂MELTR/∂ℓ_t (an extra autograd call)
        only on logged steps."""
        values = _to_host(*fwd.losses.values(), fwd.total)
        metrics = {f"loss_{k}": v for k, v in zip(fwd.losses, values)}
        metrics["train_loss"] = values[-1]
        if self.counters.step % self.cfg.train.log_every == 0:
            weights = self.combiner.task_weights(fwd.vector.detach())
            metrics.update({f"weight_{k}": w for k, w in zip(self.task_names, weights.double().tolist())})
        return metrics

    # ---- modes, contexts, failure accounting ---------------------------------------------------------
    def _train_modes(self) -> None:
        self.model.train()
        self.combiner.train(not self.cfg.meltr.eval_mode)

    def _autocast(self):
        if self.cfg.train.precision == "bf16" and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _all_finite(self, *tensors) -> bool:
        """One host sync for all tensors, then agreement across ranks."""
        flags = [torch.isfinite(t.detach()).all() for t in tensors if t is not None]
        bad = bool(flags) and not bool(torch.stack(flags).all())
        return not dist_utils.any_rank(bad, device=self.device)

    def _count_failure(self, total: str, run: str) -> None:
        setattr(self.counters, total, getattr(self.counters, total) + 1)
        setattr(self.counters, run, getattr(self.counters, run) + 1)
        if getattr(self.counters, run) >= self.cfg.meta.max_nonfinite:
            kind = "inner (loss or backbone gradient)" if run == "inner_fail_run" else "meta (hypergradient)"
            raise NonFiniteError(
                f"{getattr(self.counters, run)} non-finite {kind} steps in a row (meta.max_nonfinite="
                f"{self.cfg.meta.max_nonfinite}) at step {self.counters.step}: check learning rates "
                f"(optim.backbone_lr, optim.meltr_lr), meta.reg_weight and the input data")

    @contextlib.contextmanager
    def _only_scope_requires_grad(self):
        """Out-of-scope backbone parameters stop requiring grad during the meta forwards, so autograd records
        no graph below the lowest in-scope layer: the main lever on the meta step's time and memory."""
        frozen = [p for p in self.backbone_params if p.requires_grad and id(p) not in self.scope_ids]
        for p in frozen:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in frozen:
                p.requires_grad_(True)

    @staticmethod
    def attention_mode() -> MathAttentionWhereRecorded:
        """Math SDPA for the attention calls the products differentiate twice, fused kernels elsewhere."""
        return MathAttentionWhereRecorded()


def _to_host(*tensors) -> list:
    """Scalar tensors as Python floats through one device→host copy (one sync instead of one per value)."""
    return torch.stack([t.detach().reshape(()).double() for t in tensors]).tolist()
