"""`launchers/tune_qa.py` runs ALPRO end to end: synthetic clips → shards (open-ended questions, answer
vocabulary) → a Ray Tune search over alpro_tiny with the family's MSVD-QA recipe on CPU workers."""
from __future__ import annotations

import json

import pytest
from _launcher_common import DEMO_IDS, run_launcher, synthetic_shards

from meltr_ray.backbones._loading import read_state_dict


@pytest.mark.slow
@pytest.mark.ray
def test_tune_qa_with_the_alpro_backbone(tmp_path):
    shards, vocab = synthetic_shards(tmp_path)
    results = tmp_path / "results"
    answers = len(json.loads((tmp_path / "shards" / "answer_vocab.json").read_text()))
    proc = run_launcher("launchers/tune_qa.py", [
        "--backbone", "alpro_tiny", "--data", shards, "--vocab", vocab, "--storage", str(results),
        "--num-samples", "2", "--epochs", "2", "--set", f"backbone.overrides={{{DEMO_IDS}, num_answers: {answers}}}",
        "--set", "train.batch_size=4", "--set", "meta.neumann_steps=1"])
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert "best trial by val_accuracy" in proc.stdout
    states = list(results.glob("alpro_msvd_qa-tune-*__train_runs/train-*/epoch_*/state.pt"))
    assert len(states) >= 2, out[-3000:]
    summaries = list(results.glob("alpro_msvd_qa-tune-*/summary.json"))
    assert summaries and "val_accuracy" in json.loads(summaries[0].read_text())["best"]["metrics"]
    weights = read_state_dict(str(states[0].parent))               # the trained backbone: alpro_tiny
    assert tuple(weights["visual_encoder.model.time_embed"].shape) == (1, 4, 32)
    assert tuple(weights["classifier.2.weight"].shape) == (answers, 64)
