"""Which Ray a run uses: a private local cluster on loopback unless the user names one; failures are one paragraph.

Joining is explicit (``address="auto"``/``HOST:PORT`` or an exported ``RAY_ADDRESS``): a stranger's cluster on
the same machine is never joined. Local clusters — the default, the demo, the tests' — listen on 127.0.0.1 only.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from meltr_ray.cluster import session
from meltr_ray.cluster.session import RayStartError, ensure_ray, free_port, join_cluster

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOOPBACK_IPS = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


def _python(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``code`` as a fresh user's process would: no RAY_* variables (so no cluster named)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = ROOT
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def calls(monkeypatch):
    """Record what ensure_ray decides instead of starting or joining anything."""
    made = []
    monkeypatch.setattr(session.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(session, "start_local_cluster", lambda **kw: made.append(("local", None)))
    monkeypatch.setattr(session, "join_cluster", lambda address, **kw: made.append(("join", address)))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return made


def test_only_an_address_the_user_gives_is_joined(calls, monkeypatch):
    assert ensure_ray() is True                               # nothing named: a private local cluster
    ensure_ray("auto")                                        # `--address auto`, as the launchers on a head
    ensure_ray("10.0.0.5:6379")
    ensure_ray("local")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.7:6379")        # exported by the user or by `ray job submit`
    ensure_ray()
    ensure_ray("local")                                       # an explicit "local" wins over the variable
    monkeypatch.setattr(session, "_started_address", "10.0.0.7:6379")   # ... our own earlier local start
    ensure_ray()
    assert calls == [("local", None), ("join", "auto"), ("join", "10.0.0.5:6379"), ("local", None),
                     ("join", "10.0.0.7:6379"), ("local", None), ("local", None)]


def test_an_address_where_nothing_listens_fails_fast_with_one_paragraph():
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(RayStartError) as err:
        join_cluster(address)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"Could not join the Ray cluster at {address}")
    for hint in ("nothing answers", "logs are in", "ray status --address", "RAY_AUTH_MODE=token",
                 "leave out --address"):
        assert hint in message, hint
    with pytest.raises(RayStartError, match="expected 'auto' or HOST:PORT"):
        join_cluster("headnode")


def test_a_local_start_that_fails_is_one_paragraph_and_leaves_nothing_behind(tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    temp_dir = str(tmp_path / "a_file" / "ray")                  # Ray cannot create its session folder here
    out = _python("import os, ray\n"
                  "from meltr_ray.cluster.session import RayStartError, start_local_cluster\n"
                  "try:\n"
                  f"    start_local_cluster(num_cpus=1, _temp_dir={temp_dir!r})\n"
                  "except RayStartError as err:\n"
                  "    print(err)\n"
                  "    print(ray.is_initialized(), os.environ.get('RAY_ADDRESS'), os.environ.get('RAY_GCS_SERVER_PORT'))\n")
    lines = out.stdout.splitlines()
    assert out.returncode == 0 and len(lines) == 2, out.stdout + out.stderr[-3000:]
    message = lines[0]
    assert message.startswith("Could not start a private local Ray cluster on 127.0.0.1 (NotADirectoryError")
    assert os.path.join(temp_dir, "session_latest", "logs") in message and "Try again" in message
    assert lines[1] == "False None None"
    assert "Traceback" not in out.stderr


@pytest.mark.ray
def test_the_test_cluster_is_on_loopback(ray_cluster):
    import ray
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}


@pytest.mark.ray
def test_with_another_cluster_running_a_run_starts_its_own_on_loopback(ray_cluster):
    """The session's cluster plays the stranger's: a process that names no cluster must not join it."""
    out = _python("import json, psutil, ray\n"
                  "from meltr_ray.cluster.session import ensure_ray\n"
                  "started = ensure_ray(quiet=True)\n"
                  "try:\n"
                  "    pids = {p.pid for p in psutil.Process().children(recursive=True)}\n"
                  "    listening = sorted({c.laddr.ip for c in psutil.net_connections('inet')\n"
                  "                        if c.status == 'LISTEN' and c.pid in pids})\n"
                  "    print(json.dumps({'started': started, 'gcs': ray._private.worker.global_worker.node.gcs_address,\n"
                  "                      'nodes': [n['NodeManagerAddress'] for n in ray.nodes()],\n"
                  "                      'listening': listening}))\n"
                  "finally:\n"
                  "    ray.shutdown()\n")
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["started"] is True and seen["nodes"] == ["127.0.0.1"]
    assert seen["gcs"].startswith("127.0.0.1:") and seen["gcs"] != os.environ["RAY_ADDRESS"]
    assert seen["listening"] and set(seen["listening"]) <= LOOPBACK_IPS, seen["listening"]
