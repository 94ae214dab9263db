"""Dashboard metrics: ``ray.util.metrics`` gauges and counters tagged by trial.

What a user wants to watch while MELTR trains, exported by every node's metrics agent in Prometheus format
(``http://<node>:<metrics_export_port>/metrics``, names prefixed ``ray_``, counters suffixed ``_total``) and
charted by the packaged Grafana dashboard:

=========================================  ======================  ===========================================
metric                                     tags                    meaning
=========================================  ======================  ===========================================
``meltr_task_weight``                      trial, task             ∂MELTR/∂ℓ_t: the effective weight of task t
``meltr_task_loss``                        trial, task             ℓ_t, the task's loss on the last batch
``meltr_train_loss``                       trial                   MELTR(ℓ), the combined training loss
``meltr_meta_grad_norm``                   trial                   ‖hypergradient‖ of the last meta step
``meltr_meta_neumann_correction``          trial                   ‖Σ_j v_j − (K+1)g‖ / ‖(K+1)g‖ of the last meta
                                                                   step: ≈ 0 means K only rescales the K = 0 step
``meltr_clips_per_second``                 trial                   training throughput over all workers
``meltr_inner_steps`` (counter)            trial                   inner (backbone) steps taken
``meltr_skipped_rows`` (counter)           trial                   undecodable rows dropped (once per epoch)
=========================================  ======================  ===========================================

Only rank 0 sets them (every rank sees the same φ, so the weights are the same everywhere). :data:`METRICS`
is the table above in code; the packaged Grafana dashboard ``grafana/meltr_dashboard.json`` charts each of them
(``meltr-ray dashboard --grafana`` installs it next to Ray's own dashboards).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from ray.util import metrics as ray_metrics


@dataclass(frozen=True)
class MetricSpec:
    """One dashboard metric: ``name`` as registered, its kind, description and tag keys."""
    name: str
    kind: str                  # "gauge" | "counter"
    description: str
    tags: tuple

    @property
    def exported_name(self) -> str:
        """The name Prometheus scrapes (and Grafana queries): ``ray_`` prefix, counters end in ``_total``."""
        return f"ray_{self.name}" + ("_total" if self.kind == "counter" else "")


METRICS = {spec.name: spec for spec in (
    MetricSpec("meltr_task_weight", "gauge", "dMELTR/dloss_t per task", ("trial", "task")),
    MetricSpec("meltr_task_loss", "gauge", "task loss on the last batch", ("trial", "task")),
    MetricSpec("meltr_train_loss", "gauge", "MELTR-combined training loss", ("trial",)),
    MetricSpec("meltr_meta_grad_norm", "gauge", "hypergradient norm", ("trial",)),
    MetricSpec("meltr_meta_neumann_correction", "gauge",
               "relative Neumann correction |sum_j v_j - (K+1)g| / |(K+1)g| of the last meta step", ("trial",)),
    MetricSpec("meltr_clips_per_second", "gauge", "training clips per second", ("trial",)),
    MetricSpec("meltr_inner_steps", "counter", "inner steps", ("trial",)),
    MetricSpec("meltr_skipped_rows", "counter", "rows dropped by the data pipeline", ("trial",)),
)}

_METRICS: dict = {}
_KINDS = {"gauge": ray_metrics.Gauge, "counter": ray_metrics.Counter}


def _metric(name: str):
    """One metric object per process and name (Ray rejects a second registration with other tags)."""
    if name not in _METRICS:
        spec = METRICS[name]
        _METRICS[name] = _KINDS[spec.kind](name, description=spec.description, tag_keys=spec.tags)
    return _METRICS[name]


def task_weight_gauge():
    return _metric("meltr_task_weight")


def task_loss_gauge():
    return _metric("meltr_task_loss")


def train_loss_gauge():
    return _metric("meltr_train_loss")


def meta_grad_norm_gauge():
    return _metric("meltr_meta_grad_norm")


def meta_neumann_correction_gauge():
    return _metric("meltr_meta_neumann_correction")


def clips_per_second_gauge():
    return _metric("meltr_clips_per_second")


def inner_steps_counter():
    return _metric("meltr_inner_steps")


def skipped_rows_counter():
    return _metric("meltr_skipped_rows")


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
        if "meta_neumann_correction" in metrics:
            meta_neumann_correction_gauge().set(metrics["meta_neumann_correction"], tags=tags)
        self._throughput(metrics.get("step", self.last_step), tags)

    def _throughput(self, step: int, tags: dict) -> None:
        now, steps = self.clock(), step - self.last_step
        if steps > 0:
            inner_steps_counter().inc(steps, tags=tags)
            if now > self.last_time:
                clips_per_second_gauge().set(steps * self.clips_per_step / (now - self.last_time), tags=tags)
        self.last_time, self.last_step = now, step
