import json
import subprocess
import sys
import textwrap
import time

import pytest

from bbopt import Float, Int, Space, StorageError, Study, StudyError, TrialState
from bbopt.errors import TrialError, UnknownTrialError

SPACE = Space({"x": Float(0, 1), "k": Int(1, 5)})


def _run(code: str, *args: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_resume_in_a_new_process(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    s = Study(SPACE, method="gp-ei", seed=7, storage=url, name="demo", n_init=4)
    for _ in range(5):
        t = s.ask()
        s.tell(t, (t.params["x"] - 0.3) ** 2 + t.params["k"])
    open_trial = s.ask()
    before = [t.to_dict() for t in s.trials]
    out = _run("""
        import json, sys
        from bbopt import Study
        s = Study.load("demo", sys.argv[1])
        seen = [t.to_dict() for t in s.trials]
        t = s.ask()                       # continues from the stored history
        s.tell(t, 0.5)
        print(json.dumps({"seen": seen, "method": s.method, "new": t.id}))
    """, url)
    got = json.loads(out)
    assert got["seen"] == json.loads(json.dumps(before))
    assert got["method"] == "gp-ei" and got["new"] == 6
    # back here: the other process's trial is visible, the pending one still open
    s2 = Study(storage=url, name="demo")
    assert [t.state for t in s2.trials][-2:] == [TrialState.PENDING, TrialState.COMPLETE]
    s2.tell(open_trial, 1.0)
    assert len(s2.trials) == 7


def test_resumed_optimizer_proposes_what_an_uninterrupted_one_would(tmp_path):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    a = Study(SPACE, method="random", seed=1, storage=url, name="a")
    b = Study(SPACE, method="random", seed=1)
    for _ in range(3):
        ta, tb = a.ask(), b.ask()
        a.tell(ta, 1.0)
        b.tell(tb, 1.0)
    resumed = Study.load("a", url)
    assert resumed.ask().params == b.ask().params


WORKER = """
import sys, time
from bbopt import Study
url, n = sys.argv[1], int(sys.argv[2])
s = Study.load("shared", url)
for i in range(n):
    t = s.ask()
    s.tell(t, t.params["x"])
    print(t.id, flush=True)
"""


@pytest.mark.parametrize("method", ["random", "gp-ei", "learned"])
def test_two_processes_share_one_sqlite_study(tmp_path, method):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    Study(SPACE, method=method, seed=0, storage=url, name="shared", n_init=3) \
        if method == "gp-ei" else Study(SPACE, method=method, seed=0, storage=url, name="shared")
    n = 12 if method == "gp-ei" else 40
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, url, str(n)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    ids = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        ids += [int(x) for x in out.split()]
    assert sorted(ids) == list(range(2 * n)), "a trial was handed out twice or lost"
    trials = Study.load("shared", url).trials
    assert len(trials) == 2 * n
    assert all(t.state is TrialState.COMPLETE and t.value == t.params["x"] for t in trials)
    if method != "gp-ei":  # distinct params, never the same trial twice
        assert len({(t.params["x"], t.params["k"]) for t in trials}) == 2 * n


def test_opening_with_conflicting_settings(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    Study(SPACE, method="random", seed=1, storage=url, name="s")
    with pytest.raises(StudyError, match="different space"):
        Study(Space({"y": Float(0, 1)}), storage=url, name="s")
    with pytest.raises(StudyError, match="direction"):
        Study(SPACE, storage=url, name="s", direction="maximize")
    with pytest.raises(StudyError, match="seed"):
        Study(SPACE, storage=url, name="s", seed=2)
    same = Study(SPACE, storage=url, name="s")  # same settings: opens it
    assert same.method == "random" and same.seed == 1


def test_missing_database_and_bad_urls(tmp_path):
    with pytest.raises(StorageError, match="does not exist"):
        Study.load("x", f"sqlite:///{tmp_path / 'nope.db'}")
    assert not (tmp_path / "nope.db").exists()
    with pytest.raises(StorageError, match="folder"):
        Study(SPACE, storage=f"sqlite:///{tmp_path / 'no' / 'dir.db'}", name="x")
    with pytest.raises(StorageError, match="not a database URL"):
        Study(SPACE, storage="not a url", name="x")
    with pytest.raises(StudyError, match="no study named 'ghost'"):
        url = f"sqlite:///{tmp_path / 'empty.db'}"
        Study(SPACE, storage=url, name="other")
        Study.load("ghost", url)


def test_not_a_database_file(tmp_path):
    bad = tmp_path / "garbage.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StorageError, match="cannot open database|database error"):
        Study(SPACE, storage=f"sqlite:///{bad}", name="x")


def test_postgresql_resume_and_two_processes(postgres_url):
    s = Study(SPACE, method="random", seed=0, storage=postgres_url, name="shared")
    t = s.ask()
    s.tell(t, t.params["x"])
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, postgres_url, "15"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    ids = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        ids += [int(x) for x in out.split()]
    assert sorted(ids) == list(range(1, 31))
    trials = Study.load("shared", postgres_url).trials
    assert len(trials) == 31 and all(t.state is TrialState.COMPLETE for t in trials)
    assert len({t.params["x"] for t in trials}) == 31
    with pytest.raises(StudyError, match="no study named"):
        Study.load("ghost", postgres_url)


def test_reads_do_not_wait_for_a_long_ask(tmp_path):
    import threading
    import time

    from bbopt.storage import SQLStorage

    url = f"sqlite:///{tmp_path / 'r.db'}"
    s = Study(SPACE, method="random", seed=0, storage=url, name="r")
    s.tell(s.ask(), 1.0)
    writer = SQLStorage(url)
    record = writer.get_study("r")
    holding, release = threading.Event(), threading.Event()

    def slow_propose(history):  # an optimizer that thinks for a while, holding the lock
        holding.set()
        release.wait(10)
        return [({"x": 0.5, "k": 2}, {})]

    t = threading.Thread(target=writer.ask, args=(record.id, slow_propose))
    t.start()
    assert holding.wait(10)
    start = time.perf_counter()
    trials = Study.load("r", url).trials  # another connection, as another process would
    elapsed = time.perf_counter() - start
    release.set()
    t.join(10)
    assert len(trials) == 1 and elapsed < 2.0
    assert len(Study.load("r", url).trials) == 2


# -- heartbeats and stale trials -------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 's.db'}"
    return request.getfixturevalue("postgres_url")


def test_trials_of_a_silent_worker_go_stale(store_url):
    space = Space({"x": Float(0, 1)})
    name = f"stale-{time.monotonic_ns()}"
    study = Study(space, method="random", seed=0, storage=store_url, name=name)
    watched = study.ask(2, heartbeat=True)
    plain = study.ask()  # asked without heartbeats: never stale
    told = study.ask(heartbeat=True)
    study.tell(told, 0.5)
    assert watched[0].info == {"heartbeat": True} and plain.info == {}
    time.sleep(0.3)
    assert study.heartbeat(watched[1], told.id) == [told.id]  # told: its worker can stop
    stale = study.fail_stale_trials(0.2)  # watched[1] just beat, watched[0] did not
    assert [t.id for t in stale] == [watched[0].id]
    assert stale[0].state is TrialState.FAILED and stale[0].info["stale"] is True
    assert "no heartbeat" in stale[0].info["reason"]
    by_id = {t.id: t for t in Study.load(name, store_url).trials}
    assert by_id[watched[1].id].state is TrialState.PENDING
    assert by_id[plain.id].state is TrialState.PENDING
    assert by_id[told.id].value == 0.5
    # A worker that comes back late cannot tell its stale trial, and learns so.
    assert study.heartbeat(watched[0]) == [watched[0].id]
    with pytest.raises(TrialError, match="already finished"):
        study.tell(watched[0], 1.0)
    # Bad input: unknown ids and a bad grace change nothing.
    with pytest.raises(UnknownTrialError, match="unknown trial id"):
        study.heartbeat(watched[1], 99)
    for grace in (0, -1, float("nan"), "10"):
        with pytest.raises(ValueError, match="grace"):
            study.fail_stale_trials(grace)
    assert [t.state for t in study.trials] == [t.state for t in by_id.values()]


def test_a_store_from_before_heartbeats_gets_the_column(store_url):
    import sqlalchemy as sa

    name = f"old-{time.monotonic_ns()}"
    study = Study({"x": Float(0, 1)}, method="random", seed=3, storage=store_url, name=name)
    study.tell(study.ask(), 0.5)
    engine = sa.create_engine(store_url)
    with engine.begin() as conn:  # the schema as it was before heartbeats
        conn.exec_driver_sql("ALTER TABLE bbopt_trials DROP COLUMN heartbeat_at")
    engine.dispose()
    study = Study.load(name, store_url)
    assert [t.value for t in study.trials] == [0.5]
    trial = study.ask(heartbeat=True)
    assert study.heartbeat(trial) == []
    assert len(Study.load(name, store_url).trials) == 2


def test_trials_kept_by_one_store_follow_changes_made_by_another(store_url):
    """A store keeps the finished trials it has read; what another store (process) tells,
    deletes or makes again must still show, and a caller changing its copy changes
    nothing."""
    name = f"cache-{time.monotonic_ns()}"
    a = Study(SPACE, method="random", seed=0, storage=store_url, name=name)
    b = Study.load(name, store_url)  # its own SQLStorage, as another process has
    t0, t1 = a.ask(2)
    assert b.trials == [t0, t1]  # what ask returns is what is stored
    a.tell(t0, 1.0)
    assert [t.state for t in b.trials] == [TrialState.COMPLETE, TrialState.PENDING]
    b.tell(t1, 2.0)  # told elsewhere: a re-reads its pending trial
    assert [t.value for t in a.trials] == [1.0, 2.0]
    added = a.add({"x": 0.25, "k": 2}, 3.0)
    assert b.trials[-1] == added
    mine = a.trials
    mine[0].params["x"] = -1.0
    mine[0].info["mine"] = True
    assert a.trials[0].params == t0.params and a.trials[0].info == {}
    assert a.best_trial.params == t0.params
    # Deleted and made again by another store: a reads the new trials, not its old ones
    # (SQLite may hand the new study and its rows the ids the old ones had).
    b._storage.delete_study(name)
    c = Study(SPACE, method="random", seed=1, storage=store_url, name=name)
    t = c.ask()
    c.tell(t, 5.0)
    fresh = a._storage.trials(c._record.id)
    assert [(x.params, x.value) for x in fresh] == [(t.params, 5.0)]


def test_sqlite_asks_through_the_driver_read_and_write_what_sqlalchemy_does(tmp_path):
    """SQLite asks run their read and insert on the driver (``_DriverSQL``); trials in
    every state must read the same through it as through SQLAlchemy, dates included."""
    from datetime import datetime

    from bbopt.storage import SQLStorage

    url = f"sqlite:///{tmp_path / 'd.db'}"
    study = Study(SPACE, method="random", seed=0, storage=url, name="d")
    a, b, c = study.ask(3, heartbeat=True)
    study.tell(a, 1.5)
    study.tell(b, failed=True, reason="worker crashed")
    study.add({"x": 0.25, "k": 2}, 2.0)
    d = study.ask()  # read through the driver after all of the above
    plain = SQLStorage(url)
    plain._driver_sql = None  # SQLAlchemy only, as for other databases
    via_sqlalchemy = plain.trials(plain.get_study("d").id)
    assert Study.load("d", url).trials == via_sqlalchemy == study.trials
    assert [t.state for t in via_sqlalchemy] == [
        TrialState.COMPLETE, TrialState.FAILED, TrialState.PENDING, TrialState.COMPLETE,
        TrialState.PENDING]
    assert via_sqlalchemy[-1] == d and via_sqlalchemy[2].info == {"heartbeat": True}
    assert all(isinstance(t.created_at, datetime) for t in via_sqlalchemy)
    assert study.fail_stale_trials(1e-6)[0].id == c.id  # heartbeat dates written by the driver


def test_sqlite_ask_rolls_back_on_errors_and_reports_a_locked_database(tmp_path):
    """The SQLite ask runs its own transaction on the driver (``_ask_transaction``): a
    proposal that raises stores nothing, a database another writer holds is a
    StorageError that stores nothing, and the store works on afterwards."""
    import sqlite3

    import sqlalchemy as sa

    from bbopt.storage import SQLStorage

    path = tmp_path / "l.db"
    store = SQLStorage(f"sqlite:///{path}")
    sa.event.listen(store.engine, "connect",
                    lambda conn, _: conn.execute("PRAGMA busy_timeout = 200"))
    store.engine.dispose()  # new connections wait 200 ms for a lock, not a minute
    record = store.create_study("l", SPACE.to_dict(), "minimize", "random", {}, 0)

    def broken(history):
        raise RuntimeError("optimizer crashed")

    with pytest.raises(RuntimeError, match="crashed"):
        store.ask(record.id, broken)
    assert store.trials(record.id) == []
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process writing
    with pytest.raises(StorageError, match="database error.*locked"):
        store.ask(record.id, lambda h: [({"x": 0.5, "k": 2}, {})])
    other.execute("ROLLBACK")
    other.close()
    assert store.trials(record.id) == []
    (trial,) = store.ask(record.id, lambda h: [({"x": 0.5, "k": 2}, {})])
    assert store.trials(record.id) == [trial]
    assert Study.load("l", f"sqlite:///{path}").trials == [trial]
