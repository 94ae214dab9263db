"""Probe video files in subprocesses with a timeout (ingest-time validation).

Native decoders can hang inside C code (decord issues #373, #269) or crash the process; neither can be
interrupted from Python. So every file is opened, measured and test-decoded by :func:`probe_video` in a
pool of long-lived worker processes (forked from a ``forkserver``), and the parent kills and replaces a worker
whose file takes longer than ``timeout_s`` or that dies. The file is then reported as skipped with the reason,
and the pool goes on with the next file. Workers send their stderr (decord prints raw input bytes on bad input) to a log file.
"""
from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import time
from multiprocessing.connection import wait
from typing import Callable, Iterable, Iterator

from .video import DecodeError, describe_error, get_decoder, make_sampler

ProbeFn = Callable[..., dict]
READY = "__ready__"
STARTUP_TIMEOUT_S = 300.0


def probe_video(path: str, *, min_frames: int = 1, sample_frames: int = 4, decoder: str = "decord") -> dict:
    """Open ``path``, read its length, fps, size and codec, and decode a uniform sample plus the last frame.

    Returns ``{"ok": True, "n_frames", "fps", "width", "height", "codec"}``; raises on a bad file.
    """
    if os.path.getsize(path) == 0:
        raise DecodeError("zero-length file")
    with open(path, "rb") as f:
        data = f.read()
    dec = get_decoder(decoder)
    choose = make_sampler("uniform", sample_frames, min_frames=min_frames)
    frames, idx, n = dec.read(data, lambda n: [*choose(n), n - 1], None)
    if frames.ndim != 4 or frames.shape[0] != len(idx):
        raise DecodeError(f"decoder returned frames of shape {tuple(frames.shape)}")
    return {"ok": True, "n_frames": int(n), "fps": float(dec.info(data).fps), "width": int(frames.shape[2]),
            "height": int(frames.shape[1]), "codec": _codec_name(data)}


def _codec_name(data: bytes) -> str:
    """Codec of the first video stream via PyAV (metadata only; '' if PyAV cannot tell)."""
    import io
    try:
        import av
        with av.open(io.BytesIO(data)) as c:
            return c.streams.video[0].codec_context.name if c.streams.video else ""
    except Exception:                                   # the decoder check above is authoritative
        return ""


def _worker_main(conn, probe_fn: ProbeFn, kwargs: dict, stderr_path: str | None) -> None:
    """Worker loop: receive ``(key, path)``, send ``(key, result)``; ``None`` ends the loop."""
    if stderr_path:
        fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 2)
    conn.send((READY, None))           # the timeout counts from here, not from the (slow) interpreter start
    while True:
        task = conn.recv()
        if task is None:
            return
        key, path = task
        try:
            result = probe_fn(path, **kwargs)
        except Exception as exc:
            result = {"ok": False, "reason": describe_error(exc)}
        conn.send((key, result))


def worker_context():
    """``forkserver`` (POSIX): one clean server process imports this module once and forks every worker from
    it, so starting a worker — and replacing a killed one — costs milliseconds, and nothing is forked from a
    parent that runs threads (Ray, torch). ``spawn`` where forkserver does not exist."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx


class _Worker:
    def __init__(self, ctx, probe_fn, kwargs, stderr_path):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, probe_fn, kwargs, stderr_path), daemon=True)
        self.proc.start()
        child.close()
        self.task = None
        self.ready = False
        self.deadline = 0.0

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join(5)
        self.conn.close()


class ProbePool:
    """``workers`` probe processes; :meth:`run` yields ``(key, result)`` as results arrive (any order).

    A result is ``{"ok": False, "reason": ...}`` for a bad file, a timeout or a crashed worker.
    """

    def __init__(self, workers: int = 2, timeout_s: float = 60.0, probe_fn: ProbeFn = probe_video,
                 probe_kwargs: dict | None = None, stderr_path: str | None = None):
        self.n, self.timeout_s = max(1, workers), timeout_s
        self._args = (probe_fn, dict(probe_kwargs or {}), stderr_path)
        self._ctx = worker_context()
        self._workers: list[_Worker] = []

    def __enter__(self) -> "ProbePool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for w in self._workers:
            try:
                w.conn.send(None)
                w.proc.join(2)
            except (OSError, BrokenPipeError):
                pass
            if w.proc.is_alive():
                w.kill()
        self._workers = []

    def _start(self, w: _Worker, task) -> None:
        w.task = task
        w.deadline = time.monotonic() + self.timeout_s + (0 if w.ready else STARTUP_TIMEOUT_S)
        w.conn.send(task)

    def _replace(self, w: _Worker) -> _Worker:
        w.kill()
        new = _Worker(self._ctx, *self._args)
        self._workers[self._workers.index(w)] = new
        return new

    def run(self, tasks: Iterable[tuple[str, str]]) -> Iterator[tuple[str, dict]]:
        """Probe every ``(key, path)`` of ``tasks``; yields each key exactly once."""
        pending = iter(tasks)
        first = next(pending, None)
        if first is None:
            return
        pending = itertools.chain([first], pending)
        while len(self._workers) < self.n:
            self._workers.append(_Worker(self._ctx, *self._args))
        for w in self._workers:
            task = next(pending, None)
            if task is not None:
                self._start(w, task)
        while any(w.task for w in self._workers):
            for w, result in self._collect():
                restart = result.pop("_restart", False)
                yield w.task[0], result
                w = self._replace(w) if restart else w
                w.task = None
                task = next(pending, None)
                if task is not None:
                    self._start(w, task)

    def _collect(self) -> list[tuple[_Worker, dict]]:
        busy = [w for w in self._workers if w.task]
        timeout = max(0.0, min(w.deadline for w in busy) - time.monotonic())
        ready = wait([w.conn for w in busy], timeout=timeout)
        done = []
        for w in busy:
            if w.conn in ready:
                try:
                    key, result = w.conn.recv()
                    if key == READY:
                        w.ready, w.deadline = True, time.monotonic() + self.timeout_s
                    else:
                        done.append((w, result))
                except (EOFError, OSError):
                    w.proc.join(1)
                    done.append((w, {"ok": False, "_restart": True,
                                     "reason": f"probe process crashed (exit code {w.proc.exitcode})"}))
            elif time.monotonic() >= w.deadline:
                done.append((w, {"ok": False, "_restart": True,
                                 "reason": f"probe timed out after {self.timeout_s:g} s (decoder hang?)"}))
        return done
