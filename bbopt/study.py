"""Studies: ask/tell optimization of one objective over one space, persisted in a store."""

from __future__ import annotations

import math
import numbers
import secrets
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np

from bbopt.errors import NoCompletedTrialError, StudyError, TrialError, UnknownStudyError
from bbopt.optimizers.base import DEFAULT_METHOD, History, Optimizer, make_optimizer
from bbopt.space import Space
from bbopt.storage import SQLStorage, StudyRecord, get_storage
from bbopt.trial import Trial, TrialState

DIRECTIONS = ("minimize", "maximize")
#: Optimizers see values (and gradients) up to this magnitude as told; a history with
#: larger ones reaches them scaled down by a power of two (exact), so that float32
#: policies and the GPs' standardization do not overflow. Every optimizer depends on
#: the values only up to a positive factor.
VALUE_LIMIT_EXPONENT = 50


def check_value(value: Any) -> float:
    """``value`` as a finite float; TrialError naming the problem otherwise."""
    if isinstance(value, bool | str | bytes):
        raise TrialError(f"value must be a real number, got {value!r}")
    if not isinstance(value, numbers.Real):
        try:  # numpy / torch scalars
            value = float(value)
        except (TypeError, ValueError):
            raise TrialError(f"value must be a real number, got {value!r}") from None
    value = float(value)
    if not math.isfinite(value):
        raise TrialError(
            f"value must be finite, got {value}; record a failed evaluation with "
            "tell(trial, failed=True) instead"
        )
    return value


def trial_id(trial: Any) -> int:
    """The id of ``trial`` (a Trial or an integer id); TrialError otherwise."""
    number = trial.id if isinstance(trial, Trial) else trial
    if isinstance(number, bool) or not isinstance(number, int | np.integer):
        raise TrialError(f"trial must be a Trial or an integer id, got {trial!r}")
    return int(number)


@dataclass(frozen=True)
class _Head:
    """The parts of a run of trials that a history needs: the complete trials, their
    unit-cube points and values (as told), the failed trials' points, and whether a
    complete trial has a gradient."""

    done: list[Trial]
    X: np.ndarray
    y: np.ndarray
    failed: np.ndarray
    grads: bool

    @classmethod
    def empty(cls, dim: int) -> _Head:
        return cls([], np.zeros((0, dim)), np.zeros(0), np.zeros((0, dim)), False)

    def extend(self, trials: Sequence[Trial], cube: Callable[[Sequence[Trial]], np.ndarray]
               ) -> _Head:
        """These parts followed by those of ``trials`` (new arrays; pending trials are
        left out)."""
        done = [t for t in trials if t.state is TrialState.COMPLETE]
        failed = [t for t in trials if t.state is TrialState.FAILED]
        return _Head(self.done + done, np.concatenate([self.X, cube(done)]),
                     np.concatenate([self.y, np.array([t.value for t in done], dtype=float)]),
                     np.concatenate([self.failed, cube(failed)]),
                     self.grads or any("grad" in t.info for t in done))


class Study:
    """Optimize an objective over ``space`` by asking for trials and telling their values.

    ``storage``: None keeps the study in this process's memory; a URL such as
    ``sqlite:///study.db`` persists it, and a study of the same ``name`` there is
    resumed (every trial, and the optimizer continues from that history).
    ``method``: a registered optimizer (``bbopt.available_methods()``); ``options``
    go to its constructor. ``space`` may be None when opening an existing study.
    """

    def __init__(
        self,
        space: Space | Mapping[str, Any] | None = None,
        method: str | None = None,
        direction: str | None = None,
        seed: int | None = None,
        storage: str | SQLStorage | None = None,
        name: str | None = None,
        **options: Any,
    ) -> None:
        if direction is not None and direction not in DIRECTIONS:
            raise StudyError(f"direction must be 'minimize' or 'maximize', got {direction!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise StudyError(f"seed must be a non-negative integer, got {seed!r}")
        if space is not None and not isinstance(space, Space):
            space = Space(space)
        self._storage = get_storage(storage)
        record = self._storage.get_study(name) if name is not None else None
        built: Optimizer | None = None  # the optimizer made for a new study
        if record is None:
            if space is None:
                where = f" in {storage}" if storage else ""
                raise UnknownStudyError(
                    f"no study named {name!r}{where}; give a space to create it"
                )
            new_seed = seed if seed is not None else secrets.randbelow(2**31)
            # built before the study is stored: bad options fail with nothing written
            built = make_optimizer(method or DEFAULT_METHOD, space.dim, new_seed, options)
            try:
                record = self._storage.create_study(
                    name=name or f"study-{uuid.uuid4().hex[:8]}",
                    space=space.to_dict(),
                    direction=direction or "minimize",
                    method=method or DEFAULT_METHOD,
                    options=options,
                    seed=new_seed,
                )
            except StudyError:  # another process created it first: open that one
                built = None  # made for the study that was not stored
                record = self._storage.get_study(name)  # type: ignore[arg-type]
                if record is None:
                    raise
                self._check_matches(record, space, direction, seed)
        else:
            self._check_matches(record, space, direction, seed)
        self._record: StudyRecord = record
        self.space = Space(record.space)
        # The method is the study's own; passing another one switches this process's
        # optimizer (like an Optuna sampler), the history carries over.
        self.method = method or record.method
        self._options = options if method else record.options
        # Trial id -> (params, unit-cube point): every ask reads the whole history, and
        # validating and encoding each trial again would dominate a fast optimizer's ask.
        self._encoded: dict[int, tuple[dict[str, Any], np.ndarray]] = {}
        # The last history's leading run of finished trials and their parts (see history).
        self._head: tuple[list[Trial], _Head] = ([], _Head.empty(self.space.dim))
        if built is None:  # an existing study, or one that another process created first
            built = make_optimizer(self.method, self.space.dim, record.seed, self._options)
        if not self.space.continuous:
            built.snap = self.space.snap
        self._optimizer: Optimizer = built

    @staticmethod
    def _check_matches(
        record: StudyRecord, space: Space | None, direction: str | None, seed: int | None
    ) -> None:
        if space is not None and space.to_dict() != record.space:
            raise StudyError(
                f"study {record.name!r} exists with a different space: {record.space}"
            )
        if direction is not None and direction != record.direction:
            raise StudyError(f"study {record.name!r} exists with direction {record.direction!r}")
        if seed is not None and seed != record.seed:
            raise StudyError(f"study {record.name!r} exists with seed {record.seed}")

    @classmethod
    def load(cls, name: str, storage: str | SQLStorage, method: str | None = None,
             **options: Any) -> Study:
        """Open an existing study; raise StudyError if there is none of that name (or no
        database at ``storage``). ``method`` (and ``options``) switch this process's
        optimizer, as in the constructor."""
        store = get_storage(storage, create=False)
        if store.get_study(name) is None:
            raise UnknownStudyError(f"no study named {name!r} in {storage}")
        return cls(method=method, storage=store, name=name, **options)

    # -- properties ---------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._record.name

    @property
    def direction(self) -> str:
        return self._record.direction

    @property
    def seed(self) -> int:
        return self._record.seed

    @property
    def storage(self) -> SQLStorage:
        return self._storage

    @property
    def trials(self) -> list[Trial]:
        """Every trial, in the order they were asked."""
        return self._storage.trials(self._record.id)

    @property
    def best_trial(self) -> Trial:
        """The complete trial with the best value; StudyError if there is none yet."""
        done = [t for t in self.trials if t.state is TrialState.COMPLETE]
        if not done:
            raise NoCompletedTrialError(f"study {self.name!r} has no completed trials yet")
        pick = min if self.direction == "minimize" else max
        return pick(done, key=lambda t: t.value)

    def __repr__(self) -> str:
        return f"Study(name={self.name!r}, method={self.method!r}, direction={self.direction!r})"

    # -- ask -------------------------------------------------------------------------
    @overload
    def ask(self, n: None = None) -> Trial: ...
    @overload
    def ask(self, n: int) -> list[Trial]: ...

    def ask(self, n: int | None = None, *, heartbeat: bool = False) -> Trial | list[Trial]:
        """Hand out one trial, or a list of ``n`` distinct pending trials.

        ``heartbeat=True``: the caller will call ``heartbeat(trial)`` while it evaluates,
        so that ``fail_stale_trials`` can tell its trials from those of a dead worker.
        """
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise StudyError(f"ask(n) needs a positive integer n, got {n!r}")
        trials = self._storage.ask(self._record.id, lambda h: self._propose(h, n or 1),
                                   heartbeat=bool(heartbeat))
        return trials if n is not None else trials[0]

    def heartbeat(self, *trials: Trial | int) -> list[int]:
        """Say that the workers of these pending trials (asked with ``heartbeat=True``)
        are alive. Returns the ids among them that are no longer pending (told by
        someone else, or failed as stale): their evaluation can stop."""
        return self._storage.heartbeat(self._record.id, [trial_id(t) for t in trials])

    def fail_stale_trials(self, grace: float) -> list[Trial]:
        """Fail the pending trials whose worker has sent no heartbeat for ``grace``
        seconds: a killed worker's trials stop counting as running and are recorded as
        failed (their reason says so). Returns them."""
        return self._storage.fail_stale(self._record.id, grace)

    def history(self, trials: Sequence[Trial] | None = None) -> History:
        """The trials as the optimizer sees them: unit cube, values to minimize.

        Finished trials never change, so the parts of the leading run of finished trials
        are kept from one call to the next and only the trials after it are read: the
        store hands each ask the same trial objects, and the list comparison below tests
        identity before equality."""
        trials = list(self.trials if trials is None else trials)
        sign = 1.0 if self.direction == "minimize" else -1.0
        known, head = self._head
        if trials[:len(known)] != known:
            known, head = [], _Head.empty(self.space.dim)
        tail = trials[len(known):]
        lead = next((i for i, t in enumerate(tail) if t.state is TrialState.PENDING), len(tail))
        if lead:
            head = head.extend(tail[:lead], self._cube)
            self._head = (trials[:len(known) + lead], head)
        after = tail[lead:]  # from the first pending trial on
        rest = head.extend(after, self._cube) if after else head
        done = rest.done
        y = sign * rest.y
        grads = None
        if rest.grads:
            grads = np.full((len(done), self.space.dim), np.nan)
            for i, t in enumerate(done):
                if "grad" in t.info:
                    grads[i] = sign * self.space.grad_to_unit(t.params, t.info["grad"])
        top = max(np.abs(y).max(initial=0.0),
                  0.0 if grads is None else np.nan_to_num(np.abs(grads)).max(initial=0.0))
        if top > 2.0 ** VALUE_LIMIT_EXPONENT:
            shift = VALUE_LIMIT_EXPONENT - math.frexp(top)[1]
            y = np.ldexp(y, shift)
            grads = None if grads is None else np.ldexp(grads, shift)
        pending = [t for t in after if t.state is TrialState.PENDING]
        return History(X=rest.X.copy(), y=y, pending=self._cube(pending),
                       failed=rest.failed.copy(), grads=grads)

    def _cube(self, trials: Sequence[Trial]) -> np.ndarray:
        """The unit-cube points (len(trials), dim) of ``trials``."""
        return np.array([self._encode(t) for t in trials]).reshape(len(trials), self.space.dim)

    def _encode(self, trial: Trial) -> np.ndarray:
        hit = self._encoded.get(trial.id)
        # The store hands asks the same objects for finished trials: identity first.
        if hit is not None and (hit[0] is trial.params or hit[0] == trial.params):
            return hit[1]
        x = self.space.encode(trial.params)
        self._encoded[trial.id] = (trial.params, x)
        return x

    def _propose(self, trials: list[Trial], n: int) -> list[tuple[dict[str, Any], dict]]:
        history = self.history(trials)
        X = np.asarray(self._optimizer.propose(history, n), dtype=float)
        if X.shape != (n, self.space.dim) or not np.all(np.isfinite(X)):
            raise RuntimeError(
                f"optimizer {self.method!r} returned shape {X.shape} or non-finite points"
            )
        taken = [t.params for t in trials if t.state is TrialState.PENDING]
        out = []
        rng = None
        for x in np.clip(X, 0.0, 1.0):
            params = self.space.decode(x)
            # Integer and categorical rounding can map two proposals onto one point;
            # a parallel ask must hand out distinct trials, so re-draw at random.
            for _ in range(100):
                if params not in taken:
                    break
                if rng is None:  # made only when needed: it costs tens of microseconds
                    rng = np.random.default_rng([self.seed, history.n_trials])
                params = self.space.decode(rng.random(self.space.dim))
            taken.append(params)
            out.append((params, {}))
        return out

    # -- tell ----------------------------------------------------------------------------
    def tell(
        self,
        trial: Trial | int,
        value: float | None = None,
        *,
        grad: Mapping[str, float] | Sequence[float] | None = None,
        failed: bool = False,
        reason: str | None = None,
    ) -> Trial:
        """Record the value of a pending trial (or ``failed=True``, with an optional
        ``reason``, for a failed evaluation). ``grad``: the gradient of the value with
        respect to the params (a dict by name or a sequence in the space's order), which
        gradient-input methods (``l2l``) need.

        Raises TrialError, leaving the study unchanged, for an unknown or finished
        trial, a missing, NaN or infinite value, or a value given with ``failed``;
        SpaceError for a gradient of the wrong shape or with non-finite entries.
        """
        number = trial_id(trial)
        if failed:
            if value is not None or grad is not None:
                raise TrialError("a failed trial has no value or gradient: pass neither "
                                 "with failed=True")
            info = {"reason": str(reason)} if reason else None
            return self._storage.finish(
                self._record.id, int(number), TrialState.FAILED, None, info
            )
        if value is None:
            raise TrialError("tell needs a value (or failed=True for a failed evaluation)")
        value = check_value(value)
        info = None
        if grad is not None:
            info = {"grad": self.space.check_grad(grad)}
        elif self._optimizer.needs_gradient:
            raise TrialError(f"method {self.method!r} needs the gradient: "
                             "tell(trial, value, grad=...)")
        return self._storage.finish(self._record.id, int(number), TrialState.COMPLETE, value,
                                    info)

    def add(self, params: Mapping[str, Any], value: float) -> Trial:
        """Record an evaluation made outside the study (a warm start, a known good point)."""
        params = self.space.validate(params)
        return self._storage.add(
            self._record.id, params, TrialState.COMPLETE, check_value(value), {"source": "add"}
        )
