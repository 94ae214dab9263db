"""Configs saved before a field existed rebuild with the value they were trained with.

Before ``meltr.start`` existed (issue 9) every MELTR had the official forward W_o·mean H; the new default
``"mtl"`` adds Σℓ. A checkpoint or ``meltr_run.json`` without the key must come back with ``"official"``; a
new config keeps ``"mtl"``.
"""
from __future__ import annotations

import json
import logging

import pytest
import torch

from meltr_ray.config import JobConfig, with_legacy_defaults
from meltr_ray.core.checkpoint import load_checkpoint, save_checkpoint
from meltr_ray.core.meltr import build_combiner
from meltr_ray.plots import combiner_from_state

TASKS = ["vtm", "mlm", "mfm"]
SMALL = {"meltr.d_model": 8, "meltr.d_ffn": 8, "meltr.d_scale": 4, "meltr.n_heads": 2, "meltr.eval_mode": True}


def _old_config_dict() -> dict:
    """A job dict as written before ``meltr.start`` existed."""
    saved = JobConfig().with_overrides({**SMALL, "meltr.start": "official"}).to_dict()
    del saved["meltr"]["start"]
    return saved


def _losses() -> torch.Tensor:
    return torch.tensor([[0.01, 2.0, 30.0], [1.5, 0.2, 4.0], [7.0, 7.0, 0.001]])


def test_new_configs_keep_the_mtl_default():
    assert JobConfig().meltr.start == "mtl"
    assert JobConfig.from_dict({"meltr": {"d_model": 8}}).meltr.start == "mtl"


def test_legacy_defaults_fill_only_missing_fields_and_say_so(caplog):
    with caplog.at_level(logging.WARNING, logger="meltr_ray.config"):
        filled = with_legacy_defaults(_old_config_dict(), "checkpoint X")
    assert filled["meltr"]["start"] == "official"
    assert len(caplog.records) == 1 and "checkpoint X" in caplog.text and "meltr.start" in caplog.text
    caplog.clear()
    new = JobConfig().to_dict()
    with caplog.at_level(logging.WARNING, logger="meltr_ray.config"):
        assert with_legacy_defaults(new, "checkpoint Y")["meltr"]["start"] == "mtl"
    assert not caplog.records


def test_an_old_checkpoint_rebuilds_the_official_meltr_and_reproduces_its_outputs(tmp_path):
    cfg = JobConfig.from_dict({**_old_config_dict(), "meltr": {**_old_config_dict()["meltr"], "start": "official"}})
    torch.manual_seed(0)
    trained = build_combiner(cfg.meltr, len(TASKS)).eval()
    with torch.no_grad():
        expected = trained(_losses())
    save_checkpoint({"combiner": trained.state_dict(), "config": _old_config_dict(), "task_names": TASKS,
                     "epoch": 0}, tmp_path / "epoch_000")

    state = load_checkpoint(tmp_path / "epoch_000")
    combiner, names = combiner_from_state(state, "old checkpoint")
    assert names == TASKS and combiner.start == "official"
    with torch.no_grad():
        torch.testing.assert_close(combiner(_losses()), expected, rtol=0, atol=0)

    # what the legacy default prevents: the same weights under the new default give other outputs
    wrong = build_combiner(JobConfig.from_dict(state["config"]).meltr, len(TASKS)).eval()
    wrong.load_state_dict(state["combiner"])
    with torch.no_grad():
        assert not torch.allclose(wrong(_losses()), expected)


def test_an_old_meltr_run_json_restores_with_the_official_start(tmp_path):
    from meltr_ray.cluster.tuner import RUN_FILE, load_run, save_run
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / RUN_FILE).write_text(json.dumps({"job": _old_config_dict(), "runtime": {"plugins": []}}))
    job, runtime = load_run(str(tmp_path / "old"))
    assert JobConfig.from_dict(job).meltr.start == "official" and runtime == {"plugins": []}

    save_run(str(tmp_path / "new"), JobConfig().to_dict(), {})
    job, _ = load_run(str(tmp_path / "new"))
    assert JobConfig.from_dict(job).meltr.start == "mtl"


@pytest.mark.parametrize("combiner", ["mtl", "linear"])
def test_a_filled_start_is_harmless_for_combiners_without_one(combiner):
    saved = _old_config_dict()
    saved["meltr"]["combiner"] = combiner
    JobConfig.from_saved(saved, "old").validate()
