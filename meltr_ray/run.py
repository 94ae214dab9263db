"""``build_run(cfg)``: a JobConfig → backbone + MELTR + optimizers/schedulers + bilevel trainer, Ray-free.

This is the one place that turns a config into a run. The Ray worker only adds DDP and its data shard around
it; tests, benchmarks and notebooks call it directly::

    run = meltr_ray.build_run(cfg, steps_per_epoch=len(loader))
    run.fit(lambda epoch: loader, evaluate=lambda model: model.evaluate(val_loader))

:func:`resolve_job` fills what the config leaves to the backbone (frames, image size, text length, resize
mode) from its :class:`~meltr_ray.backbones.BackboneSpec` and checks the config against the spec's limits —
when the config is resolved, never minutes into a trial.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Callable, Iterable

from .config import JobConfig

_DATA_FROM_SPEC = {"num_frames": "num_frames", "image_size": "image_size", "max_text_len": "text_len",
                   "resize_mode": "resize_mode"}


def resolve_job(cfg: JobConfig) -> JobConfig:
    """A copy of ``cfg`` with ``data.*`` fields left at ``None`` taken from the backbone's spec, checked.

    ``ValueError`` names the backbone, the task and the field: an unknown backbone or task, or a data value
    above the model's maximum (``data.num_frames`` > the temporal embedding's rows, …).
    """
    from .backbones import get_spec
    spec = get_spec(cfg.backbone.name)
    data = spec.task(cfg.backbone.task, cfg.backbone.name).data
    filled = {field: getattr(data, attr) for field, attr in _DATA_FROM_SPEC.items()
              if getattr(cfg.data, field) is None}
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **filled)).validate()
    _check_limits(cfg, data)
    return cfg


def _check_limits(cfg: JobConfig, data) -> None:
    where = f"backbone {cfg.backbone.name!r}, task {cfg.backbone.task!r}"
    for field, value, limit, what in (
            ("data.num_frames", cfg.data.num_frames, data.max_frames, "frames of its temporal embedding"),
            ("data.image_size", cfg.data.image_size, data.max_image_size, "pixels of its spatial embedding"),
            ("data.max_text_len", cfg.data.max_text_len, data.text_positions, "rows of its text position table")):
        if field == "data.image_size" and data.modality == "features":
            continue                     # pre-extracted features: no pixels, the image size is not read
        if limit is not None and value > limit:
            raise ValueError(f"{where}: {field} = {value} is above the model's maximum {limit} ({what})")


def steps_per_epoch_from_meta(cfg: JobConfig, meta: dict, world_size: int | None = None) -> int | None:
    """Inner steps per epoch from ``dataset.json``'s per-split counts, for the linear schedules.

    The spec's ``items`` kind says which count (captions, questions, labels, rows, …) is one sample; each of
    the ``cluster.num_workers`` ranks gets an equal share and drops its last partial batch.
    """
    from .backbones import get_spec
    kind = get_spec(cfg.backbone.name).task(cfg.backbone.task, cfg.backbone.name).data.items
    split = cfg.data.train_split
    count = meta.get("rows", {}).get(split, 0) if kind == "rows" else meta.get("items", {}).get(split, {}).get(kind, 0)
    per_worker = count // max(1, world_size or cfg.cluster.num_workers or 1)
    return per_worker // cfg.train.batch_size or None


def steps_per_epoch_from_shards(cfg: JobConfig) -> int | None:
    """:func:`steps_per_epoch_from_meta` for a local ``data.path`` (``None`` without one)."""
    if not cfg.data.path or "://" in cfg.data.path:
        return None
    try:
        with open(os.path.join(cfg.data.path, "dataset.json"), encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    return steps_per_epoch_from_meta(cfg, meta)


@dataclass
class Run:
    """A built run: the backbone, the combiner, the trainer (optimizers, schedulers, buffer) and the spec."""
    cfg: JobConfig
    spec: object
    model: object
    combiner: object
    trainer: object

    def fit(self, train_batches: Callable[[int], Iterable], **kwargs) -> dict:
        """:func:`meltr_ray.core.loop.fit` with this run's trainer (same keyword arguments)."""
        from .core.loop import fit
        return fit(self.model, self.combiner, self.cfg, train_batches, trainer=self.trainer,
                   device=self.trainer.device, **kwargs)


def build_run(cfg: JobConfig, device=None, *, steps_per_epoch: int | None = None, train_model=None,
              model=None) -> Run:
    """Build every piece of a bilevel run from ``cfg`` (no Ray, no data loading).

    ``steps_per_epoch`` sets the length of the linear schedules; when ``None`` it is read from the shards'
    ``dataset.json`` (``data.path``); a linear schedule whose length is still unknown (and no
    ``train.max_steps``) is an error. ``model`` reuses an already built backbone; ``train_model`` is its DDP
    wrapper when distributed.
    """
    import torch

    from .backbones import create_backbone, get_spec
    from .core.loop import build_trainer
    from .core.meltr import build_combiner

    cfg = resolve_job(cfg)
    spec = get_spec(cfg.backbone.name)
    task = spec.task(cfg.backbone.task, cfg.backbone.name)
    device = torch.device(device) if device is not None else torch.device("cpu")
    if model is None:
        torch.manual_seed(cfg.train.seed)      # the same seed starts from the same weights (trials, reruns)
        b = cfg.backbone
        model = create_backbone(b.name, task=b.task, pretrained=b.pretrained, **(b.overrides or {}))
    model = model.to(device)
    combiner = build_combiner(cfg.meltr, len(task.losses)).to(device)
    steps = steps_per_epoch or steps_per_epoch_from_shards(cfg)
    trainer = build_trainer(model, combiner, cfg, train_model=train_model, steps_per_epoch=steps, device=device,
                            task_names=list(task.losses), meta_scope=spec.meta_scope(model))
    return Run(cfg=cfg, spec=spec, model=model, combiner=combiner, trainer=trainer)
