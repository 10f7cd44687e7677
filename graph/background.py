"""Work beside the caller: a job that writes files runs in a worker thread while the caller goes on.

No fork: a library runs inside other people's processes (threads holding locks, CUDA contexts, connections),
where a forked child can deadlock or duplicate state. The job must only read what the caller does not change
meanwhile (plots drawn from a snapshot through ``matplotlib.figure.Figure`` objects, files of a graph being
saved); its exception is raised where it is waited for, and its files are never lost.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class Beside:
    """A job started by :func:`beside`: :meth:`wait` for its files; as a context manager it waits on leaving."""

    def __init__(self, job: Callable[[], object], thread: bool = True) -> None:
        self.job = job
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None
        if thread:
            self.thread = threading.Thread(target=self._run, name="qfx-beside", daemon=True)
            self.thread.start()

    def _run(self) -> None:
        try:
            self.job()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread by wait()
            self.error = e

    def wait(self) -> None:
        """Return once the job's files are written (run here when no thread was started); its error raises here."""
        t, self.thread = self.thread, None
        if t is None:
            job, self.job = self.job, lambda: None
            job()
            return
        t.join()
        if self.error is not None:
            err, self.error = self.error, None
            raise err

    def __enter__(self) -> Beside:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        """Wait for the job; when the caller's block failed, its error wins over the job's."""
        try:
            self.wait()
        except Exception:
            if exc_type is None:
                raise


def beside(job: Callable[[], object]) -> Beside:
    """Start ``job`` (it writes files) in a worker thread; the returned :class:`Beside` waits for it."""
    return Beside(job)
