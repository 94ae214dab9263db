"""Shared fixtures. ``ray_cluster``: one local Ray cluster for the whole session (tests marked ``ray``).

The cluster avoids every trap listed in the Ray 2.60 notes (§6–7): it binds to loopback only (node IP
127.0.0.1, ``meltr_ray.cluster.session.loopback_node``), never joins another cluster on the
host (``address="local"`` and its own GCS port exported through ``RAY_GCS_SERVER_PORT`` / ``RAY_ADDRESS`` so
Train's placement-group cleaner finds *this* cluster), oversubscribes logical CPUs (``num_cpus=4`` on a 2-core
box leaves room for Ray Data's 1-CPU ``ListFiles`` task), offers ``train_driver`` resources for 0-CPU Tune
trial drivers, keeps the dashboard on (the State API frees placement groups of killed trials), shortens Train's
health-check and start-up timeouts, and splits small Parquet datasets into several read blocks.
"""
from __future__ import annotations

import os
import socket

import pytest


def pytest_configure(config):
    """One intra-op thread for torch (MELTR_TEST_THREADS to change): the tests' tensors are tiny, and on a shared
    2-core machine OpenMP threads spinning against other processes made them 10–50× slower."""
    import torch
    torch.set_num_threads(int(os.environ.get("MELTR_TEST_THREADS", "1")))

RAY_ENV = {
    "RAY_TRAIN_ENABLE_STATE_TRACKING": "1",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "30",
    "RAY_DATA_PARQUET_BIN_PACKING_BYTES": str(64 << 10),     # small test shards → several read blocks
    "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": "1",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",    # node IP 127.0.0.1, also for subprocesses that join the cluster
}


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster (num_cpus=4, resources={"train_driver": 4}, dashboard on) for the whole session."""
    import ray

    from meltr_ray.cluster.session import LOOPBACK, loopback_node

    port = _free_port()
    env = dict(RAY_ENV, RAY_GCS_SERVER_PORT=str(port))
    old = {k: os.environ.get(k) for k in (*env, "RAY_ADDRESS")}
    os.environ.update(env)
    os.environ["RAY_ADDRESS"] = f"{LOOPBACK}:{port}"
    try:
        with loopback_node():
            ctx = ray.init(address="local", num_cpus=4, resources={"train_driver": 4}, include_dashboard=True,
                           dashboard_host=LOOPBACK, dashboard_port=0, object_store_memory=512 << 20,
                           logging_level="WARNING")
        import ray.data
        ray.data.DataContext.get_current().enable_progress_bars = False
        ray.data.DataContext.get_current().print_on_execution_start = False
        yield ctx
    finally:
        ray.shutdown()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
