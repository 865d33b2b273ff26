"""Benchmark tasks: synthetic optima, the registry, and the hyperparameter-tuning tasks."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from bbopt.tasks import base
from bbopt.tasks.base import SUITES, Task, get_suite, get_task, register, task_names

from bbopt.space import Space

ROOT = Path(__file__).resolve().parents[1]
SPACES = ROOT / "tasks" / "spaces"
HPO = ["digits_mlp", "breast_cancer_gbm", "wine_svm"]


def _optimizers(task: Task) -> list[dict[str, float]]:
    try:
        opts = task.fn.function.optimizers
    except NotImplementedError:  # botorch has none (michalewicz5)
        return []
    return [{f"x{i}": float(v) for i, v in enumerate(o)} for o in opts.tolist()]


# -- synthetic ---------------------------------------------------------------------------
BOTORCH = SUITES["synthetic"] + SUITES["synthetic-wide"]
#: The tasks whose optimum refines botorch's rounded one (tasks/synthetic.py).
REFINED = ("eggholder", "holder_table", "shekel", "six_hump_camel")


@pytest.mark.parametrize("name", BOTORCH)
def test_synthetic_matches_botorch(name):
    task = get_task(name)
    f = task.fn.function
    lows = [p.low for p in task.space.params.values()]
    highs = [p.high for p in task.space.params.values()]
    assert task.space.names == [f"x{i}" for i in range(f.dim)]
    assert f.bounds.tolist() == [lows, highs]
    # Where botorch rounds an optimum (six-hump camel: -1.0316 for -1.0316284...) the
    # task's is refined (REFINED); elsewhere the two agree closely.
    assert task.optimum == pytest.approx(f.optimal_value,
                                         abs=5e-5 if name in REFINED else 1e-5)
    assert f.noise_std is None and not f.negate


@pytest.mark.parametrize("name", BOTORCH)
def test_synthetic_optimum_and_random_points(name):
    task = get_task(name)
    for x in _optimizers(task):
        assert task(x) == pytest.approx(task.optimum, abs=1e-3)
        assert task.regret(task(x)) < 1e-3
        if name in SUITES["synthetic-wide"]:  # optima refined: none lies below them
            assert task(x) >= task.optimum - 1e-12
    if name not in ("michalewicz5", "michalewicz10"):
        assert _optimizers(task), "botorch should know an optimizer"
    rng = np.random.default_rng(1)
    for u in rng.random((50, task.space.dim)):
        params = task.space.decode(u)
        value = task(params)
        assert isinstance(value, float) and math.isfinite(value)
        assert value >= task.optimum - 1e-6
        assert task.regret(value) == max(value - task.optimum, 0.0)


def test_synthetic_import_is_cheap_and_suites():
    assert set(SUITES["quick"]) <= set(SUITES["synthetic"])
    assert [t.name for t in get_suite("quick")] == ["branin", "hartmann3"]
    assert set(BOTORCH) | set(HPO) <= set(task_names())
    assert not set(SUITES["synthetic"]) & set(SUITES["synthetic-wide"])
    assert task_names() == sorted(task_names())
    t = get_task("hartmann6")
    assert t.space.dim == 6 and "Hartmann" in t.description


def test_families_reach_their_optimum_at_the_stated_points_and_nowhere_below():
    from bbopt.tasks.families import MINIMIZERS, EvaluationFailed

    assert set(SUITES["families"]) | set(SUITES["failures"]) == set(MINIMIZERS)
    rng = np.random.default_rng(0)
    for task in get_suite("families") + get_suite("failures"):
        best = MINIMIZERS[task.name]
        assert task.space.validate(best) is not None and task(best) == pytest.approx(0, abs=1e-12)
        assert task.optimum == 0.0
        failed = 0
        for _ in range(200):  # random points of the space are worse, or fail
            u = rng.uniform(size=task.space.dim)
            try:
                assert task(task.space.decode(u)) > 0.0
            except EvaluationFailed:
                failed += 1
        # the failures suite fails on a sizeable part of the space; families never do
        assert (20 < failed < 160) if task.name in SUITES["failures"] else failed == 0
    assert get_task("sphere20").space.dim == 20
    mixed = get_task("mixed6")
    assert mixed({**MINIMIZERS["mixed6"], "opt": "sgd"}) == pytest.approx(0.5)


# -- Task and the registry ---------------------------------------------------------------
def test_regret():
    t = Task("t", Space({"x": {"type": "float", "low": 0, "high": 1}}), lambda p: p["x"], 0.25)
    assert t({"x": 0.75}) == 0.75 and isinstance(t({"x": 1}), float)
    assert t.regret(0.75) == 0.5
    assert t.regret(0.25) == 0.0
    assert t.regret(0.2) == 0.0  # clipped
    with pytest.raises(ValueError, match="no known optimum"):
        Task("u", t.space, t.fn).regret(1.0)
    with pytest.raises(ValueError, match="no known optimum"):
        get_task("wine_svm").regret(0.1)


def test_register_and_unknown_names(monkeypatch):
    base._load_builtins()  # first, or they would register in the copy below only
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    t = Task("my_task", Space({"x": {"type": "int", "low": 0, "high": 3}}), lambda p: p["x"])
    assert register(t) is t and get_task("my_task") is t
    assert "my_task" in task_names()
    with pytest.raises(ValueError, match=r"unknown task 'nope'.*branin.*digits_mlp"):
        get_task("nope")
    with pytest.raises(ValueError, match=r"unknown suite 'nope'.*hpo.*quick.*synthetic"):
        get_suite("nope")
    with pytest.raises(TypeError):
        register("branin")


# -- hyperparameter tuning ---------------------------------------------------------------
@pytest.fixture
def one_thread():
    """Run on one thread: on a busy shared machine, OpenMP/torch threads fighting over
    cores make a 0.2 s fit take seconds."""
    from threadpoolctl import threadpool_limits

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(n)


def _sample(space: Space) -> dict:
    return space.decode(np.random.default_rng(0).random(space.dim))


@pytest.mark.parametrize("name", HPO)
def test_hpo_space_files_match(name):
    from bbopt.tasks import hpo

    fn = getattr(hpo, name)
    assert Space.load(SPACES / f"{name}.json") == fn.space
    task = get_task(name)
    assert task.space == fn.space and task.optimum is None


def test_hpo_loads_by_file_path(monkeypatch):
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))  # it registers again
    spec = importlib.util.spec_from_file_location("hpo_by_path", ROOT / "tasks" / "hpo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for name in HPO:
        assert getattr(mod, name).space == Space.load(SPACES / f"{name}.json")


@pytest.mark.parametrize(
    "name, lo, hi",
    [("breast_cancer_gbm", 0.0, 1.0), ("wine_svm", 0.0, 0.7)],
)
def test_hpo_value(name, lo, hi, one_thread):
    task = get_task(name)
    value = task(_sample(task.space))
    assert isinstance(value, float) and math.isfinite(value) and lo <= value <= hi


def test_digits_mlp_value_and_deterministic(one_thread):
    task = get_task("digits_mlp")
    params = _sample(task.space)
    state = torch.get_rng_state()
    first = task(params)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    torch.rand(3)
    assert math.isfinite(first) and 0.0 <= first <= 0.5  # 10 classes: chance is 0.9
    assert task(params) == first


def test_the_wider_gp_prior_suite_is_made_on_lookup():
    names = base.SUITES["gp-prior-4"]
    assert len(names) == 12 and {"gp2", "gp4", "gp8", "gp4-2"} <= set(names)
    assert set(names) <= set(task_names())
    task = get_task("gp4-2")  # made now: a held-out sample of its own, with its optimum
    assert task.name == "gp4-2" and task.space.dim == 4 and "gp4-2" in base._REGISTRY
    assert task.optimum < task({f"x{i}": 0.5 for i in range(4)})
    assert task(dict.fromkeys(task.space.names, 0.5)) != get_task("gp4")(
        dict.fromkeys(task.space.names, 0.5))
    wider = base.SUITES["gp-prior-16"]
    assert len(wider) == 48 and set(names) <= set(wider) and "gp8-15" in wider
    second = base.SUITES["gp4-second16"]
    assert len(second) == 16 and not set(second) & set(wider) and "gp4-31" in second
    assert "gp8-31" in base.SUITES["gp8-second16"]
    for name in ("gp2-16", "gp4-32", "gp8-32"):
        with pytest.raises(ValueError, match=f"unknown task '{name}'"):
            get_task(name)


# -- noisy values ------------------------------------------------------------------------
def test_noisy_tasks_tell_noise_and_keep_the_true_value():
    from bbopt.tasks.noisy import NOISE_FRACTION, spread

    space = Space({"x": {"type": "float", "low": 0, "high": 1}})
    quiet = Task("q", space, lambda p: p["x"])
    assert quiet.evaluate({"x": 0.5}) == (0.5, 0.5)  # no noise, no rng needed
    loud = Task("l", space, lambda p: p["x"], noise=0.3)
    with pytest.raises(ValueError, match="needs an rng"):
        loud.evaluate({"x": 0.5})
    draws = [loud.evaluate({"x": 0.5}, np.random.default_rng(7)) for _ in range(2)]
    assert draws[0] == draws[1] and draws[0][0] == 0.5 and draws[0][1] != 0.5
    told = [loud.evaluate({"x": 0.5}, rng)[1] for rng in [np.random.default_rng(1)] * 4000]
    assert np.std(told) == pytest.approx(0.3, rel=0.05)
    for bad in (-0.1, math.nan, math.inf, True, "0.1"):
        with pytest.raises(ValueError, match="noise must be"):
            Task("b", space, lambda p: p["x"], noise=bad)
    # A suite task is its base, told with a tenth of the base's spread as noise.
    names = base.SUITES["noisy"]
    assert {"noisy-gp2", "noisy-gp2-7", "noisy-gp4-3", "noisy-branin"} <= set(names)
    assert set(names) <= set(task_names())
    noisy, branin = get_task("noisy-branin"), get_task("branin")
    assert noisy.fn is branin.fn and noisy.space is branin.space
    assert noisy.optimum == branin.optimum and branin.noise == 0.0
    assert noisy.noise == pytest.approx(NOISE_FRACTION * spread(branin)) and noisy.noise > 1.0
