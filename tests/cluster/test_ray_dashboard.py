"""Dashboards on a real cluster: the MELTR metrics reach the node's Prometheus export under the names the
packaged Grafana dashboard queries, and a finished Tune search leaves what `meltr-ray dashboard` and the
printed summary (whole paths, summary.json) need."""
from __future__ import annotations

import io
import json
import re
import sys
import time
import urllib.request

import pytest
import ray
from ray import tune

pytestmark = pytest.mark.ray


@ray.remote(num_cpus=0)
class _Publisher:
    """Publishes two steps' metrics through the worker-side monitor, as rank 0 of a trial does."""

    def publish(self, trial: str) -> None:
        from meltr_ray.cluster.monitor import SkippedRowsHook, StepMonitor
        clock = iter([0.0, 1.0, 3.0]).__next__                       # 2 s between the two logged steps
        monitor = StepMonitor(trial, ["vtm", "mlm"], clips_per_step=16, clock=clock)
        monitor({"step": 4, "weight_vtm": 0.75, "weight_mlm": 0.25, "loss_vtm": 1.5, "loss_mlm": 3.0,
                 "train_loss": 2.0, "meta_grad_norm": 0.5, "meta_neumann_correction": 0.125})
        monitor({"step": 8, "weight_vtm": 0.75, "weight_mlm": 0.25})
        SkippedRowsHook(trial)("row1", "video1", "corrupt")


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def _grafana_metric_names() -> set:
    from meltr_ray.dashboard import grafana_dashboard_file
    text = grafana_dashboard_file().read_text(encoding="utf-8")
    return set(re.findall(r"\bray_meltr_\w+", text))


def test_every_metric_the_grafana_dashboard_queries_reaches_the_prometheus_export(ray_cluster):
    port = ray._private.worker.global_worker.node.metrics_export_port
    publisher = _Publisher.remote()
    wanted = _grafana_metric_names()
    assert len(wanted) == 8
    try:
        ray.get(publisher.publish.remote("trial-dash"))
        deadline, text, missing = time.time() + 90, "", wanted
        while time.time() < deadline:
            text = _scrape(port)
            ours = [line for line in text.splitlines() if 'trial="trial-dash"' in line]
            missing = {name for name in wanted if not any(line.startswith(name + "{") for line in ours)}
            if not missing:
                break
            time.sleep(2)
        assert not missing, f"not exported: {missing}\n" + "\n".join(l for l in text.splitlines() if "meltr" in l)
        weight = [line for line in ours if line.startswith("ray_meltr_task_weight{") and 'task="vtm"' in line]
        assert float(weight[0].rsplit(" ", 1)[1]) == pytest.approx(0.75)
        correction = [line for line in ours if line.startswith("ray_meltr_meta_neumann_correction{")]
        assert float(correction[0].rsplit(" ", 1)[1]) == pytest.approx(0.125)
        clips = [line for line in ours if line.startswith("ray_meltr_clips_per_second{")]
        assert float(clips[0].rsplit(" ", 1)[1]) == pytest.approx(4 * 16 / 2.0)
        assert all("SessionName=" in line for line in ours)          # the dashboard's session filter
    finally:
        ray.kill(publisher)


def test_a_finished_search_prints_whole_paths_writes_summary_json_and_opens_in_tensorboard(ray_cluster, tmp_path):
    from rich.console import Console

    from meltr_ray.cluster.progress import print_summary
    from meltr_ray.dashboard import tensorboard_command
    deep = tmp_path / "a_storage_folder_with_a_long_name" / "and_another_level_so_paths_exceed_the_terminal"
    checkpoint_root = str(deep / "exp__train_runs" / "train-0123456789abcdef")

    def fake_trial(config):
        """Reports what MELTR trials report, without training (the summary is under test). Defined here so
        Ray pickles it by value: the test module is not importable on Ray's workers."""
        for epoch in (1, 2):
            tune.report({"epoch": epoch, "val_r1": 10 * config["reg_weight"] * epoch, "loss_vtm": 1.0 / epoch,
                         "weight_vtm": 0.5, "checkpoint_path": f"{config['checkpoint_root']}/epoch_{epoch - 1:03d}"})

    tuner = tune.Tuner(tune.with_resources(fake_trial, {"CPU": 0.01}),
                       param_space={"reg_weight": tune.grid_search([0.1, 0.5]), "neumann_steps": 3,
                                    "checkpoint_root": checkpoint_root},
                       tune_config=tune.TuneConfig(metric="val_r1", mode="max"),
                       run_config=tune.RunConfig(name="summary-exp", storage_path=str(deep), verbose=0))
    results = tuner.fit()
    experiment = str(results.experiment_path)
    out = io.StringIO()
    record = print_summary(Console(file=out, width=40), results, ["reg_weight", "neumann_steps"], "val_r1")
    printed = out.getvalue()
    best_checkpoint = f"{checkpoint_root}/epoch_001"
    assert len(best_checkpoint) > 120 and len(experiment) > 80
    for whole in (best_checkpoint, experiment, f"meltr-ray dashboard {experiment}",
                  f"meltr-ray inspect {best_checkpoint}"):
        assert whole in printed                                       # one piece, no wrap, no "…"
    saved = json.loads((deep / "summary-exp" / "summary.json").read_text())
    assert saved == record
    assert saved["best"]["config"] == {"reg_weight": 0.5, "neumann_steps": 3}
    assert saved["best"]["val_r1"] == pytest.approx(10.0) and saved["best"]["checkpoint"] == best_checkpoint
    assert sorted(t["val_r1"] for t in saved["trials"]) == pytest.approx([2.0, 10.0])
    assert list((deep / "summary-exp").rglob("events.out.tfevents.*"))  # Tune wrote TensorBoard files
    assert tensorboard_command(experiment, port=6123) == [
        sys.executable, "-m", "tensorboard.main", "--logdir", experiment, "--host", "127.0.0.1", "--port", "6123"]
