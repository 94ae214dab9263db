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
   ``Tuner.restore`` — at the epoch after the checkpoint, with every state restored; a checkpoint that fails
   its manifests is logged and the run's previous one is used (:func:`resume_state`).
"""
from __future__ import annotations

import importlib
import logging
import posixpath
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Callable

import ray.train
import ray.train.collective
import ray.train.torch

from ..core.checkpoint import DamagedCheckpointError, load_checkpoint, save_checkpoint, verify_checkpoint
from ..config import JobConfig
from ..run import build_run
from .monitor import StepMonitor

logger = logging.getLogger(__name__)
COMMITTED_LIST_TIMEOUT_S = 60       # waiting for Train to register in-flight reports (none at an attempt's start)


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

    Every rank writes its part to a temporary directory that lives until ``report`` returned (in SYNC upload
    mode Ray has copied it to the run's storage by then), then deletes it.
    """

    def __init__(self, rank: int, task_names, start_epoch: int):
        self.rank, self.task_names, self.start_epoch = rank, list(task_names), start_epoch
        self.tmpdir: str | None = None
        self.committed_names: set[str] | None = None       # checkpoint directories Train held at our start

    def save(self, state: dict, epoch: int):
        """Rank 0 writes the full state; every rank writes its own replay buffer and RNG states
        (``rank_<r>.pt``, merged by Ray into the same checkpoint directory), so that a multi-worker resume
        gives each rank back *its* buffer and random streams. Each rank's manifest lists its own files."""
        self.tmpdir = tempfile.mkdtemp(prefix="meltr_ckpt_")
        save_checkpoint({**state, "task_names": self.task_names}, self.tmpdir, rank=self.rank,
                        world_size=ray.train.get_context().get_world_size())
        return ray.train.Checkpoint.from_directory(self.tmpdir)

    def report(self, metrics: dict, handle) -> None:
        metrics = {**metrics, "attempt_start_epoch": self.start_epoch}
        try:
            ray.train.report(metrics, checkpoint=handle, checkpoint_dir_name=self.dir_name(int(metrics["epoch"])))
        finally:
            if self.tmpdir is not None:
                shutil.rmtree(self.tmpdir, ignore_errors=True)
                self.tmpdir = None

    def dir_name(self, epoch: int) -> str:
        """``epoch_NNN``; ``epoch_NNN-<k>`` when a checkpoint Train still holds has that name — an epoch redone
        after resuming from an earlier checkpoint than a damaged latest one. Train deletes old checkpoints by
        directory, so two entries sharing one would delete the new files with the old entry.

        Every rank computes the same name: the committed list is read once, before this attempt's first report
        (no rank's report can commit before all ranks have reported)."""
        if self.committed_names is None:
            self.committed_names = {_dir_basename(c) for c in committed_checkpoints()}
        name, k = f"epoch_{epoch:03d}", 1
        while name in self.committed_names:
            k += 1
            name = f"epoch_{epoch:03d}-{k}"
        return name


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


def committed_checkpoints() -> list:
    """The checkpoints Train holds for this run (``cluster.checkpoints_to_keep``), oldest first."""
    reported = ray.train.get_all_reported_checkpoints(
        consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED, timeout_s=COMMITTED_LIST_TIMEOUT_S)
    return [r.checkpoint for r in reported]


def _dir_basename(checkpoint) -> str:
    return posixpath.basename(checkpoint.path.rstrip("/"))


def resume_candidates(latest) -> list:
    """Newest first: ``latest`` (what Train hands a restarted worker group), then the run's earlier committed
    checkpoints. Train's list, not a listing of the run folder: a folder there may be a crashed attempt's
    uncommitted (newer, possibly partial) upload."""
    earlier = [c for c in reversed(committed_checkpoints()) if _dir_basename(c) != _dir_basename(latest)]
    return [latest, *earlier]


def first_intact(checkpoints):
    """The first checkpoint whose files all match their manifests; each damaged one is logged with its path.

    Raises :class:`DamagedCheckpointError` naming every checkpoint and file tried when none is intact (one
    short line per bad file: Train shows the first and last 500 characters of a worker's error).
    """
    problems, tried = [], 0
    for tried, checkpoint in enumerate(checkpoints, 1):
        try:
            with checkpoint.as_directory() as directory:
                verify_checkpoint(directory)
            return checkpoint
        except (DamagedCheckpointError, OSError) as error:
            logger.warning("checkpoint %s fails verification, trying an earlier one: %s", checkpoint.path, error)
            found = getattr(error, "problems", [str(error)])
            where = "" if all(checkpoint.path in p for p in found) else f"{checkpoint.path}: "   # remote: a copy
            problems += [where + p for p in found]
    raise DamagedCheckpointError(f"no intact checkpoint to resume from; tried {tried}:\n  - "
                                 + "\n  - ".join(problems), problems)


def agreed_checkpoint(latest, rank: int):
    """The checkpoint every rank resumes from: rank 0 verifies the candidates and broadcasts its choice (all
    ranks must restart at the same epoch)."""
    choice, error = None, None
    if rank == 0:
        try:
            choice = _dir_basename(first_intact(resume_candidates(latest)))
        except DamagedCheckpointError as exc:
            error = exc
    choice = ray.train.collective.broadcast_from_rank_zero(choice)
    if error is not None:
        raise error
    if choice is None:
        raise DamagedCheckpointError("rank 0 found no intact checkpoint to resume from (its error lists every "
                                     "file tried)")
    if choice == _dir_basename(latest):
        return latest
    return ray.train.Checkpoint(path=posixpath.join(posixpath.dirname(latest.path.rstrip("/")), choice),
                                filesystem=latest.filesystem)


def resume_state(device) -> dict | None:
    """The full training state from the run's newest *intact* checkpoint, or ``None`` on a fresh start.

    Train hands a restarted worker group its latest committed checkpoint; when that one fails verification
    (truncated, bit-flipped, a file or rank part missing) the run falls back through its earlier ones.
    """
    latest = ray.train.get_checkpoint()
    if latest is None:
        return None
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    with agreed_checkpoint(latest, rank).as_directory() as directory:
        return load_checkpoint(directory, map_location=device, rank=rank, world_size=world)


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
