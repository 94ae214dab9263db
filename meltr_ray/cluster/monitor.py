"""Dashboard metrics: ``ray.util.metrics`` gauges and counters tagged by trial.

What a user wants to watch while MELTR trains, exported by every node's metrics agent in Prometheus format
(``http://<node>:<metrics_export_port>/metrics``, names prefixed ``ray_``) and shown by the Ray dashboard's
Grafana panels:

=========================================  ======================  ===========================================
metric                                     tags                    meaning
=========================================  ======================  ===========================================
``meltr_task_weight``                      trial, task             ∂MELTR/∂ℓ_t: the effective weight of task t
``meltr_task_loss``                        trial, task             ℓ_t, the task's loss on the last batch
``meltr_train_loss``                       trial                   MELTR(ℓ), the combined training loss
``meltr_meta_grad_norm``                   trial                   ‖hypergradient‖ of the last meta step
``meltr_clips_per_second``                 trial                   training throughput over all workers
``meltr_inner_steps`` (counter)            trial                   inner (backbone) steps taken
``meltr_skipped_rows`` (counter)           trial                   undecodable rows dropped (once per epoch)
=========================================  ======================  ===========================================

Only rank 0 sets them (every rank sees the same φ, so the weights are the same everywhere).
"""
from __future__ import annotations

import time

from ray.util import metrics as ray_metrics

_METRICS: dict = {}


def _metric(kind, name: str, description: str, tag_keys: tuple):
    """One metric object per process and name (Ray rejects a second registration with other tags)."""
    if name not in _METRICS:
        _METRICS[name] = kind(name, description=description, tag_keys=tag_keys)
    return _METRICS[name]


def task_weight_gauge():
    return _metric(ray_metrics.Gauge, "meltr_task_weight", "dMELTR/dloss_t per task", ("trial", "task"))


def task_loss_gauge():
    return _metric(ray_metrics.Gauge, "meltr_task_loss", "task loss on the last batch", ("trial", "task"))


def train_loss_gauge():
    return _metric(ray_metrics.Gauge, "meltr_train_loss", "MELTR-combined training loss", ("trial",))


def meta_grad_norm_gauge():
    return _metric(ray_metrics.Gauge, "meltr_meta_grad_norm", "hypergradient norm", ("trial",))


def clips_per_second_gauge():
    return _metric(ray_metrics.Gauge, "meltr_clips_per_second", "training clips per second", ("trial",))


def inner_steps_counter():
    return _metric(ray_metrics.Counter, "meltr_inner_steps", "inner steps", ("trial",))


def skipped_rows_counter():
    return _metric(ray_metrics.Counter, "meltr_skipped_rows", "rows dropped by the data pipeline", ("trial",))


class SkippedRowsHook:
    """``on_bad_row(row_id, video_id, reason)`` hook of the Ray Data decode actors: counts drops per trial.

    Runs inside the decode actors; the row ids themselves go to the pipeline's ``BadRowLog``.
    """

    def __init__(self, trial: str):
        self.trial = trial

    def __call__(self, row_id: str, video_id: str, reason: str) -> None:
        skipped_rows_counter().inc(1, tags={"trial": self.trial})


class StepMonitor:
    """An ``on_step`` callback for :func:`meltr_ray.core.loop.fit` that publishes the step metrics as gauges.

    ``clips_per_step`` is the global batch size (per-worker batch × world size), for clips/s.
    """

    def __init__(self, trial: str, task_names, clips_per_step: int, clock=time.monotonic):
        self.trial, self.task_names, self.clips_per_step = trial, list(task_names), clips_per_step
        self.clock = clock
        self.last_time, self.last_step = clock(), 0

    def __call__(self, metrics: dict) -> None:
        tags = {"trial": self.trial}
        for task in self.task_names:
            task_tags = {"trial": self.trial, "task": task}
            if f"weight_{task}" in metrics:
                task_weight_gauge().set(metrics[f"weight_{task}"], tags=task_tags)
            if f"loss_{task}" in metrics:
                task_loss_gauge().set(metrics[f"loss_{task}"], tags=task_tags)
        if "train_loss" in metrics:
            train_loss_gauge().set(metrics["train_loss"], tags=tags)
        if "meta_grad_norm" in metrics:
            meta_grad_norm_gauge().set(metrics["meta_grad_norm"], tags=tags)
        self._throughput(metrics.get("step", self.last_step), tags)

    def _throughput(self, step: int, tags: dict) -> None:
        now, steps = self.clock(), step - self.last_step
        if steps > 0:
            inner_steps_counter().inc(steps, tags=tags)
            if now > self.last_time:
                clips_per_second_gauge().set(steps * self.clips_per_step / (now - self.last_time), tags=tags)
        self.last_time, self.last_step = now, step
