"""Ray Tune: a 2-trial HyperOpt + ASHA search, and a killed ``tuner.fit()`` process finished by ``Tuner.restore``."""
from __future__ import annotations

import collections
import os
import subprocess
import sys

import pytest

from meltr_ray import api
from meltr_ray.core.checkpoint import load_checkpoint
from meltr_ray.spaces import parse_space
from tests.cluster._common import toy_tune_kwargs

TOY_SPACE = parse_space({
    "metric": "val_primary_mse", "mode": "min", "searcher": "hyperopt", "num_samples": 2,
    "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
    "params": {"reg_weight": {"distribution": "choice", "values": [0.1, 0.3, 0.5]},
               "backbone_lr": {"distribution": "loguniform", "low": 1e-5, "high": 1e-2},
               "meltr_lr": {"distribution": "loguniform", "low": 1e-5, "high": 1e-2},
               "neumann_steps": {"distribution": "randint", "low": 0, "high": 3},
               "meta_every": {"distribution": "choice", "values": [2, 3]}}}, source="toy")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.ray
def test_two_trial_hyperopt_asha_search(ray_cluster, tmp_path, capsys):
    # reg_weight is searched by TOY_SPACE, but an explicit override fixes it for every trial
    kwargs = toy_tune_kwargs(tmp_path, TOY_SPACE, **{"cluster.num_workers": 1, "reg_weight": 0.7})
    results = api.tune(name="two-trials", space=TOY_SPACE, num_samples=2, epochs=3, progress=False, **kwargs)
    assert "reg_weight=0.7 fixed by overrides" in capsys.readouterr().err
    assert len(results) == 2 and not results.errors
    searched = set(TOY_SPACE.params) - {"reg_weight"}
    for result in results:
        # a trial's config is the searched values and nothing else; its folder name stays short
        assert set(result.config) == searched
        assert 0 <= result.config["neumann_steps"] <= 3 and 1e-5 <= result.config["backbone_lr"] <= 1e-2
        assert len(os.path.basename(result.path)) <= 24, result.path
        assert 1 <= result.metrics["epoch"] <= 3          # ASHA may stop the worse trial at a rung
        assert "val_primary_mse" in result.metrics and result.metrics.get("checkpoint_path")
        job = load_checkpoint(result.metrics["checkpoint_path"])["config"]
        assert job["meta"]["reg_weight"] == 0.7                                  # the override was used
        assert job["meta"]["neumann_steps"] == result.config["neumann_steps"]  # the sampled value was used
    best = results.get_best_result()
    assert best.metrics["val_primary_mse"] == min(r.metrics["val_primary_mse"] for r in results)
    assert set(best.config) == searched
    runs = tmp_path / "results" / "two-trials__train_runs"
    assert sorted(p.name for p in runs.iterdir() if p.name.startswith("train-")) == \
        sorted(f"train-{r.metrics['trial_id']}" for r in results)
    assert (tmp_path / "results" / "two-trials" / "meltr_run.json").is_file()     # what restore() rebuilds from


@pytest.mark.ray
def test_killed_tune_driver_is_restored_without_rerunning_finished_trials(ray_cluster, tmp_path):
    env = dict(os.environ, RAY_AUTH_MODE="token", TUNE_GLOBAL_CHECKPOINT_S="0", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "tests.cluster.tune_driver_crash", str(tmp_path)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=400)
    assert (tmp_path / "driver_killed").exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == -9
    experiment = str(tmp_path / "results" / "driver-crash")
    results = api.restore(experiment)
    assert len(results) == 2 and not results.errors
    assert all(r.metrics["epoch"] == 2 for r in results)
    lines = [tuple(line.split()) for line in open(tmp_path / "epochs.log")]
    runs = collections.Counter(lines)
    finished, interrupted = list(dict.fromkeys(trial for trial, _ in lines))
    # The trial that had finished before the crash was not re-run: each of its epochs ran once.
    assert runs[(finished, "0")] == 1 and runs[(finished, "1")] == 1, lines
    # The interrupted trial resumed from its epoch-0 checkpoint instead of starting again; only the epoch
    # that was in flight when the driver died runs a second time.
    assert runs[(interrupted, "0")] == 1 and runs[(interrupted, "1")] >= 1, lines
