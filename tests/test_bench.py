import json
import math

import pytest
from click.testing import CliRunner

from bbopt import bench
from bbopt.cli import main
from bbopt.objective import ObjectiveError, parse_value


def test_bench_writes_tables_json_png_and_resumes(tmp_path, monkeypatch):
    out = tmp_path / "out"
    md = tmp_path / "BENCH.md"
    args = ["bench", "--tasks", "branin,hartmann3", "--methods", "cma-es,optuna-tpe",
            "--budget", "12", "--seeds", "2", "--out", str(out), "--markdown", str(md)]
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    runs = (out / "runs.jsonl").read_text().splitlines()
    assert len(runs) == 2 * 3 * 2  # random is added as the reference
    summary = json.loads((out / "summary.json").read_text())
    assert summary["methods"] == ["random", "cma-es", "optuna-tpe"]
    assert summary["checkpoints"] == [10, 12]
    assert summary["mean_score"]["random"] == 0.0
    assert set(summary["latency"]["cma-es"]) == {"10"}
    q = summary["log10_regret"]["branin"]["cma-es"]["12"]
    assert q[1] <= q[0] <= q[2]
    text = md.read_text()
    assert "### `bbopt bench --tasks branin,hartmann3 --methods cma-es,optuna-tpe --budget 12" in text
    assert "| hartmann3 | 12 |" in text and "Normalized score" in text
    assert (out / "regret.png").read_bytes()[:4] == b"\x89PNG"

    def boom(spec):  # everything is cached: nothing may run again
        raise AssertionError(f"re-ran {spec}")

    monkeypatch.setattr(bench, "run_one", boom)
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 0 and len((out / "runs.jsonl").read_text().splitlines()) == 12


def test_summary_regret_and_score_on_hand_made_runs(monkeypatch):
    class T:
        optimum = 1.0

    monkeypatch.setattr("bbopt.tasks.base.get_task", lambda name: T())
    runs = []
    for seed, (r_best, g_best) in enumerate([(2.0, 1.1), (3.0, 1.01), (5.0, 1.001)]):
        runs.append({"task": "t", "method": "random", "seed": seed, "budget": 10,
                     "best": [r_best] * 10, "latency": {"10": 0.001}})
        runs.append({"task": "t", "method": "gp-ei", "seed": seed, "budget": 10,
                     "best": [g_best] * 10, "latency": {"10": 0.1}})
    s = bench.summarize(runs)
    med, lo, hi = s["log10_regret"]["t"]["random"]["10"]
    assert med == pytest.approx(math.log10(3 - 1))
    # median regret: random 2.0, gp-ei 0.01 -> score 100 * (1 - 0.01 / 2)
    assert abs(s["mean_score"]["gp-ei"] - 99.5) < 1e-9
    assert s["latency"]["gp-ei"]["10"] == 0.1


def test_parse_value_takes_the_last_number():
    assert parse_value("epoch 3 loss 0.25\nval 1e-3\n") == 1e-3
    assert parse_value("-4.5") == -4.5
    try:
        parse_value("no numbers here")
    except ObjectiveError as e:
        assert "printed no number" in str(e)
    else:
        raise AssertionError("expected ObjectiveError")


def test_untold_runs_use_default_settings_and_cache_apart(monkeypatch):
    import bbopt.study

    made = []

    class Spy(bbopt.study.Study):
        def __init__(self, *args, **kwargs):
            made.append(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(bbopt.study, "Study", Spy)
    told, untold = bench.RunSpec("branin", "learned", 0, 6), bench.RunSpec(
        "branin", "learned", 0, 6, told=False)
    assert told.key != untold.key
    r = bench.run_one(untold)
    assert made[-1] == {"method": "learned", "seed": 0} and r["told"] is False
    assert bench.RunSpec.of(r) == untold and len(r["best"]) == 6
    bench.run_one(told)
    assert made[-1]["budget"] == 6
    # runs written before the flag existed were told
    assert bench.RunSpec.of({k: v for k, v in r.items() if k != "told"}) == told


def test_pooled_figures_over_a_group_of_tasks(monkeypatch):
    class T:
        optimum = 0.0

    monkeypatch.setattr("bbopt.tasks.base.get_task", lambda name: T())
    # gp4 and gp4-1 form group gp4; branin is alone and is not pooled.
    regrets = {("gp4", "gp-ei"): [1e-1, 1e-3], ("gp4-1", "gp-ei"): [1e-2, 1.0],
               ("gp4", "learned"): [1e-4, 1e-2], ("gp4-1", "learned"): [1e-3, 1e-5],
               ("branin", "gp-ei"): [1.0, 1.0], ("branin", "learned"): [1.0, 1.0]}
    runs = [{"task": t, "method": m, "seed": s, "budget": 10, "best": [v] * 10,
             "latency": {}}
            for (t, m), vs in regrets.items() for s, v in enumerate(vs)]
    s = bench.summarize(runs)
    assert bench.task_group("gp4-15") == "gp4" and bench.task_group("hartmann3") == "hartmann3"
    assert set(s["pooled"]) == {"gp4"}
    p = s["pooled"]["gp4"]
    assert p["tasks"] == 2 and p["reference"] == "gp-ei"
    # learned's logs -4, -2, -3, -5; gp-ei's -1, -3, -2, 0 (paired in that order)
    assert p["learned"]["median"] == pytest.approx(-3.5)
    assert p["learned"]["mean"] == pytest.approx(-3.5)
    assert p["gp-ei"]["median"] == pytest.approx(-1.5)
    assert p["learned"]["below_-1"] == 1.0 and p["gp-ei"]["below_-1"] == 0.5  # -1 is not
    assert (p["learned"]["lower"], p["learned"]["higher"]) == (3, 1)
    assert "lower" not in p["gp-ei"]
    text = bench.to_markdown(s, "bbopt bench --tasks gp4,gp4-1,branin")
    assert "| gp4 | 2 | -1.50 / -1.50, 0.50 | **-3.50** / -3.50, 1.00 (3 / 1) |" in text


def test_bench_workers_end_when_the_bench_is_killed():
    import os
    import signal
    import subprocess
    import sys
    import time

    script = (
        "import os, sys, time\n"
        "from bbopt.bench import worker_pool\n"
        "if __name__ == '__main__':\n"
        "    pool = worker_pool(1)\n"
        "    print(pool.submit(os.getpid).result(), flush=True)\n"
        "    pool.submit(time.sleep, 120)\n"
        "    time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(proc.stdout.readline())
        os.kill(proc.pid, signal.SIGKILL)  # no handler runs: only the worker can notice
        proc.wait(10)

        def running() -> bool:
            try:
                with open(f"/proc/{worker}/stat") as f:
                    return f.read().rsplit(")", 1)[1].split()[0] != "Z"
            except FileNotFoundError:
                return False

        deadline = time.monotonic() + 10
        while running() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not running(), "the worker outlived its killed parent"
    finally:
        proc.kill()


def test_failed_evaluations_are_counted_and_tabled(monkeypatch):
    from bbopt import bench

    runs = [{"task": "branin", "method": m, "seed": s, "budget": 10, "best": [1.0] * 10,
             "latency": {}, "failed": f} for m, f in (("random", 4), ("learned", 1))
            for s in range(2)]
    runs.append({"task": "branin", "method": "cma-es", "seed": 0, "budget": 10,
                 "best": [1.0] * 10, "latency": {}})  # recorded before failures counted
    s = bench.summarize(runs)
    assert s["failed"]["branin"] == {"random": 4, "learned": 1, "cma-es": 0}
    md = bench.to_markdown(s, "bbopt bench")
    assert "Failed evaluations per run" in md and "| branin | 4 | 1 | 0 |" in md
    for r in runs:
        r["failed"] = 0
    assert "Failed evaluations" not in bench.to_markdown(bench.summarize(runs), "b")


def test_a_noisy_task_is_scored_by_the_true_value_of_the_trial_told_best(monkeypatch):
    import numpy as np
    from bbopt.tasks import base

    import bbopt.study
    from bbopt.space import Space

    base._load_builtins()  # first, or they would register in the copy below only
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    space = Space({"x": {"type": "float", "low": 0, "high": 1}})
    true: list[float] = []

    def fn(p):
        true.append((p["x"] - 0.3) ** 2)
        return true[-1]

    base.register(base.Task("loud", space, fn, optimum=0.0, noise=0.05))
    told: list[float] = []

    class Spy(bbopt.study.Study):
        def tell(self, trial, value=None, **kwargs):
            told.append(value)
            return super().tell(trial, value, **kwargs)

    monkeypatch.setattr(bbopt.study, "Study", Spy)
    r = bench.run_one(bench.RunSpec("loud", "random", 0, 30))
    assert len(true) == len(told) == 30 and told != true
    expect = [true[int(np.argmin(told[:i + 1]))] for i in range(30)]
    assert r["best"] == expect and expect != list(np.minimum.accumulate(true))
    true.clear()
    told.clear()  # the same draws again for the same seed and task
    assert bench.run_one(bench.RunSpec("loud", "random", 0, 30))["best"] == expect
