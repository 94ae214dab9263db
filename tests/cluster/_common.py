"""Shared settings of the Ray-layer tests: a toy job with CPU workers that fails fast on resource mistakes."""
from __future__ import annotations

PLUGINS = ["tests.cluster.ray_plugins"]
TOY_FACTORY = "tests.cluster.ray_plugins:toy_data"


def toy_overrides(**extra) -> dict:
    """CPU gloo workers (0.5 CPU each), tiny MELTR, controller failures are errors (no endless retries)."""
    base = {
        "meltr.d_model": 16, "meltr.d_ffn": 16, "meltr.d_scale": 8, "meltr.n_heads": 2, "meltr.dropout": 0.0,
        "meta.meta_every": 2, "meta.neumann_steps": 1, "meta.buffer_size": 4,
        "train.batch_size": 8, "train.log_every": 1,
        "optim.backbone_lr": 1e-2, "optim.meltr_lr": 1e-3,
        "cluster.num_workers": 2, "cluster.use_gpu": False, "cluster.cpus_per_worker": 0.5,
        "cluster.max_failures": 0, "cluster.controller_failure_limit": 0, "cluster.trial_max_failures": 0,
        "cluster.checkpoints_to_keep": 2,
    }
    base.update(extra)
    return base


def toy_kwargs(tmp_path, **extra) -> dict:
    """Keyword arguments of ``meltr_ray.train/tune`` for the toy job."""
    return dict(backbone="toy_ray", task="toy", plugins=PLUGINS, data_factory=TOY_FACTORY,
                storage_path=str(tmp_path / "results"), overrides=toy_overrides(**extra))


def toy_tune_kwargs(tmp_path, space=None, **extra) -> dict:
    """:func:`toy_kwargs` for ``tune``: the toy settings of the hyperparameters ``space`` searches (default: the
    shipped ``default.yaml``) are left out, since an override fixes a searched value; ``extra`` stays."""
    from meltr_ray.config import FIELD_ALIASES
    from meltr_ray.spaces import load_space
    searched = {FIELD_ALIASES.get(n, n) for n in (space or load_space("default")).params}
    kwargs = toy_kwargs(tmp_path, **extra)
    kwargs["overrides"] = {k: v for k, v in kwargs["overrides"].items()
                           if k in extra or FIELD_ALIASES.get(k, k) not in searched}
    return kwargs
