"""meltr_ray: fine-tune video foundation models with MELTR, distributed on Ray.

``import meltr_ray`` never imports Ray: the core (MELTR, hypergradients, the bilevel loop, backbones, data)
works without it, and ``meltr_ray.tune`` / ``meltr_ray.train`` (re-exported from :mod:`meltr_ray.api`, which
imports neither Ray nor torch at module level) import the Ray layer only when called.
"""
from __future__ import annotations

import importlib

from .api import train, tune
from .config import JobConfig

# Imported on first use (PEP 562): Ray Data decode actors import this package without paying for torch.
_LAZY = {"MELTR": "core.meltr", "MTLSum": "core.meltr", "FixedWeights": "core.meltr", "LinearWeights": "core.meltr",
         "build_combiner": "core.meltr", "hypergradient": "core.hypergrad", "select_scope": "core.hypergrad",
         "fit": "core.loop", "local_saver": "core.loop", "build_run": "run", "get_spec": "backbones",
         "register_backbone": "backbones"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = ["MELTR", "MTLSum", "FixedWeights", "LinearWeights", "build_combiner", "hypergradient",
           "select_scope", "fit", "local_saver", "build_run", "get_spec", "register_backbone", "JobConfig", "tune", "train", "create_backbone", "list_backbones", "__version__"]


def create_backbone(*args, **kwargs):
    """Build a registered backbone (see :func:`meltr_ray.backbones.create_backbone`)."""
    from .backbones import create_backbone as _create
    return _create(*args, **kwargs)


def list_backbones(*args, **kwargs):
    """Names of the registered backbones (see :func:`meltr_ray.backbones.list_backbones`)."""
    from .backbones import list_backbones as _list
    return _list(*args, **kwargs)
