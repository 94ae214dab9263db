"""The Parquet shard schema: the single source of truth for what a shard row holds.

One row is one *video clip* (a whole video, or a window of it for YouCook2-style clip annotations), stored once
with **every** text item that belongs to it: all captions, all questions with their options and answers, the
class label and the sentiment score. The training pipeline decodes a row once per epoch and emits one sample
per text item of the task (see :func:`meltr_ray.data.samples.expand_row`), so a video with 20 captions is decoded
once, not 20 times, and every caption is still seen once per epoch.

Layout (schema version ``SCHEMA_VERSION``; also stored in the file metadata under ``meltr_ray.schema_version``):

==================  =========================  =========================================================
column              type                       meaning
==================  =========================  =========================================================
id                  string, not null           unique row id (``video_id`` or ``video_id#clip``); log key
video_id            string, not null           the source video id (several clips may share one)
split               string                     train | meta | val | test (shards are split per split too)
source              string                     video path relative to ``--videos`` (provenance only)
video_bytes         binary                     the encoded video file, byte for byte (canonical); null for
                                               feature-only rows
codec               string                     e.g. ``h264``
n_frames            int32                      frames in the file (as decoded at ingest)
fps                 float32                    average frame rate
duration            float32                    seconds
width, height       int16                      pixels
clip_start/end      float32                    clip window in seconds; NaN = whole video
captions            list<string>               captions (retrieval / captioning), may be empty
questions           list<string>               one entry per question
options             list<list<string>>         multiple-choice options per question (empty = open-ended)
answers             list<int32>                correct option index per question (-1 = none)
answer_texts        list<string>               open-ended answer per question ("" = none)
label               int32                      class / action label (-1 = none)
score               float32                    sentiment score (NaN = none)
features            list<float32>              flattened (F, feature_dim) pre-extracted features, or null
feature_dim         int32                      D of ``features`` (0 = none)
vq_ids              list<int16>                flattened (n_frames, vq_h, vq_w) visual-token ids of every
                                               source frame, or null
vq_h, vq_w          int16                      visual-token grid (0 = none)
schema_version      int16                      ``SCHEMA_VERSION``
==================  =========================  =========================================================

Write options (reference video_data_notes §3): no compression and no statistics on ``video_bytes`` (mp4 is
already entropy coded), zstd on everything else, row groups of 4–64 clips (``row_group_rows``).
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = 1
SPLITS = ("train", "meta", "val", "test")

SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("split", pa.string()),
    pa.field("source", pa.string()),
    pa.field("video_bytes", pa.binary()),
    pa.field("codec", pa.string()),
    pa.field("n_frames", pa.int32()),
    pa.field("fps", pa.float32()),
    pa.field("duration", pa.float32()),
    pa.field("width", pa.int16()),
    pa.field("height", pa.int16()),
    pa.field("clip_start", pa.float32()),
    pa.field("clip_end", pa.float32()),
    pa.field("captions", pa.list_(pa.string())),
    pa.field("questions", pa.list_(pa.string())),
    pa.field("options", pa.list_(pa.list_(pa.string()))),
    pa.field("answers", pa.list_(pa.int32())),
    pa.field("answer_texts", pa.list_(pa.string())),
    pa.field("label", pa.int32()),
    pa.field("score", pa.float32()),
    pa.field("features", pa.list_(pa.float32())),
    pa.field("feature_dim", pa.int32()),
    pa.field("vq_ids", pa.list_(pa.int16())),
    pa.field("vq_h", pa.int16()),
    pa.field("vq_w", pa.int16()),
    pa.field("schema_version", pa.int16()),
], metadata={b"meltr_ray.schema_version": str(SCHEMA_VERSION).encode(), b"meltr_ray.layout": b"A:video-bytes"})

COLUMNS = tuple(SCHEMA.names)

# Defaults for every optional column: a row dict may omit any of these.
DEFAULTS: dict[str, Any] = {
    "split": "train", "source": "", "video_bytes": None, "codec": "", "n_frames": 0, "fps": 0.0,
    "duration": 0.0, "width": 0, "height": 0, "clip_start": math.nan, "clip_end": math.nan,
    "captions": [], "questions": [], "options": [], "answers": [], "answer_texts": [], "label": -1,
    "score": math.nan, "features": None, "feature_dim": 0, "vq_ids": None, "vq_h": 0, "vq_w": 0,
    "schema_version": SCHEMA_VERSION,
}


def complete_row(row: dict) -> dict:
    """Return ``row`` with every schema column present (defaults filled in); raises on an unknown column."""
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise ValueError(f"unknown shard columns {sorted(unknown)}; known: {COLUMNS}")
    if not row.get("id") or not row.get("video_id"):
        raise ValueError("a shard row needs a non-empty 'id' and 'video_id'")
    full = {**DEFAULTS, **row}
    n_q = len(full["questions"])
    for key, filler in (("options", []), ("answers", -1), ("answer_texts", "")):
        if len(full[key]) < n_q:        # questions without options / answers: pad the parallel lists
            full[key] = list(full[key]) + [filler] * (n_q - len(full[key]))
    return full


def rows_to_table(rows: Iterable[dict]) -> pa.Table:
    """Build a table in :data:`SCHEMA` from row dicts (missing columns take :data:`DEFAULTS`)."""
    full = [complete_row(r) for r in rows]
    return pa.Table.from_pydict({c: [r[c] for r in full] for c in COLUMNS}, schema=SCHEMA)


def write_shard(table: pa.Table, path: str, row_group_rows: int = 32) -> None:
    """Write one shard with streaming-friendly options (row groups of ``row_group_rows`` clips)."""
    compression = {c: "zstd" for c in COLUMNS}
    compression["video_bytes"] = "none"
    pq.write_table(table.cast(SCHEMA), path, row_group_size=max(1, row_group_rows), compression=compression,
                   use_dictionary=["split", "codec"],
                   write_statistics=["id", "video_id", "split", "label", "n_frames", "fps", "duration"])


def check_schema(schema: pa.Schema) -> None:
    """Raise ``ValueError`` if a shard's schema is not one this version of meltr_ray reads."""
    meta = schema.metadata or {}
    version = int(meta.get(b"meltr_ray.schema_version", b"0"))
    if version != SCHEMA_VERSION:
        raise ValueError(f"shard schema version {version} != supported {SCHEMA_VERSION}; re-run meltr-ray ingest")
    missing = set(COLUMNS) - set(schema.names)
    if missing:
        raise ValueError(f"shard is missing columns {sorted(missing)}")
