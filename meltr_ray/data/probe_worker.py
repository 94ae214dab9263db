"""One probe worker process: ``python -m meltr_ray.data.probe_worker FD`` (started by :class:`ProbePool`).

The worker is a fresh interpreter that imports only this package — never the user's ``__main__`` — so a
script that calls ``ingest(...)`` at its top level, with no ``if __name__ == "__main__":`` guard, is not
re-run in every worker (what ``multiprocessing``'s ``spawn``/``forkserver`` children do).

Protocol over the socket ``FD`` (a :class:`multiprocessing.connection.Connection`, length-framed pickles):

1. the parent sends ``{"sys_path", "fn": "module:qualname", "kwargs", "parent_pid"}``;
2. the worker imports ``fn``, warms up the decoder, and sends ``(READY, None)`` — the parent's per-file
   timeout counts from here, not from the interpreter start;
3. then, per task, ``(key, path)`` in and ``(key, result dict)`` out; ``None`` ends the worker.

The worker's stdout and stderr go to a temporary file the parent made (not the output folder). It is
emptied before each file, so after a crash or a hang it holds only that file's decoder messages, which the
parent reduces to a short fixed phrase (:func:`meltr_ray.data.probe.summarise_stderr`).
"""
from __future__ import annotations

import importlib
import os
import signal
import sys
from multiprocessing.connection import Connection

READY = "__ready__"


def resolve(spec: str):
    """``"package.module:Outer.func"`` → the object (how a probe function is named across processes)."""
    module, _, qualname = spec.partition(":")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _die_with_parent(parent_pid: int) -> None:
    """Linux: ask the kernel to SIGKILL this worker when the ingest process dies (a hung decoder would
    otherwise outlive a killed ingest for as long as it hangs)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)      # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:                                     # the parent died before prctl
        os._exit(0)


def _warm_up(kwargs: dict) -> None:
    """Import the decoder before READY so its import time never counts against the first file's timeout."""
    if isinstance(kwargs.get("decoder"), str):
        from .video import get_decoder
        try:
            get_decoder(kwargs["decoder"])
        except Exception:                              # reported per file by the probe itself
            pass


def _clear_output() -> None:
    """Empty the captured stdout/stderr file (both fds share one open file, hence one offset)."""
    try:
        os.ftruncate(2, 0)
        os.lseek(2, 0, os.SEEK_SET)
    except OSError:                                    # run by hand on a terminal: nothing to empty
        pass


def serve(conn: Connection) -> None:
    """Receive the set-up message, then probe ``(key, path)`` tasks until ``None`` arrives."""
    from .probe import probe_failure_reason

    init = conn.recv()
    _die_with_parent(init["parent_pid"])
    sys.path[:] = init["sys_path"]                    # the parent's import path, as spawn would set it
    probe_fn, kwargs = resolve(init["fn"]), init["kwargs"]
    _warm_up(kwargs)
    conn.send((READY, None))
    while (task := conn.recv()) is not None:
        key, path = task
        _clear_output()
        try:
            result = probe_fn(path, **kwargs)
        except Exception as exc:
            result = {"ok": False, "reason": probe_failure_reason(exc)}
        conn.send((key, result))


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)       # Ctrl-C: the parent closes the pool
    serve(Connection(int(sys.argv[1])))
