"""The public entry points: ``meltr_ray.tune(...)`` and ``meltr_ray.train(...)``.

Both resolve one :class:`~meltr_ray.config.JobConfig` (recipe → arguments → ``overrides``), check it before
anything starts (unknown backbone or task, no shards, unwritable storage, more GPUs than a node has), make
sure Ray is up (the cluster named by ``address`` or ``RAY_ADDRESS``, else a private local one on 127.0.0.1:
:func:`meltr_ray.cluster.session.ensure_ray`) and hand over to the Ray layer, which is imported here only
inside the functions — this module imports neither Ray nor torch, so ``meltr_ray`` re-exports it directly.

With ``data=None`` (and no recipe naming a data path) they run the **embedded demo**: synthetic mp4 clips →
Parquet shards → ``violet_tiny`` on CPU workers.
"""
from __future__ import annotations

import os
import sys
import time

from .config import FIELD_ALIASES, JobConfig

DEFAULT_STORAGE = "~/meltr_results"


def resolve_backbone(backbone: str, demo: bool) -> str:
    """A family name (``"violet"``) means its ``*_base`` variant, or ``*_tiny`` for the demo."""
    from .backbones import resolve_name
    return resolve_name(backbone, "tiny" if demo else "base")


def job_config(backbone: str = "violet", task: str = "retrieval", data: str | None = None, *,
               pretrained: str | None = None, recipe: str | None = None, overrides: dict | None = None,
               storage_path: str | None = None, epochs: int | None = None, num_workers: int | None = None,
               use_gpu: bool | None = None, data_factory: str | None = None) -> tuple[JobConfig, bool]:
    """The run's JobConfig and whether it is the embedded demo (no data and no data factory anywhere)."""
    from .demo import demo_config
    if recipe is not None:
        from .recipes import get_recipe
        cfg = get_recipe(recipe)
    else:
        cfg = None
    demo = data is None and data_factory is None and (cfg is None or cfg.data.path is None)
    if cfg is None:
        cfg = demo_config() if demo else (_default_recipe(backbone, task) or JobConfig())
        if not demo or backbone != "violet" or task != "retrieval":
            cfg = cfg.with_overrides({"backbone.name": resolve_backbone(backbone, demo), "backbone.task": task})
    args = argument_settings(data=data, pretrained=pretrained, storage_path=storage_path, epochs=epochs,
                             num_workers=num_workers, use_gpu=use_gpu)
    cfg = cfg.with_overrides(args).with_overrides(overrides)
    from .run import resolve_job
    return resolve_job(cfg), demo


def argument_settings(*, data=None, pretrained=None, storage_path=None, epochs=None, num_workers=None,
                      use_gpu=None) -> dict:
    """The config paths set by the keyword arguments the user gave (``None`` = not given)."""
    args = {"data.path": data, "backbone.pretrained": pretrained, "cluster.storage_path": storage_path,
            "train.epochs": epochs, "cluster.num_workers": num_workers, "cluster.use_gpu": use_gpu}
    return {k: v for k, v in args.items() if v is not None}


def fix_searched(search, settings: dict):
    """``search`` without the hyperparameters the user set explicitly (``overrides`` or an argument such as
    ``epochs``): an explicit value is kept for every trial, and a one-line notice says so."""
    explicit = {FIELD_ALIASES.get(k, k): v for k, v in settings.items()}
    fixed = {name: explicit[FIELD_ALIASES.get(name, name)] for name in search.params
             if FIELD_ALIASES.get(name, name) in explicit}
    if not fixed:
        return search
    if len(fixed) == len(search.params):
        raise ValueError(f"overrides fix every searched hyperparameter ({', '.join(fixed)}) of {search.source}: "
                         f"nothing is left to search; use meltr_ray.train for one run with fixed values")
    values = ", ".join(f"{name}={value!r}" for name, value in fixed.items())
    print(f"meltr_ray.tune: {values} fixed by overrides, not searched", file=sys.stderr)
    return search.without(fixed)


def _default_recipe(backbone: str, task: str) -> JobConfig | None:
    """The official recipe of a backbone family and task (``recipes.find_recipe``), when there is one."""
    from .recipes import find_recipe, get_recipe
    try:
        return get_recipe(find_recipe(backbone, task))
    except ValueError:
        return None


def _import_plugins(plugins) -> None:
    """Import the plugin modules first: the backbones they register must exist when the config is resolved."""
    from .cluster.worker import import_plugins
    import_plugins(plugins)


def _prepare(cfg: JobConfig, demo: bool, address: str | None, plugins=(), has_factory: bool = False,
             quiet: bool = False) -> JobConfig:
    """Demo data, preflight checks that need no cluster, then Ray. Returns the config with final paths."""
    from .cluster import preflight
    from .cluster.session import ensure_ray
    _import_plugins(plugins)
    storage = preflight.check_storage_path(cfg.cluster.storage_path or DEFAULT_STORAGE)
    cfg = cfg.with_overrides({"cluster.storage_path": storage})
    preflight.check_backbone(cfg)
    if demo:
        from .demo import prepare_demo_job
        local_root = storage if "://" not in storage else os.path.expanduser("~/.cache/meltr_ray")
        cfg = prepare_demo_job(cfg, os.path.join(local_root, "demo_data"))
    if cfg.data.path is not None or not has_factory:
        needed, optional = (None, None) if has_factory else preflight.job_splits(cfg)
        preflight.check_data_path(cfg.data.path, needed, optional)
    ensure_ray(address, quiet=quiet)
    return cfg


def _runtime(plugins, data_factory) -> dict:
    return {"plugins": list(plugins or []), "data_factory": data_factory}


def tune(backbone: str = "violet", task: str = "retrieval", data: str | None = None, space=None,
         num_samples: int | None = None, pretrained: str | None = None, recipe: str | None = None,
         overrides: dict | None = None, storage_path: str | None = None, *, name: str | None = None,
         searcher: str | None = None, seed: int = 0, epochs: int | None = None, num_workers: int | None = None,
         use_gpu: bool | None = None, plugins=None, data_factory: str | None = None,
         address: str | None = None, progress: bool = True, callbacks=()):
    """Search γ (reg_weight), α (backbone_lr), β (meltr_lr), K (neumann_steps) and meta_every with Ray Tune.

    ``space``: a :class:`~meltr_ray.spaces.SearchSpace`, a YAML path or a name in ``tune_spaces/``; default:
    the file for the backbone family and task. ``num_samples`` searched trials; a space with a ``baseline``
    (the demo's: plain MTL, ``meltr.combiner: mtl``) adds one trial with it, run first for the same epochs
    and never cut by ASHA. A hyperparameter set in ``overrides`` (``{"reg_weight": 0.7}``)
    keeps that value in every trial and leaves the search space (a one-line notice says so). ``searcher``: ``hyperopt`` (TPE) or ``random`` (smoke runs).
    ``plugins`` are modules imported on every worker (extra backbones); ``data_factory``
    (``"module:function"``, ``f(cfg, trial) -> TrialData``) replaces the Parquet pipeline. Returns Ray's
    ``ResultGrid``; the best trial's checkpoint is ``result.metrics["checkpoint_path"]``. ``callbacks``: extra
    ``ray.tune.Callback`` objects (a rich live table of trials is added when ``progress``). ``address``:
    ``"auto"`` (the cluster of this node, e.g. a ``ray up`` head) or ``"HOST:PORT"`` to join a cluster; by
    default ``RAY_ADDRESS`` if exported, else a private local Ray on 127.0.0.1. Each trial's ``config`` holds
    the searched values only.
    """
    from .spaces import SearchSpace, load_space, space_for
    _import_plugins(plugins)                   # plugin backbones must be registered before the config resolves
    cfg, demo = job_config(backbone, task, data, pretrained=pretrained, recipe=recipe, overrides=overrides,
                           storage_path=storage_path, epochs=epochs, num_workers=num_workers, use_gpu=use_gpu,
                           data_factory=data_factory)
    if isinstance(space, SearchSpace):
        search = space
    elif space is not None:
        search = load_space(space)
    else:
        search = load_space("demo") if demo else space_for(cfg.backbone.name, cfg.backbone.task)
    explicit = argument_settings(epochs=epochs, num_workers=num_workers, use_gpu=use_gpu)
    search = fix_searched(search, {**explicit, **(overrides or {})})
    cfg = _prepare(cfg, demo, address, plugins, has_factory=data_factory is not None, quiet=progress)
    from .cluster.progress import LiveTrialTable
    from .cluster.tuner import run_tune
    name = name or f"{cfg.name}-tune-{time.strftime('%Y%m%d-%H%M%S')}"
    callbacks = list(callbacks)
    if progress:
        callbacks.append(LiveTrialTable(search.metric, search.mode, search.trial_keys, cfg.train.epochs))
    return run_tune(cfg, search, name=name, storage_path=cfg.cluster.storage_path,
                    runtime=_runtime(plugins, data_factory), num_samples=num_samples, searcher=searcher,
                    seed=seed, callbacks=callbacks, verbose=0 if progress else 1)


def train(backbone: str = "violet", task: str = "retrieval", data: str | None = None,
          pretrained: str | None = None, recipe: str | None = None, overrides: dict | None = None,
          storage_path: str | None = None, *, name: str | None = None, epochs: int | None = None,
          num_workers: int | None = None, use_gpu: bool | None = None, plugins=None,
          data_factory: str | None = None, address: str | None = None):
    """One MELTR fine-tuning run on Ray Train; returns its ``ray.train.Result``.

    Arguments as for :func:`tune` (``overrides``: ``{"reg_weight": 0.3, "meta.clip_norm": 5}``, dotted config
    paths or the short aliases). Re-running with the same ``name`` and ``storage_path`` resumes the run from its
    last checkpoint. ``address``: as for :func:`tune` (default: ``RAY_ADDRESS``, else a private local Ray).
    ``plugins``: modules imported here and on every worker before anything else (extra backbones).
    """
    _import_plugins(plugins)                   # plugin backbones must be registered before the config resolves
    cfg, demo = job_config(backbone, task, data, pretrained=pretrained, recipe=recipe, overrides=overrides,
                           storage_path=storage_path, epochs=epochs, num_workers=num_workers, use_gpu=use_gpu,
                           data_factory=data_factory)
    cfg = _prepare(cfg, demo, address, plugins, has_factory=data_factory is not None)
    from .cluster.driver import build_torch_trainer, worker_resources
    from .cluster.preflight import check_resources, node_capacities
    check_resources(cfg, worker_resources(cfg), node_capacities())
    name = name or f"{cfg.name}-train-{time.strftime('%Y%m%d-%H%M%S')}"
    trainer = build_torch_trainer(cfg, _runtime(plugins, data_factory), name=name,
                                  storage_path=cfg.cluster.storage_path)
    return trainer.fit()


def restore(path: str, *, address: str | None = None):
    """Finish an interrupted ``tune`` experiment at ``path`` (``storage_path/name``) with ``Tuner.restore``."""
    from .cluster.session import ensure_ray
    from .cluster.tuner import restore as restore_experiment
    ensure_ray(address)
    return restore_experiment(path)
