"""The README's commands as a new user types them, in a fresh home folder with no Ray variables set:

* `python launchers/tune_retrieval.py` runs the embedded demo end to end (synthetic mp4s → Parquet shards →
  violet_tiny → HyperOpt + ASHA trials on CPU → best γ/α/β/K) on a private local Ray, even while another Ray
  cluster runs on the machine (the session's);
* a guard-less script — ``import meltr_ray; meltr_ray.tune(num_samples=2, epochs=1)`` at top level, as Ray's own
  examples are written — works: nothing in the product's process pools re-imports the user's ``__main__``.
"""
from __future__ import annotations

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


@pytest.mark.slow
@pytest.mark.ray
def test_demo_launcher_runs_as_readme_writes_it(ray_cluster, tmp_path):
    proc = subprocess.run([sys.executable, "launchers/tune_retrieval.py"], cwd=ROOT, env=_as_a_new_user(tmp_path),
                          capture_output=True, text=True, timeout=1500)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    for text in ("best trial by val_r1", "γ reg_weight", "α backbone_lr", "β meltr_lr", "K neumann_steps",
                 "val_r1", "meltr-ray dashboard", "meltr-ray inspect", "summary.json"):
        assert text in proc.stdout, text
    shards = _results(tmp_path) / "demo_data" / "shards"
    assert (shards / "dataset.json").exists() and list(shards.glob("*.parquet"))
    assert list(_results(tmp_path).glob("violet_demo-tune-*__train_runs/train-*/epoch_*/state.pt"))


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
    assert len(trials) == 2 and all((t / "result.json").stat().st_size > 0 for t in trials)
