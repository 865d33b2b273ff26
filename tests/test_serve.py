"""The HTTP service and its client.

Most tests run the service's FastAPI app with in-process study hosts under uvicorn on
loopback (real HTTP, no Ray), which is fast; the end-to-end test runs ``bbopt serve`` on
a local Ray instance, loads it with concurrent clients, kills it with SIGKILL in the
middle, restarts it and checks that nothing told was lost.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import uvicorn

import bbopt
from bbopt.errors import (
    NoCompletedTrialError,
    ServiceError,
    SpaceError,
    StudyError,
    TrialError,
    UnknownStudyError,
    UnknownTrialError,
)
from bbopt.serve.app import LocalBackend, make_app
from bbopt.serve.hosts import host_index

TOKEN = "test-token"
SPACE = {"x": bbopt.Float(-2.0, 2.0), "k": bbopt.Int(1, 5),
         "act": bbopt.Categorical(["relu", "tanh"])}


def _value(params: dict) -> float:
    return params["x"] ** 2 + 0.1 * params["k"] + (params["act"] == "tanh")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def service(request, tmp_path: Path):
    """The app on uvicorn in a thread, two in-process hosts, a SQLite file (or, with
    ``indirect`` parameter "postgresql", a fresh database on a PostgreSQL server)."""
    storage = f"sqlite:///{tmp_path / 'svc.db'}"
    if getattr(request, "param", "sqlite") == "postgresql":
        import sqlalchemy as sa

        server = request.getfixturevalue("postgres_url")
        db = f"svc_{time.monotonic_ns()}"
        engine = sa.create_engine(server, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {db}")
        engine.dispose()
        storage = server.rsplit("/", 1)[0] + "/" + db
    app = make_app(LocalBackend(storage, n_hosts=2), TOKEN)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    yield url, storage
    server.should_exit = True
    thread.join(10)


def _raw(url: str, method: str, path: str, data: str | None = None,
         token: str | None = TOKEN) -> requests.Response:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return requests.request(method, url + path, data=data, headers=headers, timeout=30)


@pytest.mark.parametrize("service", ["sqlite", "postgresql"], indirect=True)
def test_client_mirrors_study(service):
    url, storage = service
    remote = bbopt.Client(url, token=TOKEN)
    assert remote.health()["status"] == "ok"
    study = remote.study("demo", space=SPACE, method="random", seed=3)
    assert (study.name, study.method, study.direction, study.seed) == (
        "demo", "random", "minimize", 3)
    with pytest.raises(NoCompletedTrialError):
        _ = study.best_trial
    values = {}
    for _ in range(6):
        trial = study.ask()
        assert trial.state is bbopt.TrialState.PENDING
        values[trial.id] = _value(trial.params)
        done = study.tell(trial, values[trial.id])
        assert done.value == values[trial.id]
    batch = study.ask(3)
    assert len({json.dumps(t.params, sort_keys=True) for t in batch}) == 3
    study.tell(batch[0].id, failed=True, reason="diverged")
    assert study.best_trial.value == min(values.values())
    states = [t.state.value for t in study.trials]
    assert states == ["complete"] * 6 + ["failed", "pending", "pending"]
    assert study.info()["counts"] == {"pending": 2, "complete": 6, "failed": 1}
    assert remote.studies() == ["demo"]
    # Reopening gives the same study; the store holds exactly what the service said.
    again = remote.study("demo")
    assert [t.id for t in again.trials] == list(range(9))
    local = bbopt.Study.load("demo", storage)
    assert {t.id: t.value for t in local.trials if t.value is not None} == values


def test_token_required(service):
    url, _ = service
    assert _raw(url, "GET", "/health", token=None).status_code == 200
    assert _raw(url, "GET", "/openapi.json", token=None).json()["info"]["title"] == "bbopt"
    for token in (None, "wrong", ""):
        r = _raw(url, "GET", "/studies", token=token)
        assert r.status_code == 401, token
        assert r.headers["WWW-Authenticate"] == "Bearer"
        assert "API token" in r.json()["error"]["message"]
    r = requests.get(url + "/studies", headers={"Authorization": f"Basic {TOKEN}"}, timeout=10)
    assert r.status_code == 401
    with pytest.raises(ServiceError) as e:
        bbopt.Client(url, token="wrong").studies()
    assert e.value.status == 401


def test_bad_requests_answer_4xx_and_change_nothing(service):
    url, _ = service
    study = bbopt.Client(url, token=TOKEN).study("s", space=SPACE, method="random")
    told = study.ask()
    study.tell(told, 1.0)
    pending = study.ask()
    before = [t.to_dict() for t in study.trials]
    tell = f"/studies/s/trials/{pending.id}/tell"
    cases = [
        ("POST", "/studies/s/ask", '{"n": ', 400, "malformed JSON"),
        ("POST", tell, "{value: 1}", 400, "malformed JSON"),
        ("POST", tell, '{"value": NaN}', 400, "finite"),
        ("POST", tell, '{"value": Infinity}', 400, "finite"),
        ("POST", tell, '{"value": "abc"}', 400, "value"),
        ("POST", tell, "{}", 400, "needs a value"),
        ("POST", tell, '{"value": 1.0, "failed": true}', 400, "failed trial has no value"),
        ("POST", tell, '{"value": 1.0, "grad": [1.0]}', 400, "gradient"),
        ("POST", tell, '{"value": 1.0, "bogus": 1}', 400, "bogus"),
        ("POST", f"/studies/s/trials/{told.id}/tell", '{"value": 2.0}', 400, "told once"),
        ("POST", "/studies/s/trials/999/tell", '{"value": 1.0}', 404, "unknown trial id 999"),
        ("POST", "/studies/s/trials/abc/tell", '{"value": 1.0}', 400, "trial_id"),
        ("POST", "/studies/ghost/ask", '{"n": 1}', 404, "no study named 'ghost'"),
        ("POST", "/studies/s/ask", '{"n": 0}', 400, "n:"),
        ("GET", "/studies/ghost", None, 404, "no study named"),
        ("GET", "/studies/ghost/best", None, 404, "no study named"),
        ("GET", "/nowhere", None, 404, "Not Found"),
        ("POST", "/studies", json.dumps({"name": "s", "space": {"y": {"type": "float",
                                         "low": 0, "high": 1}}}), 400, "different space"),
        ("POST", "/studies", json.dumps({"name": "s", "method": "gp-ei"}), 400,
         "exists with method 'random'"),
        ("POST", "/studies", json.dumps({"name": "s", "direction": "maximize"}), 400,
         "direction"),
        ("POST", "/studies", json.dumps({"name": "new", "space": {"y": {"type": "float",
                                         "low": 1, "high": 0}}}), 400, "low"),
        ("POST", "/studies", json.dumps({"name": "new2", "space": {"y": {
            "type": "float", "low": 0, "high": 1}}, "method": "nope"}), 400, "nope"),
        ("POST", "/studies", json.dumps({"name": "new3"}), 404, "give a space"),
        ("POST", "/studies/s/heartbeat", '{"trials": [999]}', 404, "unknown trial id"),
        ("POST", "/studies/s/heartbeat", '{"trials": []}', 400, "trials"),
        ("POST", "/studies/s/heartbeat", '{"trials": ["x"]}', 400, "trials"),
        ("POST", "/studies/ghost/heartbeat", '{"trials": [0]}', 404, "no study named"),
        ("POST", "/studies/s/fail-stale", '{"grace": 0}', 400, "grace"),
        ("POST", "/studies/s/fail-stale", "{}", 400, "grace"),
    ]
    for method, path, data, status, message in cases:
        r = _raw(url, method, path, data)
        assert r.status_code == status, (path, data, r.status_code, r.text)
        err = r.json()["error"]
        assert message in err["message"], (path, data, err)
        assert err["type"]
    assert [t.to_dict() for t in study.trials] == before
    assert bbopt.Client(url, token=TOKEN).studies() == ["s"]
    # The client raises the exceptions bbopt.Study raises, before or after the wire.
    for call, exc in [(lambda: study.tell(pending, float("nan")), TrialError),
                      (lambda: study.tell(999, 1.0), UnknownTrialError),
                      (lambda: study.tell(told, 3.0), TrialError),
                      (lambda: study.tell(pending, 1.0, grad=[1.0]), SpaceError),
                      (lambda: bbopt.Client(url, token=TOKEN).study("ghost"),
                       UnknownStudyError),
                      (lambda: bbopt.Client(url, token=TOKEN).study("s", method="gp-ei"),
                       StudyError)]:
        with pytest.raises(exc):
            call()
    assert [t.to_dict() for t in study.trials] == before


def test_unreachable_service_is_a_clear_error():
    client = bbopt.Client(f"http://127.0.0.1:{_free_port()}", token=TOKEN, retry_for=0.5)
    with pytest.raises(ServiceError, match="cannot reach"):
        client.studies()


def _load(url: str, names: list[str], n_clients: int, pairs: int, told: dict,
          errors: list, stop: threading.Event | None = None) -> list[threading.Thread]:
    """``n_clients`` threads, each with its own Client, asking and telling on ``names``;
    every tell the service confirmed goes into ``told[(name, id)]``."""

    def work(i: int) -> None:
        client = bbopt.Client(url, token=TOKEN, retry_for=60)
        study = client.study(names[i % len(names)])
        try:
            for _ in range(pairs):
                if stop is not None and stop.is_set():
                    return
                trial = study.ask()
                value = _value(trial.params)
                study.tell(trial, value)
                told[(study.name, trial.id)] = value
        except Exception as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(n_clients)]
    for t in threads:
        t.start()
    return threads


def test_concurrent_clients_get_distinct_trials(service):
    url, storage = service
    client = bbopt.Client(url, token=TOKEN)
    names = ["a", "d"]
    for name in names:
        client.study(name, space=SPACE, method="learned", seed=1)
    assert host_index("a", 2) != host_index("d", 2)  # both hosts work
    told: dict = {}
    errors: list = []
    for t in _load(url, names, n_clients=8, pairs=6, told=told, errors=errors):
        t.join(120)
    assert not errors
    for name in names:
        trials = bbopt.Study.load(name, storage).trials
        assert [t.id for t in trials] == list(range(24))  # none handed out twice
        assert all(t.state is bbopt.TrialState.COMPLETE for t in trials)
        assert {t.id: t.value for t in trials} == {i: v for (n, i), v in told.items()
                                                  if n == name}


# -- end to end on Ray -------------------------------------------------------------------


def _start_service(port: int, storage: str, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a fresh local Ray
    env["BBOPT_TOKEN"] = TOKEN
    proc = subprocess.Popen(
        [sys.executable, "-m", "bbopt.cli", "serve", "--port", str(port), "--storage",
         storage, "--hosts", "2"], stdout=log.open("a"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).ok:
                return proc
        except requests.RequestException:
            pass
        time.sleep(0.5)
    proc.kill()
    raise AssertionError("service did not start:\n" + log.read_text()[-3000:])


@pytest.mark.slow
def test_service_on_ray_survives_kill_9(tmp_path: Path):
    storage = f"sqlite:///{tmp_path / 'svc.db'}"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    proc = _start_service(port, storage, log)
    try:
        client = bbopt.Client(url, token=TOKEN)
        names = ["e2e-a", "e2e-d"]
        for name in names:
            client.study(name, space=SPACE, method="learned", seed=0)
        assert client.study("e2e-a").ask(2)[0].id == 0  # two pending, never told
        # A study-host actor killed with SIGKILL: Ray restarts it, it reopens the study
        # from the store, and the client's next calls go through (retried on 503).
        auth = {"Authorization": f"Bearer {TOKEN}"}
        hosts = requests.get(url + "/stats", headers=auth, timeout=30).json()["hosts"]
        os.kill(hosts[host_index("e2e-a", 2)]["pid"], signal.SIGKILL)
        study = client.study("e2e-a")
        trial = study.ask()
        assert trial.id == 2
        study.tell(trial, _value(trial.params))
        study.tell(0, _value(study.trials[0].params))
        new = requests.get(url + "/stats", headers=auth, timeout=30).json()["hosts"]
        assert new[host_index("e2e-a", 2)]["pid"] != hosts[host_index("e2e-a", 2)]["pid"]
        told: dict = {}
        errors: list = []
        stop = threading.Event()
        threads = _load(url, names, n_clients=8, pairs=1000, told=told, errors=errors,
                        stop=stop)
        deadline = time.monotonic() + 60
        while len(told) < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(told) >= 40, (errors, log.read_text()[-2000:])
        os.kill(proc.pid, signal.SIGKILL)  # in the middle of the load
        proc.wait(10)
        confirmed = dict(told)  # every tell answered before the kill
        time.sleep(1.0)
        proc = _start_service(port, storage, log)
        time.sleep(3.0)  # the clients retry through the restart and go on
        stop.set()
        for t in threads:
            t.join(120)
        # A client whose request was cut by the kill may see an error; nothing else.
        assert all(isinstance(e, bbopt.BBOptError) for e in errors), errors
        after = dict(told)
        assert len(after) > len(confirmed)  # the load continued after the restart
        for name in names:
            trials = {t.id: t for t in bbopt.Study.load(name, storage).trials}
            assert sorted(trials) == list(range(len(trials)))  # no id twice, none lost
            for (n, i), v in after.items():
                if n == name:
                    assert trials[i].value == v
            # Every study continues.
            study = client.study(name)
            trial = study.ask()
            assert trial.id == len(trials)
            study.tell(trial, _value(trial.params))
        assert all(confirmed[k] == after[k] for k in confirmed)
        # The best trial is the best of all told, the load's and the few told above.
        stored = [t.value for t in bbopt.Study.load("e2e-a", storage).trials
                  if t.value is not None]
        assert client.study("e2e-a").best_trial.value == min(stored)
        assert min(stored) <= min(v for (n, _), v in after.items() if n == "e2e-a")
        stats = requests.get(url + "/stats", headers={"Authorization": f"Bearer {TOKEN}"},
                             timeout=30).json()
        assert len(stats["hosts"]) == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_tune_processes_share_a_study_through_the_service(service, tmp_path: Path):
    url, storage = service
    objective = tmp_path / "objective.py"
    objective.write_text("def f(p):\n    return (p['x'] - 0.3) ** 2 + (p['y'] + 0.1) ** 2\n")
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"x": {"type": "float", "low": -1, "high": 1},
                                 "y": {"type": "float", "low": -1, "high": 1}}))
    env = {**os.environ, "BBOPT_TOKEN": TOKEN}
    cmd = [sys.executable, "-m", "bbopt.cli", "tune", f"{objective}:f", "--space", str(space),
           "--budget", "10", "--study", "shared", "--workers", "2", "--service", url,
           "--quiet"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert "best trial" in out, (out, err)
    trials = bbopt.Study.load("shared", storage).trials
    done = [t for t in trials if t.state is bbopt.TrialState.COMPLETE]
    # Each process stops when the shared study reaches the budget; two processes can
    # both start a last trial at the same moment, so at most one worker's worth over.
    assert 10 <= len(done) <= 13 and len(done) == len(trials)
    # The study was made for the budget (both processes asked to create it with it).
    assert bbopt.Study.load("shared", storage)._record.options == {"budget": 10}
    # A later run with another budget opens it as it is and runs to the new budget.
    more = [*cmd[:cmd.index("--budget") + 1], "12", *cmd[cmd.index("--budget") + 2:]]
    out = subprocess.run(more, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    study = bbopt.Study.load("shared", storage)
    assert study._record.options == {"budget": 10}
    assert len([t for t in study.trials if t.state is bbopt.TrialState.COMPLETE]) >= 12
    # Without a token the command fails with the service's message.
    env.pop("BBOPT_TOKEN")
    bad = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "401" in bad.stderr


def test_killed_tune_process_trials_go_stale_and_are_asked_again(service, tmp_path: Path):
    """kill -9 of a `bbopt tune --service` process in the middle of its evaluations: its
    trials stop getting heartbeats, another process fails them as stale, counts them
    out of the budget and evaluates in their place; no told value is lost."""
    url, storage = service
    objective = tmp_path / "objective.py"
    objective.write_text("import os, time\n"
                         "def f(p):\n"
                         "    time.sleep(float(os.environ.get('SLOW', '0')))\n"
                         "    return (p['x'] - 0.3) ** 2\n")
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"x": {"type": "float", "low": -1, "high": 1}}))
    cmd = [sys.executable, "-m", "bbopt.cli", "tune", f"{objective}:f", "--space", str(space),
           "--budget", "6", "--study", "shared", "--workers", "2", "--service", url,
           "--heartbeat", "2", "--quiet"]
    env = {**os.environ, "BBOPT_TOKEN": TOKEN}
    doomed = subprocess.Popen(cmd, env={**env, "SLOW": "600"}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    remote = bbopt.Client(url, token=TOKEN)
    deadline = time.monotonic() + 120
    while True:
        assert time.monotonic() < deadline and doomed.poll() is None
        if remote.studies() and len(remote.study("shared").trials) == 2:
            break
        time.sleep(0.1)
    doomed.kill()  # SIGKILL: no chance to mark its two trials failed
    doomed.wait(30)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "stale trial(s)" in out.stderr
    trials = bbopt.Study.load("shared", storage).trials
    stale = [t for t in trials if t.state is bbopt.TrialState.FAILED]
    done = [t for t in trials if t.state is bbopt.TrialState.COMPLETE]
    assert [t.id for t in stale] == [0, 1]
    assert all(t.info["stale"] and "no heartbeat" in t.info["reason"] for t in stale)
    assert len(done) == 6 and len(trials) == 8  # the budget, the stale two not counted
    # Started within the grace period (8 s), the second process first counted the two
    # trials as running elsewhere (4 of its own, then waiting), not as lost.
    assert sum(t.finished_at < stale[0].finished_at for t in done) == 4
