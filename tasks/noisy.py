"""The ``noisy`` suite: held-out tasks whose every value a study is told carries
Gaussian noise, as the values of hyperparameter tuning do (a validation score moves with
the data order and the initial weights).

``noisy-<task>`` is ``<task>`` (a held-out GP-prior sample, Branin, Hartmann 6) with
noise of standard deviation ``NOISE_FRACTION`` times the task's own spread: the
standard deviation of its values at 1024 scrambled Sobol points of its space. A study
sees only the noisy values; ``bbopt bench`` scores each run by the noise-free value of
the trial with the lowest value told, the trial a study reports as best
(``Study.best_trial``), so a lucky draw does not count as progress. The noise of each
run is drawn from a generator seeded by the run's seed and the task's name: every method
meets the same draws in the same order of evaluations. None of these tasks was run
while the learned optimizer was chosen (its choices under noise were made on dev
GP-prior samples).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np

from bbopt.optimizers.random import sobol_points

#: The noise's standard deviation, in units of a task's spread over its space.
NOISE_FRACTION = 0.1
#: ``noisy-<task>`` names; the suite ``noisy`` (``bbopt.tasks.base.SUITES``) lists them.
NOISY_PREFIX = "noisy-"


def spread(task: Any, n: int = 1024) -> float:
    """The standard deviation of ``task``'s values at the first ``n`` points of the
    scrambled Sobol sequence (seed 0) over its space."""
    cube = sobol_points(task.space.dim, 0, 0, n)
    return float(np.std([task(task.space.decode(x)) for x in cube]))


def _noisy(base: str) -> Any:
    from bbopt.tasks.base import Task, get_task

    task = get_task(base)
    noise = NOISE_FRACTION * spread(task)
    return Task(NOISY_PREFIX + base, task.space, task.fn, optimum=task.optimum,
                description=f"{task.description or base}, told with noise of sd {noise:.3g}",
                noise=noise)


def _register() -> None:
    from bbopt.tasks.base import SUITES, register_lazy

    for name in SUITES["noisy"]:
        register_lazy(name, partial(_noisy, name[len(NOISY_PREFIX):]))


_register()
