"""The embedded demo: a real (small) video dataset made on the spot, and the job that fine-tunes on it.

``prepare_demo_data(root)`` writes synthetic H.264 clips of moving shapes with captions
(:mod:`meltr_ray.data.synthetic`), ingests them into Parquet shards exactly like a real dataset
(``meltr-ray ingest``) and trains a WordPiece vocabulary; a second call reuses what is there.
``demo_config()`` is the ``violet_demo`` recipe: ``violet_tiny`` for retrieval, 2 CPU workers per trial, a few
short epochs. No Ray here.
"""
from __future__ import annotations

import json
import os

from .config import JobConfig

DEMO_VIDEOS = 48
DEMO_RECIPE = "violet_demo"


def _texts(annotations: str):
    with open(annotations, encoding="utf-8") as f:
        for line in f:
            item = json.loads(line)
            texts = item.get("text") or []
            yield from ([texts] if isinstance(texts, str) else texts)
            if item.get("question"):
                yield item["question"]
            for qa in item.get("qa") or []:
                yield qa["question"]
            yield from item.get("options") or []


def prepare_demo_data(root: str, num_videos: int = DEMO_VIDEOS, progress: bool = False) -> tuple[str, str]:
    """Synthetic mp4s → Parquet shards → vocab under ``root``; returns ``(shard_dir, vocab_path)``."""
    from .data.ingest import ingest
    from .data.synthetic import make_synthetic_dataset
    from .data.tokenize import build_vocab

    raw, shards = os.path.join(root, "raw"), os.path.join(root, "shards")
    vocab = os.path.join(root, "vocab.txt")
    annotations = os.path.join(raw, "annotations.jsonl")
    if not os.path.exists(annotations):
        make_synthetic_dataset(raw, num_videos=num_videos, num_frames=16, size=64, seed=0)
    if not os.path.exists(os.path.join(shards, "dataset.json")):
        ingest(format="jsonl", videos=os.path.join(raw, "videos"), annotations=annotations, out=shards,
               vq=os.path.join(raw, "vq.npz"), workers=1, progress=progress)
    if not os.path.exists(vocab):
        build_vocab(_texts(annotations), vocab, vocab_size=200)
    return shards, vocab


def demo_config() -> JobConfig:
    """The CPU demo job: the ``violet_demo`` recipe (violet_tiny, 64-px frames, 2 CPU workers per trial)."""
    from .recipes import get_recipe
    return get_recipe(DEMO_RECIPE)
