"""Dashboard metrics: a MELTR gauge set on the cluster shows up in the node's Prometheus export."""
from __future__ import annotations

import time
import urllib.request

import pytest
import ray

pytestmark = pytest.mark.ray


@ray.remote(num_cpus=0)
class _Publisher:
    """Publishes one step's metrics through the worker-side monitor, as rank 0 of a trial does."""

    def publish(self, trial: str) -> None:
        from meltr_ray.cluster.monitor import SkippedRowsHook, StepMonitor
        monitor = StepMonitor(trial, ["vtm", "mlm"], clips_per_step=16)
        monitor({"step": 4, "weight_vtm": 0.75, "weight_mlm": 0.25, "loss_vtm": 1.5, "loss_mlm": 3.0,
                 "train_loss": 2.0, "meta_grad_norm": 0.5})
        SkippedRowsHook(trial)("row1", "video1", "corrupt")


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def test_meltr_gauges_reach_the_prometheus_export(ray_cluster):
    port = ray._private.worker.global_worker.node.metrics_export_port
    publisher = _Publisher.remote()
    try:
        ray.get(publisher.publish.remote("trial-dash"))
        wanted = ['ray_meltr_task_weight{', 'task="vtm"', 'trial="trial-dash"']
        deadline, text = time.time() + 90, ""
        while time.time() < deadline:
            text = _scrape(port)
            lines = [line for line in text.splitlines() if all(w in line for w in wanted)]
            if lines:
                break
            time.sleep(2)
        assert lines, "meltr_task_weight not exported:\n" + "\n".join(
            line for line in text.splitlines() if "meltr" in line)
        assert float(lines[0].rsplit(" ", 1)[1]) == pytest.approx(0.75)
        assert "ray_meltr_meta_grad_norm" in text and "ray_meltr_clips_per_second" in text
    finally:
        ray.kill(publisher)
