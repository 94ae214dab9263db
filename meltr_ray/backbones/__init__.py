"""Backbones: video(-language) foundation models that return a dict of task losses.

The contract every backbone follows (what the bilevel loop, the Ray worker and the tests rely on):

* it is an ``nn.Module`` built by ``create_backbone(name, task=..., pretrained=PATH|None, **overrides)``;
* ``task_names``: list of loss names, in MELTR input order; ``primary_task`` is ``task_names[0]``;
* ``forward(batch, tasks=None) -> {task_name: scalar loss}``; ``tasks`` restricts the computation to a subset
  (the meta step asks for the primary loss alone on a meta batch, computed on clean inputs);
* ``default_meta_scope``: fnmatch patterns of the parameters the hypergradient is taken with respect to when
  ``meta.scope == "default"`` (e.g. the top blocks and the heads); ``"all"`` means every parameter;
* ``evaluate(batches) -> {metric: float}``: task metrics over an iterable of batches (flat keys, e.g.
  ``r1``, ``r5``, ``r10``, ``medr``, ``mnr`` for retrieval, ``accuracy`` for QA/classification).

Batches are dicts of tensors (plus ``video_id`` as a list of str) produced by ``meltr_ray.data``; see
``meltr_ray/data/schema.py`` for the keys.
"""
from ._registry import FAMILY_MODULES, create_backbone, list_backbones, register_backbone

__all__ = ["create_backbone", "list_backbones", "register_backbone", "FAMILY_MODULES"]
