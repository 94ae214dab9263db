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


def save_checkpoint(state: dict, directory: str | os.PathLike) -> Path:
    """Write ``state`` to ``directory/state.pt`` atomically (write to a temp name, then rename)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / STATE_FILE
    tmp = directory / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` (a directory or the ``state.pt`` file itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / STATE_FILE
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(path, map_location=map_location, weights_only=True)
