"""Sparse regression: min over Gamma of ||Y - D Gamma||_F^2 + lam * Omega(Gamma).

``Omega`` is the L1 norm (``"l1"``: sum |Gamma_ij|, the lasso) or the group L1,2 norm
(``"group"``: sum over rows of ||Gamma_i,:||_2, so an atom of the dictionary is used by
every signal or by none). Random problems: ``D`` (m, n) Gaussian with unit-norm columns,
``Gamma*`` with ``s`` nonzero rows, ``Y = D Gamma* + noise``. ISTA and FISTA (proximal
gradient with step 1/L, L = 2 ||D||_2^2) are the baselines the learned optimizers meet.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PENALTIES = ("l1", "group")


def penalty(gamma: torch.Tensor, kind: str) -> torch.Tensor:
    """Omega(Gamma) for (..., n, k) ``gamma``; returns (...)."""
    if kind == "l1":
        return gamma.abs().sum(dim=(-2, -1))
    if kind == "group":
        # sqrt with a tiny floor: the group norm's gradient at a zero row is finite.
        return (gamma.square().sum(dim=-1) + 1e-24).sqrt().sum(dim=-1)
    raise ValueError(f"unknown penalty {kind!r}; expected one of {', '.join(PENALTIES)}")


def prox(gamma: torch.Tensor, threshold: float | torch.Tensor, kind: str) -> torch.Tensor:
    """The proximal operator of ``threshold * Omega``: soft thresholding, entrywise (l1)
    or of each row's norm (group)."""
    if kind == "l1":
        return torch.sign(gamma) * (gamma.abs() - threshold).clamp_min(0.0)
    if kind == "group":
        norm = gamma.norm(dim=-1, keepdim=True)
        return gamma * (1 - threshold / norm.clamp_min(1e-30)).clamp_min(0.0)
    raise ValueError(f"unknown penalty {kind!r}; expected one of {', '.join(PENALTIES)}")


@dataclass
class SparseProblem:
    """A batch of B problems: ``D`` (B, m, n), ``Y`` (B, m, k), weight ``lam``."""

    D: torch.Tensor
    Y: torch.Tensor
    lam: float
    kind: str

    @property
    def shape(self) -> tuple[int, int]:
        """(n, k): the shape of one Gamma."""
        return self.D.shape[2], self.Y.shape[2]

    def objective(self, gamma: torch.Tensor) -> torch.Tensor:
        """(B,) objective values of (B, n, k) ``gamma``."""
        r = self.Y - self.D @ gamma
        return r.square().sum(dim=(1, 2)) + self.lam * penalty(gamma, self.kind)

    def smooth_grad(self, gamma: torch.Tensor) -> torch.Tensor:
        """Gradient of the smooth part ||Y - D Gamma||^2."""
        return 2 * self.D.transpose(1, 2) @ (self.D @ gamma - self.Y)

    def lipschitz(self) -> torch.Tensor:
        """(B,) Lipschitz constants of the smooth part's gradient, 2 ||D||_2^2."""
        return 2 * torch.linalg.matrix_norm(self.D, ord=2).square()


def sample_sparse(batch: int, kind: str, m: int = 20, n: int = 50, k: int = 5,
                  active: int = 5, noise: float = 0.01, lam: float = 0.1,
                  generator: torch.Generator | None = None,
                  device: torch.device | str = "cpu") -> SparseProblem:
    """``batch`` random problems (see the module docstring)."""
    if kind not in PENALTIES:
        raise ValueError(f"unknown penalty {kind!r}; expected one of {', '.join(PENALTIES)}")
    D = torch.randn(batch, m, n, generator=generator)
    D = D / D.norm(dim=1, keepdim=True)
    gamma = torch.zeros(batch, n, k)
    for b in range(batch):
        rows = torch.randperm(n, generator=generator)[:active]
        if kind == "l1":  # lasso: each signal has its own support
            gamma[b, rows] = torch.randn(active, k, generator=generator) * (
                torch.rand(active, k, generator=generator) < 0.5)
        else:
            gamma[b, rows] = torch.randn(active, k, generator=generator)
    Y = D @ gamma + noise * torch.randn(batch, m, k, generator=generator)
    return SparseProblem(D.to(device), Y.to(device), lam, kind)


def ista(problem: SparseProblem, steps: int, fast: bool = False,
         gamma0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """ISTA (``fast=False``) or FISTA (``fast=True``) from ``gamma0`` (zeros by default).

    Returns the final (B, n, k) iterate and the (B, steps + 1) objective after each step
    (column 0: the start).
    """
    n, k = problem.shape
    B = problem.D.shape[0]
    gamma = torch.zeros(B, n, k, device=problem.D.device) if gamma0 is None else gamma0.clone()
    step = (1 / problem.lipschitz())[:, None, None]
    z, t = gamma, 1.0
    values = [problem.objective(gamma)]
    for _ in range(steps):
        new = prox(z - step * problem.smooth_grad(z), step * problem.lam, problem.kind)
        if fast:
            t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
            z = new + (t - 1) / t_next * (new - gamma)
            t = t_next
        else:
            z = new
        gamma = new
        values.append(problem.objective(gamma))
    return gamma, torch.stack(values, dim=1)
