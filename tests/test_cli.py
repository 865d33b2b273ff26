import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from bbopt import Study, TrialState
from bbopt.cli import main

SPACE = {"x": {"type": "float", "low": -2, "high": 2},
         "k": {"type": "int", "low": 1, "high": 3},
         "act": {"type": "categorical", "choices": ["relu", "tanh"]}}

OBJECTIVE = """
import time

def f(p):
    return (p["x"] - 0.5) ** 2 + p["k"] + (p["act"] == "tanh")

def slow(p):
    time.sleep(0.3)
    return p["x"] ** 2

def broken(p):
    raise RuntimeError("boom")

def by_name(x, k, act):
    return (x - 0.5) ** 2 + k + (act == "tanh")

def takes_other(a, b):
    return 0.0
"""


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "obj.py").write_text(OBJECTIVE)
    (tmp_path / "space.json").write_text(json.dumps(SPACE))
    return tmp_path


def run(*args, ok=True):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def test_tune_python_function_then_inspect(workdir):
    db = "sqlite:///s.db"
    out = run("tune", "obj.py:f", "--space", "space.json", "--budget", "8", "--method", "random",
              "--storage", db, "--study", "demo", "--seed", "1", "--quiet").output
    assert "best trial" in out
    trials = json.loads(run("trials", "demo", "--storage", db, "--json").output)
    assert len(trials) == 8 and all(t["state"] == "complete" for t in trials)
    best = json.loads(run("best", "demo", "--storage", db, "--json").output)
    assert best["value"] == min(t["value"] for t in trials)
    studies = json.loads(run("studies", "--storage", db, "--json").output)
    assert studies[0]["name"] == "demo" and studies[0]["complete"] == 8
    # human-readable tables too
    assert "demo" in run("studies", "--storage", db).output
    assert "act" in run("trials", "demo", "--storage", db).output
    # re-running with a larger budget resumes the same study
    run("tune", "obj.py:f", "--space", "space.json", "--budget", "10", "--storage", db,
        "--study", "demo", "--quiet")
    assert len(Study.load("demo", db).trials) == 10


def test_tune_tells_the_learned_optimizer_its_budget(workdir):
    db = "sqlite:///s.db"
    run("tune", "obj.py:f", "--space", "space.json", "--budget", "6", "--storage", db,
        "--study", "planned", "--seed", "2", "--quiet")
    study = Study.load("planned", db)
    assert study.method == "learned" and study._record.options == {"budget": 6}
    assert study._optimizer.budget == 6 and len(study.trials) == 6


def test_tune_shell_command(workdir):
    db = "sqlite:///s.db"
    cmd = f"{sys.executable} -c 'import sys; print(\"loss\", float(sys.argv[1]) ** 2)' {{x}}"
    run("tune", cmd, "--space", "space.json", "--budget", "5", "--method", "random",
        "--storage", db, "--study", "sh", "--workers", "2", "--quiet")
    trials = Study.load("sh", db).trials
    assert len(trials) == 5
    assert all(t.value == pytest.approx(t.params["x"] ** 2) for t in trials)


def test_tune_with_module_function_and_its_space(workdir):
    pkg = workdir / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "import bbopt\n"
        "def g(p):\n    return p['y'] ** 2\n"
        "g.space = bbopt.Space({'y': bbopt.Float(-1, 1)})\n")
    sys.path.insert(0, str(workdir))
    try:
        run("tune", "mypkg:g", "--budget", "4", "--method", "random", "--storage",
            "sqlite:///s.db", "--quiet")
    finally:
        sys.path.remove(str(workdir))
    assert len(Study.load("g", "sqlite:///s.db").trials) == 4


def test_failing_objective_is_recorded_and_stops(workdir):
    r = run("tune", "obj.py:broken", "--space", "space.json", "--budget", "50", "--method",
            "random", "--storage", "sqlite:///s.db", "--quiet", ok=False)
    assert r.exit_code == 1 and "10 evaluations in a row failed" in r.output
    trials = Study.load("broken", "sqlite:///s.db").trials
    assert len(trials) == 10
    assert all(t.state is TrialState.FAILED and "boom" in t.info["reason"] for t in trials)


def test_shell_ask_tell_loop_and_bad_input(workdir):
    db = "sqlite:///s.db"
    lines = run("ask", "loop", "--storage", db, "--space", "space.json", "--method", "random",
                "-n", "2").output.splitlines()
    asked = [json.loads(x) for x in lines]
    assert [a["id"] for a in asked] == [0, 1]
    assert "trial 0: complete 0.25" in run("tell", "loop", "0", "0.25", "--storage", db).output
    run("tell", "loop", "1", "--failed", "--storage", db)
    nxt = json.loads(run("ask", "loop", "--storage", db).output)
    assert nxt["id"] == 2
    for args, msg in [
        (("tell", "loop", "7", "1.0"), "unknown trial id 7"),
        (("tell", "loop", "0", "2.0"), "already finished"),
        (("tell", "loop", "2", "nan"), "finite"),
        (("tell", "loop", "2"), "needs a value"),
        (("best", "nope"), "no study named 'nope'"),
        (("ask", "loop", "--method", "nope"), "unknown method 'nope'"),  # was ignored
    ]:
        r = run(*args, "--storage", db, ok=False)
        assert r.exit_code == 1 and msg in r.output, r.output
    r = run("ask", "loop", "--direction", "maximize", "--storage", db, ok=False)
    assert r.exit_code == 2 and "apply when --space creates the study" in r.output
    r = run("tell", "loop", "2", "--fail", "--storage", db, ok=False)  # a typo, not a value
    assert r.exit_code == 2 and "'--fail' is not a valid float" in r.output, r.output
    trials = Study.load("loop", db).trials
    assert [t.state.value for t in trials] == ["complete", "failed", "pending"]
    assert trials[0].value == 0.25
    # a negative value is a value (click took "-0.5" for an unknown option)
    assert "trial 2: complete -0.5" in run("tell", "loop", "2", "-0.5", "--storage",
                                           db).output
    assert Study.load("loop", db).trials[2].value == -0.5


def test_missing_database_is_a_clear_error(workdir):
    r = run("best", "x", "--storage", "sqlite:///missing.db", ok=False)
    assert r.exit_code == 1 and "does not exist" in r.output
    assert not Path("missing.db").exists()
    r = run("studies", "--storage", "sqlite:///missing.db", ok=False)
    assert "does not exist" in r.output


def test_bad_space_file_and_objective(workdir):
    Path("bad.json").write_text('{"x": {"type": "float", "low": 1, "high": 0}}')
    r = run("tune", "obj.py:f", "--space", "bad.json", "--budget", "3", "--storage",
            "sqlite:///s.db", ok=False)
    assert "low < high" in r.output
    r = run("tune", "nofile.py:f", "--space", "space.json", "--budget", "3", "--storage",
            "sqlite:///s.db", ok=False)
    assert "does not exist" in r.output
    r = run("tune", "obj.py:nothing", "--space", "space.json", "--budget", "3", ok=False)
    assert "no function 'nothing'" in r.output
    r = run("tune", "obj.py:takes_other", "--space", "space.json", "--budget", "3",
            "--storage", "sqlite:///s.db", ok=False)
    assert "takes_other(a, b) takes neither the params dict nor the parameters x, k, act" \
        in r.output
    assert not Study.load("takes_other", "sqlite:///s.db").trials  # no trial spent on it


def test_tune_a_function_that_takes_the_parameters_by_name(workdir):
    db = "sqlite:///s.db"
    for fn in ("f", "by_name"):
        run("tune", f"obj.py:{fn}", "--space", "space.json", "--budget", "6", "--method",
            "random", "--storage", db, "--study", fn, "--seed", "2", "--quiet")
    assert ([t.value for t in Study.load("by_name", db).trials]
            == [t.value for t in Study.load("f", db).trials])


def test_plot(workdir):
    db = "sqlite:///s.db"
    run("tune", "obj.py:f", "--space", "space.json", "--budget", "6", "--method", "random",
        "--storage", db, "--study", "p", "--quiet")
    run("plot", "p", "--storage", db, "-o", "p.png")
    assert Path("p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = run("plot", "p", "--storage", db, "-o", "no/such/dir/p.png", ok=False)
    assert r.exit_code == 1 and r.output.strip() == (
        "Error: No such file or directory: no/such/dir/p.png"), r.output


def _interrupt_after(cmd: list[str], name: str, db: str, complete: int) -> tuple[str, list]:
    """Run ``cmd``, send it SIGINT once study ``name`` has ``complete`` finished trials,
    and check that it stopped cleanly: exit status 130, no trial left pending, the
    failed ones failed as interrupted. Returns its stderr and the study's trials."""
    # SIGINT as at a terminal: a suite started in the background (no job control) would
    # hand the child an ignored SIGINT, and Python then installs no Ctrl-C handler.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(0.2)
        if not Path(db.removeprefix("sqlite:///")).exists():
            continue  # not created yet (loading would make an empty file)
        try:
            trials = Study.load(name, db).trials
        except Exception:  # noqa: BLE001 - the study may not exist yet
            continue
        if sum(t.state is TrialState.COMPLETE for t in trials) >= complete:
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    trials = Study.load(name, db).trials
    assert not [t for t in trials if t.state is TrialState.PENDING]
    failed = [t for t in trials if t.state is TrialState.FAILED]
    assert all(t.info["reason"] == "interrupted" for t in failed)
    return err, trials


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_rerun_resumes(workdir):
    db = "sqlite:///s.db"
    # A budget the run cannot reach before the interrupt however slow the machine; the
    # re-run asks for ten trials more than were finished.
    cmd = [sys.executable, "-m", "bbopt.cli", "tune", "obj.py:slow", "--space", "space.json",
           "--budget", "1000", "--method", "random", "--storage", db, "--study", "int",
           "--workers", "2", "--quiet"]
    err, trials = _interrupt_after(cmd, "int", db, 3)
    assert "run the same command again to resume" in err
    first = {t.id: t.value for t in trials if t.state is TrialState.COMPLETE}
    assert len(first) >= 3
    cmd[cmd.index("1000")] = str(len(first) + 10)
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                           env={**os.environ})
    assert again.returncode == 0, again.stderr
    trials = Study.load("int", db).trials
    complete = [t for t in trials if t.state is TrialState.COMPLETE]
    assert len(complete) == len(first) + 10, "interrupted trials do not count toward the budget"
    assert all(trials[i].value == v for i, v in first.items()), "earlier values were lost"


@pytest.mark.slow
def test_ctrl_c_while_a_worker_asks_leaves_no_trial_pending(workdir):
    # The interrupt lands while ask() has stored a trial but not yet returned it: the
    # trial must be failed as interrupted like those being evaluated.
    (workdir / "slowask.py").write_text(
        "import time\nimport bbopt.study\n_ask = bbopt.study.Study.ask\n"
        "def _slow(self, *a, **k):\n    t = _ask(self, *a, **k)\n    time.sleep(0.5)\n"
        "    return t\nbbopt.study.Study.ask = _slow\n"
        "def fast(p):\n    return p['x'] ** 2\n")
    db = "sqlite:///s.db"
    cmd = [sys.executable, "-m", "bbopt.cli", "tune", "slowask.py:fast", "--space", "space.json",
           "--budget", "1000", "--method", "random", "--storage", db, "--study", "a",
           "--workers", "2", "--quiet"]
    _, trials = _interrupt_after(cmd, "a", db, 2)
    assert [t for t in trials if t.state is TrialState.FAILED]  # the trial being asked


@pytest.mark.slow
def test_kill_9_loses_nothing_told(workdir):
    db = "sqlite:///s.db"
    cmd = [sys.executable, "-m", "bbopt.cli", "tune", "obj.py:slow", "--space", "space.json",
           "--budget", "8", "--method", "random", "--storage", db, "--study", "k", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    told = []
    while time.time() < deadline and len(told) < 3:
        time.sleep(0.1)
        try:
            told = [t for t in Study.load("k", db).trials if t.state is TrialState.COMPLETE]
        except Exception:  # noqa: BLE001 - not created yet
            pass
    proc.kill()
    proc.communicate(timeout=30)
    after = Study.load("k", db).trials
    values = {t.id: t.value for t in after if t.state is TrialState.COMPLETE}
    assert all(values[t.id] == t.value for t in told)
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    final = Study.load("k", db).trials
    assert sum(t.state is TrialState.COMPLETE for t in final) == 8
    assert all(final[i].value == v for i, v in values.items())
    open_ = [t for t in final if t.state is TrialState.PENDING]
    if open_:  # a trial in flight at the kill stays open (it sent heartbeats), and the
        # re-run says it goes stale unless its process is alive
        assert all(t.info.get("heartbeat") for t in open_)
        assert "asked by another process are running" in again.stderr
        assert "failed as stale after 120 s" in again.stderr


def test_train_eval_compares_screen_sizes(tmp_path):
    from bbopt.meta.trainer import save_policy
    from bbopt.nets.policy import BBOPolicy

    save_policy(tmp_path / "p.pt", BBOPolicy("lstm", hidden=8, layers=1), {})
    runner = CliRunner()
    res = runner.invoke(main, ["train", "eval", str(tmp_path / "p.pt"), "--dims", "2",
                               "--functions", "2", "--horizon", "6", "--screen", "0,4",
                               "--markdown", str(tmp_path / "t.md")])
    assert res.exit_code == 0, res.output
    rows = [line for line in res.output.splitlines() if line.startswith("| ")]
    assert rows[0] == "| policy | parallel | screen | d=2 |"
    assert [r.split(" | ")[1:3] for r in rows[1:]] == [["-", "-"], ["1", "0"], ["1", "4"]]
    assert "| 1 | 4 |" in (tmp_path / "t.md").read_text()
    res = runner.invoke(main, ["train", "eval", str(tmp_path / "p.pt"), "--screen", "-1"])
    assert res.exit_code != 0 and "--screen" in res.output
    res = runner.invoke(main, ["train", "eval", str(tmp_path / "p.pt"), "--parallel", "0"])
    assert res.exit_code != 0 and "--parallel" in res.output


def test_train_commands_reject_bad_input_with_a_clear_error(tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["train", "eval", str(tmp_path / "missing.pt")])
    assert res.exit_code != 0 and "missing.pt" in res.output
    (tmp_path / "junk.pt").write_bytes(b"not a policy")
    res = runner.invoke(main, ["train", "eval", str(tmp_path / "junk.pt")])
    assert res.exit_code != 0 and "junk.pt" in res.output
    res = runner.invoke(main, ["train", "bbo", "--out", str(tmp_path / "run"),
                               "--regret-floor", "0"])
    assert res.exit_code != 0 and "regret_floor must be positive" in res.output
    assert not (tmp_path / "run" / "last.pt").exists()
    res = runner.invoke(main, ["train", "bbo", "--out", str(tmp_path / "run"),
                               "--dims", "2,x"])
    assert res.exit_code != 0 and "comma-separated integers" in res.output


def test_train_l2l_and_bench_gradient_commands(tmp_path):
    runner = CliRunner()
    run = tmp_path / "run"
    res = runner.invoke(main, ["train", "l2l", "--out", str(run), "--iterations", "2",
                               "--horizon", "10", "--unroll", "5", "--batch", "2",
                               "--families", "quadratic", "--val-every", "1",
                               "--snapshot-every", "1", "--param-units", "0"])
    assert res.exit_code == 0, res.output
    assert (run / "best.pt").exists() and (run / "last.pt").exists()
    assert sorted(p.name for p in (run / "snapshots").iterdir()) == ["it_1.pt", "it_2.pt"]
    from bbopt.optimizers.l2l import load_l2l

    assert load_l2l(run / "best.pt")[1]["param_scale_decades"] == 0
    res = runner.invoke(main, ["train", "l2l", "--out", str(run), "--families", "resnet"])
    assert res.exit_code != 0 and "unknown optimizee family 'resnet'" in res.output
    out = tmp_path / "bg"
    res = runner.invoke(main, ["bench-gradient", "--families", "quadratic,sparse-l1",
                               "--steps", "100", "--seeds", "1", "--problems", "2",
                               "--out", str(out), "--markdown", str(tmp_path / "B.md")])
    assert res.exit_code == 0, res.output
    text = (tmp_path / "B.md").read_text()
    assert "**quadratic**" in text and "| fista |" in text and "lstm / tuned adam" in text
    assert "| problems where lstm < tuned adam |" in text
    # other settings: the cached runs are not mixed in, every run is made again
    res = runner.invoke(main, ["bench-gradient", "--families", "quadratic",
                               "--steps", "100", "--seeds", "1", "--problems", "3",
                               "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "0 runs cached" in res.output
    assert "with other --problems, --steps, --problem-seed or weights ignored" in res.output
    summary = json.loads((out / "summary.json").read_text())
    share = summary["families"]["quadratic"]["lstm"]["100"]["beats_adam"]
    assert share in (0, 1 / 3, 2 / 3, 1)
    res = runner.invoke(main, ["bench-gradient", "--families", "resnet"])
    assert res.exit_code != 0 and "unknown optimizee family 'resnet'" in res.output
    res = runner.invoke(main, ["bench-gradient", "--problem-seed", "-1"])
    assert res.exit_code != 0 and "--problem-seed" in res.output
    res = runner.invoke(main, ["bench-gradient", "--weights", "quadratc"])
    assert res.exit_code != 0 and "neither a weights file nor a shipped rule" in res.output
    # a shipped rule by name, beside the default one
    res = runner.invoke(main, ["bench-gradient", "--families", "quadratic", "--steps", "20",
                               "--seeds", "1", "--problems", "2", "--out", str(out),
                               "--weights", "quadratic"])
    assert res.exit_code == 0, res.output
    assert "| lstm:quadratic |" in res.output


USER_FAMILY = """
import torch
from bbopt.tasks.optimizees import Optimizee


class Diagonal(Optimizee):
    def __init__(self, batch, generator):
        self.name, self.batch, self.dim = "diagonal", batch, 5
        self.h = 10 ** (2 * torch.rand(batch, 5, generator=generator))
        self.theta0 = torch.randn(batch, 5, generator=generator)

    def loss(self, theta):
        return (self.h * theta.square()).sum(dim=1)


def make(batch, generator, device):
    return Diagonal(batch, generator)


def not_a_problem(batch, generator, device):
    return torch.zeros(batch, 5)
"""


def test_a_users_own_optimizee_family(tmp_path):
    """train l2l and bench-gradient take a family of one's own as file.py:function."""
    from bbopt.optimizers.l2l import load_l2l

    fam = tmp_path / "myfam.py"
    fam.write_text(USER_FAMILY)
    runner = CliRunner()
    run = tmp_path / "run"
    res = runner.invoke(main, ["train", "l2l", "--out", str(run), "--iterations", "2",
                               "--horizon", "10", "--unroll", "5", "--batch", "2",
                               "--families", f"{fam}:make,quadratic", "--val-every", "1"])
    assert res.exit_code == 0, res.output
    assert load_l2l(run / "best.pt")[1]["families"] == [f"{fam}:make", "quadratic"]
    res = runner.invoke(main, ["bench-gradient", "--families", f"{fam}:make", "--steps", "20",
                               "--seeds", "1", "--problems", "2", "--out", str(tmp_path / "bg"),
                               "--weights", str(run / "best.pt")])
    assert res.exit_code == 0, res.output
    assert f"**{fam}:make**" in res.output and "lstm / tuned adam" in res.output
    for spec, message in [(f"{fam}:not_a_problem", "must return a bbopt.tasks.optimizees"),
                          (f"{fam}:nothing", "has no function 'nothing'"),
                          (f"{tmp_path / 'absent.py'}:make", "does not exist"),
                          ("nosuchmodule:make", "unknown optimizee family")]:
        res = runner.invoke(main, ["train", "l2l", "--out", str(tmp_path / "bad"),
                                   "--families", spec, "--iterations", "1"])
        assert res.exit_code != 0 and message in res.output, (spec, res.output)
    assert not (tmp_path / "bad" / "last.pt").exists()


def test_shell_gradient_mode(workdir):
    db = "sqlite:///g.db"
    Path("fspace.json").write_text(json.dumps({"x": {"type": "float", "low": -2, "high": 2}}))
    for _ in range(3):
        a = json.loads(run("ask", "grad", "--storage", db, "--space", "fspace.json",
                           "--method", "l2l").output)
        x = a["params"]["x"]
        run("tell", "grad", str(a["id"]), str((x - 1) ** 2), "--grad", json.dumps([2 * (x - 1)]),
            "--storage", db)
    a = json.loads(run("ask", "grad", "--storage", db).output)
    for args, msg in [
        (("tell", "grad", str(a["id"]), "1.0"), "needs the gradient"),
        (("tell", "grad", str(a["id"]), "1.0", "--grad", "[1, 2]"), "sequence of 1 numbers"),
        (("tell", "grad", str(a["id"]), "1.0", "--grad", "{x"), "not JSON"),
    ]:
        r = run(*args, "--storage", db, ok=False)
        assert r.exit_code != 0 and msg in r.output, r.output
    trials = Study.load("grad", db).trials
    assert [t.state.value for t in trials] == ["complete"] * 3 + ["pending"]
    assert trials[2].value < trials[0].value
