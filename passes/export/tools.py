"""External tools (Yosys, Verilator, g++) run safely: an argument vector, an absolute working directory,
a script file of our own text, and a live elapsed line while they run.

No user path or name is ever pasted into a command string or a tool's script: scripts name files
relative to the working directory, which is passed to the OS as the process's cwd (never parsed).
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

Progress = Callable[[str], None]

TICK_S = 15.0  # seconds between elapsed lines of a long step


class ToolError(RuntimeError):
    """An external tool failed; the message names it, its working directory and its last output lines."""


class Ticker:
    """Reports ``what: N s elapsed`` through ``progress`` every ``every`` seconds while the block runs."""

    def __init__(self, what: str, progress: Progress | None, every: float = TICK_S) -> None:
        self.what, self.progress, self.every = what, progress, every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.t0 = 0.0

    def __enter__(self) -> Ticker:
        self.t0 = time.perf_counter()
        if self.progress is not None:
            self._thread = threading.Thread(target=self._run, name="qfx-ticker", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.progress(f"{self.what}: {time.perf_counter() - self.t0:.0f} s elapsed")  # type: ignore[misc]

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def run_tool(
    argv: Sequence[str],
    cwd: Path,
    what: str | None = None,
    progress: Progress | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (a vector, no shell) in the absolute directory ``cwd``; raise :class:`ToolError` on failure.

    ``progress`` receives an elapsed line every :data:`TICK_S` seconds (for steps that take minutes)."""
    cwd = Path(cwd).resolve()
    label = what or argv[0]
    try:
        with Ticker(label, progress):
            r = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ToolError(f"{argv[0]} did not finish within {timeout:g} s in {cwd}") from None
    except FileNotFoundError:
        raise ToolError(f"{argv[0]} is not on PATH") from None
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        raise ToolError(f"{argv[0]} failed in {cwd}: {' / '.join(tail)}")
    return r
