"""Which Ray to use: the cluster the user names, else a private local one on loopback that avoids known traps.

:func:`ensure_ray` joins a cluster only when asked — ``address="auto"`` (the cluster this node belongs to, as on
the head of ``cluster.yaml``, where the launchers pass ``--address auto``), ``address="HOST:PORT"``, or a
``RAY_ADDRESS`` the user exported (``ray job submit`` exports it too). Otherwise it starts a private cluster
(:func:`start_local_cluster`); a stranger's cluster on the same machine is never joined, as a plain
``ray.init()`` would through Ray's ``ray_current_cluster`` file. The private cluster:

* binds the node to 127.0.0.1 — GCS, raylet, dashboard and agents listen on loopback only, so nothing of a
  laptop run is reachable from the network;
* exports ``RAY_GCS_SERVER_PORT``/``RAY_ADDRESS`` first, so code inside workers that looks the cluster up
  (Train's placement-group cleaner) finds *this* one even when another Ray runs on the host;
* keeps the dashboard on (the State API it serves is how Train frees a stopped trial's placement group), turns
  Train state tracking on, offers a ``train_driver`` resource for the ~0-CPU trial drivers, and declares more
  logical CPUs than cores so that trial drivers, Train workers and Ray Data's 1-CPU ``ListFiles`` task cannot
  deadlock a small machine.

A start that fails raises :class:`RayStartError`: one paragraph saying what failed, where Ray's logs are and
what to try, instead of Ray's traceback.
"""
from __future__ import annotations

import contextlib
import os
import socket

import ray

# Ray Data's read settings (footer actors, read bins, Parquet v1/v2) are not exported here: build_datasets
# sizes them per split (cluster/data.py ReadPlan), and an exported value would override that sizing.
LOCAL_ENV = {
    "RAY_TRAIN_ENABLE_STATE_TRACKING": "1",          # the dashboard's Train view
}
LOOPBACK = "127.0.0.1"
# Ray reads this at start-up (its processes) and at import (this process): "0" makes every node address
# 127.0.0.1, which also keeps GCS and raylet listening on loopback only.
CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
CONNECT_TIMEOUT_S = 5.0
_started_address: str | None = None      # RAY_ADDRESS exported by our own last local start


class RayStartError(RuntimeError):
    """Ray could not be started or joined; the message is one paragraph for the user."""


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def loopback_node():
    """Inside: a Ray started by this process puts its node on 127.0.0.1, and every Ray process listens on
    loopback only. Ray reads the switch at import, so this process's copy is flipped for the duration; the
    environment variable stays exported (as ``RAY_ADDRESS`` does), so processes started from here that join
    the cluster agree on its node address."""
    from ray._private import ray_constants
    old_flag = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[CLUSTER_ENV], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield LOOPBACK
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = old_flag


def start_local_cluster(num_cpus: int | None = None, driver_slots: int = 8, **init_kwargs):
    """Start a private local Ray cluster on 127.0.0.1 (see the module docstring); returns ``ray.init``'s context.

    Logical CPUs default to max(8, 2 × cores): on a laptop two concurrent trials (2 workers × 0.5 CPU each)
    plus their Ray Data pipelines (a 1-CPU listing task and decode actors each) must all be schedulable.
    A failed start raises :class:`RayStartError` and leaves the environment as it found it.
    """
    global _started_address
    if ray.is_initialized():
        raise RuntimeError("Ray is already initialised in this process; ray.shutdown() first")
    exported = {key: os.environ.get(key) for key in (*LOCAL_ENV, "RAY_GCS_SERVER_PORT", "RAY_ADDRESS", CLUSTER_ENV)}
    for key, value in LOCAL_ENV.items():
        os.environ.setdefault(key, value)
    port = free_port()
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    os.environ["RAY_ADDRESS"] = _started_address = f"{LOOPBACK}:{port}"
    cpus = num_cpus or max(8, 2 * (os.cpu_count() or 1))
    try:
        with loopback_node():
            return ray.init(address="local", num_cpus=cpus, resources={"train_driver": driver_slots},
                            include_dashboard=True, dashboard_host=LOOPBACK, **init_kwargs)
    except (Exception, SystemExit) as err:
        _shutdown_quietly()
        _restore_environment(exported)
        raise RayStartError(start_failure(err, init_kwargs.get("_temp_dir"))) from None


def _restore_environment(values: dict) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _shutdown_quietly() -> None:
    with contextlib.suppress(Exception):
        ray.shutdown()


def log_folder(temp_dir: str | None = None) -> str:
    """Where Ray writes the logs of the newest session started on this machine (``<temp>/session_latest``)."""
    from ray._common.utils import get_default_ray_temp_dir
    return os.path.join(temp_dir or get_default_ray_temp_dir(), "session_latest", "logs")


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[-1] if text else ''}".rstrip(": ")


def start_failure(err: BaseException, temp_dir: str | None = None) -> str:
    """The paragraph for a private local start that failed."""
    return (f"Could not start a private local Ray cluster on {LOOPBACK} ({_reason(err)}). Ray's logs are in "
            f"{log_folder(temp_dir)} (raylet.out, gcs_server.out). Try again once the machine is less busy "
            f"(Ray gives its processes 30 s to come up), check that the temporary folder is writable and has "
            f"free space, or run on an existing cluster with --address HOST:PORT (address=...) or RAY_ADDRESS.")


def join_failure(address: str, why: str) -> str:
    """The paragraph for a cluster that could not be joined."""
    return (f"Could not join the Ray cluster at {address} ({why}). Ray's logs are in {log_folder()} on this "
            f"machine and in the same folder on the head node. Check that the cluster is up (`ray status "
            f"--address {address}`), that the address is the head's GCS port (default 6379), and — when the "
            f"cluster uses token authentication — that RAY_AUTH_MODE=token is set and the cluster's token is in "
            f"~/.ray/auth_token (or RAY_AUTH_TOKEN); or leave out --address / RAY_ADDRESS to start a private "
            f"local Ray instead.")


def _unreachable(address: str) -> str | None:
    """Why ``HOST:PORT`` does not accept a TCP connection within a few seconds, or ``None`` when it does
    (Ray itself would retry for minutes and then exit the process)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return f"expected 'auto' or HOST:PORT, got {address!r}"
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            return None
    except OSError as err:
        return f"nothing answers at {host}:{port}: {err.strerror or err}"


def join_cluster(address: str, **init_kwargs):
    """``ray.init(address)`` for ``"auto"`` or ``HOST:PORT``; every failure is a :class:`RayStartError`."""
    why = None if address == "auto" else _unreachable(address.removeprefix("ray://"))
    if why is not None:
        raise RayStartError(join_failure(address, why))
    try:
        return ray.init(address=address, **init_kwargs)
    except (Exception, SystemExit) as err:
        _shutdown_quietly()
        raise RayStartError(join_failure(address, _reason(err))) from None


def requested_address(address: str | None) -> str | None:
    """The cluster the user asked for: ``address``, else an exported ``RAY_ADDRESS`` that is not the one our
    own earlier local start exported; ``None`` (or ``"local"``) means a private local cluster."""
    if address is not None:
        return None if address == "local" else address
    exported = os.environ.get("RAY_ADDRESS") or None
    return None if exported == _started_address else exported


def ensure_ray(address: str | None = None, quiet: bool = False) -> bool:
    """Use the initialised Ray; else join the cluster the user asked for (``address`` or ``RAY_ADDRESS``); else
    start a private local cluster (``quiet``: worker logs stay in Ray's log files, not this console).
    Returns ``True`` when this call started a local cluster."""
    if ray.is_initialized():
        return False
    target = requested_address(address)
    if target is not None:
        join_cluster(target)
        return False
    start_local_cluster(log_to_driver=not quiet)
    return True


def dashboard_url() -> str | None:
    """``http://host:port`` of the dashboard of the connected cluster, if it has one."""
    from ray._private.worker import get_dashboard_url
    url = get_dashboard_url()
    if not url:
        return None
    return url if url.startswith("http") else f"http://{url}"
