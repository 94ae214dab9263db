"""``meltr-ray dashboard``: see a search's curves again after it ended, and chart the live MELTR metrics.

* **TensorBoard on an experiment folder.** Ray Tune writes every metric a trial reports (``val_*``, ``loss_<task>``,
  ``weight_<task>`` = ∂MELTR/∂ℓ_t, ``train_loss``, ``meta_grad_norm``, ``epoch``) as TensorBoard event files in
  the trial folders (its ``TBXLoggerCallback``, on whenever tensorboardX is installed — it comes with
  ``ray[tune]``). Serving them needs the ``tensorboard`` package (``pip install "meltr_ray[dashboard]"``).
* **Grafana panels for the live metrics** of :mod:`meltr_ray.cluster.monitor`: the packaged
  ``meltr_ray/cluster/grafana/meltr_dashboard.json``, copied into the dashboards folder of Ray's Grafana
  provisioning (``<ray temp dir>/session_latest/metrics/grafana/dashboards``, which Ray rewrites at every
  cluster start), shows up in Grafana's "Ray" folder next to Ray's own dashboards.

Nothing here imports Ray.
"""
from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import sys
from importlib import resources
from pathlib import Path

EXPERIMENT_MARKERS = ("tuner.pkl", "experiment_state-*.json")   # what Ray Tune writes at an experiment's root
EVENT_FILES = "events.out.tfevents.*"
GRAFANA_JSON = "meltr_dashboard.json"
RAY_TEMP_DIR = "/tmp/ray"


def _is_experiment(folder: Path) -> bool:
    return any(next(folder.glob(marker), None) is not None for marker in EXPERIMENT_MARKERS)


def check_experiment(path: str | Path) -> Path:
    """The experiment folder, after checking it is a Ray Tune experiment holding TensorBoard event files.

    Raises ``FileNotFoundError`` for a missing folder and ``ValueError`` (naming the folder and what to pass
    instead) for anything else — a checkpoint, a Train run, an empty folder, a URI.
    """
    if "://" in str(path):
        raise ValueError(f"{path}: TensorBoard here reads local folders; copy the experiment first "
                         f"(e.g. aws s3 sync {path} ./{Path(str(path)).name}) and pass the copy")
    folder = Path(path).expanduser().resolve()
    if not folder.exists():
        raise FileNotFoundError(f"no such experiment folder: {folder}")
    if not folder.is_dir() or not _is_experiment(folder):
        raise ValueError(f"{folder} is not a Ray Tune experiment folder (it has no tuner.pkl or "
                         f"experiment_state-*.json): pass the 'experiment' folder the run summary printed "
                         f"(also in its summary.json)")
    if next(folder.rglob(EVENT_FILES), None) is None:
        raise ValueError(f"{folder} holds no TensorBoard event files ({EVENT_FILES}): Ray Tune writes them only "
                         f"when tensorboardX is installed (pip install tensorboardX) while the search runs")
    return folder


def tensorboard_command(experiment: str | Path, host: str = "127.0.0.1", port: int = 6006) -> list[str]:
    """The command line that serves ``experiment`` (checked with :func:`check_experiment`) with TensorBoard."""
    folder = check_experiment(experiment)
    return [sys.executable, "-m", "tensorboard.main", "--logdir", str(folder), "--host", host, "--port", str(port)]


def tensorboard_url(host: str, port: int) -> str:
    return f"http://{socket.gethostname() if host == '0.0.0.0' else host}:{port}/"


def free_port(preferred: int = 6006) -> int:
    """``preferred`` when nothing listens there, else a port the OS picks (so the printed URL is the real one)."""
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError("no free port")


def require_tensorboard() -> None:
    if importlib.util.find_spec("tensorboard") is None:
        raise ValueError('TensorBoard is not installed: pip install "meltr_ray[dashboard]" '
                         '(or: pip install tensorboard)')


def serve(command: list[str]) -> int:
    """Run the server until it exits or the user presses Ctrl-C (then stop it and return 0)."""
    process = subprocess.Popen(command)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        return 0


# ---- Grafana --------------------------------------------------------------------------------------------------
def grafana_dashboard_file():
    """The packaged Grafana dashboard of the MELTR metrics (an ``importlib.resources`` traversable)."""
    return resources.files("meltr_ray").joinpath("cluster", "grafana", GRAFANA_JSON)


def ray_grafana_dashboards_dir(ray_temp_dir: str | Path = RAY_TEMP_DIR) -> Path:
    """Where Ray's Grafana provisioning reads dashboards from for the newest session on this node."""
    return Path(ray_temp_dir) / "session_latest" / "metrics" / "grafana" / "dashboards"


def install_grafana_dashboard(ray_temp_dir: str | Path = RAY_TEMP_DIR) -> Path:
    """Copy the MELTR dashboard next to Ray's own (Ray rewrites that folder when a cluster starts: run this
    after ``ray start`` / ``ray.init``)."""
    target_dir = ray_grafana_dashboards_dir(ray_temp_dir)
    if not target_dir.is_dir():
        raise FileNotFoundError(f"no Ray Grafana provisioning at {target_dir}: start the Ray cluster (with "
                                f"ray[default]) on this node first; Ray writes that folder at start-up")
    target = target_dir / GRAFANA_JSON
    with resources.as_file(grafana_dashboard_file()) as source:
        shutil.copyfile(source, target)
    return target
