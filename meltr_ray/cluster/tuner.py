"""The Ray Tune experiment: trial drivers, concurrency from the cluster, two-level failure handling, restore.

Levels of failure handling:

* **Train** (``ray.train.FailureConfig(max_failures=cluster.max_failures)``): a dead or raising worker restarts
  the worker group from the run's last checkpoint;
* **Tune** (``ray.tune.FailureConfig(max_failures=cluster.trial_max_failures)``): a dead trial driver is
  re-run; its TorchTrainer (same name) resumes from its snapshot;
* **the experiment**: a dead ``tuner.fit()`` process is resumed with :func:`restore`; finished trials keep their
  results, unfinished ones re-run and resume.

A trial's Tune config is the searched hyperparameters and nothing else (``grid.get_best_result().config`` is
``{"reg_weight": …, "backbone_lr": …}``); the base job and the runtime are bound to the trainable with
``tune.with_parameters`` and also written to ``<experiment>/meltr_run.json``, from which :func:`restore`
rebuilds the same trainable. Trial folders are named ``trial_<id>`` (Tune's default embeds the config).
"""
from __future__ import annotations

import json
import os

import pyarrow.fs
import ray
from ray import tune

from ..config import FIELD_ALIASES, JobConfig, with_legacy_defaults
from ..spaces import SearchSpace
from .driver import trial_driver, worker_resources
from .preflight import check_resources, concurrent_trials, node_capacities, warn_if_storage_not_shared
from .search import make_scheduler, make_searcher, tuner_param_space

DRIVER_RESOURCE = "train_driver"
RUN_FILE = "meltr_run.json"


def driver_resources() -> dict:
    """A trial driver holds ~nothing: one unit of the custom ``train_driver`` resource when the cluster has
    it (the head node of ``cluster.yaml``), else 0.01 CPU (0 CPU is rejected by Tune)."""
    if ray.cluster_resources().get(DRIVER_RESOURCE, 0) >= 1:
        return {DRIVER_RESOURCE: 1}
    return {"CPU": 0.01}


def trainable(job: dict, runtime: dict):
    """The Tune trainable: :func:`trial_driver` with the base ``job`` (JobConfig dict) and ``runtime`` bound,
    holding :func:`driver_resources`; :func:`restore` rebuilds the same one from ``meltr_run.json``."""
    return tune.with_resources(tune.with_parameters(trial_driver, job=job, runtime=runtime), driver_resources())


def trial_dirname(trial) -> str:
    """``trial_<id>``: short and unique (Tune's default name embeds every config value)."""
    return f"trial_{trial.trial_id}"


def _filesystem(path: str):
    """(pyarrow filesystem, path inside it) for a local folder or a URI such as ``s3://bucket/prefix``."""
    if "://" not in path:
        return pyarrow.fs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))
    return pyarrow.fs.FileSystem.from_uri(path)


def save_run(experiment: str, job: dict, runtime: dict, baseline: dict | None = None) -> None:
    """Write ``{"job", "runtime", "baseline"}`` to ``<experiment>/meltr_run.json`` (local folder or URI)."""
    fs, root = _filesystem(experiment)
    fs.create_dir(root, recursive=True)
    with fs.open_output_stream(f"{root}/{RUN_FILE}") as f:
        f.write(json.dumps({"job": job, "runtime": runtime, "baseline": baseline or {}}, indent=1).encode())


def _read_run(experiment: str) -> dict:
    fs, root = _filesystem(experiment)
    try:
        with fs.open_input_stream(f"{root}/{RUN_FILE}") as f:
            return json.loads(f.read().decode())
    except FileNotFoundError:
        raise ValueError(f"{experiment!r} has no {RUN_FILE}: not an experiment started by meltr_ray.tune") from None


def load_run(experiment: str) -> tuple[dict, dict]:
    """``(job, runtime)`` saved by :func:`save_run` for the experiment at ``experiment`` (the job with the
    legacy defaults of fields it predates, :func:`meltr_ray.config.with_legacy_defaults`)."""
    run = _read_run(experiment)
    return with_legacy_defaults(run["job"], f"{experiment}/{RUN_FILE}"), run["runtime"]


def load_baseline(experiment: str) -> dict:
    """The search space's ``baseline`` settings the experiment ran with (``{}``: none)."""
    return _read_run(experiment).get("baseline") or {}


def train_storage(storage_path: str, name: str) -> str:
    """Where the trials' Train runs (``train-<trial_id>``) keep their checkpoints: beside the experiment."""
    return f"{storage_path.rstrip('/')}/{name}__train_runs"


def plan_concurrency(cfg: JobConfig, num_samples: int) -> int:
    """Check that one trial fits the cluster and return how many run at once (≤ ``num_samples``)."""
    nodes = node_capacities()
    warn_if_storage_not_shared(cfg.cluster.storage_path or "", [n for n in nodes if n.get("CPU") or n.get("GPU")])
    resources = worker_resources(cfg)
    check_resources(cfg, resources, nodes)
    return max(1, min(num_samples, concurrent_trials(cfg, resources, nodes)))


def recipe_values(cfg: JobConfig, keys) -> dict:
    """``{key: cfg's value}`` for config keys given as aliases or dotted paths (``meltr.combiner``)."""
    values = {}
    for key in keys:
        section, field = FIELD_ALIASES.get(key, key).split(".")
        values[key] = getattr(getattr(cfg, section), field)
    return values


def run_tune(cfg: JobConfig, space: SearchSpace, *, name: str, storage_path: str, runtime: dict | None = None,
             num_samples: int | None = None, searcher: str | None = None, seed: int = 0, callbacks=(),
             verbose: int = 1) -> tune.ResultGrid:
    """Search ``space`` around ``cfg`` and return Tune's ``ResultGrid`` (best trial by ``space.metric``).

    ``num_samples`` searched trials, plus one when the space has a ``baseline`` (run first, with the same
    epochs; see :mod:`meltr_ray.cluster.search`)."""
    num_samples = (num_samples or space.num_samples) + (1 if space.baseline else 0)
    max_concurrent = plan_concurrency(cfg, num_samples)
    marker = recipe_values(cfg, space.baseline)
    runtime = {**(runtime or {}), "storage_path": train_storage(storage_path, name)}
    save_run(f"{storage_path.rstrip('/')}/{name}", cfg.to_dict(), runtime, space.baseline)
    tuner = tune.Tuner(
        trainable(cfg.to_dict(), runtime),
        param_space=tuner_param_space(space),
        tune_config=tune.TuneConfig(
            metric=space.metric, mode=space.mode, num_samples=num_samples, max_concurrent_trials=max_concurrent,
            search_alg=make_searcher(space, searcher, seed=seed, max_concurrent=max_concurrent,
                                     searched_marker=marker),
            scheduler=make_scheduler(space, cfg.train.epochs), trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=name, storage_path=storage_path, callbacks=list(callbacks), verbose=verbose,
            failure_config=tune.FailureConfig(max_failures=cfg.cluster.trial_max_failures)))
    return tuner.fit()


def restore(path: str) -> tune.ResultGrid:
    """Finish an interrupted experiment (``storage_path/name``): finished trials are kept, unfinished and
    errored ones re-run and their Train runs resume from their last checkpoints."""
    if not tune.Tuner.can_restore(path):
        raise ValueError(f"no restorable Tune experiment at {path!r}")
    job, runtime = load_run(path)
    tuner = tune.Tuner.restore(path, trainable=trainable(job, runtime), resume_unfinished=True,
                               resume_errored=True)
    return tuner.fit()
