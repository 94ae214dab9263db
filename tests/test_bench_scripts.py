"""The benchmark scripts run: the GPU check's dry run on every test run (so the few GPU minutes a task may get
are not lost to a typo), and CPU smoke runs of the benchmarks it calls (slow)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPU_CHECK = os.path.join(ROOT, "benchmarks", "gpu_check.sh")


def _env() -> dict:
    return {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": os.pathsep.join([ROOT, *sys.path])}


def _dry_run(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", script, "--dry-run"], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=600)


def test_gpu_check_dry_run_finds_every_command_it_would_run():
    """Every stage's script exists, its --help lists each option the stage passes, the gpu marker selects
    tests, and the interpreter imports what the stages import."""
    proc = _dry_run(GPU_CHECK)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "DRY RUN OK: 5 stages" in proc.stdout
    for stage in ("gpu_tests", "meta_bf16", "meta_fp32", "floor_bf16", "violet"):
        assert f"ok   {stage}" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("broken, message", [
    ("--max-batch 64", "has no option --max-batchez"),
    ("benchmarks/bench_violet_step.py", "benchmarks/bench_violet_stepz.py missing"),
])
def test_gpu_check_dry_run_fails_on_a_wrong_command(tmp_path, broken, message):
    text = open(GPU_CHECK).read()
    wrong = broken.replace("--max-batch", "--max-batchez").replace("step.py", "stepz.py")
    assert broken in text
    script = tmp_path / "gpu_check.sh"
    script.write_text(text.replace(broken, wrong))
    proc = _dry_run(str(script))
    assert proc.returncode == 1 and message in proc.stdout and "DRY RUN FAILED" in proc.stdout, proc.stdout


@pytest.mark.slow
def test_bench_violet_step_runs_on_cpu(tmp_path):
    out = tmp_path / "violet.json"
    proc = subprocess.run([sys.executable, "benchmarks/bench_violet_step.py", "--backbone", "violet_tiny",
                           "--device", "cpu", "--batch", "2", "--cycles", "1", "--threads", "1", "--json", str(out)],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["batch"] == 2 and result["clips_per_s"] > 0 and result["precision"] == "fp32"
    assert "| violet_tiny | retrieval | cpu |" in proc.stdout


@pytest.mark.slow
def test_bench_meta_step_floor_and_json_run_on_cpu(tmp_path):
    def bench(*extra) -> str:
        proc = subprocess.run([sys.executable, "benchmarks/bench_meta_step.py", "--size", "cpu", "--threads", "1",
                               "--rounds", "1", *extra], cwd=ROOT, env=_env(), capture_output=True, text=True,
                              timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    assert "cycle x MTL (cpu): measured" in bench("--floor")
    out = tmp_path / "meta.json"
    bench("--no-memory", "--json", str(out))
    numbers = json.loads(out.read_text())
    assert set(numbers["variants"]) == {"mtl", "meltr_k0", "meltr_k3"}
    assert numbers["variants"]["mtl"]["cpu_x_mtl"] == 1.0


@pytest.mark.slow
def test_bench_fd_radius_runs_and_converges_on_resnet(tmp_path):
    """One smooth case: the finite differences approach the exact products as R shrinks from 1e-1 to 1e-3."""
    out = tmp_path / "fd.json"
    proc = subprocess.run([sys.executable, "benchmarks/bench_fd_radius.py", "--only", "resnet_tiny", "--seeds", "0",
                           "--radii", "1e-1,1e-3", "--json", str(out)], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors = json.loads(out.read_text())["errors"]["resnet_tiny / classification"]
    assert errors["0.001"][0] < min(1e-2, errors["0.1"][0])
    assert "| resnet_tiny / classification |" in proc.stdout
