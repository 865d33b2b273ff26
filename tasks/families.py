"""The ``families`` suite: problem families that neither training (GP-prior samples) nor
the other suites hold, each with a known optimum of 0, for checking how the learned
methods generalize through the public contract (``bbopt bench --suite families``,
with ``--no-tell-budget`` as a user with default settings runs them):

* ``mixed6``: a hyperparameter-like space (two floats, a log-scaled float, two integers
  and a categorical) whose value is a sum of separable terms;
* ``plateau4``: piecewise constant (a staircase around a point), no gradient signal
  for a model to follow, only level sets;
* ``rastrigin5``: shifted Rastrigin, a regular grid of about 10^5 local minima;
* ``illcond10``: a rotated quadratic with condition number 10^4;
* ``sphere20``: a shifted sphere in 20 dimensions, above the 12 the policies were
  trained for.

The ``failures`` suite holds problems whose evaluations fail (raise) in places, as
hyperparameter tuning's do (a learning rate that diverges, a model that does not fit
in memory); ``bbopt bench`` records a raising evaluation as a failed trial, as a user
would, and counts each one against the budget:

* ``fail_bowl5``: a rotated ellipsoid in 5 dimensions whose evaluation fails on a
  half-space 0.1 (of a side of 2) from its minimum;
* ``fail_mixed6``: ``mixed6``'s value, failing for learning rates above 3e-3, more
  than 9 layers, and SGD with more than 6 layers;
* ``flaky_sphere4``: a shifted sphere in 4 dimensions whose evaluations fail at one
  point in five, at random (a hash of the params), with no region to avoid.

None of them was run while the handling of failed trials was chosen.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
from bbopt.tasks.base import Task, register

from bbopt.space import Categorical, Float, Int, Space

_CHOICE_COST = {"adam": 0.0, "sgd": 0.5, "rmsprop": 1.0, "lbfgs": 0.2}
#: ``mixed6``'s space and minimizer, shared by ``fail_mixed6``.
_MIXED6_SPACE = Space({"a": Float(0.0, 1.0), "b": Float(-3.0, 3.0),
                       "lr": Float(1e-6, 1.0, log=True), "layers": Int(1, 12),
                       "k": Int(0, 7), "opt": Categorical(list(_CHOICE_COST))})
_MIXED6_MIN = {"a": 0.3, "b": -1.0, "lr": 1e-3, "layers": 5, "k": 2, "opt": "adam"}


def mixed6(p: dict[str, Any]) -> float:
    return ((p["a"] - 0.3) ** 2 + (p["b"] + 1.0) ** 2 / 4 + (math.log10(p["lr"]) + 3) ** 2 / 4
            + 0.1 * (p["layers"] - 5) ** 2 + 0.05 * abs(p["k"] - 2) + _CHOICE_COST[p["opt"]])


def plateau4(p: dict[str, Any]) -> float:
    return float(sum(math.floor(abs(p[f"x{i}"] - 1.3) * 4) for i in range(4)))


def _point(p: dict[str, Any], dim: int) -> np.ndarray:
    """The params ``x0 .. x{dim-1}`` as a vector."""
    return np.array([p[f"x{i}"] for i in range(dim)])


def rastrigin5(p: dict[str, Any]) -> float:
    z = _point(p, 5) - 0.7
    return float(10 * 5 + np.sum(z * z - 10 * np.cos(2 * np.pi * z)))


_ROTATION = np.linalg.qr(np.random.default_rng(7).normal(size=(10, 10)))[0]
_CURVATURES = np.logspace(0, 4, 10)


def illcond10(p: dict[str, Any]) -> float:
    z = _ROTATION @ (_point(p, 10) - 0.2)
    return float(np.sum(_CURVATURES * z * z))


_SHIFT = np.random.default_rng(123).uniform(-2.0, 2.0, 20)


def sphere20(p: dict[str, Any]) -> float:
    return float(np.sum((_point(p, 20) - _SHIFT) ** 2))


class EvaluationFailed(RuntimeError):
    """Raised by the ``failures`` suite's tasks where their evaluation fails."""


_BOWL_ROTATION = np.linalg.qr(np.random.default_rng(31).normal(size=(5, 5)))[0]
_BOWL_CURVATURES = np.logspace(0, 2, 5)
_BOWL_CENTRE = np.random.default_rng(32).uniform(-0.5, 0.5, 5)
_BOWL_NORMAL = np.random.default_rng(33).normal(size=5)
_BOWL_NORMAL /= np.linalg.norm(_BOWL_NORMAL)


def fail_bowl5(p: dict[str, Any]) -> float:
    d = _point(p, 5) - _BOWL_CENTRE
    if d @ _BOWL_NORMAL > 0.1:
        raise EvaluationFailed("diverged")
    z = _BOWL_ROTATION @ d
    return float(np.sum(_BOWL_CURVATURES * z * z))


def fail_mixed6(p: dict[str, Any]) -> float:
    if p["lr"] > 3e-3 or p["layers"] > 9 or (p["opt"] == "sgd" and p["layers"] > 6):
        raise EvaluationFailed("diverged or out of memory")
    return mixed6(p)


_FLAKY_SHIFT = np.random.default_rng(37).uniform(-3.0, 3.0, 4)  # its minimum does not fail


def flaky_sphere4(p: dict[str, Any]) -> float:
    x = _point(p, 4)
    key = ",".join(f"{v:.12g}" for v in x).encode()
    if int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % 5 == 0:
        raise EvaluationFailed("flaky evaluation")
    return float(np.sum((x - _FLAKY_SHIFT) ** 2))


#: The point where each task reaches its optimum of 0 (tests check it).
MINIMIZERS: dict[str, dict[str, Any]] = {
    "mixed6": _MIXED6_MIN,
    "plateau4": {f"x{i}": 1.3 for i in range(4)},
    "rastrigin5": {f"x{i}": 0.7 for i in range(5)},
    "illcond10": {f"x{i}": 0.2 for i in range(10)},
    "sphere20": {f"x{i}": float(_SHIFT[i]) for i in range(20)},
    "fail_bowl5": {f"x{i}": float(_BOWL_CENTRE[i]) for i in range(5)},
    "fail_mixed6": _MIXED6_MIN,
    "flaky_sphere4": {f"x{i}": float(_FLAKY_SHIFT[i]) for i in range(4)},
}


def _box(lo: float, hi: float, dim: int) -> Space:
    return Space({f"x{i}": Float(lo, hi) for i in range(dim)})


for _name, _space, _fn, _what in (
    ("mixed6", _MIXED6_SPACE,
     mixed6, "mixed floats, log float, integers and a categorical"),
    ("plateau4", _box(-5.0, 5.0, 4), plateau4, "staircase, 4-d, minimum plateau at 1.3"),
    ("rastrigin5", _box(-5.12, 5.12, 5), rastrigin5, "Rastrigin, 5-d, shifted to 0.7"),
    ("illcond10", _box(-1.0, 1.0, 10), illcond10,
     "rotated quadratic, 10-d, condition number 1e4, minimum at 0.2"),
    ("sphere20", _box(-5.0, 5.0, 20), sphere20, "shifted sphere, 20-d"),
    ("fail_bowl5", _box(-1.0, 1.0, 5), fail_bowl5,
     "rotated ellipsoid, 5-d, failing on a half-space 0.1 from its minimum"),
    ("fail_mixed6", _MIXED6_SPACE, fail_mixed6,
     "mixed6, failing for lr > 3e-3, layers > 9, and sgd with layers > 6"),
    ("flaky_sphere4", _box(-5.0, 5.0, 4), flaky_sphere4,
     "shifted sphere, 4-d, one evaluation in five failing at random"),
):
    register(Task(_name, _space, _fn, optimum=0.0, description=_what))
