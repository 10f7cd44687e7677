"""Work on another core: a job that writes files runs in a forked child while the caller goes on."""

from __future__ import annotations

import os
import signal
import sys
import warnings
from collections.abc import Callable

import torch


class Beside:
    """A job started by :func:`beside`: :meth:`wait` for its files, or :meth:`cancel` it."""

    def __init__(self, job: Callable[[], object], pid: int | None) -> None:
        self.job, self.pid = job, pid

    def wait(self) -> None:
        """Return once the job's files are written: the child's exit, or the job run here (no child, or the
        child failed: its errors surface here and its files are never lost)."""
        pid, self.pid = self.pid, None
        if pid is None or os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0:
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
            torch.set_num_threads(1)  # OpenMP's pool does not survive fork; the parent keeps the cores it had
            job()
            code = 0
        finally:
            os._exit(code)
    return Beside(job, pid)
