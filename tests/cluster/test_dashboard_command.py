"""`meltr-ray dashboard <experiment>`: TensorBoard on a Tune experiment folder, clear errors for anything else.

The experiment folder here is laid out as Ray Tune leaves it (an ``experiment_state-*.json`` at the root, one
folder per trial with tensorboardX event files); ``test_ray_dashboard.py`` checks a folder a real search wrote.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tensorboardX import SummaryWriter

from meltr_ray.cli import main
from meltr_ray.dashboard import free_port, tensorboard_command

ROOT = Path(__file__).resolve().parents[2]


def _experiment(tmp_path, events: bool = True) -> Path:
    folder = tmp_path / "results" / "demo-tune-20250101"
    folder.mkdir(parents=True)
    (folder / "experiment_state-2025-01-01_00-00-00.json").write_text("{}")
    if events:
        for trial, score in (("trial_driver_a_00000", 10.0), ("trial_driver_b_00001", 20.0)):
            with SummaryWriter(str(folder / trial)) as writer:
                writer.add_scalar("ray/tune/val_r1", score, 1)
    return folder


def test_the_command_line_serves_the_experiment_folder(tmp_path):
    folder = _experiment(tmp_path)
    assert tensorboard_command(folder, "0.0.0.0", 7000) == [
        sys.executable, "-m", "tensorboard.main", "--logdir", str(folder.resolve()), "--host", "0.0.0.0",
        "--port", "7000"]


def test_a_folder_that_is_not_an_experiment_fails_clearly(tmp_path, capsys):
    checkpoint = tmp_path / "exp__train_runs" / "train-1" / "epoch_000"
    checkpoint.mkdir(parents=True)
    assert main(["dashboard", str(checkpoint)]) == 2
    err = capsys.readouterr().err
    assert str(checkpoint) in err and "not a Ray Tune experiment folder" in err and "summary" in err
    assert main(["dashboard", str(tmp_path / "missing")]) == 2
    assert "no such experiment folder" in capsys.readouterr().err
    assert main(["dashboard", str(_experiment(tmp_path, events=False))]) == 2
    assert "tensorboardX" in capsys.readouterr().err
    assert main(["dashboard"]) == 2


def test_it_prints_the_url_serves_the_runs_and_stops_on_ctrl_c(tmp_path):
    folder = _experiment(tmp_path)
    port = free_port(0)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "meltr_ray.cli", "dashboard", str(folder), "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               start_new_session=True)
    try:
        header = [process.stdout.readline() for _ in range(3)]
        assert header[1].strip() == f"http://127.0.0.1:{port}/" and str(folder.resolve()) in header[0]
        runs, deadline = [], time.time() + 120
        while time.time() < deadline and len(runs) < 2:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=5) as response:
                    runs = json.loads(response.read())
            except OSError:
                time.sleep(1)
        assert sorted(runs) == ["trial_driver_a_00000", "trial_driver_b_00001"]
    finally:
        os.killpg(process.pid, signal.SIGINT)                  # what Ctrl-C in a terminal sends
        code = process.wait(timeout=60)
    assert code == 0
