"""Random search on a scrambled Sobol sequence: the baseline every method must beat."""

from __future__ import annotations

import numpy as np
import torch
from torch.quasirandom import SobolEngine

from bbopt.optimizers.base import History, Optimizer, register


def sobol_points(dim: int, seed: int, start: int, n: int) -> np.ndarray:
    """Points ``start .. start+n-1`` of the scrambled Sobol sequence for ``seed``.

    Indexing by the number of trials already handed out makes proposals deterministic
    and distinct across asks, processes and resumes.
    """
    engine = SobolEngine(dim, scramble=True, seed=seed)
    if start:
        engine.fast_forward(start)
    return engine.draw(n, dtype=torch.float64).numpy()


@register("random")
class RandomSearch(Optimizer):
    """Scrambled Sobol points, in sequence."""

    def propose(self, history: History, n: int) -> np.ndarray:
        return sobol_points(self.dim, self.seed, history.n_trials, n)
