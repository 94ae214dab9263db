"""Test plugins imported on Ray workers (as ``tests.cluster.ray_plugins``): a toy backbone and data sources.

``toy_ray`` is :class:`tests.toy_models.ToyMultiTask` registered in the backbone registry with its own
:class:`BackboneSpec` (the plugin API: ``register_backbone(name, spec=...)``); ``toy_data`` is a data factory
serving deterministic in-memory batches; ``featlm_data`` serves the fixture plugin family's example batches
(``tests/fixtures/plugin_family.py``). Crash simulation (worker killed mid-trial): when the job's
``backbone.overrides`` hold ``crash_marker`` (a file path) and ``crash_epoch``, rank ``crash_rank`` (default 0)
kills its own process with SIGKILL in that training epoch after ``crash_step`` steps (default 0: at its start)
— once: it first writes ``"<pid> <steps taken>"`` to the marker. ``epoch_log`` (a file path) records
``trial epoch`` for every training epoch that starts on rank 0.
"""
from __future__ import annotations

import os
import signal

import torch
from ray import tune

from meltr_ray.backbones import BackboneSpec, DataSpec, TaskSpec, get_spec, register_backbone
from meltr_ray.cluster.worker import TrialData
from tests.toy_models import ToyMultiTask, toy_batches

CRASH_KEYS = ("crash_marker", "crash_epoch", "crash_rank", "crash_step", "epoch_log")
STEPS_PER_EPOCH = 4
TOY_LOSSES = ("primary", "helpful", "harmful")


def build_toy(task: str = "toy", pretrained=None, **overrides):
    """ToyMultiTask; the crash keys of ``backbone.overrides`` are for the data source, not the model."""
    kwargs = {k: v for k, v in overrides.items() if k not in CRASH_KEYS}
    return ToyMultiTask(**kwargs)


def toy_example_batch(task: str, batch_size: int, generator, **overrides) -> dict:
    seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
    return toy_batches(1, batch_size=batch_size, in_dim=overrides.get("in_dim", 8), seed=seed)[0]


# Vectors, no text: modality "features"; one sample per row. "retrieval" is the toy task under the default name.
_TOY_TASK = TaskSpec(losses=TOY_LOSSES, data=DataSpec(
    modality="features", num_frames=1, feature_dim=8, batch_keys=("x", *(f"y_{t}" for t in TOY_LOSSES)),
    items="rows"))
TOY_SPEC = BackboneSpec(family="toy", tasks={"toy": _TOY_TASK, "retrieval": _TOY_TASK}, build=build_toy,
                        default_task="toy", default_meta_scope=lambda model: model.default_meta_scope,
                        example_batch=toy_example_batch, description="tests.toy_models.ToyMultiTask")
register_backbone("toy_ray", spec=TOY_SPEC)


class ToyBatches:
    """``local_batches(split, epoch, rank, world_size)``: a different deterministic set per split/epoch/rank."""

    def __init__(self, steps: int = STEPS_PER_EPOCH, crash_marker: str | None = None, crash_epoch: int = -1,
                 crash_rank: int = 0, crash_step: int = 0, epoch_log: str | None = None, trial: str = ""):
        self.steps, self.crash_marker, self.crash_epoch = steps, crash_marker, crash_epoch
        self.crash_rank, self.crash_step = crash_rank, crash_step
        self.epoch_log, self.trial = epoch_log, trial

    def __call__(self, split: str, epoch: int, rank: int, world_size: int):
        if split == "train" and rank == 0:
            log_epoch(self.epoch_log, self.trial, epoch)
        seed = {"train": 0, "val": 10_000}[split] + 100 * epoch * (split == "train") + rank
        batches = toy_batches(self.steps if split == "train" else 2, batch_size=8, seed=seed)
        if split == "train" and epoch == self.crash_epoch and rank == self.crash_rank and self.crash_marker:
            return self.killed_after(batches)
        return batches

    def killed_after(self, batches):
        """Serve ``crash_step`` batches (the steps this rank takes), then SIGKILL this worker process — unless the
        marker says it already happened."""
        for step, batch in enumerate(batches):
            if step == self.crash_step and not os.path.exists(self.crash_marker):
                with open(self.crash_marker, "w") as f:
                    f.write(f"{os.getpid()} {step}")
                os.kill(os.getpid(), signal.SIGKILL)          # this worker process only
            yield batch


def toy_data(cfg, trial: str) -> TrialData:
    """Data factory: in-memory toy batches for the train and val splits."""
    crash = {k: cfg.backbone.overrides[k] for k in CRASH_KEYS if k in (cfg.backbone.overrides or {})}
    return TrialData(local_batches=ToyBatches(**crash, trial=trial), local_splits=("train", "val"),
                     steps_per_epoch=STEPS_PER_EPOCH)


def featlm_data(cfg, trial: str) -> TrialData:
    """Data factory for any registered backbone with ``example_batch`` (the fixture plugin family ``featlm``):
    per split/epoch/rank a different deterministic set of the spec's example batches."""
    spec, task, size = get_spec(cfg.backbone.name), cfg.backbone.task, cfg.train.batch_size

    def local_batches(split: str, epoch: int, rank: int, world_size: int):
        seed = {"train": 0, "val": 10_000}[split] + 100 * epoch + rank
        g = torch.Generator().manual_seed(seed)
        return [spec.example_batch(task, size, g) for _ in range(STEPS_PER_EPOCH if split == "train" else 2)]
    return TrialData(local_batches=local_batches, local_splits=("train", "val"), steps_per_epoch=STEPS_PER_EPOCH)


def log_epoch(path: str | None, trial: str, epoch: int) -> None:
    """Append ``trial epoch`` to ``path`` (rank 0, start of each training epoch): which epochs really ran."""
    if path:
        with open(path, "a") as f:
            f.write(f"{trial} {epoch}\n")


class KillDriverOnResult(tune.Callback):
    """Tune callback: SIGKILL the ``tuner.fit()`` process at the first result of the ``nth`` trial — once (the
    marker file stops it from firing again if Tune restores the callback with the experiment)."""

    def __init__(self, marker: str, nth: int = 2):
        self.marker, self.nth, self.seen = marker, nth, []

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if trial.trial_id not in self.seen:
            self.seen.append(trial.trial_id)
        if len(self.seen) >= self.nth and not os.path.exists(self.marker):
            with open(self.marker, "w") as f:
                f.write(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
