"""What a bilevel run holds between steps: models, optimizers, schedulers, the replay buffer and counters.

:class:`BilevelState` is the state half of the trainer (the algorithm, ``inner_step``/``meta_step``, is in
:mod:`meltr_ray.core.bilevel`). ``state_dict``/``load_state_dict`` round-trip all of it, so a resumed run is
bit-identical to one never stopped.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .hypergrad import select_scope


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
    skipped_inner: int = 0        # non-finite loss or backbone gradient
    skipped_meta: int = 0         # non-finite outer loss or hypergradient
    inner_fail_run: int = 0       # consecutive skipped inner steps
    meta_fail_run: int = 0        # consecutive skipped meta steps (inner successes do not reset it)
    last: dict = field(default_factory=dict)

    SAVED = ("step", "meta_steps", "skipped_inner", "skipped_meta", "inner_fail_run", "meta_fail_run")

    def state_dict(self) -> dict:
        return {key: getattr(self, key) for key in self.SAVED}

    def load_state_dict(self, state: dict) -> None:
        legacy = state.get("nonfinite_in_row")           # checkpoints written before the per-kind counters
        for key in self.SAVED:
            setattr(self, key, state.get(key, legacy if key.endswith("fail_run") and legacy else 0))


class NonFiniteError(RuntimeError):
    """Raised after ``meta.max_nonfinite`` non-finite inner steps, or meta steps, in a row."""


class BilevelState:
    """Models, optimizers, schedulers, replay buffer and counters of one bilevel run.

    ``model`` is the plain backbone (the meta step always differentiates the unwrapped module, because DDP does
    not synchronise ``autograd.grad``); ``train_model`` is what the inner step calls — the DDP wrapper when
    distributed, else the same module. ``task_names`` (MELTR input order, first = primary) and ``meta_scope``
    come from the backbone's spec when a run is built by :func:`meltr_ray.build_run`; they default to the
    model's own ``task_names`` / ``default_meta_scope`` attributes.
    """

    def __init__(self, model, combiner, cfg, backbone_optimizer, meltr_optimizer, backbone_scheduler=None,
                 meltr_scheduler=None, train_model=None, device=None, task_names=None, meta_scope=None):
        self.model, self.combiner, self.cfg = model, combiner, cfg
        self.train_model = train_model if train_model is not None else model
        self.backbone_optimizer, self.meltr_optimizer = backbone_optimizer, meltr_optimizer
        self.backbone_scheduler, self.meltr_scheduler = backbone_scheduler, meltr_scheduler
        self.device = device or next(model.parameters()).device
        self.task_names = list(task_names if task_names is not None else model.task_names)
        self.primary_task = self.task_names[0]
        self.buffer = ReplayBuffer(cfg.meta.buffer_size, cfg.meta.eviction, seed=cfg.train.seed)
        self.counters = StepCounters()
        self.backbone_params = [p for p in model.parameters() if p.requires_grad]
        self.meta_params = [p for p in combiner.parameters() if p.requires_grad]
        if cfg.meta.scope == "default":
            meta_scope = meta_scope if meta_scope is not None else getattr(model, "default_meta_scope", "all")
        else:
            meta_scope = cfg.meta.scope
        self.scope_params = select_scope(model, meta_scope)
        self.scope_ids = {id(p) for p in self.scope_params}

    def state_dict(self) -> dict:
        optional = lambda x: x.state_dict() if x is not None else None  # noqa: E731
        return {
            "backbone": self.model.state_dict(),
            "combiner": self.combiner.state_dict(),
            "backbone_optimizer": self.backbone_optimizer.state_dict(),
            "meltr_optimizer": optional(self.meltr_optimizer),
            "backbone_scheduler": optional(self.backbone_scheduler),
            "meltr_scheduler": optional(self.meltr_scheduler),
            "buffer": self.buffer.state_dict(),
            "counters": self.counters.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["backbone"])
        self.combiner.load_state_dict(state["combiner"])
        self.backbone_optimizer.load_state_dict(state["backbone_optimizer"])
        for key in ("meltr_optimizer", "backbone_scheduler", "meltr_scheduler"):
            if getattr(self, key) is not None and state.get(key):
                getattr(self, key).load_state_dict(state[key])
        self.buffer.load_state_dict(state["buffer"])
        self.counters.load_state_dict(state["counters"])
