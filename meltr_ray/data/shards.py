"""Shard planning and writing for ``meltr-ray ingest`` (see :mod:`meltr_ray.data.ingest`).

The plan is a pure function of the records and the options: per split, records sorted by id (or by their
``shard_order`` when a converter sets one: image rows are shuffled by a hash of their id, since ids that start
with the class would give single-class row groups and batches), cut into shards
of about ``shard_bytes`` of source data. Each shard's :func:`plan_hash` goes into its ``.done.json`` sidecar so
a re-run can tell a finished shard from a stale one.
"""
from __future__ import annotations

import hashlib
import json
import os
import zlib

import numpy as np

from .dataset_dir import replace_durably
from .schema import SCHEMA_VERSION, rows_to_table, write_shard


# ---- the shard plan --------------------------------------------------------------------------------------
def plan_shards(records: list[dict], videos: str | None, shard_bytes: int, max_rows: int) -> dict[str, list]:
    """``{shard file name: [records]}``: per split, records sorted by id, cut at ``shard_bytes`` of source."""
    plan: dict[str, list] = {}
    for split in sorted({r["split"] for r in records}):
        rows = sorted((r for r in records if r["split"] == split), key=lambda r: r.get("shard_order") or r["id"])
        chunk, size = [], 0
        for rec in rows:
            rec_size = _source_size(rec, videos)
            if chunk and (size + rec_size > shard_bytes or len(chunk) >= max_rows):
                plan[f"{split}-{len([k for k in plan if k.startswith(split + '-')]):05d}.parquet"] = chunk
                chunk, size = [], 0
            chunk.append(rec)
            size += rec_size
        if chunk:
            plan[f"{split}-{len([k for k in plan if k.startswith(split + '-')]):05d}.parquet"] = chunk
    return plan


def _source_size(rec: dict, videos: str | None) -> int:
    if rec.get("video_bytes") is not None:                  # an image carried inline (data/image_formats.py)
        return len(rec["video_bytes"])
    if rec.get("features") is not None:
        return int(np.asarray(rec["features"]).nbytes)
    path = os.path.join(videos or "", rec.get("video") or "")
    return os.path.getsize(path) if os.path.isfile(path) else 0


def plan_hash(rows: list[dict], videos: str | None, options: dict) -> str:
    """Hash of what a shard will contain: its rows' fields, their files' size and mtime, the options."""
    h = hashlib.sha1(json.dumps({"v": SCHEMA_VERSION, **options}, sort_keys=True).encode())
    for rec in rows:
        fields = {k: v for k, v in rec.items() if k not in ("features", "vq_ids", "video_bytes")}
        h.update(json.dumps(fields, sort_keys=True, default=str).encode())
        h.update(str(zlib.crc32(rec.get("video_bytes") or b"")).encode())
        h.update(str(zlib.crc32(np.asarray(rec.get("features", []), np.float32).tobytes())).encode())
        h.update(str(zlib.crc32(np.asarray(rec.get("vq_ids", []), np.int16).tobytes())).encode())
        path = os.path.join(videos or "", rec.get("video") or "")
        if rec.get("video") and rec.get("video_bytes") is None and os.path.isfile(path):
            st = os.stat(path)
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


# ---- writing ----------------------------------------------------------------------------------------------
def shard_row(rec: dict, probe: dict | None, videos: str | None) -> dict:
    """A schema row from a record and its probe result (reads the video bytes)."""
    row = {k: v for k, v in rec.items() if k not in ("video", "features", "vq_frames", "shard_order")}
    row["source"] = rec.get("video") or ""
    if rec.get("features") is not None:
        feats = np.asarray(rec["features"], dtype=np.float32)
        row["features"], row["feature_dim"] = feats.reshape(-1).tolist(), int(feats.shape[1])
    if probe:
        with open(os.path.join(videos or "", rec["video"]), "rb") as f:
            row["video_bytes"] = f.read()
        row.update({k: probe[k] for k in ("n_frames", "fps", "width", "height", "codec")})
        row["duration"] = probe["n_frames"] / probe["fps"] if probe["fps"] else 0.0
    return row


def write_planned_shard(path: str, rows: list[dict], row_group_rows: int) -> int:
    """Write ``rows`` to ``path`` atomically and durably (temporary file, fsync, rename); returns its size."""
    tmp = path + ".tmp"
    write_shard(rows_to_table(rows), tmp, row_group_rows=row_group_rows)
    replace_durably(tmp, path)
    return os.path.getsize(path)


def row_group_rows_for(records: list[dict], videos: str | None) -> int:
    """Clips per row group: ~16 MB of source per group, clamped to [4, 64] (notes §3)."""
    sizes = [_source_size(r, videos) for r in records[:256]]
    mean = max(float(np.mean(sizes)) if sizes else 1.0, 1.0)
    return int(np.clip(round(16e6 / mean), 4, 64))
