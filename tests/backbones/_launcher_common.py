"""Shared by the All-in-one and ALPRO launcher tests: synthetic mp4 clips → `meltr-ray ingest` shards + a
WordPiece vocabulary, and a launcher run in a fresh process on its own local Ray cluster."""
from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# the demo vocabulary's ids ([PAD]/[CLS]/[SEP]/[MASK] = 0/2/3/4, < 1000 ids)
DEMO_IDS = "vocab_size: 1000, pad_token_id: 0, cls_token_id: 2, sep_token_id: 3, mask_token_id: 4"


def synthetic_shards(tmp_path, num_videos: int = 16) -> tuple[str, str]:
    from meltr_ray.data.ingest import ingest
    from meltr_ray.data.synthetic import make_synthetic_dataset
    raw, shards = tmp_path / "raw", tmp_path / "shards"
    annotations = make_synthetic_dataset(str(raw), num_videos=num_videos, num_frames=12, size=64)
    ingest("jsonl", videos=str(raw / "videos"), annotations=annotations, out=str(shards), workers=1,
           vocab_size=200, progress=False)
    return str(shards), str(shards / "vocab.txt")


def run_launcher(script: str, args: list[str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}     # its own local cluster
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, script, "--address", "local", "--cpu", "--num-workers", "1",
                           "--searcher", "random", "--set", "cluster.cpus_per_worker=0.5", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
