"""The UniVL launchers end to end on Ray: synthetic feature files → `meltr-ray ingest` shards → univl_tiny
trials (HyperOpt/random + ASHA on CPU workers) → a ranking by the space's metric, which the workers report."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from meltr_ray.data.synthetic_features import ingest_synthetic_features

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.parametrize("launcher, kind, task, metric", [
    ("tune_captioning.py", "youcook2", "captioning", "val_cider"),
    ("tune_sentiment.py", "cmu-mosi", "sentiment", "val_acc2"),
])
def test_launcher_runs_end_to_end_on_synthetic_feature_shards(tmp_path, launcher, kind, task, metric):
    shards = ingest_synthetic_features(kind, str(tmp_path / "shards"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}   # its own local cluster
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, f"launchers/{launcher}", "--address", "local", "--data", shards,
                           "--vocab", os.path.join(shards, "vocab.txt"), "--recipe", f"univl_demo_{task}",
                           "--storage", str(tmp_path / "results"), "--num-samples", "2", "--searcher", "random"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert f"best trial by {metric}" in proc.stdout and metric in proc.stdout
    assert list((tmp_path / "results").glob(f"univl_demo_{task}-tune-*__train_runs/train-*/epoch_*/state.pt"))
