"""Save and load the full training state: a stopped run resumes bit-identically.

A checkpoint is one file, ``state.pt``, inside a directory (the unit Ray Train uploads). It holds the backbone
(w), MELTR (φ), both optimizers and schedulers, the step counters, the replay buffer, the RNG states
(torch CPU and CUDA, Python ``random``, NumPy) and the job config as a plain dict. Loading uses
``torch.load(weights_only=True)``: nothing in the file can run code.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

STATE_FILE = "state.pt"


def rng_state() -> dict:
    """All RNG states a training step consumes, in a form ``weights_only`` loading accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached"]))


# What each distributed rank keeps for itself across a restart (the rest of the state is identical on every rank).
PER_RANK_KEYS = ("buffer", "rng")


def _rank_file(rank: int) -> str:
    return f"rank_{rank}.pt"


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(state: dict, directory: str | os.PathLike, rank: int | None = None) -> Path:
    """Write ``state`` to ``directory/state.pt`` atomically (write to a temp name, then rename).

    With ``rank`` given (distributed runs), every rank writes its own replay buffer and RNG states to
    ``rank_<r>.pt`` and only rank 0 writes ``state.pt``, so a resume gives each rank back *its* buffer and
    random streams (:func:`load_checkpoint` with the same ``rank``).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if rank is not None:
        _save_atomic({key: state[key] for key in PER_RANK_KEYS}, directory / _rank_file(rank))
        if rank != 0:
            return directory / _rank_file(rank)
    _save_atomic(state, directory / STATE_FILE)
    return directory / STATE_FILE


def load_checkpoint(path: str | os.PathLike, map_location="cpu", rank: int | None = None) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` (a directory or the ``state.pt`` file itself).

    With ``rank`` given, that rank's own buffer and RNG states replace rank 0's when the directory has them
    (absent after a change of world size).
    """
    path = Path(path)
    if path.is_dir():
        path = path / STATE_FILE
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = torch.load(path, map_location=map_location, weights_only=True)
    own = path.parent / _rank_file(rank) if rank is not None else None
    if own is not None and own.exists():
        state.update(torch.load(own, map_location=map_location, weights_only=True))
    return state
