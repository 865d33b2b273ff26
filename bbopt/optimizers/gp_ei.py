"""GP-EI: BoTorch's SingleTaskGP with log expected improvement.

A scrambled Sobol design of ``n_init`` points comes first. Then BoTorch's default GP
(in BoTorch 0.18: an ARD RBF kernel under a dimension-scaled log-normal lengthscale
prior, input normalization to the cube, standardized outcomes) is fit by maximum a
posteriori marginal likelihood, and the next point maximizes LogEI; batches and pending
points go through qLogEI, the pending points as ``X_pending`` so a parallel ask does
not propose them again. Failed evaluations enter the GP at the worst value told
(``History.failed_as_worst``), so that it moves away from them.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from bbopt.optimizers.base import History, Optimizer, register
from bbopt.optimizers.random import sobol_points


@register("gp-ei")
class GPEI(Optimizer):
    """Bayesian optimization with a GP and (q)LogEI.

    ``n_init``: Sobol points before the first GP fit (default ``2 * (dim + 1)``);
    ``num_restarts`` / ``raw_samples``: the acquisition optimizer's multi-start budget.
    """

    def __init__(
        self,
        dim: int,
        seed: int = 0,
        n_init: int | None = None,
        num_restarts: int = 8,
        raw_samples: int = 256,
    ) -> None:
        super().__init__(dim, seed)
        self.n_init = n_init if n_init is not None else 2 * (dim + 1)
        self.num_restarts = num_restarts
        self.raw_samples = raw_samples

    def propose(self, history: History, n: int) -> np.ndarray:
        n_sobol = max(0, min(n, self.n_init - history.n_trials))
        if len(history.y) < 2 or n_sobol == n:
            return sobol_points(self.dim, self.seed, history.n_trials, n)
        head = sobol_points(self.dim, self.seed, history.n_trials, n_sobol)
        pending = np.concatenate([history.pending, head])
        return np.concatenate([head, self._bo(history, pending, n - n_sobol)])

    def _bo(self, history: History, pending: np.ndarray, q: int) -> np.ndarray:
        from botorch.acquisition.analytic import LogExpectedImprovement
        from botorch.acquisition.logei import (
            qLogExpectedImprovement,
        )
        from botorch.fit import fit_gpytorch_mll
        from botorch.models import SingleTaskGP
        from botorch.models.transforms import Normalize, Standardize
        from botorch.optim import optimize_acqf
        from gpytorch.mlls import ExactMarginalLogLikelihood

        X, y = history.failed_as_worst()
        X = torch.as_tensor(X, dtype=torch.float64)
        Y = -torch.as_tensor(y, dtype=torch.float64).unsqueeze(-1)  # BoTorch maximizes
        bounds = torch.stack([torch.zeros(self.dim), torch.ones(self.dim)]).to(X)
        # Randomness depends on the seed and the history only: reproducible and resumable.
        with torch.random.fork_rng(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed((self.seed * 1_000_003 + history.n_trials) % 2**63)
            model = SingleTaskGP(
                X, Y, input_transform=Normalize(self.dim, bounds=bounds),
                outcome_transform=Standardize(m=1),
            )
            try:
                fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
            except Exception:  # noqa: BLE001 - keep the prior hyperparameters; still a valid GP
                pass
            if q == 1 and len(pending) == 0:
                acq = LogExpectedImprovement(model, best_f=Y.max())
            else:
                X_pending = torch.as_tensor(pending, dtype=torch.float64) if len(pending) else None
                acq = qLogExpectedImprovement(model, best_f=Y.max(), X_pending=X_pending)
            cand, _ = optimize_acqf(
                acq, bounds=bounds, q=q, num_restarts=self.num_restarts,
                raw_samples=self.raw_samples, options={"maxiter": 100},
            )
        return cand.detach().clamp(0, 1).numpy()
