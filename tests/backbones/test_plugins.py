"""A plugin family reaches every entry point: build_run, ``meltr-ray train --plugin``, the Ray workers' import.

The Ray run itself is ``tests/cluster/test_ray_plugin_family.py``; here nothing starts Ray.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch

from meltr_ray.backbones import get_spec, import_plugin
from meltr_ray.config import JobConfig
from meltr_ray.run import build_run

PLUGIN = "tests.fixtures.plugin_family"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import_plugin(PLUGIN)


def test_build_run_fits_the_plugin_family_for_two_epochs(tmp_path):
    """build_run → Run.fit with the spec's example batches: trains, evaluates, checkpoints every epoch."""
    from meltr_ray.core.checkpoint import load_checkpoint
    from meltr_ray.core.loop import local_saver
    cfg = JobConfig().with_overrides({
        "backbone.name": "featlm_tiny", "backbone.task": "classify", "train.epochs": 2, "train.batch_size": 4,
        "meltr.d_model": 16, "meltr.d_ffn": 16, "meltr.d_scale": 8, "meltr.n_heads": 2, "meta.meta_every": 2,
        "meta.neumann_steps": 1})
    spec = get_spec("featlm_tiny")
    batches = [spec.example_batch("classify", 4, torch.Generator().manual_seed(i)) for i in range(4)]
    run = build_run(cfg, steps_per_epoch=len(batches))        # a linear schedule over 2 × 4 steps
    metrics = run.fit(lambda epoch: batches, evaluate=lambda model: model.evaluate(batches[:2]),
                      save=local_saver(tmp_path))
    assert (metrics["epoch"], metrics["step"], metrics["meta_steps"]) == (2, 8, 4)
    assert {"loss_cls", "loss_mfr", "val_accuracy"} <= set(metrics)
    assert run.trainer.backbone_scheduler.get_last_lr()[0] == 0.0          # decayed to 0 at the last step
    state = load_checkpoint(tmp_path / "epoch_001")
    assert state["epoch"] == 1 and state["config"]["backbone"]["name"] == "featlm_tiny"


def test_cli_train_passes_every_plugin_to_the_api(monkeypatch):
    from meltr_ray import api, cli
    seen = {}

    def fake_train(**kwargs):
        seen.update(kwargs)
        return SimpleNamespace(metrics={}, checkpoint=None, error=None)
    monkeypatch.setattr(api, "train", fake_train)
    argv = ["train", "--plugin", PLUGIN, "--plugin", "other_pkg.family", "--backbone", "featlm_tiny",
            "--task", "classify"]
    assert cli.main(argv) == 0
    assert seen["plugins"] == [PLUGIN, "other_pkg.family"]
    assert (seen["backbone"], seen["task"]) == ("featlm_tiny", "classify")
    parsed = cli.build_parser().parse_args(["tune", "--plugin", PLUGIN])
    assert parsed.plugins == [PLUGIN]
    assert cli.build_parser().parse_args(["train"]).plugins == []


def test_cli_plugin_backbone_resolves_in_a_fresh_process():
    """In a process where nobody imported the plugin: without ``--plugin`` the backbone is unknown, a module
    that cannot be imported is named, and with ``--plugin`` the config resolves from the plugin's spec (the
    API imports plugins before it resolves the config; Ray start-up is replaced by a stub here)."""
    script = textwrap.dedent(f"""
        import sys
        from meltr_ray import api, cli
        assert {PLUGIN!r} not in sys.modules
        def stop(cfg, *args, **kwargs):
            print("RESOLVED", cfg.backbone.name, cfg.backbone.task, cfg.data.num_frames, cfg.data.max_text_len)
            raise SystemExit(0)
        api._prepare = stop
        job = ["train", "--backbone", "featlm_tiny", "--task", "classify", "--data", "shards"]
        print("WITHOUT", cli.main(job))
        print("MISSING", cli.main(job + ["--plugin", "no_such_plugin_xyz"]))
        cli.main(job + ["--plugin", {PLUGIN!r}])
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "WITHOUT 2" in done.stdout and "unknown backbone 'featlm_tiny' (backbone.name)" in done.stderr
    assert "MISSING 2" in done.stdout and "plugin module 'no_such_plugin_xyz' cannot be imported" in done.stderr
    data = get_spec("featlm_tiny").tasks["classify"].data
    assert f"RESOLVED featlm_tiny classify {data.num_frames} {data.text_len}" in done.stdout


def test_worker_import_plugins_names_a_missing_module():
    from meltr_ray.cluster.worker import import_plugins
    import_plugins([PLUGIN])                         # already imported: nothing happens
    import_plugins(PLUGIN)                           # one module as a string, not its characters
    with pytest.raises(ValueError, match=r"plugin module 'no_such_plugin_xyz' cannot be imported"):
        import_plugins([PLUGIN, "no_such_plugin_xyz"])
