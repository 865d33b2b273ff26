"""Synthetic benchmark tasks: botorch's test functions, noise-free, to be minimized.

Each task's space is one ``Float`` per dimension, named ``x0 .. x{d-1}``, over the
function's own bounds. Bounds and optima are written out here so that importing this
module does not import torch/botorch; the botorch function is built on the first
evaluation (tests check the table against botorch).
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

from bbopt.tasks.base import Task, register

from bbopt.space import Float, Space

# Styblinski-Tang's minimum per dimension, at x_i = -2.903534... (botorch rounds it
# to -39.166166, a hair below the true value).
STYBLINSKI_TANG_MIN = -39.16616570377142


@cache
def _botorch_function(cls_name: str, dim: int | None) -> Any:
    from botorch.test_functions import synthetic

    cls = getattr(synthetic, cls_name)
    return cls() if dim is None else cls(dim=dim)


class BotorchFunction:
    """Picklable ``params -> float`` wrapper of a botorch synthetic test function."""

    def __init__(self, cls_name: str, dim: int, pass_dim: bool = True) -> None:
        self.cls_name = cls_name
        self.dim = dim
        self.pass_dim = pass_dim
        self.names = [f"x{i}" for i in range(dim)]

    @property
    def function(self) -> Any:
        """The botorch ``SyntheticTestFunction`` (noise-free, negate=False)."""
        return _botorch_function(self.cls_name, self.dim if self.pass_dim else None)

    def __call__(self, params: dict[str, Any]) -> float:
        import torch

        x = torch.tensor([[float(params[n]) for n in self.names]], dtype=torch.float64)
        with torch.no_grad():
            return float(self.function.evaluate_true(x)[0])

    def __repr__(self) -> str:
        return f"BotorchFunction({self.cls_name!r}, dim={self.dim})"


def _make(
    name: str,
    cls_name: str,
    dim: int,
    bounds: list[tuple[float, float]],
    optimum: float,
    description: str,
    pass_dim: bool = True,
) -> Task:
    space = Space({f"x{i}": Float(lo, hi) for i, (lo, hi) in enumerate(bounds)})
    fn = BotorchFunction(cls_name, dim, pass_dim=pass_dim)
    return register(Task(name, space, fn, optimum=optimum, description=description))


def _box(lo: float, hi: float, dim: int) -> list[tuple[float, float]]:
    return [(lo, hi)] * dim


_make(
    "branin", "Branin", 2, [(-5.0, 10.0), (0.0, 15.0)], 0.397887,
    "Branin-Hoo, 2-d, three global minima", pass_dim=False,
)
_make("hartmann3", "Hartmann", 3, _box(0.0, 1.0, 3), -3.86278, "Hartmann, 3-d, on [0, 1]^3")
_make("hartmann6", "Hartmann", 6, _box(0.0, 1.0, 6), -3.32237, "Hartmann, 6-d, on [0, 1]^6")
for _d in (2, 5):
    _make(
        f"ackley{_d}", "Ackley", _d, _box(-32.768, 32.768, _d), 0.0,
        f"Ackley, {_d}-d, highly multimodal, minimum at 0",
    )
for _d in (4, 8):
    _make(f"levy{_d}", "Levy", _d, _box(-10.0, 10.0, _d), 0.0, f"Levy, {_d}-d, minimum at 1")
_make(
    "rosenbrock4", "Rosenbrock", 4, _box(-5.0, 10.0, 4), 0.0,
    "Rosenbrock, 4-d, curved valley, minimum at 1",
)
for _d in (4, 8):
    _make(
        f"styblinski_tang{_d}", "StyblinskiTang", _d, _box(-5.0, 5.0, _d),
        STYBLINSKI_TANG_MIN * _d, f"Styblinski-Tang, {_d}-d, minimum at -2.9035",
    )
# botorch knows Michalewicz's optimum for d = 2, 5, 10 only
for _d, _opt in ((2, -1.80130341), (5, -4.687658)):
    _make(
        f"michalewicz{_d}", "Michalewicz", _d, _box(0.0, math.pi, _d), _opt,
        f"Michalewicz (m=10), {_d}-d, steep narrow valleys",
    )

# The ``synthetic-wide`` suite: 24 more of botorch's test functions, 2 to 10 dimensions,
# added (2026-12-05) as a wider held-out check of default settings; nothing was trained
# or chosen on them. Optima where botorch rounds them (Egg Holder, Holder table, Shekel,
# six-hump camel) are the values at its optimizers refined with scipy (tested to be no
# higher than the function there).
for _d in (3, 10):
    _make(f"ackley{_d}", "Ackley", _d, _box(-32.768, 32.768, _d), 0.0,
          f"Ackley, {_d}-d, highly multimodal, minimum at 0")
_make("beale", "Beale", 2, _box(-4.5, 4.5, 2), 0.0,
      "Beale, 2-d, sharp ridges, minimum at (3, 0.5)", pass_dim=False)
_make("bukin", "Bukin", 2, [(-15.0, -5.0), (-3.0, 3.0)], 0.0,
      "Bukin N.6, 2-d, a narrow curved ridge of local minima", pass_dim=False)
for _d in (4, 10):
    _make(f"dixon_price{_d}", "DixonPrice", _d, _box(-10.0, 10.0, _d), 0.0,
          f"Dixon-Price, {_d}-d, a curved valley")
_make("drop_wave", "DropWave", 2, _box(-5.12, 5.12, 2), -1.0,
      "Drop-wave, 2-d, concentric ripples", pass_dim=False)
_make("eggholder", "EggHolder", 2, _box(-512.0, 512.0, 2), -959.640662720851,
      "Egg holder, 2-d, many deep minima, the global one on the boundary", pass_dim=False)
for _d in (3, 10):
    _make(f"griewank{_d}", "Griewank", _d, _box(-600.0, 600.0, _d), 0.0,
          f"Griewank, {_d}-d, a bowl with fine ripples over a wide box")
_make("holder_table", "HolderTable", 2, _box(-10.0, 10.0, 2), -19.208502567886747,
      "Holder table, 2-d, four global minima near the corners", pass_dim=False)
_make("levy6", "Levy", 6, _box(-10.0, 10.0, 6), 0.0, "Levy, 6-d, minimum at 1")
_make("michalewicz10", "Michalewicz", 10, _box(0.0, math.pi, 10), -9.66015,
      "Michalewicz (m=10), 10-d, steep narrow valleys")
for _d in (4, 8):
    _make(f"powell{_d}", "Powell", _d, _box(-4.0, 5.0, _d), 0.0,
          f"Powell, {_d}-d, singular Hessian at the minimum")
for _d in (3, 8):
    _make(f"rastrigin{_d}", "Rastrigin", _d, _box(-5.12, 5.12, _d), 0.0,
          f"Rastrigin, {_d}-d, a regular grid of local minima")
for _d in (2, 8):
    _make(f"rosenbrock{_d}", "Rosenbrock", _d, _box(-5.0, 10.0, _d), 0.0,
          f"Rosenbrock, {_d}-d, curved valley, minimum at 1")
_make("shekel", "Shekel", 4, _box(0.0, 10.0, 4), -10.536443153052808,
      "Shekel (m=10), 4-d, ten narrow wells", pass_dim=False)
_make("six_hump_camel", "SixHumpCamel", 2, [(-3.0, 3.0), (-2.0, 2.0)], -1.0316284534898774,
      "Six-hump camel, 2-d, two global minima", pass_dim=False)
_make("three_hump_camel", "ThreeHumpCamel", 2, _box(-5.0, 5.0, 2), 0.0,
      "Three-hump camel, 2-d, minimum at 0", pass_dim=False)
for _d in (3, 10):
    _make(f"styblinski_tang{_d}", "StyblinskiTang", _d, _box(-5.0, 5.0, _d),
          STYBLINSKI_TANG_MIN * _d, f"Styblinski-Tang, {_d}-d, minimum at -2.9035")
