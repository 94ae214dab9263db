"""Pieces of the backbone contract every family shares: its variant config with overrides, the losses a
``forward(batch, tasks=None)`` call asks for, and evaluation in eval mode.

A family's model calls these instead of writing them again, so each says exactly the same thing on bad input
(the family, the task and the names that are wrong).
"""
from __future__ import annotations

import contextlib
import dataclasses


def replace_config(base, overrides: dict, family: str, aliases: dict | None = None):
    """``base`` (a variant's config dataclass) with fields replaced, then ``.validate()``d.

    ``aliases`` maps extra override names to fields (``num_answers`` → ``size_vocab``); tuple fields stay
    tuples (YAML and JSON hand back lists). Unknown names raise ``ValueError`` naming them and the family.
    """
    aliases = aliases or {}
    fields = {f.name for f in dataclasses.fields(base)}
    resolved = {aliases.get(k, k): v for k, v in overrides.items()}
    unknown = sorted(set(resolved) - fields)
    if unknown:
        raise ValueError(f"unknown {family} override(s) {unknown}; known: {sorted(fields | set(aliases))}")
    tuples = {k: tuple(v) for k, v in resolved.items() if isinstance(getattr(base, k), tuple) and v is not None}
    return dataclasses.replace(base, **{**resolved, **tuples}).validate()


def wanted_losses(model, tasks, family: str) -> list[str]:
    """The loss names ``forward(batch, tasks)`` must compute: all of ``model.task_names`` when ``tasks`` is
    ``None``; a name the model does not have is a ``ValueError`` naming the family and the task."""
    wanted = list(model.task_names) if tasks is None else list(tasks)
    unknown = [t for t in wanted if t not in model.task_names]
    if unknown:
        raise ValueError(f"unknown loss(es) {unknown} for {family} task {model.task!r}; its losses are "
                         f"{list(model.task_names)}")
    return wanted


def in_order(model, losses: dict, wanted) -> dict:
    """``losses`` restricted to ``wanted``, in MELTR input order (``model.task_names``)."""
    return {name: losses[name] for name in model.task_names if name in wanted}


@contextlib.contextmanager
def evaluating(model):
    """Eval mode (no dropout, no random masking) for the duration, then the mode the model had."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def check_frames(frames, family: str):
    """``frames`` as a uint8/float tensor of shape (B, T, H, W, 3); ``ValueError`` naming the shape otherwise."""
    import torch
    frames = torch.as_tensor(frames)
    if frames.dim() != 5 or frames.shape[-1] != 3:
        raise ValueError(f"{family}: frames must be (B, T, H, W, 3) RGB, got shape {tuple(frames.shape)}")
    return frames


def check_text_ids(ids, max_len: int, vocab_size: int, table: str, dims: int = 2):
    """Token ids checked against the position table (``table``, ``max_len`` rows) and the vocabulary."""
    import torch
    ids = torch.as_tensor(ids)
    if ids.dim() != dims:
        raise ValueError(f"text_ids must have {dims} dimensions, got shape {tuple(ids.shape)}")
    if ids.shape[-1] > max_len:
        raise ValueError(f"text length {ids.shape[-1]} is longer than {table} ({max_len} rows, max_text_len)")
    if ids.numel() and (int(ids.max()) >= vocab_size or int(ids.min()) < 0):
        raise ValueError(f"text ids must lie in [0, {vocab_size}) (vocab_size), got ids in "
                         f"[{int(ids.min())}, {int(ids.max())}]")
    return ids
