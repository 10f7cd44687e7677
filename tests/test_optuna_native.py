"""Optuna-native studies, checked with optuna-dashboard's own server (its WSGI app) and trials_dataframe:
parameters as real values, metric names, a typed record per trial, the space as study attrs."""

import csv
import io
import json
import sys

import optuna
import pytest
from search_helpers import make_checkpoint, search_toml

from qfx.search.records import record_of
from qfx.search.session import run_search

SPACE = """
[search.search_space.seed.default.config]
name = ["NA"]
[search.search_space.seed.linear.config]
name = ["integer", "NA"]
weight_width = [2, 4]
[search.search_space.seed.relu.config]
name = ["integer"]
data_in_width = [2, 4, 6, 8]
"""


@pytest.fixture(scope="module")
def study_url(tmp_path_factory):
    d = tmp_path_factory.mktemp("native")
    ck = make_checkpoint(d / "ck", epochs=2)
    cfg = d / "c.toml"
    # a budget every point meets: budgeted metrics are the flat (sortable) columns
    cfg.write_text(search_toml("random", 6, space=SPACE) + "\n[search.strategy.constraints]\nmemory_bytes.max = 1e9\n")
    url = f"sqlite:///{d / 's.db'}"
    run_search(cfg, checkpoint=str(ck), storage=url, study_name="native")
    return url


def _get(app, path):
    status = {}

    def start(s, headers, exc_info=None):
        status["s"] = s

    env = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "t", "SERVER_PORT": "80",
           "wsgi.input": io.BytesIO(), "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr}  # fmt: skip
    body = b"".join(app(env, start))
    assert status["s"].startswith("200"), (path, status, body[:300])
    return body


def test_trials_hold_real_widths_numeric_metrics_and_the_space(study_url):
    study = optuna.load_study(study_name="native", storage=study_url)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert {t.params["relu/data_in_width"] for t in done} <= {2, 4, 6, 8}
    assert {json.loads(t.params["linear/config"])["name"] for t in done} <= {"integer", "NA"}
    for t in done:
        # the objectives are the value (their sum); the record holds them, flat columns are only for budgets
        assert all(isinstance(record_of(t).metrics[m], float) for m in ("accuracy", "average_bitwidth"))
        assert not {"accuracy", "average_bitwidth"} & set(t.user_attrs)  # no storage write the values repeat
    assert study.metric_names == ["sum_of_scaled_metrics"]
    assert study.user_attrs["space"]["relu/data_in_width"] == [2, 4, 6, 8] and study.user_attrs["space_size"] == 12
    dist = done[0].distributions["relu/data_in_width"]
    assert isinstance(dist, optuna.distributions.IntDistribution) and dist.step == 2


def test_optuna_dashboard_serves_values_and_sortable_metrics(study_url):
    from optuna_dashboard._app import create_app

    app = create_app(optuna.storages.RDBStorage(study_url))
    (summary,) = json.loads(_get(app, "/api/studies"))["study_summaries"]
    detail = json.loads(_get(app, f"/api/studies/{summary['study_id']}"))
    sortable = {a["key"] for a in detail["union_user_attrs"] if a["sortable"]}
    assert "memory_bytes" in sortable  # the budgeted metric (objectives: the value; the rest: the "qfx" record)
    widths = {
        p["param_external_value"] for t in detail["trials"] for p in t["params"] if p["name"] == "relu/data_in_width"
    }
    assert widths <= {"2", "4", "6", "8"} and widths
    rows = list(csv.DictReader(io.StringIO(_get(app, f"/csv/{summary['study_id']}").decode())))
    assert "sum_of_scaled_metrics" in rows[0] and {r["Param relu/data_in_width"] for r in rows} <= {"2", "4", "6", "8"}
    mem = [float(r["UserAttribute memory_bytes"]) for r in rows if r["State"] == "COMPLETE"]
    assert len(mem) == 6 and all(0 < m < 1e9 for m in mem)  # the column the dashboard sorts by


def test_resuming_with_another_space_is_refused(study_url, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(search_toml("random", 8, space=SPACE.replace("[2, 4, 6, 8]", "[2, 8]")))
    ck = make_checkpoint(tmp_path / "ck", epochs=1)
    with pytest.raises(ValueError, match="'native' was created over a different search space"):
        run_search(cfg, checkpoint=str(ck), storage=study_url, study_name="native")


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_storages_are_optunas_own_and_pickle(tmp_path, kind):
    """make_storage returns Optuna's own storage classes (public constructors): a study written by one reads back
    through a plain Optuna storage on the same file, and the storage survives pickling."""
    import pickle

    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    from qfx.search.storage import make_storage

    url = f"journal:{tmp_path / 'j.log'}" if kind == "journal" else f"sqlite:///{tmp_path / 's.db'}"
    storage = pickle.loads(pickle.dumps(make_storage(url)))
    assert type(storage) is (JournalStorage if kind == "journal" else RDBStorage)
    study = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=0), study_name="s")
    study.optimize(lambda t: t.suggest_int("x", 0, 9) + t.suggest_float("z", 0.0, 1.0), n_trials=3)
    plain = JournalStorage(JournalFileBackend(str(tmp_path / "j.log"))) if kind == "journal" else RDBStorage(url)
    back = optuna.load_study(study_name="s", storage=plain)
    assert [t.params for t in back.trials] == [t.params for t in study.trials]


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_stale_trial_is_failed_and_requeued_by_exactly_one_worker(tmp_path, kind):
    """Two workers find the same trial stale (no beat for longer than the grace): exactly one fails it and
    re-queues its parameters; a trial that beats recently is left alone; a trial killed before its first beat
    is found by its start time."""
    from qfx.search.storage import BEAT, fail_stale, heartbeat, make_storage

    url = f"journal:{tmp_path / 'j.log'}" if kind == "journal" else f"sqlite:///{tmp_path / 's.db'}"
    sa, sb = make_storage(url), make_storage(url)
    a = optuna.create_study(storage=sa, study_name="s")
    b = optuna.load_study(study_name="s", storage=sb)
    dead, live = a.ask(), a.ask()
    dead.suggest_int("x", 0, 3)
    live.suggest_int("x", 0, 3)
    with heartbeat(live, every_s=0.05):
        import time

        time.sleep(0.3)  # several beats written from the heartbeat thread
        beats = [t.user_attrs.get(BEAT) for t in a.get_trials() if t.number == live.number]
        assert beats and isinstance(beats[0], float)
        assert fail_stale(b, sb, grace_s=1e9) == []  # everything is fresh
        time.sleep(0.1)
        first = fail_stale(b, sb, grace_s=0.2)  # dead: started 0.4 s ago, never beat; live: beat within 0.05 s
        second = fail_stale(a, sa, grace_s=0.2)
    assert first == [dead.number] and second == []
    trials = a.get_trials()
    assert trials[dead.number].state.name == "FAIL" and trials[live.number].state.name == "RUNNING"
    waiting = [t for t in trials if t.state.name == "WAITING"]
    assert len(waiting) == 1 and waiting[0].system_attrs["failed_trial"] == dead.number
    assert waiting[0].params == dead.params


def test_a_requeued_trial_is_not_stale_for_its_inherited_heartbeat():
    """Optuna's retry copies the user attrs of the killed trial, old heartbeat included: a trial's last sign of
    life is the later of its heartbeat and its start."""
    import datetime

    from qfx.search.storage import BEAT, last_beat

    now = datetime.datetime.now()
    ft = optuna.trial.FrozenTrial(
        number=3, state=optuna.trial.TrialState.RUNNING, value=None, datetime_start=now, datetime_complete=None,
        params={}, distributions={}, user_attrs={BEAT: now.timestamp() - 3600}, system_attrs={},
        intermediate_values={}, trial_id=3,
    )  # fmt: skip
    assert last_beat(ft) == now.timestamp()
    ft.user_attrs[BEAT] = now.timestamp() + 5
    assert last_beat(ft) == now.timestamp() + 5
    ft.user_attrs[BEAT] = "crafted"
    assert last_beat(ft) == now.timestamp()
