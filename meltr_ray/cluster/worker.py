"""The per-worker train function of a Ray Train ``TorchTrainer`` run.

Every Train worker (one DDP rank) runs :func:`train_loop_per_worker`:

1. JobConfig (plain dict in ``config["job"]``) → :func:`meltr_ray.build_run` (backbone, MELTR, optimizers,
   schedulers, trainer — the same code a run without Ray uses);
2. the backbone goes through ``ray.train.torch.prepare_model`` (DDP with ``find_unused_parameters``, because
   the meta step asks for the primary loss alone); MELTR is *not* wrapped: ``loop.fit`` broadcasts φ from
   rank 0 and all-reduces its hypergradient itself (``meltr_ray.core.distributed``);
3. batches come from the run's Ray Data shards (``ray.train.get_dataset_shard``) or, for small in-memory
   sources, from a ``local_batches(split, epoch, rank, world_size)`` function;
4. ``fit`` runs with ``save``/``report`` bound to Ray Train: rank 0 writes the full state (w, φ, both
   optimizers and schedulers, buffer, counters, RNG, config) to a temporary directory and attaches it as a
   ``ray.train.Checkpoint``; **every** rank calls ``ray.train.report`` (it is a barrier);
5. on (re)start it resumes from ``ray.train.get_checkpoint()`` — after a worker crash, a trial restart or a
   ``Tuner.restore`` — at the epoch after the checkpoint, with every state restored.
"""
from __future__ import annotations

import importlib
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Callable

import ray.train
import ray.train.torch
import torch

from ..core.checkpoint import load_checkpoint, save_checkpoint
from ..config import JobConfig
from ..run import build_run
from .monitor import StepMonitor


@dataclass
class TrialData:
    """What one Train run reads. Built by a data factory in the trial driver (Ray Datasets are lazy).

    ``datasets``: ``{split: ray.data.Dataset}`` handed to the ``TorchTrainer``; only ``train`` is split across
    workers (val/meta are read whole by each worker). ``collate_fn`` turns a NumPy batch into tensors
    (``iter_torch_batches``). ``local_batches(split, epoch, rank, world_size)`` serves splits that are not
    Ray Datasets (small in-memory sources, tests) — those named in ``local_splits``. ``steps_per_epoch`` feeds the learning-rate schedules.
    """
    datasets: dict = field(default_factory=dict)
    collate_fn: Callable | None = None
    local_batches: Callable | None = None
    local_splits: tuple = ("train", "val")
    steps_per_epoch: int | None = None


def import_plugins(modules) -> None:
    """Import modules that register extra backbones or data sources (they must be importable on workers);
    ``ValueError`` names a module that cannot be imported (:func:`meltr_ray.backbones.import_plugin`)."""
    from ..backbones import import_plugin
    for name in [modules] if isinstance(modules, str) else modules or ():
        import_plugin(name)


def load_factory(spec: str) -> Callable:
    """``"package.module:function"`` → the function."""
    module, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"data factory {spec!r} must look like 'package.module:function'")
    return getattr(importlib.import_module(module), attr)


class RayCheckpointIO:
    """``save``/``report`` callables for :func:`meltr_ray.core.loop.fit` bound to Ray Train.

    Rank 0 writes the state to a temporary directory that lives until ``report`` returned (in SYNC upload mode
    Ray has copied it to the run's storage by then), then deletes it.
    """

    def __init__(self, rank: int, task_names, start_epoch: int):
        self.rank, self.task_names, self.start_epoch = rank, list(task_names), start_epoch
        self.tmpdir: str | None = None

    def save(self, state: dict, epoch: int):
        """Rank 0 writes the full state; every rank writes its own replay buffer and RNG states
        (``rank_<r>.pt``, merged by Ray into the same checkpoint directory), so that a multi-worker resume
        gives each rank back *its* buffer and random streams."""
        self.tmpdir = tempfile.mkdtemp(prefix="meltr_ckpt_")
        save_checkpoint({**state, "task_names": self.task_names}, self.tmpdir, rank=self.rank)
        return ray.train.Checkpoint.from_directory(self.tmpdir)

    def report(self, metrics: dict, handle) -> None:
        metrics = {**metrics, "attempt_start_epoch": self.start_epoch}
        try:
            ray.train.report(metrics, checkpoint=handle,
                             checkpoint_dir_name=f"epoch_{int(metrics['epoch']):03d}")
        finally:
            if self.tmpdir is not None:
                shutil.rmtree(self.tmpdir, ignore_errors=True)
                self.tmpdir = None


def split_batches(data_config: dict, split: str, batch_size: int, rank: int, world_size: int,
                  drop_last: bool = False, shuffle_batches: int = 0):
    """A ``batches(epoch)`` function for ``split``, or ``None`` when the run has no such split.

    The training split drops its last partial batch: every DDP rank then takes the same number of equal steps,
    and shuffles within ``shuffle_batches`` batches, because the samples of one clip (one per caption) arrive
    next to each other and would be false negatives for each other in a retrieval batch.
    """
    if split in data_config.get("ray_splits", ()):
        collate = data_config.get("collate_fn")
        shuffle = shuffle_batches * batch_size or None

        def from_shard(epoch: int):
            shard = ray.train.get_dataset_shard(split)
            return shard.iter_torch_batches(batch_size=batch_size, collate_fn=collate, drop_last=drop_last,
                                            local_shuffle_buffer_size=shuffle)
        return from_shard
    local = data_config.get("local_batches")
    if local is not None and split in data_config.get("local_splits", ()):
        return lambda epoch: local(split, epoch, rank, world_size)
    return None


def resume_state(device) -> dict | None:
    """The full training state from the run's latest committed checkpoint, or ``None`` on a fresh start."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        return load_checkpoint(directory, map_location=device, rank=ray.train.get_context().get_world_rank())


def build_models(cfg: JobConfig, device, steps_per_epoch: int | None):
    """:func:`meltr_ray.build_run` on ``device``, with the backbone wrapped in DDP for the inner step when
    there is more than one worker (MELTR is not wrapped: ``fit`` broadcasts φ and all-reduces its gradient)."""
    run = build_run(cfg, device, steps_per_epoch=steps_per_epoch)
    if ray.train.get_context().get_world_size() > 1:
        run.trainer.train_model = ray.train.torch.prepare_model(
            run.model, parallel_strategy_kwargs={"find_unused_parameters": True})
    return run


def make_evaluate(model, val_batches, rank: int):
    """Rank 0 evaluates on the whole val split (no collectives inside); other ranks report training metrics."""
    if val_batches is None or rank != 0 or not hasattr(model, "evaluate"):
        return None
    return lambda m: m.evaluate(val_batches(0))


def train_loop_per_worker(config: dict) -> dict:
    """Ray Train entry point: ``config = {"job": JobConfig dict, "data": {...}, "plugins": [...], "trial": id}``."""
    import_plugins(config.get("plugins"))
    cfg = JobConfig.from_dict(config["job"]).validate()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    data = config.get("data", {})
    run = build_models(cfg, device, data.get("steps_per_epoch"))
    cfg, model, task_names = run.cfg, run.model, run.trainer.task_names
    resume = resume_state(device)
    start_epoch = resume["epoch"] + 1 if resume is not None else 0
    io = RayCheckpointIO(rank, task_names, start_epoch)
    batch = cfg.train.batch_size
    train_batches = split_batches(data, cfg.data.train_split, batch, rank, world, drop_last=True,
                                  shuffle_batches=cfg.data.shuffle_buffer)
    if train_batches is None:
        raise ValueError(f"no data for split {cfg.data.train_split!r} (data.train_split)")
    meta_split = cfg.data.meta_split if cfg.meta.source == "split" else None
    meta_batches = split_batches(data, meta_split, batch, rank, world) if meta_split else None
    val_batches = split_batches(data, cfg.data.val_split, cfg.train.eval_batch_size, rank, world)
    monitor = StepMonitor(config.get("trial", context.get_experiment_name()), task_names,
                          clips_per_step=batch * world) if rank == 0 else None
    return run.fit(train_batches, meta_batches=meta_batches, evaluate=make_evaluate(model, val_batches, rank),
                   report=io.report, save=io.save, resume=resume, on_step=monitor)
