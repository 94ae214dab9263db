"""Backbones: video(-language) and image models that return a dict of task losses.

A family is one folder (``violet/``, …) that registers each variant with a :class:`BackboneSpec`; the rest of
the project reads the specs. What a backbone provides (the contract the contract suite in
``tests/backbones/test_contract.py`` checks for every registered test-sized variant):

* a :class:`BackboneSpec` (tasks → loss names in MELTR input order, primary first; MELTR preset; a
  :class:`DataSpec`; default meta scope; checkpoint filter; ``example_batch``);
* an ``nn.Module`` built by ``create_backbone(name, task=..., pretrained=PATH|None, **overrides)`` with
  ``forward(batch, tasks=None) -> {loss name: scalar}`` (only the asked losses, in the spec's order; the meta
  step asks for the primary alone) and ``evaluate(batches) -> {metric: float}`` (flat keys).
"""
from ._registry import (create_backbone, discover, families_for_task, get_spec, import_plugin, list_backbones, list_families,
                        register_backbone, resolve_name, tiny_variants, unregister_backbone)
from ._spec import ITEM_KINDS, BackboneSpec, DataSpec, TaskSpec

__all__ = ["BackboneSpec", "DataSpec", "TaskSpec", "ITEM_KINDS", "create_backbone", "discover", "families_for_task", "get_spec",
           "import_plugin", "list_backbones", "list_families", "register_backbone", "resolve_name",
           "tiny_variants", "unregister_backbone"]
