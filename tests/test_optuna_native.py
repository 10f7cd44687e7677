"""Optuna-native studies, checked with optuna-dashboard's own server (its WSGI app) and trials_dataframe:
parameters as real values, metric names, every metric a sortable numeric user attr, the space as study attrs."""

import csv
import io
import json
import sys

import optuna
import pytest
from search_helpers import make_checkpoint, search_toml

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
    cfg.write_text(search_toml("random", 6, space=SPACE))
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
        assert all(isinstance(t.user_attrs[m], float) for m in ("accuracy", "average_bitwidth", "bops", "loss"))
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
    assert {"accuracy", "loss", "average_bitwidth", "memory_density", "bops"} <= sortable
    widths = {
        p["param_external_value"] for t in detail["trials"] for p in t["params"] if p["name"] == "relu/data_in_width"
    }
    assert widths <= {"2", "4", "6", "8"} and widths
    rows = list(csv.DictReader(io.StringIO(_get(app, f"/csv/{summary['study_id']}").decode())))
    assert "sum_of_scaled_metrics" in rows[0] and {r["Param relu/data_in_width"] for r in rows} <= {"2", "4", "6", "8"}
    accs = sorted(float(r["UserAttribute accuracy"]) for r in rows if r["State"] == "COMPLETE")
    assert len(accs) == 6 and all(0 <= a <= 1 for a in accs)  # the column the dashboard sorts by


def test_resuming_with_another_space_is_refused(study_url, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(search_toml("random", 8, space=SPACE.replace("[2, 4, 6, 8]", "[2, 8]")))
    ck = make_checkpoint(tmp_path / "ck", epochs=1)
    with pytest.raises(ValueError, match="'native' was created over a different search space"):
        run_search(cfg, checkpoint=str(ck), storage=study_url, study_name="native")


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_storage_writes_a_trial_at_once_and_pickles(tmp_path, kind):
    """Our storages hold a trial's params back while it samples and write its user attrs with its final state:
    the journal gets 3 appends per trial (create, params, attrs + state; Optuna's loop makes one per param and
    per attr, plus a heartbeat), and every value reads back. They survive pickling (Optuna's storages do)."""
    import pickle

    from optuna.storages.journal import JournalFileBackend

    from qfx.search.storage import make_storage, params_at_once, set_user_attrs

    url = f"journal:{tmp_path / 'j.log'}" if kind == "journal" else f"sqlite:///{tmp_path / 's.db'}"
    storage = pickle.loads(pickle.dumps(make_storage(url)))
    appends = []
    if kind == "journal":
        backend = storage._backend
        real = backend.append_logs
        backend.append_logs = lambda logs: (appends.append(len(logs)), real(logs))[1]
    study = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))

    def objective(trial: optuna.Trial) -> float:
        with params_at_once(trial):
            x = trial.suggest_int("x", 0, 9)
            y = trial.suggest_categorical("y", [1, 2])
            z = trial.suggest_float("z", 0.0, 1.0)
        set_user_attrs(trial, {"a": x, "b": [y, z], "c": {"d": "e"}})
        return x + y + z

    study.optimize(objective, n_trials=4)
    back = optuna.load_study(study_name=study.study_name, storage=make_storage(url))
    assert [t.state for t in back.trials] == [optuna.trial.TrialState.COMPLETE] * 4
    for t in back.trials:
        assert set(t.params) == {"x", "y", "z"}
        assert t.user_attrs == {"a": t.params["x"], "b": [t.params["y"], t.params["z"]], "c": {"d": "e"}}
        assert t.value == pytest.approx(t.params["x"] + t.params["y"] + t.params["z"])
    if kind == "journal":
        assert isinstance(storage._backend, JournalFileBackend)
        assert len(appends) == 1 + 3 * 4  # the study, then 3 appends per trial


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")  # ask/tell on purpose: the race needs it
def test_journal_batch_for_a_trial_failed_meanwhile_is_refused_once(tmp_path):
    """Another worker failed our trial (stale) before its attrs and state were appended: the whole batch is
    refused with one error, and the storage stays usable (no record of the batch is refused again later)."""
    from qfx.search.storage import make_storage, params_at_once, set_user_attrs

    url = f"journal:{tmp_path / 'j.log'}"
    ours, other = make_storage(url), make_storage(url)
    study = optuna.create_study(storage=ours, study_name="s")
    trial = study.ask()
    with params_at_once(trial):
        trial.suggest_int("x", 0, 3)
    other.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)  # the other worker
    set_user_attrs(trial, {"a": 1, "b": 2, "c": 3})
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):  # Optuna's tell checks first; this is the race
        ours.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.COMPLETE, [1.0])
    study.optimize(lambda t: t.suggest_int("x", 0, 3), n_trials=2)  # every later call works
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert study.trials[0].user_attrs == {}
