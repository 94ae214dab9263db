"""The ingest output folder (``--out``): which files ingest owns, how it writes them durably, how it is checked.

**Ownership.** Ingest owns ``dataset.json``, ``answer_vocab.json``, ``ingest_report.json``, ``vocab.txt``,
``legacy_videos/`` and every shard ``{split}-{n:05d}.parquet`` (with its ``.tmp``) *that carries its
sidecar* ``{shard}.done.json``. The sidecar is written before the shard's temporary file, so even a shard
interrupted mid-write is provably ingest's. Anything else in ``--out`` is never removed or replaced, only
listed in the report; a file at a planned shard's name without the sidecar stops the run instead.

**Durability.** Every file is written to a temporary name, fsynced, renamed, and the folder fsynced, so a
crash leaves either the old file or the new one. ``dataset.json`` is removed when a run starts and written
last, with ``"complete": true``: a folder without it is an unfinished ingest.

**Checking** (:func:`check_dataset`, called by the Ray preflight): ``dataset.json`` present and complete,
its schema version supported, every listed shard present, one shard's footer checked against the schema,
and the splits a job needs present and non-empty — on a local folder or a URI (``s3://…``).
"""
from __future__ import annotations

import json
import os
import re
from typing import Iterable, Mapping

from .schema import SCHEMA_VERSION, SPLITS, check_schema

DATASET_NAME, VOCAB_NAME, REPORT_NAME, WORDPIECE_NAME = ("dataset.json", "answer_vocab.json",
                                                         "ingest_report.json", "vocab.txt")
LEGACY_DIR = "legacy_videos"
SIDECAR = ".done.json"
OWNER = "meltr_ray.ingest"
METADATA_NAMES = (DATASET_NAME, VOCAB_NAME, REPORT_NAME, WORDPIECE_NAME)
SPLIT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}")
SHARD_NAME = re.compile(r"(?P<split>[A-Za-z0-9_][A-Za-z0-9_-]{0,63})-\d{5}\.parquet")
OLD_STDERR_LOG = "probe_stderr.log"          # earlier versions copied raw decoder output here; removed on sight


def known_splits(extra: Iterable[str] | str = ()) -> tuple[str, ...]:
    """``train | meta | val | test`` plus the user's declared names (each a safe file-name part)."""
    extra = (extra,) if isinstance(extra, str) else tuple(extra)
    for name in extra:
        if not isinstance(name, str) or not SPLIT_NAME.fullmatch(name):
            raise ValueError(f"extra split {name!r} (--extra-split): a split name is 1-64 letters, digits, '_' "
                             "or '-', not starting with '-' (it becomes part of the shard file names)")
    return tuple(dict.fromkeys(SPLITS + extra))


# ---- durable writes --------------------------------------------------------------------------------------
def fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    """Make renames and removals in ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fsync_file(path)
    except OSError:
        pass


def replace_durably(tmp: str, path: str) -> None:
    """fsync ``tmp``, rename it over ``path``, fsync the folder."""
    fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path) or ".")


def write_json_atomic(path: str, obj, indent: int | None = None) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=indent)
    replace_durably(tmp, path)


def remove_durably(path: str) -> None:
    if os.path.lexists(path):
        os.remove(path)
        fsync_dir(os.path.dirname(path) or ".")


# ---- ownership ---------------------------------------------------------------------------------------------
def sidecar_path(out: str, shard: str) -> str:
    return os.path.join(out, shard + SIDECAR)


def read_sidecar(out: str, shard: str) -> dict | None:
    """The shard's sidecar if it is ingest's (a JSON object with a plan hash), else ``None``."""
    try:
        with open(sidecar_path(out, shard)) as f:
            side = json.load(f)
    except (OSError, ValueError):
        return None
    return side if isinstance(side, dict) and "plan" in side else None


def claim_shard(out: str, shard: str, digest: str) -> None:
    """Mark ``shard`` as ingest's before its temporary file exists (state ``writing``, not re-usable)."""
    write_json_atomic(sidecar_path(out, shard), {"owner": OWNER, "state": "writing", "plan": digest})


def _shard_of(fname: str) -> str | None:
    """The shard name a file belongs to (the shard, its ``.tmp``, its sidecar or the sidecar's ``.tmp``)."""
    for suffix in (SIDECAR + ".tmp", SIDECAR, ".tmp", ""):
        if fname.endswith(suffix):
            base = fname[:len(fname) - len(suffix)]
            if SHARD_NAME.fullmatch(base):
                return base
    return None


def classify_out(out: str, plan: Mapping[str, object]) -> tuple[list[str], list[str]]:
    """``(stale, foreign)`` file names of ``out``: ingest's shard files that are not in ``plan`` (safe to
    delete), and files ingest did not write (left alone). Raises ``ValueError`` when a planned shard's name is
    taken by a file ingest did not write (writing the shard would replace it)."""
    stale, foreign = [], []
    for fname in sorted(os.listdir(out)):
        if fname in METADATA_NAMES or fname == LEGACY_DIR or fname.removesuffix(".tmp") in METADATA_NAMES:
            continue
        shard = _shard_of(fname)
        if shard is None or read_sidecar(out, shard) is None:
            if shard in plan and not fname.endswith(SIDECAR + ".tmp"):
                raise ValueError(f"{os.path.join(out, fname)} was not written by meltr-ray ingest (no "
                                 f"{shard + SIDECAR} sidecar), and this run would write {shard} there: move "
                                 "it or choose another --out")
            foreign.append(fname)
        elif shard not in plan:
            stale.append(fname)
    return stale, foreign


# ---- checking a finished dataset (preflight) --------------------------------------------------------------
def _filesystem(path: str):
    import pyarrow.fs as pafs
    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(path)


def _read_json(fs, path: str):
    import pyarrow.fs as pafs
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(path) as f:
        return json.loads(f.read().decode())


def read_json(path: str):
    """A JSON file from a local path or a pyarrow filesystem URI (``s3://…``, ``gs://…``); None if missing."""
    fs, inner = _filesystem(path)
    return _read_json(fs, inner)


def _has_sidecars(fs, root: str) -> bool:
    import pyarrow.fs as pafs
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    return any(i.path.endswith(SIDECAR) for i in infos)


def holds_ingest_output(path: str) -> bool:
    """Whether ``path`` holds ingest output (finished or not): a ``dataset.json`` or shard sidecars."""
    import pyarrow.fs as pafs
    fs, root = _filesystem(path)
    return fs.get_file_info(f"{root}/{DATASET_NAME}").type != pafs.FileType.NotFound or _has_sidecars(fs, root)


def read_complete_meta(path: str) -> tuple[object, str, dict]:
    """``(filesystem, root, dataset.json)`` of a finished ingest; ``ValueError`` naming what is wrong."""
    fs, root = _filesystem(path)
    where = f"data path {path!r} (data.path)"
    try:
        meta = _read_json(fs, f"{root}/{DATASET_NAME}")
    except ValueError:
        raise ValueError(f"{where}: {DATASET_NAME} is not valid JSON; re-run the ingest command") from None
    if meta is None and _has_sidecars(fs, root):
        raise ValueError(f"{where} holds an unfinished ingest (shards but no {DATASET_NAME}: the run was "
                         "interrupted or failed); re-run the ingest command")
    if meta is None:
        raise ValueError(f"{where} has no {DATASET_NAME}: it is not the --out folder of a finished "
                         "`meltr-ray ingest`; run the ingest command")
    if not isinstance(meta, dict) or meta.get("complete") is not True:      # ingest writes it last
        raise ValueError(f"{where}: {DATASET_NAME} lacks \"complete\": true (the ingest was interrupted); "
                         "re-run the ingest command")
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{where} was written with shard schema version {meta.get('schema_version')}; this "
                         f"meltr_ray reads version {SCHEMA_VERSION}: re-run the ingest command")
    return fs, root, meta


def check_dataset(path: str, splits: Mapping[str, str] | Iterable[str] = ()) -> dict:
    """Check the ingest output at ``path`` (module doc); ``splits`` are the ones the job needs, optionally
    mapped to the config key that names them. Returns ``dataset.json``."""
    fs, root, meta = read_complete_meta(path)
    where = f"data path {path!r} (data.path)"
    listed, rows = meta.get("splits") or {}, meta.get("rows") or {}
    labels = dict(splits) if isinstance(splits, Mapping) else {s: "" for s in splits}
    for split, key in labels.items():
        if not listed.get(split) or not rows.get(split):
            have = sorted(s for s in listed if rows.get(s))
            raise ValueError(f"{where} has no rows for split {split!r}{f' ({key})' if key else ''}; splits "
                             f"with rows: {have} (skipped rows are listed in {REPORT_NAME})")
    files = sorted({f for names in listed.values() for f in names})
    if not files:
        raise ValueError(f"{where} holds no rows (every row was skipped? see {REPORT_NAME})")
    _check_shards(fs, root, where, files, next((listed[s][0] for s in labels), files[0]))
    return meta


def _check_shards(fs, root: str, where: str, files: list[str], sample: str) -> None:
    """Every listed shard exists; ``sample``'s footer holds the schema this version reads."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq
    infos = fs.get_file_info([f"{root}/{f}" for f in files])
    missing = [f for f, info in zip(files, infos) if info.type == pafs.FileType.NotFound]
    if missing:
        raise ValueError(f"{where}: {DATASET_NAME} lists {len(missing)} shard(s) that are not there "
                         f"({', '.join(missing[:3])}); re-run the ingest command")
    try:
        with fs.open_input_file(f"{root}/{sample}") as f:
            check_schema(pq.read_schema(f))
    except (ValueError, OSError) as err:
        raise ValueError(f"{where}: shard {sample}: {err}") from None
