"""`launchers/tune_retrieval.py` runs All-in-one end to end: synthetic clips → shards → a Ray Tune search over
allinone_tiny with the family's official recipe (found from the backbone) on CPU workers."""
from __future__ import annotations

import json

import pytest
from _launcher_common import DEMO_IDS, run_launcher, synthetic_shards

from meltr_ray.backbones._loading import read_state_dict


@pytest.mark.slow
@pytest.mark.ray
def test_tune_retrieval_with_the_allinone_backbone(tmp_path):
    shards, vocab = synthetic_shards(tmp_path)
    results = tmp_path / "results"
    proc = run_launcher("launchers/tune_retrieval.py", [
        "--backbone", "allinone_tiny", "--data", shards, "--vocab", vocab, "--storage", str(results),
        "--num-samples", "2", "--epochs", "2", "--set", f"backbone.overrides={{{DEMO_IDS}}}",
        "--set", "train.batch_size=4"])
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert "best trial by val_r1" in proc.stdout
    states = list(results.glob("allinone_msrvtt9k_retrieval-tune-*__train_runs/train-*/epoch_*/state.pt"))
    assert len(states) >= 2, out[-3000:]                      # both trials trained and checkpointed
    summaries = list(results.glob("allinone_msrvtt9k_retrieval-tune-*/summary.json"))
    assert summaries and "val_r1" in json.loads(summaries[0].read_text())["best"]["metrics"]
    weights = read_state_dict(str(states[0].parent))               # the trained backbone: allinone_tiny
    assert tuple(weights["transformer.temporal_embed"].shape) == (1, 3, 32)
