"""Work on another core: a job that writes files runs in a forked child while the caller goes on."""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)

PATIENCE = (10.0, 3.0)
"""A child still running ``max(a, b * t)`` seconds after :meth:`Beside.wait` is called, ``t`` being the time the
caller worked meanwhile, is taken as stuck (a lock another thread held at fork time): stopped, the job run here."""


class Beside:
    """A job started by :func:`beside`: :meth:`wait` for its files, or :meth:`cancel` it."""

    def __init__(self, job: Callable[[], object], pid: int | None) -> None:
        self.job, self.pid, self.started = job, pid, time.perf_counter()

    def wait(self) -> None:
        """Return once the job's files are written: the child's exit, or the job run here (no child, or the
        child failed or got stuck: its errors surface here and its files are never lost)."""
        pid, self.pid = self.pid, None
        if pid is None:
            self.job()
            return
        now = time.perf_counter()
        deadline = now + max(PATIENCE[0], PATIENCE[1] * (now - self.started))
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.perf_counter() > deadline:
                log.warning("a forked writer got stuck; stopped, its files written here instead")
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                status = -1
                break
            time.sleep(0.002)
        if status != 0:
            self.job()

    def cancel(self) -> None:
        """Stop the child (the caller failed); the job is not run."""
        pid, self.pid, self.job = self.pid, None, lambda: None
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)

    def __enter__(self) -> Beside:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        """Wait for the job, or cancel it when the caller's block failed."""
        self.cancel() if exc_type is not None else self.wait()


def beside(job: Callable[[], object]) -> Beside:
    """Start ``job`` (it writes files) in a forked child so it runs on another core while the caller goes on;
    the returned :class:`Beside` waits for it. Where fork is missing or CUDA is initialised (a forked child
    cannot use the parent's context), ``job`` runs in this process when waited for."""
    if not hasattr(os, "fork") or torch.cuda.is_initialized():
        return Beside(job, None)
    for stream in (sys.stdout, sys.stderr):  # nothing pending that the child could write a second time
        stream.flush()
    try:
        with warnings.catch_warnings():  # Python >= 3.12 warns on every fork beside threads
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
    except OSError:
        return Beside(job, None)
    if pid == 0:  # the child: run, then leave without the parent's exit handlers or buffered output
        code = 1
        try:
            gc.disable()  # no finalizer of the parent's objects (connections, files) runs here
            torch.set_num_threads(1)  # OpenMP's pool does not survive fork; the parent keeps the cores it had
            job()
            code = 0
        finally:
            os._exit(code)
    return Beside(job, pid)
