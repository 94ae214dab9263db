"""Test-only hooks injected into ingest and the decode UDF to simulate a decoder that hangs or crashes.

Importable by the probe workers: pytest puts this folder on ``sys.path``, and each worker (a fresh
``python -m meltr_ray.data.probe_worker``) takes over the parent's ``sys.path`` before it imports the probe.
"""
from __future__ import annotations

import os
import signal
import time

from meltr_ray.data.probe import probe_video
from meltr_ray.data.video import DecordDecoder

HANG_MARK = "hang"
CRASH_MARK = "crash"
NOISY_MARK = "noisy"
HANG_BYTES = b"HANG"


def hanging_probe(path: str, **kwargs) -> dict:
    """The real probe, except that files whose name contains ``hang`` never return (like decord #373) and
    files whose name contains ``crash`` kill the probe process with SIGSEGV (like decord #99)."""
    if HANG_MARK in os.path.basename(path):
        open(path + ".hanging", "w").close()         # lets a test wait until the hang has begun
        time.sleep(3600)
    if NOISY_MARK in os.path.basename(path):          # like decord on bad input: echo the bytes, then die
        with open(path, "rb") as f:
            os.write(2, b"ERROR opening: " + f.read(4096) + b", Invalid data found when processing input\n")
    if CRASH_MARK in os.path.basename(path):
        os.kill(os.getpid(), signal.SIGSEGV)
    return probe_video(path, **kwargs)


def always_crashing_probe(path: str, **kwargs) -> dict:
    """A probe pool that is broken for every file (e.g. a decoder build that segfaults on load)."""
    os.kill(os.getpid(), signal.SIGSEGV)


class HangingDecoder(DecordDecoder):
    """decord, except that data starting with ``HANG`` blocks for ``seconds`` (a native hang stand-in)."""

    def __init__(self, seconds: float = 20.0):
        super().__init__()
        self.seconds = seconds

    def read(self, data, choose, size):
        if bytes(data[:4]) == HANG_BYTES:
            time.sleep(self.seconds)
        return super().read(data, choose, size)
