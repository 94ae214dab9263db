"""timm-style backbone registry: ``register_backbone``, ``create_backbone``, ``list_backbones``.

Families live in their own modules (``violet.py``, ``univl.py``…) and are imported lazily the first time one
of their variants is asked for, so ``import meltr_ray`` stays light. A family module registers each variant
with ``@register_backbone("violet_tiny", family="violet")``; :data:`FAMILY_MODULES` says which module to
import for a name's family (the part before the first ``_``).
"""
from __future__ import annotations

import fnmatch
import importlib
from typing import Callable

_REGISTRY: dict[str, Callable] = {}

# family -> module that registers its variants (imported on first use)
FAMILY_MODULES = {
    "violet": "meltr_ray.backbones.violet.model",
    "univl": "meltr_ray.backbones.univl",
    "allinone": "meltr_ray.backbones.allinone",
    "alpro": "meltr_ray.backbones.alpro",
    "resnet": "meltr_ray.backbones.resnet",
}


def register_backbone(name: str):
    """Decorator registering ``fn(task=..., pretrained=None, **overrides) -> nn.Module`` under ``name``."""
    def decorator(fn: Callable) -> Callable:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"backbone {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn
    return decorator


def _import_family(family: str) -> None:
    module = FAMILY_MODULES.get(family)
    if module is None:
        return
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module:      # a real missing dependency inside the family module
            raise


def _import_all_families() -> None:
    for family in FAMILY_MODULES:
        _import_family(family)


def list_backbones(pattern: str = "*") -> list[str]:
    """Registered backbone names matching an fnmatch ``pattern`` (e.g. ``"*_tiny"``), sorted."""
    _import_all_families()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def create_backbone(name: str, task: str | None = None, pretrained: str | None = None, **overrides):
    """Build backbone ``name`` for ``task``; ``pretrained`` is a local checkpoint path (never a hub id)."""
    if name not in _REGISTRY:
        _import_family(name.split("_")[0])
    if name not in _REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; registered: {list_backbones()}")
    kwargs = dict(overrides)
    if task is not None:
        kwargs["task"] = task
    return _REGISTRY[name](pretrained=pretrained, **kwargs)
