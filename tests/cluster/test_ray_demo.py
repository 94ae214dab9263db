"""The README's main-job command: `python launchers/tune_retrieval.py` runs the embedded demo end to end
(synthetic mp4s → Parquet shards → violet_tiny → HyperOpt + ASHA trials on CPU → best γ/α/β/K + next commands)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
@pytest.mark.ray
def test_demo_launcher_runs_end_to_end(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}   # its own local cluster
    proc = subprocess.run([sys.executable, "launchers/tune_retrieval.py", "--address", "local",
                           "--storage", str(tmp_path / "results"), "--num-samples", "3"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    for text in ("best trial by val_r1", "γ reg_weight", "α backbone_lr", "β meltr_lr", "K neumann_steps",
                 "val_r1", "meltr-ray dashboard", "meltr-ray inspect", "summary.json"):
        assert text in proc.stdout, text
    shards = tmp_path / "results" / "demo_data" / "shards"
    assert (shards / "dataset.json").exists() and list(shards.glob("*.parquet"))
    assert list((tmp_path / "results").glob("violet_demo-tune-*__train_runs/train-*/epoch_*/state.pt"))
