"""Shared checkpoint-loading helpers: read a state dict safely and report what a load did, key by key.

Each family keeps its own *filter* (``backbones/<family>/checkpoint.py``) that maps an official layout onto its
model; the pieces every filter needs live here.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

import torch


@dataclass
class LoadReport:
    """What a checkpoint load did, key by key."""
    source: str
    loaded: list = field(default_factory=list)          # model keys filled from the checkpoint
    renamed: dict = field(default_factory=dict)         # checkpoint key -> model key
    skipped: dict = field(default_factory=dict)         # checkpoint key -> reason
    initialised: dict = field(default_factory=dict)     # model key -> reason (kept its fresh init)
    notes: list = field(default_factory=list)           # whole-file fixes (e.g. a stripped prefix)

    def to_text(self, verbose: bool = False) -> str:
        groups = Counter(".".join(k.split(".")[:2]) for k in self.loaded)
        lines = [f"checkpoint {self.source}: loaded {len(self.loaded)} keys, renamed {len(self.renamed)}, "
                 f"skipped {len(self.skipped)}, initialised {len(self.initialised)}",
                 "  loaded: " + ", ".join(f"{g}.* ({n})" for g, n in sorted(groups.items()))]
        if verbose:
            lines += [f"  loaded      {k}" for k in self.loaded]
        lines += [f"  note        {n}" for n in self.notes]
        lines += [f"  renamed     {k} -> {v}" for k, v in self.renamed.items()]
        lines += [f"  skipped     {k}: {v}" for k, v in self.skipped.items()]
        lines += [f"  initialised {k}: {v}" for k, v in self.initialised.items()]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()


def read_state_dict(path: str) -> dict:
    """``torch.load(weights_only=True)`` on CPU; unwraps ``{"state_dict"|"model"|"backbone": {...}}`` nestings.

    A directory means its ``state.pt``, so a meltr_ray training checkpoint (whose weights sit under
    ``"backbone"``) can start another fine-tuning run.
    """
    if os.path.isdir(path):
        path = os.path.join(path, "state.pt")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "backbone"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict) and not torch.is_tensor(obj.get(key)):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return dict(obj)


def strip_prefix(state: dict, prefix: str, report: LoadReport) -> dict:
    """Remove ``prefix`` (e.g. DataParallel's ``module.``) from every key that has it."""
    stripped = sum(key.startswith(prefix) for key in state)
    if stripped:
        report.notes.append(f"stripped the {prefix!r} prefix from {stripped} keys")
    return {(key[len(prefix):] if key.startswith(prefix) else key): value for key, value in state.items()}


def check_legacy_ids(state: dict, key: str, report: LoadReport) -> None:
    """Drop a legacy ``position_ids`` buffer after checking it is ``arange(n)[None]``."""
    ids = state.pop(key, None)
    if ids is None:
        return
    expected = torch.arange(ids.shape[-1]).unsqueeze(0)
    if ids.shape != expected.shape or not torch.equal(ids.long(), expected):
        raise ValueError(f"legacy key {key} must be arange({ids.shape[-1]})[None], got shape {tuple(ids.shape)} "
                         f"with other values")
    report.skipped[key] = "legacy buffer of transformers < 4.31 (checked == arange)"


def check_shapes(state: dict, model_state: dict, hints: dict) -> None:
    """Every checkpoint tensor the model also has must match its shape; ``ValueError`` names the key, both shapes
    and, where ``hints`` (key prefix → config field) knows it, the field to set."""
    for key, value in state.items():
        if key in model_state and tuple(value.shape) != tuple(model_state[key].shape):
            hint = next((f" (set the {f} override to match)" for p, f in hints.items() if key.startswith(p)), "")
            raise ValueError(f"shape mismatch for {key}: checkpoint {tuple(value.shape)} vs model "
                             f"{tuple(model_state[key].shape)}{hint}")


def load_filtered(model, path: str, filter_state_dict, read=read_state_dict, verbose: bool = True) -> LoadReport:
    """Read ``path`` (``read``: safely, ``weights_only``), map it onto ``model`` with the family's
    ``filter_state_dict(state, model, source=)``, load strictly; print (``verbose``) and return the report."""
    full, report = filter_state_dict(read(path), model, source=str(path))
    model.load_state_dict(full, strict=True)
    if verbose:
        print(report)
    return report
