"""Connect to the Ray cluster this process runs on, or start a local one that avoids the known traps.

On a launcher cluster (``ray submit`` runs the launcher on the head node) ``ray.init()`` auto-connects to the
cluster ``ray start`` wrote down. Without one, :func:`start_local_cluster` starts a private local cluster:

* ``address="local"`` — never join another user's cluster through Ray's ``ray_current_cluster`` file;
* ``RAY_GCS_SERVER_PORT``/``RAY_ADDRESS`` exported first, so code inside workers that looks the cluster up
  (Train's placement-group cleaner) finds *this* one even when another Ray runs on the host;
* the dashboard on (the State API it serves is how Train frees a stopped trial's placement group), Train state
  tracking on, a ``train_driver`` resource for the ~0-CPU trial drivers, and more logical CPUs than cores so
  that trial drivers, Train workers and Ray Data's 1-CPU ``ListFiles`` task cannot deadlock a small machine.
"""
from __future__ import annotations

import os
import socket

import ray

# Ray Data's read settings (footer actors, read bins, Parquet v1/v2) are not exported here: build_datasets
# sizes them per split (cluster/data.py ReadPlan), and an exported value would override that sizing.
LOCAL_ENV = {
    "RAY_TRAIN_ENABLE_STATE_TRACKING": "1",          # the dashboard's Train view
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def start_local_cluster(num_cpus: int | None = None, driver_slots: int = 8, **init_kwargs):
    """Start a private local Ray cluster (see the module docstring) and return ``ray.init``'s context.

    Logical CPUs default to max(8, 2 × cores): on a laptop two concurrent trials (2 workers × 0.5 CPU each)
    plus their Ray Data pipelines (a 1-CPU listing task and decode actors each) must all be schedulable.
    """
    port = _free_port()
    for key, value in LOCAL_ENV.items():
        os.environ.setdefault(key, value)
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    os.environ["RAY_ADDRESS"] = f"{ray.util.get_node_ip_address()}:{port}"
    cpus = num_cpus or max(8, 2 * (os.cpu_count() or 1))
    return ray.init(address="local", num_cpus=cpus, resources={"train_driver": driver_slots},
                    include_dashboard=True, dashboard_host="127.0.0.1", **init_kwargs)


def ensure_ray(address: str | None = None, quiet: bool = False) -> bool:
    """Use the initialised Ray, connect to ``address`` (or the cluster this node belongs to), else start a
    local cluster (``quiet``: worker logs stay in Ray's log files instead of this console).
    Returns ``True`` when this call started a local cluster."""
    if ray.is_initialized():
        return False
    if address not in (None, "local"):
        ray.init(address=address)
        return False
    if address is None:
        try:
            ray.init(address="auto")
            return False
        except ConnectionError:
            pass
    start_local_cluster(log_to_driver=not quiet)
    return True


def dashboard_url() -> str | None:
    """``http://host:port`` of the dashboard of the connected cluster, if it has one."""
    from ray._private.worker import get_dashboard_url
    url = get_dashboard_url()
    if not url:
        return None
    return url if url.startswith("http") else f"http://{url}"
