"""The Train driver: one ``TorchTrainer`` per run, and the Tune trial function that fits one per trial.

Ray 2.60 runs Train V2, where a Tune search over a ``TorchTrainer`` is a Tune *function trainable* (the trial
driver, ~0 CPU) that builds and ``fit()``s the trainer (reference ray_2_60_notes §1). The Train run is named
``train-<trial_id>`` — deterministic, so a re-run trial (driver crash, ``Tuner.restore``) finds the run's
snapshot in storage and resumes from its last checkpoint. ``TuneReportCallback`` forwards rank 0's metrics
(and ``checkpoint_path``) to Tune, where ASHA reads the ``epoch`` the workers report.

A trial's Tune config holds only the searched hyperparameters (what ``ResultGrid`` shows and what names
nothing but short trial folders); the base job and the runtime (plugins, data factory, Train storage) reach
:func:`trial_driver` through ``tune.with_parameters`` (:func:`meltr_ray.cluster.tuner.trainable`).
"""
from __future__ import annotations

import logging

import ray.train
import ray.train.torch
import ray.tune
from ray.tune.integration.ray_train import TuneReportCallback

from ..config import JobConfig
from .data import CollateSamples
from .monitor import SkippedRowsHook
from .worker import TrialData, import_plugins, load_factory, train_loop_per_worker

logger = logging.getLogger(__name__)


def worker_resources(cfg: JobConfig) -> dict:
    """Ray resources of one Train worker: ``cluster.resources_per_worker`` or CPUs (+ GPUs)."""
    c = cfg.cluster
    if c.resources_per_worker:
        return dict(c.resources_per_worker)
    resources = {"CPU": c.cpus_per_worker}
    if c.use_gpu:
        resources["GPU"] = c.gpus_per_worker
    return resources


def scaling_config(cfg: JobConfig) -> ray.train.ScalingConfig:
    """``cluster.num_workers`` DDP workers (default 8 GPUs per trial, PACKed on one node when they fit)."""
    resources = worker_resources(cfg)
    return ray.train.ScalingConfig(num_workers=cfg.cluster.num_workers, use_gpu=bool(resources.get("GPU")),
                                   resources_per_worker=resources if cfg.cluster.num_workers else None)


def checkpoint_config(cfg: JobConfig) -> ray.train.CheckpointConfig:
    """Keep the last ``cluster.checkpoints_to_keep`` checkpoints (``None``: all). A resume whose latest
    checkpoint is damaged falls back to the previous one, so fewer than 2 is warned about."""
    keep = cfg.cluster.checkpoints_to_keep
    if keep is not None and keep < 2:
        logger.warning("cluster.checkpoints_to_keep=%s: a damaged latest checkpoint leaves no earlier one to "
                       "resume from (keep 2 or more)", keep)
    return ray.train.CheckpointConfig(num_to_keep=keep)


def train_run_config(cfg: JobConfig, name: str, storage_path: str, callbacks=()) -> ray.train.RunConfig:
    """Train-level RunConfig: checkpoint retention and worker-group failure handling (the lower level)."""
    c = cfg.cluster
    return ray.train.RunConfig(
        name=name, storage_path=storage_path, callbacks=list(callbacks),
        checkpoint_config=checkpoint_config(cfg),
        failure_config=ray.train.FailureConfig(max_failures=c.max_failures,
                                               controller_failure_limit=c.controller_failure_limit))


def shard_data(cfg: JobConfig, trial: str) -> TrialData:
    """The default data factory: the Ray Data pipeline over ``data.path``'s Parquet shards.

    Only the train split is split across workers; dropped rows are counted on the dashboard per trial.
    """
    import ray.data
    from .data import build_datasets
    context = ray.data.DataContext.get_current()       # captured by the datasets: no per-trial progress bars
    context.enable_progress_bars, context.print_on_execution_start = False, False
    d, spec = cfg.data, task_data_spec(cfg)
    splits = [d.train_split, d.val_split] + ([d.meta_split] if cfg.meta.source == "split" else [])
    datasets = build_datasets(d.path, splits=tuple(dict.fromkeys(splits)), num_frames=d.num_frames,
                              image_size=d.image_size, max_text_len=d.max_text_len, vocab_path=d.vocab_path,
                              items=spec.items, sampling=d.sampling, decode_actors=d.decode_actors,
                              resize_mode=d.resize_mode, augment=spec.augment,
                              max_feature_frames=feature_frames(cfg), on_bad_row=SkippedRowsHook(trial),
                              log_name=f"bad_rows_{trial}", seed=cfg.train.seed)
    if d.train_split not in datasets:
        raise ValueError(f"data path {d.path!r} has no shards for split {d.train_split!r} (data.train_split)")
    return TrialData(datasets=datasets, collate_fn=CollateSamples(), local_splits=(),
                     steps_per_epoch=shard_steps_per_epoch(cfg))


def task_data_spec(cfg: JobConfig):
    """The :class:`DataSpec` of the run's backbone and task."""
    from ..backbones import get_spec
    return get_spec(cfg.backbone.name).task(cfg.backbone.task, cfg.backbone.name).data


def feature_frames(cfg: JobConfig) -> int:
    """Feature vectors per sample for modality ``features`` (UniVL's S3D features, one per second):
    ``data.num_frames``, or the spec's when unset — ``resolve_job`` has checked it against the model's
    ``max_frames``. The decoder truncates longer clips and zero-pads shorter ones to it (with a mask); video
    and image rows never read it."""
    return cfg.data.num_frames or task_data_spec(cfg).num_frames


def shard_steps_per_epoch(cfg: JobConfig) -> int | None:
    """Inner steps per epoch from the shards' item counts (local or ``s3://`` ``dataset.json``)."""
    from ..run import steps_per_epoch_from_meta
    from .data import read_dataset_meta
    try:
        return steps_per_epoch_from_meta(cfg, read_dataset_meta(cfg.data.path))
    except (FileNotFoundError, OSError):
        return None


def build_trial_data(cfg: JobConfig, runtime: dict, trial: str) -> TrialData:
    """Call the run's data factory ``factory(cfg, trial)``: ``runtime["data_factory"]`` or :func:`shard_data`."""
    import_plugins(runtime.get("plugins"))
    factory = load_factory(runtime["data_factory"]) if runtime.get("data_factory") else shard_data
    data = factory(cfg, trial)
    if not isinstance(data, TrialData):
        raise TypeError(f"data factory {runtime.get('data_factory')!r} must return a TrialData")
    return data


def data_config(data: TrialData) -> dict:
    """The part of the worker config that says where each split's batches come from."""
    return {"ray_splits": list(data.datasets), "collate_fn": data.collate_fn,
            "local_batches": data.local_batches, "local_splits": list(data.local_splits),
            "steps_per_epoch": data.steps_per_epoch}


def build_torch_trainer(cfg: JobConfig, runtime: dict, *, name: str, storage_path: str, trial: str = "",
                        callbacks=()) -> ray.train.torch.TorchTrainer:
    """One ``TorchTrainer`` for ``cfg``: DDP workers running :func:`train_loop_per_worker`."""
    data = build_trial_data(cfg, runtime, trial or name)
    train_split = cfg.data.train_split
    dataset_config = ray.train.DataConfig(datasets_to_split=[train_split] if train_split in data.datasets else [])
    loop_config = {"job": cfg.to_dict(), "data": data_config(data), "plugins": list(runtime.get("plugins") or []),
                   "trial": trial or name}
    return ray.train.torch.TorchTrainer(
        train_loop_per_worker, train_loop_config=loop_config, scaling_config=scaling_config(cfg),
        run_config=train_run_config(cfg, name, storage_path, callbacks),
        datasets=data.datasets or None, dataset_config=dataset_config)


def trial_job_config(config: dict, job: dict) -> JobConfig:
    """The JobConfig of one trial: the base ``job`` (a JobConfig dict) with the sampled ``config`` applied."""
    return JobConfig.from_dict(job).with_overrides(config).validate()


def trial_driver(config: dict, job: dict, runtime: dict) -> None:
    """The Tune function trainable: build and fit this trial's TorchTrainer (it resumes by name).

    ``config``: the sampled hyperparameters only; ``job``/``runtime`` come from ``tune.with_parameters``."""
    trial_id = ray.tune.get_context().get_trial_id()
    cfg = trial_job_config(config, job)
    trainer = build_torch_trainer(cfg, runtime, name=f"train-{trial_id}", storage_path=runtime["storage_path"],
                                  trial=trial_id, callbacks=[TuneReportCallback()])
    trainer.fit()
