"""Study storages: in memory, a journal file or an RDB (SQLite, PostgreSQL), all surviving killed workers.

Every persistent storage has heartbeats: a running trial records one every ``HEARTBEAT_S`` seconds (its
start time counts as the first) and a trial whose heartbeat is older than ``GRACE_S`` (its worker was killed)
is marked FAIL by the next worker that starts a trial, which also re-queues its configuration (Optuna's retry callback:
a WAITING trial with the same parameters). Optuna's RDB storage implements heartbeats itself; for the
journal file (which has none in Optuna 5) :class:`HeartbeatJournalStorage` records them as trial
system attributes. Marking a trial failed is atomic in both backends (the journal replays operations
in file order and rejects a second FAIL), so exactly one worker re-queues each killed trial.
Trials that failed *because their worker died* do not count toward ``n_trials`` (their retry does);
trials whose evaluation raised do.
"""

from __future__ import annotations

import datetime
import json
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import optuna
from optuna import storages as _st
from optuna.distributions import BaseDistribution, distribution_to_json
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.storages.journal._storage import JournalOperation
from optuna.trial import FrozenTrial, TrialState

HEARTBEAT_S = 2
GRACE_S = 3 * HEARTBEAT_S
RETRIES = 3  # a configuration is re-queued at most this often after killed workers
STORAGE_FORMS = "sqlite:///FILE.db, journal:FILE (or FILE.log), postgresql://user:password@host/db"
_BEAT = "qfx:heartbeat"


class _TrialWrites:
    """What both our storages do alike: a trial's params are held back while it samples and written at once
    (``_write_params``: one journal append, one RDB transaction), and a trial's first heartbeat, which Optuna
    records as the trial starts, is skipped: its start time serves as that beat (``_get_stale_trial_ids``)."""

    def _init_writes(self) -> None:
        self._local = threading.local()  # per thread: (trial id, params held back) while sampling
        self._beating: set[int] = set()  # running trials of this worker whose first beat was skipped
        self._beat_lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()  # type: ignore[misc]  # Optuna's storages drop their locks/connections
        for k in ("_local", "_beat_lock"):
            state.pop(k, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # type: ignore[misc]
        self._local = threading.local()
        self._beat_lock = threading.Lock()

    def _write_params(self, trial_id: int, held: list[Any]) -> None:
        raise NotImplementedError

    @contextmanager
    def params_at_once(self, trial_id: int) -> Iterator[None]:
        """While open, the params of ``trial_id`` (in this thread) are held back; they are written together on
        exit, also when sampling raised. Optuna's trial reads its own params from its cached copy, so later
        suggestions see the earlier ones."""
        self._local.params = (trial_id, held := [])
        try:
            yield
        finally:
            self._local.params = None
            if held:
                self._write_params(trial_id, held)

    def _holding(self, trial_id: int) -> list[Any] | None:
        """The list this trial's params are held in, or None when they are written as they come."""
        held = getattr(self._local, "params", None)
        return held[1] if held is not None and held[0] == trial_id else None

    def _first_beat(self, trial_id: int) -> bool:
        with self._beat_lock:
            first = trial_id not in self._beating
            self._beating.add(trial_id)
        return first

    def _finished(self, trial_id: int) -> None:
        with self._beat_lock:
            self._beating.discard(trial_id)


class HeartbeatJournalStorage(_TrialWrites, JournalStorage, BaseHeartbeat):
    """A journal-file storage with Optuna's heartbeat protocol (beats stored as trial system attrs)."""

    def __init__(
        self,
        backend: Any,
        heartbeat_interval: int = HEARTBEAT_S,
        grace_period: int = GRACE_S,
        stale_callback: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    ) -> None:
        super().__init__(backend)
        self._interval = heartbeat_interval
        self._grace = grace_period
        self._stale_callback = stale_callback
        self._attrs: dict[int, dict[str, Any]] = {}  # trial id -> user attrs appended with its final state
        self._init_writes()

    def record_heartbeat(self, trial_id: int) -> None:
        """Every beat after a trial's first: Optuna beats once as the trial starts, and the trial's start time
        already serves as that beat (``_get_stale_trial_ids``), so that append is skipped."""
        if self._first_beat(trial_id):
            return
        try:
            self.set_trial_system_attr(trial_id, _BEAT, time.time())
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # the trial finished (or was failed by another worker) meanwhile

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            beat = t.system_attrs.get(_BEAT)
            if beat is None and t.datetime_start is not None:  # killed before its first beat
                beat = t.datetime_start.timestamp()
            if beat is not None and now - beat > self._grace:
                stale.append(t._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self._interval

    def _append(self, logs: list[dict[str, Any]]) -> None:
        """Records in one append (one lock, one fsync), then replayed like every other worker's. When the replay
        refuses one (its trial was finished meanwhile, e.g. failed as stale by another worker), the rest of the
        batch is replayed too before the first refusal is raised: a refused record ends a replay, and the
        records after it would otherwise be refused one by one by every later call."""
        with self._thread_lock:
            self._backend.append_logs(logs)
            refused: Exception | None = None
            for _ in range(len(logs) + 1):
                try:
                    self._sync_with_backend()
                    break
                except (optuna.exceptions.UpdateFinishedTrialError, KeyError) as e:
                    refused = refused or e
            if refused is not None:
                raise refused

    def _write_params(self, trial_id: int, held: list[Any]) -> None:
        self._append(held)

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                        distribution: BaseDistribution) -> None:  # fmt: skip
        held = self._holding(trial_id)
        if held is None:
            super().set_trial_param(trial_id, param_name, param_value_internal, distribution)
            return
        held.append({"op_code": JournalOperation.SET_TRIAL_PARAM, "worker_id": self._replay_result.worker_id,
                        "trial_id": trial_id, "param_name": param_name, "param_value_internal": param_value_internal,
                        "distribution": distribution_to_json(distribution)})  # fmt: skip

    def set_trial_user_attrs(self, trial_id: int, attrs: dict[str, Any]) -> None:
        """A trial's user attrs, appended with its final state (``set_trial_state_values``): the same records,
        one attr each as Optuna's replay requires, that ``set_trial_user_attr`` writes one append at a time."""
        with self._thread_lock:
            self._attrs.setdefault(trial_id, {}).update(attrs)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Any = None) -> bool:
        with self._thread_lock:
            attrs = self._attrs.pop(trial_id, None) if state.is_finished() else None
            if state.is_finished():
                self._finished(trial_id)
        if not attrs:
            return super().set_trial_state_values(trial_id, state, values)
        wid = self._replay_result.worker_id
        logs = [{"op_code": JournalOperation.SET_TRIAL_USER_ATTR, "worker_id": wid, "trial_id": trial_id,
                 "user_attr": {k: v}} for k, v in attrs.items()]  # fmt: skip
        done = datetime.datetime.now(tz=datetime.UTC).isoformat(timespec="microseconds")
        logs.append({"op_code": JournalOperation.SET_TRIAL_STATE_VALUES, "worker_id": wid, "trial_id": trial_id,
                     "state": state, "values": values, "datetime_complete": done})  # fmt: skip
        self._append(logs)
        return True

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self._stale_callback


class HeartbeatRDBStorage(_TrialWrites, optuna.storages.RDBStorage):
    """Optuna's RDB storage, whose stale-trial check also catches trials killed before their first
    heartbeat (Optuna skips trials without a heartbeat row, so those would stay RUNNING forever), and
    which writes a trial's user attrs in the transaction that finishes it (the same rows Optuna writes one
    transaction each): the attrs cost no commit, so no fsync, of their own."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending: dict[int, dict[str, Any]] = {}  # trial id -> user attrs written with its state
        self._init_writes()

    def record_heartbeat(self, trial_id: int) -> None:
        """Every beat after a trial's first (see :class:`_TrialWrites`)."""
        if not self._first_beat(trial_id):
            super().record_heartbeat(trial_id)

    def _write_params(self, trial_id: int, held: list[Any]) -> None:
        from optuna.storages._rdb.storage import _create_scoped_session

        with _create_scoped_session(self.scoped_session, True) as session:
            for args in held:
                self._set_trial_param_without_commit(session, trial_id, *args)

    def _set_trial_param(self, trial_id: int, *args: Any) -> None:
        """What Optuna's cached storage calls per suggestion: held back inside :meth:`params_at_once`."""
        held = self._holding(trial_id)
        if held is None:
            super()._set_trial_param(trial_id, *args)
        else:
            held.append(args)

    def set_trial_user_attrs(self, trial_id: int, attrs: dict[str, Any]) -> None:
        """Attrs for a running trial, committed with its final state (``set_trial_state_values``)."""
        self._pending[trial_id] = {**self._pending.get(trial_id, {}), **attrs}

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Any = None) -> bool:
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session
        from sqlalchemy import exc

        if state.is_finished():
            self._finished(trial_id)
        attrs = self._pending.pop(trial_id, None)
        if not attrs or state == TrialState.RUNNING:
            if attrs:
                self._pending[trial_id] = attrs
            return super().set_trial_state_values(trial_id, state, values)
        try:  # Optuna's set_trial_state_values for a finishing trial, plus the attrs, in one transaction
            with _create_scoped_session(self.scoped_session) as session:
                trial = models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
                self.check_trial_is_updatable(trial_id, trial.state)
                self._upsert_user_attrs(session, trial_id, attrs)
                for objective, v in enumerate(values or ()):
                    self._set_trial_value_without_commit(session, trial, objective, v)
                trial.state = state
                trial.datetime_complete = datetime.datetime.now()
        except exc.IntegrityError:
            return False
        return True

    def _upsert_user_attrs(self, session: Any, trial_id: int, attrs: dict[str, Any]) -> None:
        """The rows Optuna writes one upsert each (after a trial lookup each), as one multi-row upsert on SQLite
        and PostgreSQL; one at a time elsewhere."""
        import sqlite3

        from optuna.storages._rdb import models
        from sqlalchemy.dialects import postgresql, sqlite

        table = models.TrialUserAttributeModel
        dialect = {"postgresql": postgresql, "sqlite": sqlite}.get(self.engine.name)
        if dialect is None or (dialect is sqlite and sqlite3.sqlite_version_info < (3, 24, 0)):
            for k, v in attrs.items():
                self._set_trial_attr_without_commit(session, table, trial_id, k, v)
            return
        ins = dialect.insert(table).values([{"trial_id": trial_id, "key": k, "value_json": json.dumps(v)}
                                             for k, v in attrs.items()])  # fmt: skip
        session.execute(ins.on_conflict_do_update(index_elements=[table.trial_id, table.key],
                                                  set_={"value_json": ins.excluded.value_json}))  # fmt: skip

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session
        from sqlalchemy import orm

        stale = super()._get_stale_trial_ids(study_id)
        grace = self.grace_period or 2 * (self.heartbeat_interval or HEARTBEAT_S)
        now = datetime.datetime.now()
        with _create_scoped_session(self.scoped_session, True) as session:
            running = (
                session.query(models.TrialModel)
                .options(orm.selectinload(models.TrialModel.heartbeats))
                .filter(models.TrialModel.state == TrialState.RUNNING)
                .filter(models.TrialModel.study_id == study_id)
                .all()
            )
            for t in running:
                started = t.datetime_start
                if not t.heartbeats and started is not None and (now - started).total_seconds() > grace:
                    stale.append(t.trial_id)
        return stale


def _ours(trial: optuna.Trial) -> HeartbeatRDBStorage | HeartbeatJournalStorage | None:
    """The trial's storage when it is one of ours (the RDB storage sits under Optuna's cache), else None."""
    storage = trial.study._storage
    for s in (storage, getattr(storage, "_backend", None)):
        if isinstance(s, HeartbeatRDBStorage | HeartbeatJournalStorage):
            return s
    return None


def set_user_attrs(trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    """All of a trial's user attrs, written with the trial's final state on our RDB storage (same transaction)
    and on our journal (same append); else one write each."""
    s = _ours(trial)
    if s is not None:
        s.set_trial_user_attrs(trial._trial_id, attrs)
        return
    for k, v in attrs.items():
        trial.set_user_attr(k, v)


def params_at_once(trial: optuna.Trial) -> Any:
    """A context in which the trial's suggestions are written in one append to our journal, in one transaction
    to our RDB storage (else one write each, as Optuna does)."""
    s = _ours(trial)
    return nullcontext() if s is None else s.params_at_once(trial._trial_id)


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


def _make_storage(url: str, attempts: int = 8) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # RetryHeartbeatStaleTrialCallback (Optuna >= 4.9) is the renamed RetryFailedTrialCallback
        cls = getattr(_st, "RetryHeartbeatStaleTrialCallback", None) or _st.RetryFailedTrialCallback
        retry = cls(max_retry=RETRIES)
    if url.startswith("journal:") or url.endswith((".log", ".journal", ".jsonl")):
        return HeartbeatJournalStorage(JournalFileBackend(url.removeprefix("journal:")), stale_callback=retry)
    for i in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return HeartbeatRDBStorage(
                    url,
                    heartbeat_interval=HEARTBEAT_S,
                    grace_period=GRACE_S,
                    heartbeat_stale_trial_callback=retry,
                    engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {},
                )
        except Exception as e:  # noqa: BLE001
            # workers started together on an empty database race on CREATE TYPE/TABLE: the loser
            # sees a unique violation or "already exists"; once the schema is there, retry succeeds
            race = any(s in str(e) for s in ("UniqueViolation", "already exists", "duplicate key", "IntegrityError"))
            if not race or i == attempts - 1:
                raise
            time.sleep(0.2 * (i + 1))
    raise AssertionError("unreachable")


def create_study(url: str | None, **kwargs: Any) -> optuna.Study:
    """``optuna.create_study`` on :func:`make_storage`, tolerant of workers creating the same study at once."""
    storage = make_storage(url)
    for i in range(8):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.create_study(storage=storage, **kwargs)
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
