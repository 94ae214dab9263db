"""Loading ResNet checkpoints: this project's own layout and the common CIFAR ResNet layout, with a report.

Accepted layouts (a stray DataParallel ``module.`` prefix is stripped first):

* this model's own names (``stem.0``, ``stages.s.b.conv1``, ``classifier``, ``rotation_head``) — a
  meltr_ray training checkpoint directory works too (its weights sit under ``"backbone"``);
* the widespread CIFAR ResNet layout of option-A ResNet-20/32/44/56 ports (``conv1``, ``bn1``,
  ``layer{1,2,3}.b.*``, ``linear`` or ``fc``): renamed key by key.

A class head of another size (a CIFAR-10 checkpoint into a 100-way model) and a missing rotation head start
fresh and are reported as initialised; any other unknown key, missing key or shape mismatch is a
``ValueError`` naming the key.
"""
from __future__ import annotations

import re

from .._loading import LoadReport, load_filtered, strip_prefix

HEADS = ("classifier.", "rotation_head.")
_CIFAR_RENAMES = ((re.compile(r"^conv1\."), "stem.0."), (re.compile(r"^bn1\."), "stem.1."),
                  (re.compile(r"^layer([123])\."), lambda m: f"stages.{int(m.group(1)) - 1}."),
                  (re.compile(r"^(linear|fc)\."), "classifier."))


def _rename(key: str) -> str:
    for pattern, replacement in _CIFAR_RENAMES:
        if pattern.match(key):
            return pattern.sub(replacement, key, count=1)
    return key


def filter_resnet_state_dict(state: dict, model, source: str = "<state dict>") -> tuple[dict, LoadReport]:
    """Map ``state`` onto ``model``'s names; returns ``(state dict for a strict load, report)``."""
    report = LoadReport(source=source)
    state = strip_prefix(state, "module.", report)
    own = model.state_dict()
    out = {}
    for key, value in state.items():
        name = _rename(key)
        if name != key:
            report.renamed[key] = name
        if name.endswith("num_batches_tracked") and name not in own:
            report.skipped[key] = "BatchNorm step counter the model does not keep"
        elif name not in own:
            raise ValueError(f"{source}: checkpoint key {key!r} has no place in the model (as {name!r})")
        elif own[name].shape != value.shape and name.startswith(HEADS):
            report.skipped[key] = f"head of shape {tuple(value.shape)}, model has {tuple(own[name].shape)}"
        elif own[name].shape != value.shape:
            raise ValueError(f"{source}: {key!r} has shape {tuple(value.shape)}, the model's {name!r} has "
                             f"{tuple(own[name].shape)} (check blocks_per_stage, widths, in_channels)")
        else:
            out[name] = value
    for name, value in own.items():
        if name in out:
            report.loaded.append(name)
        elif name.startswith(HEADS) or name.endswith("num_batches_tracked"):
            out[name] = value
            report.initialised[name] = "not in the checkpoint (or another size): fresh initialisation"
        else:
            raise ValueError(f"{source}: the model's {name!r} is missing from the checkpoint")
    return out, report


def load_resnet_checkpoint(model, path: str, verbose: bool = True) -> LoadReport:
    """Read ``path`` (``weights_only``), filter it, load it strictly; print and return the report."""
    return load_filtered(model, path, filter_resnet_state_dict, verbose=verbose)
