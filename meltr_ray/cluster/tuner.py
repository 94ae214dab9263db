"""The Ray Tune experiment: trial drivers, concurrency from the cluster, two-level failure handling, restore.

Levels of failure handling:

* **Train** (``ray.train.FailureConfig(max_failures=cluster.max_failures)``): a dead or raising worker restarts
  the worker group from the run's last checkpoint;
* **Tune** (``ray.tune.FailureConfig(max_failures=cluster.trial_max_failures)``): a dead trial driver is
  re-run; its TorchTrainer (same name) resumes from its snapshot;
* **the experiment**: a dead ``tuner.fit()`` process is resumed with :func:`restore`; finished trials keep their
  results, unfinished ones re-run and resume.
"""
from __future__ import annotations

import json

import ray
from ray import tune

from ..config import JobConfig
from ..spaces import SearchSpace
from .driver import JOB_KEY, RUNTIME_KEY, trial_driver, worker_resources
from .preflight import check_resources, concurrent_trials, node_capacities, warn_if_storage_not_shared
from .search import make_scheduler, make_searcher, param_space

DRIVER_RESOURCE = "train_driver"


def driver_resources() -> dict:
    """A trial driver holds ~nothing: one unit of the custom ``train_driver`` resource when the cluster has
    it (the head node of ``cluster.yaml``), else 0.01 CPU (0 CPU is rejected by Tune)."""
    if ray.cluster_resources().get(DRIVER_RESOURCE, 0) >= 1:
        return {DRIVER_RESOURCE: 1}
    return {"CPU": 0.01}


def trainable():
    """The Tune trainable; :func:`restore` must pass this same wrapped function."""
    return tune.with_resources(trial_driver, driver_resources())


def train_storage(storage_path: str, name: str) -> str:
    """Where the trials' Train runs (``train-<trial_id>``) keep their checkpoints: beside the experiment."""
    return f"{storage_path.rstrip('/')}/{name}__train_runs"


def full_param_space(space: SearchSpace, cfg: JobConfig, runtime: dict) -> dict:
    """Searched hyperparameters plus the base job and runtime as JSON constants."""
    return {**param_space(space), JOB_KEY: json.dumps(cfg.to_dict()), RUNTIME_KEY: json.dumps(runtime)}


def plan_concurrency(cfg: JobConfig, num_samples: int) -> int:
    """Check that one trial fits the cluster and return how many run at once (≤ ``num_samples``)."""
    nodes = node_capacities()
    warn_if_storage_not_shared(cfg.cluster.storage_path or "", [n for n in nodes if n.get("CPU") or n.get("GPU")])
    resources = worker_resources(cfg)
    check_resources(cfg, resources, nodes)
    return max(1, min(num_samples, concurrent_trials(cfg, resources, nodes)))


def run_tune(cfg: JobConfig, space: SearchSpace, *, name: str, storage_path: str, runtime: dict | None = None,
             num_samples: int | None = None, searcher: str | None = None, seed: int = 0, callbacks=(),
             verbose: int = 1) -> tune.ResultGrid:
    """Search ``space`` around ``cfg`` and return Tune's ``ResultGrid`` (best trial by ``space.metric``)."""
    num_samples = num_samples or space.num_samples
    max_concurrent = plan_concurrency(cfg, num_samples)
    runtime = {**(runtime or {}), "storage_path": train_storage(storage_path, name)}
    tuner = tune.Tuner(
        trainable(),
        param_space=full_param_space(space, cfg, runtime),
        tune_config=tune.TuneConfig(
            metric=space.metric, mode=space.mode, num_samples=num_samples, max_concurrent_trials=max_concurrent,
            search_alg=make_searcher(space, searcher, seed=seed, max_concurrent=max_concurrent), scheduler=make_scheduler(space, cfg.train.epochs)),
        run_config=tune.RunConfig(
            name=name, storage_path=storage_path, callbacks=list(callbacks), verbose=verbose,
            failure_config=tune.FailureConfig(max_failures=cfg.cluster.trial_max_failures)))
    return tuner.fit()


def restore(path: str) -> tune.ResultGrid:
    """Finish an interrupted experiment (``storage_path/name``): finished trials are kept, unfinished and
    errored ones re-run and their Train runs resume from their last checkpoints."""
    if not tune.Tuner.can_restore(path):
        raise ValueError(f"no restorable Tune experiment at {path!r}")
    tuner = tune.Tuner.restore(path, trainable=trainable(), resume_unfinished=True, resume_errored=True)
    return tuner.fit()
