"""MELTR against primary-only, MTL, fixed and learned linear combinations on real data (issue 9).

    python benchmarks/bench_digits.py                      # the full run: 5 seeds × 2 regimes × 11 methods
    python benchmarks/bench_digits.py --quick              # a smoke run (1 seed, a few updates)
    python benchmarks/bench_digits.py --set meta.reg_weight=1.0 --methods mtl,meltr

A thin wrapper around the product command ``meltr-ray experiment digits`` (same options; see
``meltr_ray/experiments/digits.py`` for what is held equal across methods). It prints the table (mean ± std
test accuracy per method and regime, Δ against MTL), the target check and the machine's load average, and
writes ``digits.md``, ``digits.json`` and ``digits.png`` to ``--out`` (default ``bench_digits_out``).
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from meltr_ray.cli import main  # noqa: E402


def run(argv: list[str]) -> int:
    if not any(a == "--out" or a.startswith("--out=") for a in argv):
        argv = [*argv, "--out", "bench_digits_out"]
    started, load = time.time(), os.getloadavg()
    code = main(["experiment", "digits", *argv])
    print(f"wall {time.time() - started:.0f} s; load average at start {load[0]:.1f}, at end "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return code


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
