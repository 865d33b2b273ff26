"""BBOptSearch, the Ray Tune searcher: space conversion, suggest/complete without Tune,
checkpoints with pending trials, and one small end-to-end ``tune.Tuner`` run."""

from __future__ import annotations

import math
import pickle
import warnings

import pytest
import ray
from ray import tune

import bbopt
from bbopt import BBOptSearch, Categorical, Float, Int, Space, TrialState
from bbopt.errors import StudyError, TrialError, UnknownMethodError
from bbopt.serve.tune import convert_search_space
from bbopt.storage import SQLStorage
from bbopt.trial import Trial

TUNE_SPACE = {
    "x": tune.uniform(-1.0, 1.0),
    "y": tune.uniform(-1.0, 1.0),
    "n": tune.randint(0, 3),
    "tag": "const",
}


def quadratic(config: dict) -> float:
    return (config["x"] - 0.3) ** 2 + (config["y"] + 0.5) ** 2 + 0.1 * config["n"]


def searcher(**kw) -> BBOptSearch:
    kw = {"space": TUNE_SPACE, "metric": "loss", "mode": "min", "seed": 0, **kw}
    return BBOptSearch(**kw)


def study_space(s: BBOptSearch) -> dict:
    assert s.study is not None
    return s.study.space.params


# ------------------------------------------------------------------ space conversion
def test_float_domains():
    entries, _ = convert_search_space({
        "u": tune.uniform(-2.0, 3.0),
        "lu": tune.loguniform(1e-4, 1e-1),
        "q": tune.quniform(0.0, 1.0, 0.25),
        "ql": tune.qloguniform(1.0, 100.0, 1.0),
    })
    params = {e.name: e.param for e in entries}
    assert params == {
        "u": Float(-2.0, 3.0),
        "lu": Float(1e-4, 1e-1, log=True),
        "q": Float(0.0, 1.0),
        "ql": Float(1.0, 100.0, log=True),
    }
    q = next(e for e in entries if e.name == "q")
    assert q.to_config(0.6) == 0.5 and q.to_config(0.9) == 1.0 and q.to_config(0.0) == 0.0
    (tenth,), _ = convert_search_space({"t": tune.quniform(0.0, 1.0, 0.1)})
    assert tenth.to_config(0.73) == 0.7  # not 0.7000000000000001


def test_integer_domains():
    entries, _ = convert_search_space({
        "r": tune.randint(1, 5),  # upper exclusive
        "lr": tune.lograndint(1, 100),
        "qr": tune.qrandint(0, 100, 10),  # multiples of 10, upper inclusive
        "q1": tune.qrandint(2, 6, 1),  # q == 1: upper exclusive, like randint
    })
    params = {e.name: e.param for e in entries}
    assert params == {
        "r": Int(1, 4),
        "lr": Int(1, 99, log=True),
        "qr": Int(0, 100),
        "q1": Int(2, 5),
    }
    qr = next(e for e in entries if e.name == "qr")
    assert qr.to_config(37) == 40 and isinstance(qr.to_config(37), int)


def test_choice_constants_and_nesting():
    entries, constants = convert_search_space({
        "act": tune.choice(["relu", "tanh"]),
        "layers": tune.choice([[64], [64, 64]]),
        "only": tune.choice(["adam"]),
        "epochs": 10,
        "opt": {"lr": tune.loguniform(1e-3, 1e-1), "name": "sgd", "extra": {}},
    })
    params = {e.name: e.param for e in entries}
    assert params == {
        "act": Categorical(["relu", "tanh"]),
        "layers": Categorical([0, 1]),  # non-scalar choices are searched by position
        "opt/lr": Float(1e-3, 1e-1, log=True),
    }
    assert dict(constants) == {("only",): "adam", ("epochs",): 10, ("opt", "name"): "sgd",
                               ("opt", "extra"): {}}

    s = BBOptSearch({"act": tune.choice(["relu", "tanh"]),
                     "layers": tune.choice([[64], [64, 64]]), "epochs": 10,
                     "opt": {"lr": tune.loguniform(1e-3, 1e-1), "name": "sgd"}},
                    metric="loss", mode="min", seed=0)
    config = s.suggest("t0")
    assert config["epochs"] == 10 and config["opt"]["name"] == "sgd"
    assert 1e-3 <= config["opt"]["lr"] <= 1e-1
    assert config["layers"] in ([64], [64, 64]) and config["act"] in ("relu", "tanh")


def test_bbopt_spaces_are_accepted():
    space = Space({"lr": Float(1e-4, 1e-1, log=True), "k": Int(1, 4)})
    assert study_space(BBOptSearch(space, metric="m", mode="min")) == space.params
    file_form = {"lr": {"type": "float", "low": 1e-4, "high": 0.1, "log": True},
                 "k": {"type": "int", "low": 1, "high": 4}}
    assert study_space(BBOptSearch(file_form, metric="m", mode="min")) == space.params
    mixed = {"lr": Float(1e-4, 1e-1, log=True), "k": tune.randint(1, 5), "c": 1}
    s = BBOptSearch(mixed, metric="m", mode="min")
    assert study_space(s) == space.params
    assert s.suggest("t")["c"] == 1


@pytest.mark.parametrize("domain", [
    tune.randn(0.0, 1.0),
    tune.qrandn(0.0, 1.0, 0.1),
    tune.sample_from(lambda _: 1),
    tune.grid_search([1, 2]),
    [tune.uniform(0, 1)],
])
def test_unsupported_domain_names_the_parameter(domain):
    with pytest.raises(ValueError, match="'bad'"):
        BBOptSearch({"ok": tune.uniform(0, 1), "bad": domain}, metric="m", mode="min")
    s = BBOptSearch(metric="m", mode="min")
    with pytest.raises(ValueError, match="'bad'"):
        s.set_search_properties(None, None, {"ok": tune.uniform(0, 1), "bad": domain})


def test_set_search_properties_follows_tunes_convention():
    s = BBOptSearch(seed=0)
    assert s.set_search_properties("acc", "max", {"lr": tune.loguniform(1e-3, 1e-1),
                                                  "epochs": 3})
    assert s.metric == "acc" and s.mode == "max" and s.study.direction == "maximize"
    assert s.suggest("t0")["epochs"] == 3
    # a space is set already: Tune's config is not taken
    assert not s.set_search_properties("acc", "max", {"z": tune.uniform(0, 1)})
    # nothing to search in the config
    assert not BBOptSearch().set_search_properties("m", "min", {"epochs": 3})
    # a searcher's own space takes Tune's metric and mode when it had none
    own = BBOptSearch({"x": tune.uniform(0, 1)})
    assert not own.set_search_properties("loss", "min", {"epochs": 3})
    assert own.metric == "loss" and own.study.direction == "minimize"
    assert isinstance(own.suggest("t")["x"], float)


def test_tunes_num_samples_becomes_the_learned_studys_budget():
    def start(s: BBOptSearch, **spec) -> BBOptSearch:
        assert s.set_search_properties("loss", "min", {"x": tune.uniform(0, 1)}, **spec)
        return s

    s = start(BBOptSearch(seed=0), num_samples=40, stop=None, time_budget_s=None)
    assert s.study._optimizer.budget == 40 and s.get_state()["options"] == {"budget": 40}
    assert start(BBOptSearch(seed=0, budget=12), num_samples=40).study._optimizer.budget == 12
    assert start(BBOptSearch(seed=0), num_samples=-1).study._optimizer.budget is None  # no end
    assert start(BBOptSearch(seed=0)).study._optimizer.budget is None
    assert start(BBOptSearch(seed=0, method="random"), num_samples=40).get_state()["options"] == {}
    # a searcher whose study started with its own space keeps it as it was
    own = BBOptSearch({"x": tune.uniform(0, 1)}, metric="loss", mode="min", seed=0)
    assert not own.set_search_properties(None, None, {"epochs": 3}, num_samples=40)
    assert own.study._optimizer.budget is None


def test_bad_settings_raise_clearly():
    with pytest.raises(ValueError, match="mode"):
        BBOptSearch(TUNE_SPACE, metric="loss", mode="minimize")
    with pytest.raises(ValueError, match="one metric"):
        BBOptSearch(TUNE_SPACE, metric=["a", "b"], mode="min")
    with pytest.raises(UnknownMethodError):
        BBOptSearch(TUNE_SPACE, metric="loss", mode="min", method="nope")
    with pytest.raises(ValueError, match="gradient"):
        BBOptSearch(TUNE_SPACE, metric="loss", mode="min", method="l2l")
    with pytest.raises(TypeError, match="storage"):
        BBOptSearch(TUNE_SPACE, metric="loss", mode="min", storage="sqlite://")
    with pytest.raises(ValueError, match="max_concurrent"):
        BBOptSearch(TUNE_SPACE, metric="loss", mode="min", max_concurrent=-1)
    with pytest.raises(ValueError, match="only constants"):
        BBOptSearch({"a": 1}, metric="loss", mode="min")
    with pytest.raises(RuntimeError, match="metric"):
        BBOptSearch(TUNE_SPACE).suggest("t0")
    with pytest.raises(RuntimeError, match="mode"):
        BBOptSearch(TUNE_SPACE, metric="loss").suggest("t0")
    with pytest.raises(RuntimeError, match="search space"):
        BBOptSearch(metric="loss", mode="min").suggest("t0")
    with pytest.raises(ValueError, match="points_to_evaluate"):
        searcher(points_to_evaluate=[{"x": 5.0, "y": 0.0, "n": 0}])


# ---------------------------------------------------------------- suggest / complete
def test_suggestions_are_distinct_and_complete_tells_the_study():
    s = searcher()
    configs = [s.suggest(f"t{i}") for i in range(4)]
    assert len({(c["x"], c["y"], c["n"]) for c in configs}) == 4
    for c in configs:
        assert -1 <= c["x"] <= 1 and -1 <= c["y"] <= 1 and c["n"] in (0, 1, 2)
        assert c["tag"] == "const"
    assert s.suggest("t0") == configs[0]  # asked again: the same trial
    for i, c in enumerate(configs):
        s.on_trial_complete(f"t{i}", {"loss": quadratic(c)})
    trials = s.study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert [t.value for t in trials] == [quadratic(c) for c in configs]
    assert s.live_trials == {}
    best = min(configs, key=quadratic)
    assert s.best_config == best
    s.on_trial_result("t9", {"loss": 1.0})  # intermediate results are ignored


def test_mode_max_picks_the_largest():
    s = searcher(mode="max")
    for i in range(3):
        s.suggest(f"t{i}")
        s.on_trial_complete(f"t{i}", {"loss": float(i)})
    assert s.study.direction == "maximize" and s.study.best_trial.value == 2.0


def test_concurrency_limit():
    s = searcher(max_concurrent=2)
    assert s.suggest("a") is not None and s.suggest("b") is not None
    assert s.suggest("c") is None
    s.on_trial_complete("a", {"loss": 1.0})
    assert s.suggest("c") is not None
    assert s.set_max_concurrency(3) is True
    assert s.suggest("d") is not None and s.suggest("e") is None
    assert set(s.live_trials) == {"b", "c", "d"}
    assert s.set_max_concurrency(0) and s.suggest("e") is not None  # 0: no limit


@pytest.mark.parametrize("result, error, reason", [
    ({"loss": float("nan")}, False, "nan"),
    ({"loss": float("inf")}, False, "inf"),
    ({"loss": "bad"}, False, "not a number"),
    ({"other": 1.0}, False, "no metric 'loss'"),
    (None, False, "no metric 'loss'"),
    ({"loss": 1.0}, True, "error"),
    (None, True, "error"),
])
def test_bad_results_are_recorded_as_failed(result, error, reason):
    s = searcher()
    s.suggest("t0")
    s.on_trial_complete("t0", result, error=error)
    (trial,) = s.study.trials
    assert trial.state is TrialState.FAILED and trial.value is None
    assert reason in trial.info["reason"]
    assert s.live_trials == {}
    assert s.suggest("t1") is not None  # the search goes on


def test_unknown_and_repeated_trial_ids_warn():
    s = searcher()
    c = s.suggest("t0")
    s.on_trial_complete("t0", {"loss": 1.0})
    with pytest.warns(RuntimeWarning, match="completed twice"):
        s.on_trial_complete("t0", {"loss": 2.0})
    with pytest.warns(RuntimeWarning, match="unknown Tune trial 'ghost'"):
        s.on_trial_complete("ghost", {"loss": 1.0})
    # a result that carries its config is kept as an outside evaluation
    with pytest.warns(RuntimeWarning, match="outside evaluation"):
        s.on_trial_complete("stray", {"loss": 0.5, "config": {**c, "x": 0.0}})
    trials = s.study.trials
    assert [t.value for t in trials] == [1.0, 0.5]
    assert trials[1].params["x"] == 0.0 and trials[1].info == {"source": "add"}
    with pytest.raises(ValueError, match="finished already"):
        s.suggest("t0")


def test_points_to_evaluate_come_first_and_warm_starts():
    points = [{"x": 0.3, "y": -0.5, "n": 0}, {"x": 0.0, "y": 0.0, "n": 2, "tag": "const"}]
    s = searcher(points_to_evaluate=points)
    assert s.suggest("a") == {**points[0], "tag": "const"}
    assert s.suggest("b") == {**points[1], "tag": "const"}
    assert s.study.trials[0].info == {"source": "points_to_evaluate"}
    assert s.suggest("c") not in points
    s.add_evaluated_point({"x": 0.1, "y": 0.1, "n": 1}, 0.25)
    s.add_evaluated_point({"x": 0.2, "y": 0.1, "n": 1}, 0.0, error=True)
    assert [t.state for t in s.study.trials[3:]] == [TrialState.COMPLETE, TrialState.FAILED]


# ------------------------------------------------------------------------ checkpoints
def test_save_restore_keeps_pending_trials(tmp_path):
    s = searcher(max_concurrent=3)
    configs = {t: s.suggest(t) for t in ("a", "b", "c")}
    s.on_trial_complete("a", {"loss": quadratic(configs["a"])})
    s.on_trial_complete("b", {"loss": float("nan")})
    path = str(tmp_path / "searcher.pkl")
    s.save(path)

    r = BBOptSearch()
    r.restore(path)
    assert [t.to_dict() for t in r.study.trials] == [t.to_dict() for t in s.study.trials]
    assert r.live_trials == {"c": 2} and r.metric == "loss" and r.mode == "min"
    assert r.study.seed == s.study.seed and r.suggest("c") == configs["c"]
    # the restored searcher continues exactly as the original one does
    assert r.suggest("d") == s.suggest("d")
    r.on_trial_complete("c", {"loss": -1.0})
    assert r.study.trials[2].state is TrialState.COMPLETE
    assert r.study.best_trial.id == 2 and r.best_config == configs["c"]
    # "d" is out; the limit (3) came back too
    assert r.suggest("e") is not None and r.suggest("f") is not None
    assert r.suggest("g") is None
    r.on_trial_complete("d", {"loss": 0.0})
    assert [t.id for t in r.study.trials] == [0, 1, 2, 3, 4, 5]

    # Tune pickles the searcher with its TuneConfig: the same state travels
    p = pickle.loads(pickle.dumps(s))
    assert [t.to_dict() for t in p.study.trials] == [t.to_dict() for t in s.study.trials]
    assert p.live_trials == s.live_trials
    # a searcher saved before it had a space restores to one without
    empty = str(tmp_path / "empty.pkl")
    BBOptSearch(metric="loss", mode="min").save(empty)
    e = BBOptSearch()
    e.restore(empty)
    assert e.study is None and e.metric == "loss"


def test_import_trials_refuses_a_study_with_trials():
    s = searcher()
    s.suggest("a")
    store: SQLStorage = s.study.storage
    study_id = store.get_study(s.study.name).id
    with pytest.raises(StudyError, match="already has 1 trials"):
        store.import_trials(study_id, [Trial(0, {"x": 0.0, "y": 0.0, "n": 0})])
    other = bbopt.Study({"x": Float(0, 1)}, method="random", storage=store, name="other")
    other_id = store.get_study("other").id
    with pytest.raises(TrialError, match="ids 0..0"):
        store.import_trials(other_id, [Trial(5, {"x": 0.5})])
    with pytest.raises(TrialError, match="finite value"):
        store.import_trials(other_id, [Trial(0, {"x": 0.5}, TrialState.COMPLETE, math.nan)])
    assert other.trials == []
    done = store.import_trials(other_id, [Trial(0, {"x": 0.5}, TrialState.COMPLETE, 1.0),
                                          Trial(1, {"x": 0.2})])
    assert [t.state for t in done] == [TrialState.COMPLETE, TrialState.PENDING]
    assert other.tell(1, 0.5).value == 0.5 and other.best_trial.id == 1


# ------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def local_ray():
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    yield
    if started:
        ray.shutdown()


@pytest.mark.slow
def test_tuner_end_to_end_and_restore(local_ray, tmp_path):
    def objective(config: dict) -> None:
        # the formula of quadratic(), written out: Ray's workers cannot import this module
        from ray import tune

        loss = (config["x"] - 0.3) ** 2 + (config["y"] + 0.5) ** 2 + 0.1 * config["n"]
        tune.report({"loss": loss})

    search = BBOptSearch(seed=0)
    tuner = tune.Tuner(
        objective,
        param_space=TUNE_SPACE,
        tune_config=tune.TuneConfig(search_alg=search, metric="loss", mode="min",
                                    num_samples=8, max_concurrent_trials=2,
                                    reuse_actors=True),
        run_config=tune.RunConfig(name="bbopt_e2e", storage_path=str(tmp_path), verbose=0),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        results = tuner.fit()

    assert len(results) == 8 and results.num_errors == 0
    losses = [r.metrics["loss"] for r in results]
    assert all(math.isfinite(v) for v in losses)
    assert all(r.config["tag"] == "const" for r in results)
    assert len({(r.config["x"], r.config["y"], r.config["n"]) for r in results}) == 8
    best = results.get_best_result()
    assert best.metrics["loss"] == min(losses) < 1.0

    restored = BBOptSearch()
    restored.restore_from_dir(results.experiment_path)
    trials = restored.study.trials
    assert len(trials) == 8 and restored.live_trials == {}
    assert all(t.state is TrialState.COMPLETE for t in trials)
    assert restored.study._optimizer.budget == 8  # Tune's num_samples, kept on restore
    assert sorted(t.value for t in trials) == pytest.approx(sorted(losses))
    assert restored.study.best_trial.value == pytest.approx(best.metrics["loss"])
    assert restored.best_config == best.config
