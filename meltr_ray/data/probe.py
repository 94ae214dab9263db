"""Probe video files in subprocesses with a timeout (ingest-time validation).

Native decoders can hang inside C code (decord issues #373, #269) or crash the process; neither can be
interrupted from Python. So every file is opened, measured and test-decoded by :func:`probe_video` in a
pool of long-lived worker processes, and the parent kills and replaces a worker whose file takes longer than
``timeout_s`` or that dies. The file is then reported as skipped with the reason, and the pool goes on with
the next file.

Workers are ``python -m meltr_ray.data.probe_worker`` subprocesses (not ``multiprocessing`` children, which
re-import the user's ``__main__``: a guard-less script calling ``ingest`` would run again in every worker).
Their stdout/stderr go to an unlinked temporary file per worker; decord echoes the input bytes on bad input,
so that text is never copied anywhere: a crash or hang reason carries only a fixed phrase picked from it
(:func:`summarise_stderr`). When the workers themselves are broken — they die before they are ready, or the
first files all fail the way a broken pool fails — :class:`ProbePoolError` says so instead of skipping
every row.
"""
from __future__ import annotations

import collections
import os
import socket
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection, wait
from typing import Callable, Iterable, Iterator

from .probe_worker import READY, resolve
from .video import DecodeError, describe_error, get_decoder, make_sampler

ProbeFn = Callable[..., dict]
STARTUP_TIMEOUT_S = 300.0
MAX_START_FAILURES = 3                 # workers in a row that die before they are ready: the pool is broken
INVALID = "not a readable video (invalid data)"
POOL_FAILURES = ("probe process crashed", "probe timed out", "probe error")
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# decoder messages → the fixed phrase a report may carry (never the message itself: it can echo file bytes)
STDERR_PHRASES = (("Invalid data found", "invalid data"), ("moov atom not found", "moov atom not found"),
                  ("broken metadata", "broken metadata"), ("cannot find video stream", "no video stream"),
                  ("st_nb >= 0", "no video stream"), ("Cannot allocate memory", "out of memory"),
                  ("std::bad_alloc", "out of memory"), ("codec not currently supported", "unsupported codec"))


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




# ---- reasons -------------------------------------------------------------------------------------------------
def probe_failure_reason(exc: BaseException) -> str:
    """The report's reason for a probe that raised: a fixed phrase, never the decoder's raw message."""
    if isinstance(exc, DecodeError):                  # ours: "zero-length file", "too short: ...", ...
        return str(exc)
    if isinstance(exc, IsADirectoryError):
        return "not a regular file"
    if isinstance(exc, FileNotFoundError):
        return "missing file"
    if isinstance(exc, OSError) and not type(exc).__module__.startswith(("decord", "av")):
        return f"unreadable file ({exc.strerror or type(exc).__name__})"
    reason = describe_error(exc)
    if reason in ("no video stream", INVALID):
        return reason
    if type(exc).__module__.split(".")[0] in ("decord", "av"):
        return INVALID                                # e.g. a PNG renamed .mp4: "broken metadata"
    return f"probe error ({type(exc).__name__})"


def summarise_stderr(text: str) -> str:
    """Fixed phrases for the decoder messages found in a worker's captured output ('' if none)."""
    found = [phrase for needle, phrase in STDERR_PHRASES if needle in text]
    return ", ".join(dict.fromkeys(found))


def startup_error_line(text: str) -> str:
    """The last error line a worker printed before it died at start-up (its own traceback or the
    interpreter's fatal error; no file had been read), else its last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line]
    last = (errors or lines or ["no output"])[-1]
    return "".join(c for c in last if c.isprintable())[:200]


def is_pool_failure(result: dict) -> bool:
    """A crash, hang or probe bug: what a broken pool produces for every file, unlike a bad file's reason."""
    return not result.get("ok") and str(result.get("reason", "")).startswith(POOL_FAILURES)


class ProbePoolError(RuntimeError):
    """The probe workers are broken, not the files (nothing is skipped on their account)."""


# ---- the pool ----------------------------------------------------------------------------------------------
def function_name(fn: ProbeFn) -> str:
    """``"module:qualname"`` of a module-level function, checked to resolve back to ``fn`` in a fresh process."""
    spec = f"{getattr(fn, '__module__', '')}:{getattr(fn, '__qualname__', '')}"
    if spec.startswith("__main__:") or "<" in spec:
        raise ValueError(f"probe_fn {spec!r} must be a module-level function of an importable module "
                         "(the probe workers are fresh processes that do not run your script)")
    try:
        if resolve(spec) is fn:
            return spec
    except (ImportError, AttributeError):
        pass
    raise ValueError(f"probe_fn {spec!r} cannot be imported by name from a fresh process")


class _Worker:
    """One ``python -m meltr_ray.data.probe_worker`` subprocess: its socket and its captured output."""

    def __init__(self, init: dict):
        parent, child = socket.socketpair()
        self.output = tempfile.TemporaryFile(prefix="meltr_probe_")
        path = os.pathsep.join(p for p in (PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen([sys.executable, "-m", "meltr_ray.data.probe_worker", str(child.fileno())],
                                     pass_fds=[child.fileno()], stdin=subprocess.DEVNULL, stdout=self.output,
                                     stderr=self.output, env=dict(os.environ, PYTHONPATH=path))
        child.close()
        self.conn = Connection(parent.detach())
        self.conn.send(init)
        self.task, self.ready = None, False
        self.deadline = time.monotonic() + STARTUP_TIMEOUT_S

    def send(self, task) -> None:
        self.task = task
        try:
            self.conn.send(task)
        except OSError:                                # died already: the next recv sees EOF
            pass

    def output_text(self) -> str:
        return os.pread(self.output.fileno(), 1 << 16, 0).decode("utf-8", "replace")

    def exit_code(self) -> int | None:
        try:
            return self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return None

    def ask_to_stop(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass

    def close(self, grace_s: float = 0.0) -> None:
        """Wait up to ``grace_s`` for the worker to exit (after :meth:`ask_to_stop`), then kill it."""
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.conn.close()
        self.output.close()


class ProbePool:
    """``workers`` probe processes; :meth:`run` yields ``(key, result)`` as results arrive (any order).

    A result is ``{"ok": False, "reason": ...}`` for a bad file, a timeout or a crashed worker. ``probe_fn``
    must be importable by name (a module-level function): the workers import it, they never receive code.
    """

    def __init__(self, workers: int = 2, timeout_s: float = 60.0, probe_fn: ProbeFn = probe_video,
                 probe_kwargs: dict | None = None):
        self.n, self.timeout_s = max(1, workers), timeout_s
        self._init = {"fn": function_name(probe_fn), "kwargs": dict(probe_kwargs or {}),
                      "sys_path": list(sys.path), "parent_pid": os.getpid()}
        self._workers: list[_Worker] = []
        self._spare: _Worker | None = None
        self._retry: collections.deque = collections.deque()
        self._start_failures = 0

    def __enter__(self) -> "ProbePool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self, grace_s: float = 2.0) -> None:
        """Ask every worker to stop, give them ``grace_s`` in all (a busy one finishes its file), kill the rest."""
        workers = self._workers + [self._spare] * (self._spare is not None)
        for w in workers:
            w.ask_to_stop()
        deadline = time.monotonic() + grace_s
        for w in workers:
            w.close(grace_s=max(0.0, deadline - time.monotonic()))
        self._workers, self._spare = [], None

    def run(self, tasks: Iterable[tuple[str, str]]) -> Iterator[tuple[str, dict]]:
        """Probe every ``(key, path)`` of ``tasks``; yields each key exactly once.

        Results are held back until one shows the pool works (a success or a file's own reason); raises
        :class:`ProbePoolError` when the first ``2 × workers + 1`` results — or all of them — are crashes,
        hangs or probe bugs.
        """
        pending = iter(tasks)
        held: list = []
        healthy = False
        for key, result in self._results(pending):
            if healthy or not is_pool_failure(result):
                healthy = True
                yield from held
                held = []
                yield key, result
                continue
            held.append((key, result))
            if len(held) >= 2 * self.n + 1:
                raise ProbePoolError(self._all_failed(held, "the first"))
        if held:
            raise ProbePoolError(self._all_failed(held, "all"))

    def _all_failed(self, held: list, which: str) -> str:
        reasons = collections.Counter(r["reason"] for _, r in held).most_common(2)
        said = "; ".join(f"{n}× {reason}" for reason, n in reasons)
        return (f"{which} {len(held)} probed files all failed the way a broken probe pool fails ({said}); "
                f"nothing was skipped or written on their account. If the files are fine, check that "
                f"`{sys.executable} -m meltr_ray.data.probe_worker` can start and decode one of them; "
                f"a longer --probe-timeout helps on an overloaded machine")

    def _next_task(self, pending):
        return self._retry.popleft() if self._retry else next(pending, None)

    def _assign(self, w: _Worker, pending) -> None:
        task = self._next_task(pending)
        w.task = None
        if task is not None:
            w.send(task)
            if w.ready:
                w.deadline = time.monotonic() + self.timeout_s

    def _results(self, pending) -> Iterator[tuple[str, dict]]:
        first = self._next_task(pending)
        if first is None:
            return
        self._retry.append(first)
        while len(self._workers) < self.n:
            self._workers.append(_Worker(self._init))
        for w in self._workers:
            self._assign(w, pending)
        while any(w.task for w in self._workers):
            busy = [w for w in self._workers if w.task]
            timeout = max(0.0, min(w.deadline for w in busy) - time.monotonic())
            ready = wait([w.conn for w in busy], timeout=timeout)
            for w in busy:
                if w.conn in ready:
                    yield from self._receive(w, pending)
                elif time.monotonic() >= w.deadline:
                    yield from self._expire(w, pending)

    def _receive(self, w: _Worker, pending) -> Iterator[tuple[str, dict]]:
        try:
            key, result = w.conn.recv()
        except (EOFError, OSError):
            yield from self._died(w, pending)
            return
        if key == READY:
            w.ready, w.deadline, self._start_failures = True, time.monotonic() + self.timeout_s, 0
            return
        self._assign(w, pending)
        yield key, result

    def _died(self, w: _Worker, pending) -> Iterator[tuple[str, dict]]:
        code, task = w.exit_code(), w.task
        if not w.ready:
            self._start_failed(w, f"exit code {code}: {startup_error_line(w.output_text())}")
        else:
            said = summarise_stderr(w.output_text())
            yield task[0], {"ok": False, "reason": f"probe process crashed (exit code {code}"
                                                   f"{'; decoder said: ' + said if said else ''})"}
            self._assign(self._replace(w), pending)

    def _expire(self, w: _Worker, pending) -> Iterator[tuple[str, dict]]:
        task = w.task
        if not w.ready:
            self._start_failed(w, f"not ready after {STARTUP_TIMEOUT_S:g} s")
            return
        said = summarise_stderr(w.output_text())
        yield task[0], {"ok": False, "reason": f"probe timed out after {self.timeout_s:g} s (decoder hang?"
                                               f"{'; decoder said: ' + said if said else ''})"}
        self._assign(self._replace(w), pending)

    def _start_failed(self, w: _Worker, what: str) -> None:
        """A worker that never became ready is the pool's fault, not its file's: retry the file elsewhere."""
        self._retry.append(w.task)
        self._start_failures += 1
        if self._start_failures >= MAX_START_FAILURES:
            raise ProbePoolError(f"{self._start_failures} probe workers in a row died before they were ready "
                                 f"({what}); command: {sys.executable} -m meltr_ray.data.probe_worker")
        self._assign(self._replace(w), iter(()))

    def _replace(self, w: _Worker) -> _Worker:
        """Swap in the spare worker (started at the previous replacement, so usually ready: a replacement
        costs milliseconds, not an interpreter start) and start the next spare."""
        w.close()
        new, self._spare = self._spare or _Worker(self._init), _Worker(self._init)
        self._workers[self._workers.index(w)] = new
        return new
