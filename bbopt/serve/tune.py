"""Ray Tune searcher: bbopt's optimizers proposing the configs of a ``tune.Tuner``.

``BBOptSearch`` keeps an in-memory ``bbopt.Study``; every config Tune asks for is a
trial of that study and every finished Tune trial is told to it, so Tune's scheduling,
fault tolerance and cluster scale meet bbopt's optimizers (the learned one by default)::

    from ray import tune
    from bbopt import BBOptSearch

    tuner = tune.Tuner(
        train_fn,
        param_space={"lr": tune.loguniform(1e-4, 1e-1), "layers": tune.randint(1, 5),
                     "act": tune.choice(["relu", "tanh"]), "epochs": 10},
        tune_config=tune.TuneConfig(search_alg=BBOptSearch(max_concurrent=4),
                                    metric="loss", mode="min", num_samples=32),
    )

The space can instead be given to ``BBOptSearch(space=...)`` as a ``bbopt.Space`` (or a
dict in bbopt's space-file format); then give ``metric`` and ``mode`` to BBOptSearch
too, since Tune only forwards its own to a searcher along with a ``param_space``.

How Tune's domains become bbopt parameters (names of nested keys are joined by "/"):

* ``uniform`` / ``loguniform``: ``Float(lower, upper, log=...)``.
* ``randint`` / ``lograndint``: ``Int(lower, upper - 1, log=...)`` (Tune's upper bound
  is exclusive there).
* ``quniform`` / ``qloguniform`` / ``qrandint`` / ``qlograndint``: the Float or Int
  spanning the multiples of ``q`` between the bounds; the study records the value the
  optimizer chose and the config gets it rounded to the nearest multiple of ``q``.
* ``choice``: ``Categorical``; choices that are not distinct JSON scalars (lists,
  objects) are searched by their position, which is what the study records.
* plain values (and nested dicts of them) are constants, copied into every config; a
  domain with one possible value becomes a constant too.

Domains with no bounded bbopt counterpart (``randn``, ``sample_from``, ``grid_search``,
domains inside lists) raise ValueError naming the parameter.
"""

from __future__ import annotations

import copy
import logging
import math
import uuid
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray import cloudpickle
from ray.tune.search import Searcher
from ray.tune.search.sample import Categorical as TuneCategorical
from ray.tune.search.sample import Domain, LogUniform, Quantized, Uniform
from ray.tune.search.sample import Float as TuneFloat
from ray.tune.search.sample import Integer as TuneInteger

from bbopt.errors import BBOptError, SpaceError, UnknownMethodError
from bbopt.optimizers.base import DEFAULT_METHOD, available_methods, budget_options, make_optimizer
from bbopt.space import Categorical, Float, Int, Param, Space, param_from_dict
from bbopt.study import Study
from bbopt.trial import Trial, TrialState

logger = logging.getLogger(__name__)

Path = tuple[str, ...]

#: Version of the state ``save`` writes; ``restore`` refuses others.
STATE_VERSION = 1

_BBOPT_TYPES = ("float", "int", "categorical")


# --------------------------------------------------------------------------- the space
@dataclass(frozen=True)
class _Entry:
    """One searched parameter: where it goes in the config, its name in the study, and
    how the study's value becomes the config's (``kind``: "value" as is, "quantize":
    rounded to a multiple of ``q``, "index": ``choices[value]``)."""

    path: Path
    name: str
    param: Param
    kind: str = "value"
    q: float | int | None = None
    choices: tuple[Any, ...] | None = None

    def to_config(self, value: Any) -> Any:
        """The study's value -> the value Tune's trainable sees."""
        if self.kind == "index":
            assert self.choices is not None
            return copy.deepcopy(self.choices[int(value)])
        if self.kind == "quantize":
            assert self.q is not None and isinstance(self.param, Float | Int)
            v = min(max(round(value / self.q) * self.q, self.param.low), self.param.high)
            if isinstance(self.param, Int):
                return int(round(v))
            return float(f"{v:.12g}")  # 0.7, not 0.7000000000000001, for q=0.1
        return value

    def from_config(self, value: Any) -> Any:
        """A value from a Tune config -> the study's value (points to evaluate)."""
        if self.kind == "index":
            assert self.choices is not None
            for i, c in enumerate(self.choices):
                if c is value or _safe_eq(c, value):
                    return i
            raise SpaceError(f"parameter {self.name!r}={value!r} is not one of "
                             f"{list(self.choices)}")
        if isinstance(value, np.generic):
            value = value.item()
        return value


def _safe_eq(a: Any, b: Any) -> bool:
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # arrays and odd objects compare oddly: count them as not equal
        return False


def _is_scalar_choice(c: Any) -> bool:
    if isinstance(c, float):
        return math.isfinite(c)
    return c is None or isinstance(c, str | bool | int)


def _plain(c: Any) -> Any:
    """numpy scalars as Python ones, so a choice list from numpy is still JSON scalars."""
    return c.item() if isinstance(c, np.generic) else c


def _name(path: Path) -> str:
    return "/".join(str(k) for k in path)


def _contains_domain(value: Any) -> bool:
    if isinstance(value, Domain):
        return True
    if isinstance(value, Mapping):
        return "grid_search" in value or any(_contains_domain(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_contains_domain(v) for v in value)
    return False


def _is_bbopt_spec(value: Any) -> bool:
    return (isinstance(value, Mapping) and value.get("type") in _BBOPT_TYPES
            and not _contains_domain(value))


def _from_tune_domain(path: Path, domain: Domain) -> _Entry | tuple[str, Any]:
    """A Tune domain -> an entry, or ("constant", value) for a one-valued domain."""
    name = _name(path)
    sampler = domain.get_sampler()
    q = None
    if isinstance(sampler, Quantized):
        q = sampler.q
        sampler = sampler.get_sampler()
        if not (isinstance(q, int | float) and not isinstance(q, bool) and q > 0):
            raise ValueError(f"parameter {name!r}: quantization q must be positive, got {q!r}")
    log = isinstance(sampler, LogUniform)
    if isinstance(domain, TuneFloat) and isinstance(sampler, Uniform | LogUniform):
        low, high = float(domain.lower), float(domain.upper)
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(f"parameter {name!r}: bbopt needs finite bounds, got "
                             f"[{low}, {high}]")
        if q is not None:
            low = math.ceil(low / q - 1e-9) * q
            high = math.floor(high / q + 1e-9) * q
            if high < low:
                raise ValueError(f"parameter {name!r}: no multiple of q={q} lies between "
                                 f"{domain.lower} and {domain.upper}")
        if high == low:
            return ("constant", float(low))
        return _Entry(path, name, Float(low, high, log=log),
                      "quantize" if q is not None else "value", q)
    if isinstance(domain, TuneInteger) and isinstance(sampler, Uniform | LogUniform):
        lower, upper = int(domain.lower), int(domain.upper)
        if q is None or q == 1:  # Tune: upper exclusive (qrandint too, for q == 1)
            low, high, q = lower, upper - 1, None
        else:
            q = int(q)
            low, high = -(-lower // q) * q, (upper // q) * q
        if high < low:
            raise ValueError(f"parameter {name!r}: the integer range [{domain.lower}, "
                             f"{domain.upper}) is empty")
        if high == low:
            return ("constant", int(low))
        try:
            param = Int(low, high, log=log)
        except SpaceError as e:
            raise ValueError(f"parameter {name!r}: {e}") from None
        return _Entry(path, name, param, "quantize" if q is not None else "value", q)
    if isinstance(domain, TuneCategorical) and isinstance(sampler, Uniform):
        choices = [_plain(c) for c in domain.categories]
        if not choices:
            raise ValueError(f"parameter {name!r}: tune.choice needs at least one choice")
        if len(choices) == 1:
            return ("constant", copy.deepcopy(domain.categories[0]))
        if all(_is_scalar_choice(c) for c in choices):
            try:
                return _Entry(path, name, Categorical(choices))
            except SpaceError:  # repeated choices: search positions instead
                pass
        return _Entry(path, name, Categorical(list(range(len(choices)))), "index",
                      choices=tuple(domain.categories))
    raise ValueError(
        f"parameter {name!r}: the Tune domain {type(domain).__name__} with sampler "
        f"{type(sampler).__name__} ({domain.domain_str}) has no bbopt counterpart; "
        "use uniform, loguniform, randint, lograndint, their q-variants, or choice"
    )


def convert_search_space(
    space: Space | Mapping[str, Any],
) -> tuple[list[_Entry], list[tuple[Path, Any]]]:
    """Split a space into searched entries and constants.

    ``space``: a ``bbopt.Space``, or a dict whose values are bbopt parameters (objects or
    their file form), Tune domains, nested dicts, or constants. ValueError (SpaceError
    for bbopt parameters) names the parameter that cannot be searched.
    """
    if isinstance(space, Space):
        return [_Entry((n,), n, p) for n, p in space.params.items()], []
    if not isinstance(space, Mapping):
        raise ValueError(f"space must be a bbopt.Space or a dict, got {type(space).__name__}")
    entries: list[_Entry] = []
    constants: list[tuple[Path, Any]] = []

    def walk(path: Path, value: Any) -> None:
        name = _name(path)
        if isinstance(value, Float | Int | Categorical):
            entries.append(_Entry(path, name, value))
        elif _is_bbopt_spec(value):
            entries.append(_Entry(path, name, param_from_dict(name, value)))
        elif isinstance(value, Domain):
            if value.is_function():
                raise ValueError(f"parameter {name!r}: tune.sample_from has no bbopt "
                                 "counterpart; give a bounded domain instead")
            got = _from_tune_domain(path, value)
            if isinstance(got, _Entry):
                entries.append(got)
            else:
                constants.append((path, got[1]))
        elif isinstance(value, Mapping) and "grid_search" in value:
            raise ValueError(f"parameter {name!r}: grid_search cannot be combined with a "
                             "searcher; use tune.choice instead")
        elif isinstance(value, Mapping) and value:
            for k, v in value.items():
                if not isinstance(k, str):
                    raise ValueError(f"config keys must be strings, got {k!r} in {name!r}")
                walk((*path, k), v)
        elif isinstance(value, list | tuple) and _contains_domain(value):
            raise ValueError(f"parameter {name!r}: search domains inside lists are not "
                             "supported; use a dict with named entries")
        else:
            constants.append((path, value))

    walk((), space)
    names = [e.name for e in entries]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"parameters {dup} appear twice once nested keys are joined by '/'")
    return entries, constants


def _set_path(config: dict[str, Any], path: Path, value: Any) -> None:
    d = config
    for k in path[:-1]:
        d = d.setdefault(k, {})
    d[path[-1]] = value


def _get_path(config: Mapping[str, Any], path: Path, name: str) -> Any:
    """The value at ``path`` in a nested config, or under the flat key ``name``."""
    if name in config:
        return config[name]
    d: Any = config
    for k in path:
        if not isinstance(d, Mapping) or k not in d:
            raise SpaceError(f"missing parameter {name!r}")
        d = d[k]
    return d


# -------------------------------------------------------------------------- the searcher
class BBOptSearch(Searcher):
    """A Ray Tune searcher whose suggestions come from a ``bbopt.Study``.

    ``space``: a bbopt.Space, a dict in bbopt's format, or a Tune search-space dict; None
    to take Tune's ``param_space``. ``metric`` / ``mode`` ("min" or "max"): what to
    optimize, here or in ``tune.TuneConfig``. ``method``, ``seed`` and ``options`` go to
    the study. ``max_concurrent``: at most this many trials out at once (0: no limit);
    Tune's ``max_concurrent_trials`` sets it too. ``points_to_evaluate``: configs to
    try first, before the optimizer proposes any.

    Failed trials (an error, a missing or non-finite metric) are recorded as failed with
    the reason, so the optimizer learns to avoid them and Tune carries on.
    """

    def __init__(
        self,
        space: Space | Mapping[str, Any] | None = None,
        metric: str | None = None,
        mode: str | None = None,
        method: str = DEFAULT_METHOD,
        seed: int | None = None,
        max_concurrent: int = 0,
        points_to_evaluate: Sequence[Mapping[str, Any]] | None = None,
        **options: Any,
    ) -> None:
        _check_metric_mode(metric, mode)
        if method not in available_methods():
            raise UnknownMethodError(
                f"unknown method {method!r}; available: {', '.join(available_methods())}")
        _check_max_concurrent(max_concurrent)
        if points_to_evaluate is not None and (
            isinstance(points_to_evaluate, Mapping)
            or not all(isinstance(p, Mapping) for p in points_to_evaluate)
        ):
            raise ValueError("points_to_evaluate must be a list of config dicts")
        reserved = sorted({"storage", "name", "direction"} & set(options))
        if reserved:
            raise TypeError(f"BBOptSearch got {reserved}: its study lives in memory and "
                            "in Tune's checkpoints, with the direction taken from mode")
        self._reset()
        super().__init__(metric=metric, mode=mode)
        self._method = method
        self._seed = seed
        self._options = dict(options)
        self._max_concurrent = max_concurrent
        self._points = [dict(p) for p in points_to_evaluate or []]
        if space is not None:
            self._set_space(space)
            self._maybe_start()

    def _reset(self) -> None:
        """Every attribute, at its empty value (shared by __init__ and unpickling)."""
        self._metric: str | None = None
        self._mode: str | None = None
        self._method = DEFAULT_METHOD
        self._seed: int | None = None
        self._options: dict[str, Any] = {}
        self._max_concurrent = 0
        self._points: list[dict[str, Any]] = []  # configs still to try, in Tune's form
        self._entries: list[_Entry] | None = None
        self._constants: list[tuple[Path, Any]] = []
        self._study: Study | None = None
        self._study_id: int | None = None
        self._live: dict[str, int] = {}  # Tune trial id -> pending bbopt trial id
        self._done: dict[str, int] = {}  # Tune trial id -> finished bbopt trial id

    # -- set-up --------------------------------------------------------------------
    def _set_space(self, space: Space | Mapping[str, Any]) -> None:
        entries, constants = convert_search_space(space)
        if not entries:
            raise ValueError("the search space has no parameter to search (only constants)")
        self._entries, self._constants = entries, constants

    def _maybe_start(self) -> None:
        """Create the study once the space and the direction are known."""
        if self._study is not None or self._entries is None or self._mode is None:
            return
        study = Study(
            Space({e.name: e.param for e in self._entries}),
            method=self._method,
            direction="minimize" if self._mode == "min" else "maximize",
            seed=self._seed,
            name=f"tune-{uuid.uuid4().hex[:8]}",
            **self._options,
        )
        if make_optimizer(self._method, study.space.dim, study.seed, self._options).needs_gradient:
            raise ValueError(f"method {self._method!r} needs the objective's gradient, which "
                             "Tune results do not carry; use a gradient-free method")
        self._points_as_params(self._points)  # fail early on a bad point
        self._study = study
        self._seed = study.seed  # a random seed is drawn once, then kept for restores
        record = study.storage.get_study(study.name)
        assert record is not None
        self._study_id = record.id

    def _points_as_params(self, points: list[dict[str, Any]]) -> list[dict[str, Any]]:
        assert self._entries is not None
        space = Space({e.name: e.param for e in self._entries})
        out = []
        for p in points:
            try:
                params = {e.name: e.from_config(_get_path(p, e.path, e.name))
                          for e in self._entries}
                out.append(space.validate(params))
            except SpaceError as err:
                raise ValueError(f"points_to_evaluate: {p!r}: {err}") from None
        return out

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict[str, Any], **spec: Any
    ) -> bool:
        """Take Tune's ``param_space`` as the space (and its metric and mode). False, per
        Tune's convention, when a space was given already or ``config`` has nothing to
        search; the metric and mode are still taken where this searcher had none. Tune's
        ``num_samples`` becomes the study's ``budget`` (for the learned methods) unless
        one was given or the study has started."""
        _check_metric_mode(metric, mode)
        samples = spec.get("num_samples")
        if (self._study is None and "budget" not in self._options
                and isinstance(samples, int) and not isinstance(samples, bool) and samples > 0):
            self._options.update(budget_options(self._method, samples))
        if self._entries is not None:
            if self._study is None:  # Tune's metric/mode complete a searcher's own space
                self._metric = self._metric or metric
                self._mode = self._mode or mode
                self._maybe_start()
            return False
        if not _contains_domain(config):
            return False
        self._set_space(config)  # ValueError naming an unsupported domain
        if metric:
            self._metric = metric
        if mode:
            self._mode = mode
        self._maybe_start()
        return True

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        """Limit the trials out at once (Tune's ConcurrencyLimiter defers to this)."""
        _check_max_concurrent(max_concurrent)
        self._max_concurrent = max_concurrent
        return True

    # -- properties ---------------------------------------------------------------------
    @property
    def study(self) -> Study | None:
        """The study behind the suggestions (None until the space and mode are known)."""
        return self._study

    @property
    def live_trials(self) -> dict[str, int]:
        """Tune trial id -> bbopt trial id, for the trials handed out and not finished."""
        return dict(self._live)

    @property
    def best_config(self) -> dict[str, Any]:
        """The config (as Tune's trainable saw it) of the study's best trial."""
        study = self._require_study()
        return self._config(study.best_trial.params)

    # -- suggest / complete ----------------------------------------------------------
    def _require_study(self) -> Study:
        if self._entries is None:
            raise RuntimeError(
                "BBOptSearch has no search space: pass space= to BBOptSearch, or give "
                "tune.Tuner a param_space with search domains (tune.uniform, ...)")
        if not self._metric or not self._mode:
            raise RuntimeError(
                "BBOptSearch needs a metric and a mode ('min' or 'max') to optimize, given "
                "to BBOptSearch(metric=..., mode=...) or tune.TuneConfig; got "
                f"metric={self._metric!r}, mode={self._mode!r}")
        self._maybe_start()
        assert self._study is not None
        return self._study

    def _config(self, params: Mapping[str, Any]) -> dict[str, Any]:
        assert self._entries is not None
        config: dict[str, Any] = {}
        for path, value in self._constants:
            if path:
                _set_path(config, path, copy.deepcopy(value))
        for e in self._entries:
            _set_path(config, e.path, e.to_config(params[e.name]))
        return config

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        """The config for Tune trial ``trial_id``; None while ``max_concurrent`` trials
        are out (Tune asks again later)."""
        study = self._require_study()
        if trial_id in self._live:  # asked again: the same trial
            return self._config(study.trials[self._live[trial_id]].params)
        if trial_id in self._done:
            raise ValueError(f"Tune trial {trial_id!r} has finished already; a trial id "
                             "is suggested once")
        if self._max_concurrent and len(self._live) >= self._max_concurrent:
            return None
        if self._points:
            params = self._points_as_params(self._points[:1])[0]
            assert self._study_id is not None
            trial = study.storage.ask(
                self._study_id, lambda _: [(params, {"source": "points_to_evaluate"})])[0]
            self._points.pop(0)
        else:
            trial = study.ask()
        self._live[trial_id] = trial.id
        return self._config(trial.params)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        """Intermediate results are not used: the study learns from final values only."""

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        """Tell the study ``result[metric]``; record the trial as failed, with the
        reason, after an error or without a finite metric. Never raises for a bad result:
        one broken trial must not stop the experiment."""
        study = self._require_study()
        if trial_id not in self._live:
            self._complete_unknown(trial_id, result, error)
            return
        number = self._live[trial_id]
        value, reason = self._value(result, error)
        if reason is None:
            study.tell(number, value)
        else:
            logger.info("BBOptSearch: Tune trial %s (bbopt trial %d) failed: %s",
                        trial_id, number, reason)
            study.tell(number, failed=True, reason=reason)
        del self._live[trial_id]
        self._done[trial_id] = number

    def _value(self, result: Mapping[str, Any] | None, error: bool) -> tuple[float | None,
                                                                            str | None]:
        """(value, None) for a usable result, else (None, why the trial failed)."""
        if error:
            return None, "the trial raised an error"
        if not result or self._metric not in result:
            return None, f"the result has no metric {self._metric!r}"
        raw = result[self._metric]
        try:
            if isinstance(raw, bool | str | bytes):
                raise TypeError
            value = float(raw)
        except (TypeError, ValueError):
            return None, f"metric {self._metric!r} is not a number: {raw!r}"
        if not math.isfinite(value):
            return None, f"metric {self._metric!r} is {value}"
        return value, None

    def _complete_unknown(self, trial_id: str, result: dict[str, Any] | None,
                          error: bool) -> None:
        """A completion for a trial this searcher did not hand out (or already heard
        about): warn, and keep a usable result (its config is in it) as an outside
        evaluation rather than lose it."""
        if trial_id in self._done:
            warnings.warn(f"BBOptSearch: Tune trial {trial_id!r} completed twice; the "
                          "second result is ignored", RuntimeWarning, stacklevel=2)
            return
        value, reason = self._value(result, error)
        config = (result or {}).get("config")
        if reason is None and isinstance(config, Mapping):
            try:
                params = self._points_as_params([dict(config)])[0]
                assert self._study is not None and value is not None
                self._study.add(params, value)
            except (ValueError, BBOptError) as err:
                reason = f"its config does not fit the space ({err})"
            else:
                warnings.warn(f"BBOptSearch: Tune trial {trial_id!r} was not suggested by "
                              "this searcher; its result was recorded as an outside "
                              "evaluation", RuntimeWarning, stacklevel=2)
                return
        warnings.warn(f"BBOptSearch: unknown Tune trial {trial_id!r} completed "
                      f"({reason or 'no config in the result'}); ignored",
                      RuntimeWarning, stacklevel=2)

    def add_evaluated_point(
        self,
        parameters: dict[str, Any],
        value: float,
        error: bool = False,
        pruned: bool = False,
        intermediate_values: list[float] | None = None,
    ) -> None:
        """Record an evaluation made outside this searcher (a warm start). A pruned
        trial counts with its last value; an errored or non-finite one as failed."""
        study = self._require_study()
        params = self._points_as_params([dict(parameters)])[0]
        got, reason = self._value({self._metric: value}, error)
        if reason is None:
            study.add(params, got)  # type: ignore[arg-type]
        else:
            assert self._study_id is not None
            study.storage.add(self._study_id, params, TrialState.FAILED, None,
                              {"source": "add", "reason": reason})

    # -- checkpoints ------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """Everything needed to continue: settings, space, the study's trials (pending
        ones included) and which Tune trial is which bbopt trial."""
        return {
            "version": STATE_VERSION,
            "metric": self._metric,
            "mode": self._mode,
            "method": self._method,
            "seed": self._seed,
            "options": copy.deepcopy(self._options),
            "max_concurrent": self._max_concurrent,
            "points": copy.deepcopy(self._points),
            "entries": list(self._entries) if self._entries is not None else None,
            "constants": copy.deepcopy(self._constants),
            "trials": [t.to_dict() for t in self._study.trials] if self._study else None,
            "live": dict(self._live),
            "done": dict(self._done),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Become the searcher ``get_state`` described, study trials and ids included."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError("not a BBOptSearch checkpoint of this version "
                             f"(expected version {STATE_VERSION})")
        self._reset()
        self._metric, self._mode = state["metric"], state["mode"]
        self._method, self._seed = state["method"], state["seed"]
        self._options = dict(state["options"])
        self._max_concurrent = state["max_concurrent"]
        self._points = list(state["points"])
        self._entries = list(state["entries"]) if state["entries"] is not None else None
        self._constants = list(state["constants"])
        if state["trials"] is not None:
            self._maybe_start()
            assert self._study is not None and self._study_id is not None
            trials = [Trial.from_dict(t) for t in state["trials"]]
            self._study.storage.import_trials(self._study_id, trials)
        self._live = dict(state["live"])
        self._done = dict(state["done"])

    def save(self, checkpoint_path: str) -> None:
        """Write the state to ``checkpoint_path`` (Tune calls this as it checkpoints)."""
        with open(checkpoint_path, "wb") as f:
            cloudpickle.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        """Load a state written by ``save``: pending trials can then still complete."""
        with open(checkpoint_path, "rb") as f:
            self.set_state(cloudpickle.load(f))

    # Tune pickles its TuneConfig (and so this searcher) into the experiment folder;
    # the in-memory database cannot be pickled, the state can.
    def __getstate__(self) -> dict[str, Any]:
        return self.get_state()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.set_state(state)


def _check_metric_mode(metric: Any, mode: Any) -> None:
    if metric is not None and not isinstance(metric, str):
        raise ValueError(f"BBOptSearch optimizes one metric, given by name; got {metric!r}")
    if mode is not None and mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")


def _check_max_concurrent(n: Any) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"max_concurrent must be a non-negative integer (0: no limit), "
                         f"got {n!r}")
