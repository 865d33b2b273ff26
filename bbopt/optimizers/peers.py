"""Peer optimizers from other libraries, behind bbopt's interface, for side-by-side
benchmarks (``pip install bbopt[peers]``): Optuna's TPE and GP samplers, and CMA-ES
from ``cma``.

Both adapters rebuild their state from the history on every call, like every bbopt
optimizer, so they resume across processes and see points they did not propose.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from bbopt.optimizers.base import History, Optimizer, register


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f"this method needs the '{module}' package: pip install 'bbopt[peers]'"
        ) from None


class _OptunaSampler(Optimizer):
    """Replays the history into a fresh in-memory Optuna study, then asks it."""

    def _sampler(self, seed: int) -> Any:
        raise NotImplementedError

    def propose(self, history: History, n: int) -> np.ndarray:
        optuna = _require("optuna")
        optuna.logging.set_verbosity(logging.WARNING)
        from optuna.distributions import FloatDistribution
        from optuna.trial import TrialState, create_trial

        dists = {f"x{i}": FloatDistribution(0.0, 1.0) for i in range(self.dim)}
        seed = (self.seed * 1_000_003 + history.n_trials) % 2**31
        study = optuna.create_study(sampler=self._sampler(seed), direction="minimize")
        frozen = [
            create_trial(params=dict(zip(dists, map(float, x), strict=True)),
                         distributions=dists, value=float(v))
            for x, v in zip(history.X, history.y, strict=True)
        ]
        frozen += [
            create_trial(params=dict(zip(dists, map(float, x), strict=True)),
                         distributions=dists, state=TrialState.FAIL)
            for x in history.failed
        ]
        study.add_trials(frozen)
        out = []
        for _ in range(n):  # each asked trial stays RUNNING, so the next ask sees it
            trial = study.ask(dists)
            out.append([trial.params[k] for k in dists])
        return np.clip(np.array(out, dtype=float), 0.0, 1.0)


@register("optuna-tpe")
class OptunaTPE(_OptunaSampler):
    """Optuna's TPESampler with its default settings (multivariate off)."""

    def _sampler(self, seed: int) -> Any:
        return _require("optuna").samplers.TPESampler(seed=seed, constant_liar=True)


@register("optuna-gp")
class OptunaGP(_OptunaSampler):
    """Optuna's GPSampler (its own GP and log-EI; needs torch, which bbopt has)."""

    def _sampler(self, seed: int) -> Any:
        return _require("optuna").samplers.GPSampler(seed=seed)


@register("cma-es")
class CMAES(Optimizer):
    """CMA-ES (``cma``) in the unit cube, started at its centre with sigma0 = 0.25.

    Completed points are told in generations of ``popsize`` in the order they were
    evaluated; the next proposals are samples of the resulting search distribution.
    Failed points are told as the worst value seen, so CMA-ES moves away from them.
    """

    def __init__(self, dim: int, seed: int = 0, sigma0: float = 0.25,
                 popsize: int | None = None) -> None:
        super().__init__(dim, seed)
        self.sigma0 = sigma0
        self.popsize = popsize

    def propose(self, history: History, n: int) -> np.ndarray:
        cma = _require("cma")
        opts: dict[str, Any] = {
            "bounds": [0.0, 1.0],
            "seed": self.seed % 2**31 + 1,  # cma treats seed 0 as "random"
            "verbose": -9,
        }
        if self.popsize:
            opts["popsize"] = self.popsize
        x0 = np.full(max(self.dim, 2), 0.5)  # cma needs dimension >= 2; pad 1-D problems
        es = cma.CMAEvolutionStrategy(x0, self.sigma0, opts)
        X, y = self._told(history)
        lam = es.popsize
        for g in range(len(y) // lam):
            es.ask()  # advance the random stream as a live run would
            es.tell([list(x) for x in X[g * lam:(g + 1) * lam]], list(y[g * lam:(g + 1) * lam]))
        # Proposals already handed out in this generation come first in es.ask(); skip them.
        skip = len(history.pending) + len(y) % lam
        sols = []
        while len(sols) < skip + n:
            sols.extend(es.ask())
        return np.clip(np.array(sols[skip:skip + n])[:, :self.dim], 0.0, 1.0)

    def _told(self, history: History) -> tuple[np.ndarray, np.ndarray]:
        X, y = history.failed_as_worst()
        if self.dim == 1:
            X = np.concatenate([X, np.full((len(X), 1), 0.5)], axis=1)
        return X, y
