"""timm-style backbone registry: ``register_backbone``, ``get_spec``, ``create_backbone``, ``list_backbones``.

Families are discovered, not listed: every sub-package of ``meltr_ray.backbones`` (``violet/``, …) is a family
that registers its variants when imported, and so is every module named by an installed package's
``meltr_ray.backbones`` entry point. A plugin module imported by the user (``plugins=["my_pkg.my_family"]``)
registers the same way, and then works everywhere a built-in family does.
"""
from __future__ import annotations

import fnmatch
import importlib
import pkgutil
from importlib import metadata
from pathlib import Path

from ._spec import BackboneSpec

_SPECS: dict[str, BackboneSpec] = {}
_DISCOVERED = False
ENTRY_POINT_GROUP = "meltr_ray.backbones"


def register_backbone(name: str, spec: BackboneSpec | None = None, *, build=None):
    """Register variant ``name`` with its :class:`BackboneSpec`.

    ``register_backbone("x_tiny", spec=SPEC)`` registers at once when the spec carries ``build`` (or
    ``build=`` is given); otherwise it returns a decorator for the builder function::

        @register_backbone("x_tiny", spec=SPEC)
        def x_tiny(task="t", pretrained=None, **overrides): ...

    Raises ``ValueError`` for a duplicate name or an inconsistent spec (naming the backbone, task and field).
    """
    if not isinstance(spec, BackboneSpec):
        raise ValueError(f"register_backbone({name!r}) needs spec=BackboneSpec(...), got {type(spec).__name__}")
    if build is not None or spec.build is not None:
        return _add(name, spec.replace(build=build) if build is not None else spec)

    def decorator(fn):
        _add(name, spec.replace(build=fn))
        return fn
    return decorator


def _add(name: str, spec: BackboneSpec) -> BackboneSpec:
    existing = _SPECS.get(name)
    if existing is not None and existing.build is not spec.build:
        raise ValueError(f"backbone {name!r} is already registered (family {existing.family!r})")
    spec.check(name)
    _SPECS[name] = spec
    return spec


def unregister_backbone(name: str) -> None:
    """Remove ``name`` (tests and plugin reloads)."""
    _SPECS.pop(name, None)


def family_modules() -> list[str]:
    """The built-in family packages: every sub-package of ``meltr_ray.backbones``."""
    here = Path(__file__).parent
    return [f"{__package__}.{m.name}" for m in pkgutil.iter_modules([str(here)])
            if m.ispkg and not m.name.startswith("_")]


def import_plugin(module: str) -> None:
    """Import a module that registers backbones; ``ValueError`` names it when it cannot be imported."""
    try:
        importlib.import_module(module)
    except ImportError as err:
        raise ValueError(f"plugin module {module!r} cannot be imported: {err}") from err


def discover() -> None:
    """Import every built-in family and every ``meltr_ray.backbones`` entry point (once)."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    for module in family_modules():
        importlib.import_module(module)
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        import_plugin(entry.value.split(":")[0])


def list_backbones(pattern: str = "*") -> list[str]:
    """Registered backbone names matching an fnmatch ``pattern`` (e.g. ``"*_tiny"``), sorted."""
    discover()
    return sorted(n for n in _SPECS if fnmatch.fnmatchcase(n, pattern))


def list_families() -> list[str]:
    """The families of the registered backbones, sorted."""
    discover()
    return sorted({spec.family for spec in _SPECS.values()})


def families_for_task(task: str) -> list[str]:
    """Families with a registered variant that has ``task`` (the launchers' default backbone), sorted."""
    discover()
    return sorted({spec.family for spec in _SPECS.values() if task in spec.tasks})


def resolve_name(backbone: str, size: str = "base") -> str:
    """A variant name as is; a family name (``"violet"``) → its ``*_<size>`` variant when registered."""
    discover()
    if backbone in _SPECS:
        return backbone
    candidate = f"{backbone}_{size}"
    if candidate in _SPECS:
        return candidate
    family = [n for n, s in sorted(_SPECS.items()) if s.family == backbone]
    if family:
        return family[0]
    return backbone if "_" in backbone else candidate       # unknown: the error names the variant looked for


def get_spec(name: str) -> BackboneSpec:
    """The :class:`BackboneSpec` of a registered variant; ``ValueError`` lists the registered names."""
    if name not in _SPECS:
        discover()
    if name not in _SPECS:
        raise ValueError(f"unknown backbone {name!r} (backbone.name); registered: {sorted(_SPECS)}")
    return _SPECS[name]


def tiny_variants() -> list[str]:
    """Variants the contract suite runs over: every ``*_tiny`` name and every spec marked ``test_sized``."""
    return [n for n in list_backbones() if n.endswith("_tiny") or _SPECS[n].test_sized]


def create_backbone(name: str, task: str | None = None, pretrained: str | None = None, **overrides):
    """Build backbone ``name`` for ``task``; ``pretrained`` is a local checkpoint path (never a hub id)."""
    spec = get_spec(name)
    task = task or spec.default_task or next(iter(spec.tasks))
    spec.task(task, name)
    return spec.build(task=task, pretrained=pretrained, **overrides)
