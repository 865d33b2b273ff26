"""Random search on a scrambled Sobol sequence: the baseline every method must beat."""

from __future__ import annotations

import threading
from functools import lru_cache

import numpy as np
import torch
from torch.quasirandom import SobolEngine

from bbopt.optimizers.base import History, Optimizer, register


def sobol_points(dim: int, seed: int, start: int, n: int) -> np.ndarray:
    """Points ``start .. start+n-1`` of the scrambled Sobol sequence for ``seed``.

    Indexing by the number of trials already handed out makes proposals deterministic
    and distinct across asks, processes and resumes.
    """
    # The cached engine's tensors must be normal ones, whatever mode the caller is in
    # (an engine made under inference mode cannot be reset outside it).
    with _SOBOL_LOCK, torch.inference_mode(False), torch.no_grad():
        engine = _scrambled(dim, seed)
        # A sequential study asks for the point after the last one drawn: it is there.
        if engine.num_generated != start:
            engine.reset()
            if start:
                engine.fast_forward(start)
        return engine.draw(n, dtype=torch.float64).numpy()


_SOBOL_LOCK = threading.Lock()


@lru_cache(maxsize=512)
def _scrambled(dim: int, seed: int) -> SobolEngine:
    """The scrambled engine of (dim, seed), built once: scrambling costs milliseconds, a
    reset and fast-forward microseconds, and every ask draws from it."""
    return SobolEngine(dim, scramble=True, seed=seed)


@register("random")
class RandomSearch(Optimizer):
    """Scrambled Sobol points, in sequence."""

    def propose(self, history: History, n: int) -> np.ndarray:
        return sobol_points(self.dim, self.seed, history.n_trials, n)
