"""The README's commands as a new user types them, in a fresh home folder with no Ray variables set:

* `python launchers/tune_retrieval.py` runs the embedded demo end to end (synthetic mp4s → Parquet shards →
  VTM warm-up → violet_tiny → a plain-MTL trial and HyperOpt + ASHA MELTR trials on CPU) on a private local
  Ray, even while another Ray cluster runs on the machine (the session's), and tells the story: the trials
  score differently, an MTL trial ran every epoch, and the summary sets MELTR's best against it, with the
  learned task weights, the checkpoint path and the `meltr-ray inspect` command for it;
* a guard-less script — ``import meltr_ray; meltr_ray.tune(num_samples=2, epochs=1)`` at top level, as Ray's own
  examples are written — works: nothing in the product's process pools re-imports the user's ``__main__``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _as_a_new_user(home) -> dict:
    """The environment of a fresh shell: HOME in ``home`` (results go to ~/meltr_results), no RAY_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), PYTHONPATH=ROOT)
    return env


def _results(home):
    return home / "meltr_results"


def _line_after(lines: list[str], label: str) -> str:
    assert label in lines, label
    return lines[lines.index(label) + 1]


@pytest.mark.slow
@pytest.mark.ray
def test_demo_launcher_runs_as_readme_writes_it(ray_cluster, tmp_path):
    proc = subprocess.run([sys.executable, "launchers/tune_retrieval.py"], cwd=ROOT, env=_as_a_new_user(tmp_path),
                          capture_output=True, text=True, timeout=1500)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert "demo clips (H.264)" in proc.stderr and "VTM warm-up" in proc.stderr      # progress while data is made
    lines = proc.stdout.splitlines()
    summary_json = _line_after(lines, "summary:")
    with open(summary_json, encoding="utf-8") as f:
        summary = json.load(f)
    trials = summary["trials"]
    scores = [t["val_r1"] for t in trials]
    assert len(set(scores)) > 1, scores                                   # the trials tell each other apart
    assert max(scores) > 100 / 40, scores                                 # above chance (40 val clips)
    mtl = [t for t in trials if t["config"]["meltr.combiner"] == "mtl"]
    assert len(mtl) == 1 and mtl[0]["epoch"] == summary["best"]["metrics"]["epoch"] == 2   # never cut by ASHA
    comparison = summary["comparison"]
    line = f"MELTR vs MTL on val_r1: {comparison['meltr']:.1f} vs {comparison['baseline_value']:.1f}"
    assert any(text.startswith(line) for text in lines), line
    weights = summary["best"]["task_weights"]
    assert set(weights) == {"vtm", "mtm", "mvm"}
    assert any(text.startswith("learned task weights ∂MELTR/∂ℓ_t") and f"vtm {weights['vtm']:.2f}" in text
               for text in lines)
    checkpoint = _line_after(lines, "checkpoint of the best MELTR trial:")
    assert os.path.isdir(checkpoint) and checkpoint == summary["best"]["checkpoint"]
    assert _line_after(lines, "what MELTR learned (plots):") == f"meltr-ray inspect {checkpoint}"
    shards = _results(tmp_path) / "demo_data" / "v3" / "shards"
    assert (shards / "dataset.json").exists() and list(shards.glob("*.parquet"))


@pytest.mark.slow
@pytest.mark.ray
def test_a_guardless_script_runs_a_search(tmp_path):
    script = tmp_path / "search.py"
    script.write_text("import meltr_ray\nmeltr_ray.tune(num_samples=2, epochs=1)\nprint('script finished')\n")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=_as_a_new_user(tmp_path),
                          capture_output=True, text=True, timeout=1500)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert proc.stdout.count("script finished") == 1, out[-5000:]      # the script ran once, in one process
    experiments = [p for p in _results(tmp_path).iterdir() if p.name.startswith("violet_demo-tune-")
                   and not p.name.endswith("__train_runs")]
    assert len(experiments) == 1, experiments
    trials = [p for p in experiments[0].iterdir() if p.name.startswith("trial_")]
    # num_samples=2 MELTR trials plus the demo space's MTL baseline
    assert len(trials) == 3 and all((t / "result.json").stat().st_size > 0 for t in trials)
