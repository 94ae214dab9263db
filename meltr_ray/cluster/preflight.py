"""Checks that run before any trial starts, so bad input fails in seconds with an error naming the problem.

An unknown backbone or task, a pretrained file that is not there, a data path with no Parquet shards (or an
unfinished, stale or other-version ingest, or no rows for a split the job needs), a storage path that cannot
be written, or a trial that asks for more GPUs than any node of the cluster has (including node types the
autoscaler may still add) all raise ``ValueError`` here — instead of a trial that
errors minutes later or a placement group that waits forever.
"""
from __future__ import annotations

import os
import uuid
import warnings
from pathlib import Path

import ray
import torch
import yaml

from ..backbones import create_backbone, list_backbones
from ..config import JobConfig
from ..data.dataset_dir import check_dataset, holds_ingest_output

# The autoscaler writes the cluster config here on the head node (``ray up``).
BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml").expanduser()


def check_backbone(cfg: JobConfig) -> list[str]:
    """Build the backbone (without its pretrained weights) to check name, task and overrides.

    Returns its task names (MELTR's inputs).
    """
    name, task = cfg.backbone.name, cfg.backbone.task
    if name not in list_backbones():
        raise ValueError(f"unknown backbone {name!r} (backbone.name); registered: {list_backbones()}")
    if cfg.backbone.pretrained and "://" not in cfg.backbone.pretrained \
            and not Path(cfg.backbone.pretrained).exists():
        raise ValueError(f"pretrained checkpoint {cfg.backbone.pretrained!r} (backbone.pretrained) does not exist")
    try:
        model = _build_cheaply(name, task, cfg.backbone.overrides or {})
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"backbone {name!r} cannot be built for task {task!r} (backbone.task): {err}") from None
    return list(model.task_names)


def _build_cheaply(name: str, task: str, overrides: dict):
    """On the ``meta`` device when the family's init allows it (no memory), else on the CPU (no weights)."""
    try:
        with torch.device("meta"):
            return create_backbone(name, task=task, **overrides)
    except (NotImplementedError, RuntimeError):
        return create_backbone(name, task=task, **overrides)


def job_splits(cfg: JobConfig) -> tuple[dict[str, str], dict[str, str]]:
    """``(needed, optional)`` splits of the default Parquet pipeline, each mapped to the config key naming it:
    the train split (and the meta split with ``meta.source='split'``) must have rows; without rows in the
    validation split the run has no metric, which only warns."""
    needed = {cfg.data.train_split: "data.train_split"}
    if cfg.meta.source == "split" and cfg.data.meta_split:
        needed[cfg.data.meta_split] = "data.meta_split"
    optional = {cfg.data.val_split: "data.val_split"} if cfg.data.val_split not in needed else {}
    return needed, optional


def check_data_path(path: str | None, splits: dict[str, str] | None = None,
                    optional_splits: dict[str, str] | None = None) -> None:
    """The data path must hold Parquet shards (``*.parquet``, searched recursively).

    With ``splits`` (the default pipeline, which reads ``dataset.json``; see :func:`job_splits`) it must also
    be a finished ingest: ``dataset.json`` present and complete, its schema version supported, every listed
    shard there, one shard footer in the schema, and every split in ``splits`` non-empty
    (:func:`meltr_ray.data.dataset_dir.check_dataset`). Without ``splits`` (a custom data factory) the same
    checks run only when the folder holds ingest output. ``optional_splits`` that are empty only warn.
    """
    if path is None:
        return
    _check_has_parquet(path)
    if splits is None and not holds_ingest_output(path):
        return
    meta = check_dataset(path, splits or {})
    rows = meta.get("rows") or {}
    for split, key in (optional_splits or {}).items():
        if not rows.get(split):
            warnings.warn(f"data path {path!r} has no rows for split {split!r} ({key}): the run has no "
                          "validation metric", stacklevel=2)


def _check_has_parquet(path: str) -> None:
    if "://" in path:
        import pyarrow.fs as pafs
        fs, root = pafs.FileSystem.from_uri(path)
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
        found = any(i.path.endswith(".parquet") for i in infos)
    else:
        if not Path(path).is_dir():
            raise ValueError(f"data path {path!r} (data.path) is not a directory of Parquet shards")
        found = next(Path(path).rglob("*.parquet"), None) is not None
    if not found:
        raise ValueError(f"data path {path!r} (data.path) holds no Parquet shards (*.parquet); "
                         f"write them with `meltr-ray ingest`")


def check_storage_path(path: str) -> str:
    """The results storage must be writable; local paths are made absolute (Tune requires it)."""
    if "://" in path:
        return path
    path = os.path.abspath(os.path.expanduser(path))
    probe = Path(path) / f".meltr_write_test_{uuid.uuid4().hex[:8]}"
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"storage path {path!r} (cluster.storage_path) cannot be written: {err}") from None
    return path


def warn_if_storage_not_shared(path: str, nodes: list[dict]) -> None:
    """Train workers on other nodes write checkpoints straight to ``storage_path``: on a multi-node cluster it
    must be shared (S3/GCS URI, or an EFS/FSx/NFS mount present on every node)."""
    if "://" not in path and len(nodes) > 1:
        warnings.warn(f"storage path {path!r} is a local path on a {len(nodes)}-node cluster: unless it is a "
                      f"shared mount (EFS/FSx/NFS) on every node, use s3://... (cluster.storage_path / --storage)",
                      stacklevel=2)


def node_capacities() -> list[dict]:
    """Resources of every node the cluster has or may have.

    On a launcher cluster's head node the autoscaler's config lists each node type's resources and
    ``max_workers``: that is the cluster at full size. Elsewhere: the alive nodes.
    """
    if BOOTSTRAP_CONFIG.exists():
        with open(BOOTSTRAP_CONFIG) as f:
            config = yaml.safe_load(f) or {}
        nodes = []
        for name, node_type in config.get("available_node_types", {}).items():
            count = 1 if name == config.get("head_node_type") else int(node_type.get("max_workers", 1))
            nodes += [dict(node_type.get("resources", {}))] * count
        if nodes:
            return nodes
    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def check_resources(cfg: JobConfig, worker_resources: dict, nodes: list[dict]) -> None:
    """Each Train worker must fit some node; a trial's GPUs must fit one node (trials are packed per node)."""
    if cfg.cluster.num_workers == 0:
        return
    for key, amount in worker_resources.items():
        if amount and not any(n.get(key, 0) >= amount for n in nodes):
            best = max((n.get(key, 0) for n in nodes), default=0)
            raise ValueError(f"a Train worker needs {key}={amount} but the largest node has {best} "
                             f"(cluster.resources_per_worker / cpus_per_worker / gpus_per_worker / use_gpu)")
    gpus = cfg.cluster.num_workers * worker_resources.get("GPU", 0)
    most = max((n.get("GPU", 0) for n in nodes), default=0)
    if gpus > most:
        raise ValueError(f"a trial needs {gpus:g} GPUs ({cfg.cluster.num_workers} workers × "
                         f"{worker_resources['GPU']:g}) but the largest node has {most:g} "
                         f"(cluster.num_workers, cluster.use_gpu)")


def concurrent_trials(cfg: JobConfig, worker_resources: dict, nodes: list[dict], reserve_cpus: float = 1.0) -> int:
    """How many trials the cluster runs at once: per node, whole trials by their scarcest resource.

    ``reserve_cpus`` per node stay free for Ray Data (its ListFiles task needs one CPU).
    """
    if cfg.cluster.max_concurrent_trials:
        return cfg.cluster.max_concurrent_trials
    total = 0
    workers = max(1, cfg.cluster.num_workers)
    for node in nodes:
        fits = []
        for key, amount in worker_resources.items():
            if amount:
                free = node.get(key, 0) - (reserve_cpus if key == "CPU" else 0)
                fits.append(int(max(0.0, free) // (amount * workers)))
        total += min(fits) if fits else 0
    return max(1, total)
