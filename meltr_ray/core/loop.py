"""``fit()``: the MELTR fine-tuning loop, readable top to bottom.

The loop knows nothing about Ray. Where results go is injected:

* ``save(state, epoch) -> handle`` persists a checkpoint (Ray: rank 0 writes a directory and returns a
  ``ray.train.Checkpoint``; locally: :func:`local_saver`) and returns a handle or ``None``;
* ``report(metrics, handle)`` publishes the epoch's metrics (Ray: ``ray.train.report`` on every rank);
* ``on_step(metrics)`` sees step metrics every ``train.log_every`` steps (dashboard gauges, progress bars).

Resuming: pass the dict from :func:`meltr_ray.checkpoint.load_checkpoint` as ``resume``; the run continues at
the next epoch with every state restored (weights, optimizers, schedulers, buffer, counters, RNG), so on CPU a
stopped-and-resumed run ends bit-identical to an uninterrupted one.
"""
from __future__ import annotations

import random
from typing import Callable, Iterable

import numpy as np
import torch

from . import distributed as dist_utils
from .bilevel import BilevelTrainer, NonFiniteError
from .checkpoint import rng_state, save_checkpoint, set_rng_state


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(params, name: str, lr: float, weight_decay: float, betas) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if not params:
        return None
    cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    return cls(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas))


def make_scheduler(optimizer, schedule: str, total_steps: int | None, warmup_ratio: float):
    """Linear warmup over ``warmup_ratio·total_steps`` then linear decay to 0 (``linear``), or constant.

    A linear schedule needs the run's length: without it, it is an error (never a silent constant rate).
    """
    if optimizer is None:
        return None
    if schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    if not total_steps:
        raise ValueError("optim.schedule='linear' needs the run's length: pass steps_per_epoch (or train "
                         "batches with a len()), set train.max_steps, or use optim.schedule='constant'")
    warmup = int(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_trainer(model, combiner, cfg, *, train_model=None, steps_per_epoch: int | None = None,
                  device=None, task_names=None, meta_scope=None) -> BilevelTrainer:
    """Optimizers (Adam/AdamW) and warmup+linear-decay schedulers for w (α) and φ (β), around one trainer.

    ``task_names`` / ``meta_scope`` default to the model's own attributes (the spec's, from ``build_run``).
    """
    o = cfg.optim
    total = cfg.train.max_steps or (steps_per_epoch * cfg.train.epochs if steps_per_epoch else None)
    backbone_opt = make_optimizer(model.parameters(), o.optimizer, o.backbone_lr, o.backbone_weight_decay, o.betas)
    meltr_opt = make_optimizer(combiner.parameters(), o.optimizer, o.meltr_lr, o.meltr_weight_decay, o.betas)
    meta_total = total // cfg.meta.meta_every if total else None
    return BilevelTrainer(model, combiner, cfg, backbone_opt, meltr_opt,
                          make_scheduler(backbone_opt, o.schedule, total, o.warmup_ratio),
                          make_scheduler(meltr_opt, o.schedule, meta_total, o.warmup_ratio),
                          train_model=train_model, device=device, task_names=task_names,
                          meta_scope=meta_scope)


def local_saver(directory) -> Callable:
    """A ``save`` callable writing ``directory/epoch_NNN/state.pt`` (rank 0 only)."""
    def save(state: dict, epoch: int):
        if dist_utils.rank() != 0:
            return None
        return save_checkpoint(state, f"{directory}/epoch_{epoch:03d}")
    return save


class _EpochMeter:
    """Means of the step metrics over an epoch (skipped-step counts are summed), and each loss's range."""

    def __init__(self):
        self.sums, self.counts, self.lows, self.highs = {}, {}, {}, {}

    def add(self, metrics: dict) -> None:
        for key, value in metrics.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0) + 1
            self.lows[key] = min(self.lows.get(key, value), value)
            self.highs[key] = max(self.highs.get(key, value), value)

    def means(self) -> dict:
        return {k: (v if k.startswith("skipped") else v / self.counts[k]) for k, v in self.sums.items()}

    def loss_ranges(self) -> dict:
        """``{task: {"min", "mean", "max"}}`` of ℓ_t over this epoch's steps on this rank: the loss values MELTR
        actually saw, which the task-weight plot marks (``meltr-ray inspect``)."""
        return {k[len("loss_"):]: {"min": self.lows[k], "mean": self.sums[k] / self.counts[k], "max": self.highs[k]}
                for k in self.sums if k.startswith("loss_")}


def fit(model, combiner, cfg, train_batches: Callable[[int], Iterable], *,
        meta_batches: Callable[[int], Iterable] | None = None, evaluate: Callable | None = None,
        report: Callable | None = None, save: Callable | None = None, resume: dict | None = None,
        on_step: Callable | None = None, steps_per_epoch: int | None = None, train_model=None,
        device=None, trainer: BilevelTrainer | None = None) -> dict:
    """Bilevel MELTR fine-tuning for ``cfg.train.epochs`` epochs; returns the last epoch's metrics.

    ``train_batches(epoch)`` / ``meta_batches(epoch)`` return iterables of batches (dicts of tensors);
    ``evaluate(model) -> {metric: value}`` runs at every ``train.eval_every``-th epoch, its metrics prefixed
    ``val_``. ``train_model`` is the DDP-wrapped backbone when distributed. ``trainer`` is one already built
    (``build_run(cfg).trainer``); otherwise it is built here, with ``steps_per_epoch`` taken from
    ``len(train_batches(0))`` when not given (the linear schedules need it).
    """
    cfg.validate()
    device = device or next(model.parameters()).device
    if resume is None:
        seed_everything(cfg.train.seed)
    dist_utils.broadcast_module_(combiner)           # every rank starts from rank 0's φ
    if trainer is None:
        steps_per_epoch = steps_per_epoch or _known_length(train_batches)
        trainer = build_trainer(model, combiner, cfg, train_model=train_model, steps_per_epoch=steps_per_epoch,
                                device=device)
    start_epoch = 0
    if resume is not None:
        trainer.load_state_dict(resume)
        set_rng_state(resume["rng"])
        start_epoch = resume["epoch"] + 1

    metrics: dict = {}
    for epoch in range(start_epoch, cfg.train.epochs):
        meter, next_meta = _EpochMeter(), _cycling(meta_batches, epoch, device)
        for batch in train_batches(epoch):
            step_metrics = trainer.step(_to_device(batch, device), next_meta)
            meter.add(step_metrics)
            if on_step is not None and trainer.counters.step % cfg.train.log_every == 0:
                on_step({"epoch": epoch, "step": trainer.counters.step, **step_metrics})
            if cfg.train.max_steps and trainer.counters.step >= cfg.train.max_steps:
                break
        metrics = _epoch_metrics(trainer, meter, epoch)
        if evaluate is not None and (epoch + 1) % cfg.train.eval_every == 0:
            model.eval()
            with torch.no_grad():
                metrics.update({f"val_{k}": v for k, v in evaluate(model).items()})
        _check_weights_finite(model, combiner, epoch)
        state = {**trainer.state_dict(), "epoch": epoch, "rng": rng_state(), "config": cfg.to_dict(),
                 "task_names": trainer.task_names, "observed_losses": meter.loss_ranges()}
        handle = save(state, epoch) if save is not None else None
        if report is not None:
            report(metrics, handle)
        if cfg.train.max_steps and trainer.counters.step >= cfg.train.max_steps:
            break
    return metrics


def _known_length(train_batches: Callable[[int], Iterable]) -> int | None:
    """``len(train_batches(0))`` when the epoch's iterable has one (a list, a DataLoader), else ``None``."""
    batches = train_batches(0)
    return len(batches) if hasattr(batches, "__len__") else None


def _check_weights_finite(model, combiner, epoch: int) -> None:
    """Weights that are not finite are never saved: stop with an error naming the first bad parameter."""
    for owner, module in (("backbone", model), ("MELTR", combiner)):
        for name, param in module.named_parameters():
            if not bool(torch.isfinite(param.detach()).all()):
                raise NonFiniteError(f"{owner} parameter {name} is not finite after epoch {epoch}; the "
                                     f"checkpoint is not written (lower the learning rates)")


def _epoch_metrics(trainer: BilevelTrainer, meter: _EpochMeter, epoch: int) -> dict:
    c = trainer.counters
    metrics = {k: v for k, v in meter.means().items() if not k.startswith("skipped")}
    metrics.update(epoch=epoch + 1, step=c.step, meta_steps=c.meta_steps, skipped_inner=c.skipped_inner,
                   skipped_meta=c.skipped_meta)
    return metrics


def _cycling(meta_batches, epoch: int, device):
    """A zero-argument function returning the next held-out meta batch, restarting the split when exhausted."""
    if meta_batches is None:
        return None
    state = {"round": 0, "iter": iter(meta_batches(epoch))}

    def next_batch():
        try:
            batch = next(state["iter"])
        except StopIteration:
            state["round"] += 1
            state["iter"] = iter(meta_batches(epoch + 1000 * state["round"]))
            batch = next(state["iter"])
        return _to_device(batch, device)
    return next_batch


def _to_device(batch, device):
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch
