"""Small synthetic *feature* datasets in the official file formats, for UniVL's tests and demos.

* :func:`make_youcook2_like` writes what ``meltr-ray ingest --format youcook2`` reads: a transcript pickle
  (``{video_id: {"start", "end", "text", "transcript"}}``), a feature pickle (``{feature_file: (seconds, D)}``)
  and ``train``/``val``/``test`` CSVs (``video_id, feature_file``). Each video has 2–3 contiguous clips; a clip
  shows one shape of one colour moving one way (the words of :mod:`meltr_ray.data.synthetic`) and its
  caption says so. Every second's feature vector is the sum of fixed random embeddings of the shape, colour
  and direction, plus noise — so captions are predictable from the features and retrieval is learnable.
* :func:`make_mosi_like` writes what ``--format cmu-mosi`` reads: an ``.npz`` of ``{split}/features``
  (N, F, D), ``{split}/labels`` (N, 1) in [−3, 3], ``{split}/id`` and ``{split}/raw_text``; the features carry
  the score along one direction, and the sentence is positive or negative with it.

:func:`ingest_synthetic_features` writes either and ingests it (with a demo WordPiece vocabulary) into shards.
"""
from __future__ import annotations

import csv
import os
import pickle

import numpy as np

from .synthetic import COLOURS, DIRECTIONS, SHAPES, describe

SPLIT_OF = {0: "val", 1: "test"}              # video i % 6 → split (the rest: train)
POSITIVE = ["a wonderful film", "i really loved it", "great acting and a fun story"]
NEGATIVE = ["a boring film", "i really hated it", "bad acting and a dull story"]


def _basis(rng: np.random.Generator, dim: int) -> dict:
    words = list(SHAPES) + list(COLOURS) + list(DIRECTIONS)
    return {w: rng.normal(size=dim).astype(np.float32) for w in words}


def _clip(rng, basis: dict, seconds: int, noise: float) -> tuple[str, np.ndarray]:
    shape, colour = SHAPES[rng.integers(len(SHAPES))], list(COLOURS)[rng.integers(len(COLOURS))]
    direction = DIRECTIONS[rng.integers(len(DIRECTIONS))]
    mean = basis[shape] + basis[colour] + basis[direction]
    feats = mean[None] + noise * rng.normal(size=(seconds, mean.size)).astype(np.float32)
    return describe(shape, colour, direction, 1)[0], feats


def make_youcook2_like(out_dir: str, num_videos: int = 12, feature_dim: int = 16, seed: int = 0,
                       noise: float = 0.3) -> dict:
    """Write the YouCook2 files under ``out_dir``; returns the ingest options (annotations, features, csvs)."""
    rng = np.random.default_rng(seed)
    basis = _basis(rng, feature_dim)
    transcripts, features, rows = {}, {}, {"train": [], "val": [], "test": []}
    for i in range(num_videos):
        vid, start, ann = f"yc{i:03d}", 0, {"start": [], "end": [], "text": [], "transcript": []}
        parts = []
        for _ in range(2 + i % 2):
            seconds = int(rng.integers(3, 7))
            caption, feats = _clip(rng, basis, seconds, noise)
            ann["start"].append(start)
            ann["end"].append(start + seconds - 1)
            ann["text"].append(caption)
            ann["transcript"].append("")
            parts.append(feats)
            start += seconds
        transcripts[vid] = {k: np.asarray(v) for k, v in ann.items()}
        features[f"{vid}.npy"] = np.concatenate(parts)
        rows[SPLIT_OF.get(i % 6, "train")].append((vid, f"{vid}.npy"))
    os.makedirs(out_dir, exist_ok=True)
    paths = {"annotations": os.path.join(out_dir, "youcookii_data.transcript.pickle"),
             "features": os.path.join(out_dir, "youcookii_videos_features.pickle")}
    for path, obj in ((paths["annotations"], transcripts), (paths["features"], features)):
        with open(path, "wb") as f:
            pickle.dump(obj, f)
    for split, listed in rows.items():
        paths[f"{split}_csv"] = os.path.join(out_dir, f"youcookii_{split}.csv")
        with open(paths[f"{split}_csv"], "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["video_id", "feature_file"])
            writer.writerows(listed)
    return paths


def make_mosi_like(out_dir: str, per_split: dict | None = None, feature_dim: int = 16, frames: int = 6,
                   seed: int = 0, noise: float = 0.3) -> dict:
    """Write ``cmu_mosi.npz`` under ``out_dir``; returns the ingest options (annotations)."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=feature_dim).astype(np.float32)
    arrays = {}
    for split, n in (per_split or {"train": 24, "valid": 8, "test": 8}).items():
        scores = rng.uniform(-3, 3, size=n).astype(np.float32)
        base = rng.normal(size=(n, 1, feature_dim)).astype(np.float32) * noise
        feats = base + scores[:, None, None] / 3 * direction + noise * rng.normal(size=(n, frames, feature_dim))
        texts = [(POSITIVE if s >= 0 else NEGATIVE)[k % 3] for k, s in enumerate(scores)]
        arrays.update({f"{split}/features": feats.astype(np.float32), f"{split}/labels": scores[:, None],
                       f"{split}/id": np.asarray([f"{split}{k:03d}" for k in range(n)]),
                       f"{split}/raw_text": np.asarray(texts)})
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "cmu_mosi.npz")
    np.savez(path, **arrays)
    return {"annotations": path}


def ingest_synthetic_features(kind: str, out: str, work_dir: str | None = None, vocab_size: int = 120,
                              **options) -> str:
    """Write a synthetic ``kind`` (``youcook2`` | ``cmu-mosi``) dataset and ingest it into shards at ``out``
    (with ``out/vocab.txt``); returns ``out``."""
    from .ingest import ingest
    work_dir = work_dir or os.path.join(out, "_source")
    if kind == "youcook2":
        paths = make_youcook2_like(work_dir, **options)
        ingest("youcook2", out=out, allow_pickle=True, progress=False, vocab_size=vocab_size, **paths)
    elif kind == "cmu-mosi":
        ingest("cmu-mosi", out=out, progress=False, vocab_size=vocab_size, **make_mosi_like(work_dir, **options))
    else:
        raise ValueError(f"unknown synthetic feature dataset {kind!r}; choose 'youcook2' or 'cmu-mosi'")
    return out
