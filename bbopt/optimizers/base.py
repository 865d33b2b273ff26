"""The one interface every optimizer implements, and the registry behind ``method=``.

An optimizer works in the unit cube [0, 1]^d and *minimizes*: the study encodes
parameters, flips the sign of values for ``direction="maximize"``, and decodes the
proposals. ``propose`` receives the whole history every time, so an optimizer can be
rebuilt in a new process (a resumed study) and continue where the last one stopped.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from bbopt.errors import StudyError, UnknownMethodError


@dataclass(frozen=True)
class History:
    """What an optimizer sees. ``X``: (m, d) completed points, ``y``: (m,) their values
    (to minimize; divided by a power of two when they, or the gradients, exceed 2^50,
    see ``bbopt.study.VALUE_LIMIT_EXPONENT``), ``pending``: (p, d) points handed out
    without a value yet, ``failed``: (f, d) points whose evaluation failed, ``grads``:
    (m, d) gradients of the values with respect to ``X`` where they were told (NaN rows
    where not), or None when no completed trial has one."""

    X: np.ndarray
    y: np.ndarray
    pending: np.ndarray
    failed: np.ndarray
    grads: np.ndarray | None = None

    @property
    def dim(self) -> int:
        return self.X.shape[1]

    @property
    def n_trials(self) -> int:
        """Every trial handed out so far, whatever its state."""
        return len(self.X) + len(self.pending) + len(self.failed)

    def failed_as_worst(self) -> tuple[np.ndarray, np.ndarray]:
        """The completed points followed by the failed ones, (m + f, d), and their values,
        each failed point's the worst value told (0 before any): for methods whose model
        needs a value at every point it has tried. Left out, a failed point leaves such a
        model as it was, so it proposes the same point again, and fails again."""
        worst = float(self.y.max()) if len(self.y) else 0.0
        return (np.concatenate([self.X, self.failed]),
                np.concatenate([self.y, np.full(len(self.failed), worst)]))

    @classmethod
    def empty(cls, dim: int) -> History:
        z = np.zeros((0, dim))
        return cls(z, np.zeros(0), z, z)


class Optimizer(ABC):
    """Proposes points in the unit cube from a history of evaluations.

    ``dim``: the cube's dimension; ``seed``: makes proposals reproducible (an optimizer
    derives its randomness from the seed and the history, not from global state).
    """

    #: True for methods that need ``tell(..., grad=...)``.
    needs_gradient: ClassVar[bool] = False
    #: True for methods with a ``budget`` option (the trials the study will run) that
    #: they plan for; ``budget_options`` gives it to them only.
    takes_budget: ClassVar[bool] = False
    #: Set by the study when its space has integer or categorical parameters:
    #: ``Space.snap``, mapping points (..., dim) to the points their params encode to,
    #: for optimizers that score candidates (so none repeats a trial's params).
    snap: Callable[[np.ndarray], np.ndarray] | None = None

    def __init__(self, dim: int, seed: int = 0, **options: Any) -> None:
        if options:
            raise TypeError(f"{type(self).__name__} got unknown options {sorted(options)}")
        self.dim = dim
        self.seed = seed

    @abstractmethod
    def propose(self, history: History, n: int) -> np.ndarray:
        """Return ``n`` points, shape (n, dim), in [0, 1], that are not the pending ones."""


_REGISTRY: dict[str, Callable[..., Optimizer]] = {}

#: The method a study uses when none is named.
DEFAULT_METHOD = "learned"


def register(name: str) -> Callable[[type[Optimizer]], type[Optimizer]]:
    """Class decorator: make an optimizer available as ``Study(method=name)``."""

    def deco(cls: type[Optimizer]) -> type[Optimizer]:
        _REGISTRY[name] = cls
        return cls

    return deco


def available_methods() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def make_optimizer(method: str, dim: int, seed: int, options: dict[str, Any]) -> Optimizer:
    """Instantiate the optimizer registered as ``method``."""
    _load_builtin()
    try:
        cls = _REGISTRY[method]
    except KeyError:
        raise UnknownMethodError(
            f"unknown method {method!r}; available: {', '.join(sorted(_REGISTRY))}"
        ) from None
    try:
        return cls(dim=dim, seed=seed, **options)
    except TypeError as e:
        raise UnknownMethodError(f"method {method!r}: {e}") from None
    except StudyError:
        raise
    except ValueError as e:  # an option with a bad value
        raise StudyError(f"method {method!r}: {e}") from None


def budget_options(method: str, budget: int) -> dict[str, Any]:
    """``{"budget": budget}`` for a method that plans for its budget, else ``{}``: the
    options a caller that knows the budget (``bbopt tune``, ``bbopt bench``) adds."""
    _load_builtin()
    cls = _REGISTRY.get(method)
    return {"budget": budget} if getattr(cls, "takes_budget", False) else {}


def _load_builtin() -> None:
    # Imported on first use: the GP and peer optimizers pull in heavy libraries.
    from bbopt.optimizers import gp_ei, l2l, learned, peers, random  # noqa: F401
