"""Save and load the full training state: a stopped run resumes bit-identically, a damaged one is refused.

A checkpoint is a directory (the unit Ray Train uploads). ``state.pt`` holds the backbone (w), MELTR (φ), both
optimizers and schedulers, the step counters, the replay buffer, the RNG states (torch CPU and CUDA, Python
``random``, NumPy) and the job config as a plain dict. In distributed runs every rank r also writes its own
buffer and RNG states to ``rank_<r>.pt``; Ray Train merges the ranks' directories into one.

**Manifests.** Every writer lists the files it wrote, with their sizes and SHA-256 digests, in its own manifest —
``manifest.json`` for rank 0 (or a single process; it also records the world size), ``manifest_rank_<r>.json``
for rank r > 0 — because the ranks' directories are merged by file name and one shared manifest would be
overwritten by whichever rank uploaded last. Each file is written to a temporary name, fsynced and renamed; the
manifest is written the same way *after* the files, so a checkpoint whose writer stopped half-way has no
manifest. Loading verifies every manifest the checkpoint needs (rank 0's and those of every rank of the world
size it was written with) and raises :class:`DamagedCheckpointError` naming each file and what is wrong with it
(missing, size, checksum). ``torch.load(weights_only=True)``: nothing in a file can run code.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from pathlib import Path

import numpy as np
import torch

STATE_FILE = "state.pt"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "meltr_ray.checkpoint.manifest/1"
DIGEST = "sha256"

logger = logging.getLogger(__name__)


class DamagedCheckpointError(ValueError):
    """A checkpoint directory whose files do not match their manifests (or that has none).

    ``problems``: one line per bad file, ``"<path>: <what is wrong>"``.
    """

    def __init__(self, message: str, problems=()):
        super().__init__(message)
        self.problems = list(problems) or [message]

    def __reduce__(self):                      # crosses process boundaries (Ray) with its problems
        return type(self), (str(self), self.problems)


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


def manifest_name(rank: int | None) -> str:
    """The manifest of one writer: ``manifest.json`` for rank 0 (or no rank), ``manifest_rank_<r>.json`` else."""
    return MANIFEST_FILE if not rank else f"manifest_rank_{rank}.json"


# ---- writing ------------------------------------------------------------------------------------------------
def _fsync_directory(directory: Path) -> None:
    """Make the renames inside ``directory`` durable (some filesystems cannot fsync a directory: skip)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomic(path: Path, write) -> Path:
    """``write(file)`` into ``path.tmp``, fsync it, then rename it to ``path``: readers see all or nothing."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def _save_atomic(obj, path: Path) -> Path:
    return _write_atomic(path, lambda f: torch.save(obj, f))


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks (checkpoints can be gigabytes)."""
    digest = hashlib.new(DIGEST)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _write_manifest(directory: Path, rank: int | None, world_size: int, epoch, files) -> Path:
    """The writer's manifest, written last: the files it lists are already renamed into place."""
    manifest = {"format": MANIFEST_FORMAT, "rank": rank or 0, "world_size": world_size, "epoch": epoch,
                "files": {p.name: {"bytes": p.stat().st_size, DIGEST: file_digest(p)} for p in files}}
    text = json.dumps(manifest, indent=1, sort_keys=True).encode()
    path = _write_atomic(directory / manifest_name(rank), lambda f: f.write(text))
    _fsync_directory(directory)
    return path


def save_checkpoint(state: dict, directory: str | os.PathLike, rank: int | None = None,
                    world_size: int | None = None) -> Path:
    """Write ``state`` to ``directory/state.pt`` atomically, then the writer's manifest.

    With ``rank`` given (distributed runs, ``world_size`` ranks), every rank writes its own replay buffer and RNG
    states to ``rank_<r>.pt`` and only rank 0 writes ``state.pt``, so a resume gives each rank back *its* buffer
    and random streams (:func:`load_checkpoint` with the same ``rank``).
    """
    if rank is not None and (world_size is None or not 0 <= rank < world_size):
        raise ValueError(f"save_checkpoint(rank={rank!r}) needs world_size > rank, got {world_size!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    if rank is not None:
        written.append(_save_atomic({key: state[key] for key in PER_RANK_KEYS}, directory / _rank_file(rank)))
    if not rank:
        written.append(_save_atomic(state, directory / STATE_FILE))
    epoch = state.get("epoch")
    _write_manifest(directory, rank, world_size or 1, epoch if isinstance(epoch, int) else None, written)
    return written[-1]


# ---- verifying ----------------------------------------------------------------------------------------------
def _read_manifest(directory: Path, rank: int, problems: list, why: str) -> dict | None:
    """One writer's manifest, or ``None`` with the reason appended to ``problems``."""
    path = directory / manifest_name(rank)
    if not path.is_file():
        problems.append(f"{path}: missing — {why}")
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        problems.append(f"{path}: not a readable manifest ({error})")
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT \
            or not isinstance(manifest.get("files"), dict) or manifest.get("rank") != rank \
            or isinstance(manifest.get("world_size"), bool) or not isinstance(manifest.get("world_size"), int) \
            or not 0 <= rank < manifest["world_size"]:
        problems.append(f"{path}: not a {MANIFEST_FORMAT} manifest of rank {rank}")
        return None
    return manifest


def _check_file(directory: Path, name: str, entry, manifest: str) -> str | None:
    """What is wrong with one listed file (``None`` when its size and digest match the manifest)."""
    path = directory / name
    if name != Path(name).name or name.startswith("."):
        return f"{manifest}: lists {name!r}, which is not a file name inside the checkpoint"
    if not isinstance(entry, dict) or not {"bytes", DIGEST} <= set(entry):
        return f"{path}: its entry in {manifest} has no size and {DIGEST}"
    if not path.is_file():
        return f"{path}: missing (listed in {manifest})"
    size = path.stat().st_size
    if size != entry["bytes"]:
        return f"{path}: {size} bytes, {manifest} says {entry['bytes']} (truncated or overwritten)"
    digest = file_digest(path)
    if digest != entry[DIGEST]:
        return f"{path}: {DIGEST} differs from {manifest}'s (the content changed: bit rot or a partial overwrite)"
    return None


def _check_writer(directory: Path, manifest: dict, rank: int, expected: dict, problems: list) -> None:
    """Every file one writer listed, and its manifest's agreement with rank 0's (world size, epoch)."""
    name = manifest_name(rank)
    for key, value in expected.items():
        if manifest.get(key) != value:
            problems.append(f"{directory / name}: {key} {manifest.get(key)!r}, {MANIFEST_FILE} says {value!r} "
                            f"(parts of different checkpoints)")
    for file, entry in sorted(manifest["files"].items()):
        problem = _check_file(directory, file, entry, name)
        if problem:
            problems.append(problem)


def verify_checkpoint(directory: str | os.PathLike, rank: int | None = None) -> dict:
    """Check a checkpoint directory against its manifests; returns rank 0's manifest.

    ``rank=None`` checks the whole checkpoint: rank 0's files and the part of every rank of the world size it
    was written with. ``rank=r`` checks rank 0's files and rank r's part (when rank r existed). Raises
    :class:`DamagedCheckpointError` listing every file that is missing, has the wrong size or the wrong digest.
    """
    directory = Path(directory)
    problems: list[str] = []
    why = "the checkpoint is incomplete (its writer stopped before the end) or was written without manifests"
    main = _read_manifest(directory, 0, problems, why)
    if main is not None:
        _check_writer(directory, main, 0, {}, problems)
        world = main.get("world_size")
        expected = {"world_size": world, "epoch": main.get("epoch")}
        ranks = range(1, world) if rank is None else [rank] if 0 < rank < world else []
        for r in ranks:
            part = _read_manifest(directory, r, problems, f"rank {r}'s part of a checkpoint written by "
                                                         f"{world} workers")
            if part is not None:
                _check_writer(directory, part, r, expected, problems)
    if problems:
        raise DamagedCheckpointError(f"damaged checkpoint {directory}:\n  - " + "\n  - ".join(problems), problems)
    return main


# ---- loading ------------------------------------------------------------------------------------------------
def _load_file(path: Path, map_location) -> dict:
    """``torch.load`` (weights only) with the file named in any error."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:           # torch reports damage as RuntimeError, OSError, EOFError, pickle errors
        raise DamagedCheckpointError(f"{path}: unreadable checkpoint file ({type(error).__name__}: "
                                     f"{error})") from error


def _rank_part(directory: Path, rank: int, world_size: int | None, saved_world: int | None) -> Path | None:
    """This rank's own buffer/RNG file, or ``None`` (keep rank 0's, from ``state.pt``) with a warning why.

    A part the manifests say exists was already verified (a missing one is damage); a rank that did not exist
    when the checkpoint was written (the world size changed) has none, and says so.
    """
    own = directory / _rank_file(rank)
    if saved_world is None:                   # unverified (verify=False): nothing says which parts exist
        if own.is_file():
            return own
        logger.warning("%s: no such file and no manifest to say why; rank %d resumes from rank 0's replay "
                       "buffer and RNG states", own, rank)
        return None
    existed = rank < saved_world
    if (world_size is not None and world_size != saved_world) or not existed:
        source = "its own" if existed else "rank 0's"
        logger.warning("checkpoint %s was written by %d workers and this run has %s: rank %d resumes from %s "
                       "replay buffer and RNG states", directory, saved_world, world_size or "more", rank, source)
    return own if existed and own.is_file() else None


def load_checkpoint(path: str | os.PathLike, map_location="cpu", rank: int | None = None,
                    world_size: int | None = None, verify: bool = True) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` (a directory or the ``state.pt`` file itself).

    The files are first checked against their manifests (:func:`verify_checkpoint`; ``verify=False`` reads
    checkpoints written before manifests existed, unchecked). With ``rank`` given, that rank's own buffer and
    RNG states replace rank 0's. A missing part is an error unless ``world_size`` differs from the world size
    the checkpoint was written with: then a warning says so and a rank that did not exist then continues from
    rank 0's buffer and RNG states.
    """
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    state_path = directory / STATE_FILE
    if not path.exists() or not (state_path.exists() or (directory / MANIFEST_FILE).exists()):
        raise FileNotFoundError(f"no checkpoint at {path}")
    manifest = verify_checkpoint(directory, rank) if verify else {}
    state = _load_file(state_path, map_location)
    if rank is not None:
        part = _rank_part(directory, rank, world_size, manifest.get("world_size"))
        if part is not None:
            state.update(_load_file(part, map_location))
    return state
