"""Study storages: in memory, a journal file or an RDB (SQLite, PostgreSQL), all surviving killed workers.

Only Optuna's public API is used (``optuna.storages`` constructors, ``Study``/``Trial``/``FrozenTrial``,
``BaseStorage`` methods, user attrs): the files are Optuna's own format, read by every Optuna of the pinned range and by
optuna-dashboard. Killed workers are found the same way on every persistent storage: a running trial writes a
heartbeat user attr (``qfx:heartbeat``) every ``HEARTBEAT_S`` seconds from a thread (:class:`Heartbeat`; its start
time counts as the first beat), and :func:`fail_stale` marks a RUNNING trial whose last beat is older than
``GRACE_S`` FAIL (the storage's public ``set_trial_state_values``, as Optuna's ``fail_stale_trials`` does) and
re-queues its configuration with Optuna's retry callback (a WAITING trial with the same parameters,
``failed_trial``/``retry_history`` system attrs). Both storages refuse a state change of a trial that is already
finished, so of two workers that find the same stale trial exactly one re-queues it. Trials that failed *because
their worker died* do not count toward ``n_trials`` (their retry does); trials whose evaluation raised do.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import optuna
from optuna import storages as _st
from optuna.storages import BaseStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

HEARTBEAT_S = 2
GRACE_S = 3 * HEARTBEAT_S
RETRIES = 3  # a configuration is re-queued at most this often after killed workers
STORAGE_FORMS = "sqlite:///FILE.db, journal:FILE (or FILE.log), postgresql://user:password@host/db"
BEAT = "qfx:heartbeat"  # user attr: time.time() of a running trial's last heartbeat


class Heartbeat:
    """One thread that writes the heartbeat of every trial being watched every ``every_s`` seconds (trials run in
    one worker's threads: ``n_jobs``). Started when a trial is first watched; it ends by itself once no trial has
    been watched for a period, so it outlives no search. One thread per worker, not per trial: starting and
    joining a thread per trial cost more than a fast trial's evaluation."""

    def __init__(self, every_s: float = HEARTBEAT_S) -> None:
        self.every_s = every_s
        self._lock = threading.Lock()
        self._watched: dict[int, optuna.Trial] = {}
        self._thread: threading.Thread | None = None

    @contextmanager
    def watch(self, trial: optuna.Trial) -> Iterator[None]:
        """While open, ``trial`` is beaten for (none for a trial shorter than a period: its start is its first)."""
        with self._lock:
            self._watched[trial.number] = trial
            if self._thread is None:
                self._thread = threading.Thread(target=self._beat, name="qfx-heartbeat", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._watched.pop(trial.number, None)

    def _beat(self) -> None:
        while True:
            time.sleep(self.every_s)
            with self._lock:
                trials = list(self._watched.values())
                if not trials:
                    self._thread = None  # the next watch starts another
                    return
            for t in trials:
                try:
                    t.set_user_attr(BEAT, time.time())
                except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
                    pass  # finished (or failed as stale by another worker) since it was listed


@contextmanager
def heartbeat(trial: optuna.Trial, every_s: float = HEARTBEAT_S) -> Iterator[None]:
    """While open, ``trial``'s heartbeat is written every ``every_s`` seconds by a thread of its own."""
    with Heartbeat(every_s).watch(trial):
        yield


def last_beat(t: FrozenTrial) -> float | None:
    """When a running trial last showed life: its last heartbeat or its start, whichever is later (a re-queued
    trial inherits its original's user attrs, old heartbeat included); None: not started."""
    start = None if t.datetime_start is None else t.datetime_start.timestamp()
    beat = t.user_attrs.get(BEAT)
    if not isinstance(beat, int | float) or isinstance(beat, bool):
        return start
    return float(beat) if start is None else max(float(beat), start)


def _retry() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _st.RetryHeartbeatStaleTrialCallback(max_retry=RETRIES)


def fail_stale(study: optuna.Study, storage: BaseStorage, grace_s: float = GRACE_S) -> list[int]:
    """Mark FAIL every RUNNING trial of ``study`` (kept in ``storage``, the storage the study was created on)
    whose worker stopped beating ``grace_s`` ago and re-queue its configuration (at most ``RETRIES`` times); the
    numbers of the trials this worker failed. As Optuna's own ``fail_stale_trials``: the state is written through
    the storage's ``set_trial_state_values``, which refuses (raises, or returns False) a trial another worker
    finished first, so exactly one worker re-queues each; and no sampler hook runs for a trial nobody ran."""
    now, failed, retry, sid = time.time(), [], None, None
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        beat = last_beat(t)
        if beat is None or now - beat <= grace_s:
            continue
        sid = storage.get_study_id_from_name(study.study_name) if sid is None else sid
        tid = storage.get_trial_id_from_study_id_trial_number(sid, t.number)
        try:
            if not storage.set_trial_state_values(tid, TrialState.FAIL):
                continue
        except Exception:  # noqa: BLE001 - finished meanwhile (or a locked database): not this worker's to re-queue
            continue
        retry = retry or _retry()
        retry(study, storage.get_trial(tid))
        failed.append(t.number)
    return failed


def make_storage(url: str | None) -> Any:
    """None -> in memory; ``*.log``/``*.jsonl``/``journal:PATH`` -> journal file; else an RDB URL.

    A malformed or unreachable URL raises ``ValueError`` with one line naming it and the accepted forms.
    """
    if url is None:
        return None
    try:
        return _make_storage(url)
    except ImportError as e:
        raise ValueError(
            f"--storage {url!r}: driver missing ({e}); for PostgreSQL: pip install -e '.[postgres]'"
        ) from None
    except Exception as e:  # noqa: BLE001 - SQLAlchemy/Optuna errors are pages long
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ValueError(f"--storage {url!r}: {first}; accepted forms: {STORAGE_FORMS}") from None


def is_journal(url: str) -> bool:
    return url.startswith("journal:") or url.endswith((".log", ".journal", ".jsonl"))


def _make_storage(url: str, attempts: int = 8) -> Any:
    """Optuna's own storages, constructed through their public constructors (heartbeats: :func:`heartbeat`)."""
    if is_journal(url):
        return _st.JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    for i in range(attempts):
        try:
            return _st.RDBStorage(
                url, engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
            )
        except Exception as e:  # noqa: BLE001
            # workers started together on an empty database race on CREATE TYPE/TABLE: the loser
            # sees a unique violation or "already exists"; once the schema is there, retry succeeds
            race = any(s in str(e) for s in ("UniqueViolation", "already exists", "duplicate key", "IntegrityError"))
            if not race or i == attempts - 1:
                raise
            time.sleep(0.2 * (i + 1))
    raise AssertionError("unreachable")


def create_study(url: str | None, **kwargs: Any) -> tuple[optuna.Study, BaseStorage | None]:
    """``optuna.create_study`` on :func:`make_storage` (returned with the study: :func:`fail_stale` writes
    through it), tolerant of workers creating the same study at once."""
    storage = make_storage(url)
    for i in range(8):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.create_study(storage=storage, **kwargs), storage
        except Exception as e:  # noqa: BLE001
            if i == 7 or not any(s in str(e) for s in ("UniqueViolation", "duplicate key", "IntegrityError")):
                raise
            time.sleep(0.2 * (i + 1))
    raise AssertionError("unreachable")


def retried_numbers(trials: Iterable[FrozenTrial]) -> set[int]:
    """Numbers of trials that were re-queued after their worker died."""
    out: set[int] = set()
    for t in trials:
        out.update(t.system_attrs.get("retry_history", ()))
    return out


def counted(trials: list[FrozenTrial]) -> int:
    """Trials that count toward ``n_trials``: COMPLETE, and FAIL unless re-queued after a killed worker."""
    retried = retried_numbers(trials)
    return sum(
        t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and t.number not in retried) for t in trials
    )
