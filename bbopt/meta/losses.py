"""Meta-training losses of the learned black-box optimizer (Chen et al. 2017, section 2.2).

Every loss takes the values ``y`` (B, T) of a trajectory, already scaled so that the
training functions are comparable (``(f - offset) / sqrt(outputscale)`` for GP samples),
and per-step weights ``w`` (T,), and returns one scalar to minimize (mean over the batch):

* ``summed``:   sum_t w_t y_t
* ``oi``:       sum_t w_t min(y_t - min_{i<t} y_i, 0)          (observed improvement)
* ``ei``:       -sum_t w_t EI_t(x_t)  under the exact GP posterior of the function's own
                kernel given x_0..x_{t-1} (needs the points and the functions)
* ``log-regret``: sum_t w_t log10(min_{i<=t} y_i - y_min + eps), the best-so-far regret
                on a log scale, with ``y_min`` each function's estimated minimum. Not in the
                paper: it is what the benchmarks measure (log simple regret), and it keeps
                rewarding precise convergence where OI's linear improvements vanish.

and the optional convergence-rate term of the design notes: ``- lam * alpha`` with
``alpha`` the mean log-rate at which the best-so-far gap to the lowest value of the
trajectory shrinks between consecutive steps.
"""

from __future__ import annotations

import math
from typing import Any

import torch

LOSSES = ("summed", "oi", "ei", "log-regret")
_LOG_2PI = 0.5 * math.log(2 * math.pi)


def step_weights(horizon: int, kind: str = "uniform", device: Any = None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Per-step weights summing to 1: ``uniform``, or ``late`` (linearly increasing)."""
    if kind == "uniform":
        w = torch.ones(horizon, device=device, dtype=dtype)
    elif kind == "late":
        w = torch.arange(1, horizon + 1, device=device, dtype=dtype)
    else:
        raise ValueError(f"unknown step weighting {kind!r}; expected 'uniform' or 'late'")
    return w / w.sum()


def summed_loss(y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """sum_t w_t y_t, averaged over the batch."""
    return (y * w).sum(dim=1).mean()


def observed_improvement_loss(y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """sum_{t>=1} w_t min(y_t - min_{i<t} y_i, 0), averaged over the batch.

    The first query has nothing to improve on and contributes nothing.
    """
    # The incumbent is a constant here: a gradient through it would reward making the
    # earlier points worse (the sum telescopes to final best minus first value).
    prev_best = torch.cummin(y.detach(), dim=1).values[:, :-1]
    oi = torch.clamp(y[:, 1:] - prev_best, max=0.0)
    return (oi * w[1:]).sum(dim=1).mean()


def _normal_ei(mean: torch.Tensor, std: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
    """E[max(best - F, 0)] for F ~ N(mean, std^2)."""
    u = (best - mean) / std
    pdf = torch.exp(-0.5 * u.square() - _LOG_2PI)
    cdf = 0.5 * (1 + torch.erf(u / math.sqrt(2)))
    return std * (u * cdf + pdf)


def expected_improvement_loss(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, fn: Any,
                              jitter: float = 1e-4) -> torch.Tensor:
    """-sum_{t>=1} w_t EI_t(x_t), EI under the exact GP posterior given x_{<t}, y_{<t}.

    ``fn`` gives the prior: ``fn.kernel_matrix`` (the function's own kernel and
    hyperparameters), ``fn.offset`` (the prior mean), ``fn.outputscale`` and
    ``fn.noise_std``. ``y`` is in the scaled units ``(f - offset) / sqrt(outputscale)``,
    so the prior mean is 0 and the posterior is computed in those units. Gradients flow
    through the query ``x_t`` (its posterior mean and variance), not through the earlier
    observations, as in the paper's EI loss.
    """
    B, T, _ = x.shape
    scale = fn.outputscale.sqrt()[:, None, None]
    noise = (fn.noise_std.square() / fn.outputscale)[:, None] + jitter
    Xd, yd = x.detach(), y.detach()
    K_all = fn.kernel_matrix(Xd, Xd) / scale.square()  # (B, T, T) scaled prior covariance
    terms = []
    for t in range(1, T):
        K = K_all[:, :t, :t] + torch.diag_embed(noise.expand(B, t))
        L = torch.linalg.cholesky(K)
        k_star = fn.kernel_matrix(Xd[:, :t], x[:, t:t + 1]) / scale.square()  # (B, t, 1)
        v = torch.linalg.solve_triangular(L, k_star, upper=False)
        alpha = torch.cholesky_solve(yd[:, :t, None], L)
        mean = (k_star * alpha).sum(dim=1).squeeze(-1)
        var = (1.0 - v.square().sum(dim=1).squeeze(-1)).clamp_min(1e-9)
        best = yd[:, :t].min(dim=1).values
        terms.append(_normal_ei(mean, var.sqrt(), best))
    ei = torch.stack(terms, dim=1)  # (B, T-1)
    return -(ei * w[1:]).sum(dim=1).mean()


def log_regret_loss(y: torch.Tensor, w: torch.Tensor, y_min: torch.Tensor,
                    eps: float = 1e-4) -> torch.Tensor:
    """sum_t w_t log10(min_{i<=t} y_i - y_min + eps), averaged over the batch.

    ``y_min`` (B,): each function's minimum (an estimate; values below it are clamped).
    ``eps`` is the floor below which more precision hardly pays. With 1e-4 (the shipped
    weights) a regret of 1e-4 against 1e-2 is worth as much as 1e-2 against 1, which
    rewards refining optima already found; a larger floor (1e-2) puts the weight on
    finding the right basin (compared in BENCHMARKS.md).
    """
    best = torch.cummin(y, dim=1).values
    regret = (best - y_min[:, None]).clamp_min(0.0)
    return (torch.log10(regret + eps) * w).sum(dim=1).mean()


def convergence_rate(y: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Mean log-rate at which the best-so-far gap to the trajectory's lowest value shrinks.

    alpha = mean_t [log(r_{t-1} + eps) - log(r_t + eps)] with r_t = min_{i<=t} y_i - min y,
    estimated from consecutive differences of the best-so-far values; larger is faster.
    """
    best = torch.cummin(y, dim=1).values
    r = best - y.min(dim=1, keepdim=True).values.detach()
    logr = torch.log(r + eps)
    return (logr[:, :-1] - logr[:, 1:]).mean()


def bbo_loss(kind: str, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, fn: Any = None,
             rate_weight: float = 0.0, y_min: torch.Tensor | None = None,
             regret_floor: float = 1e-4) -> torch.Tensor:
    """The meta-training loss ``kind`` (one of ``LOSSES``), plus ``-rate_weight * alpha``.

    ``fn`` is needed by ``ei``, ``y_min`` (in the units of ``y``) by ``log-regret``, whose
    ``regret_floor`` is the ``eps`` of ``log_regret_loss``.
    """
    if kind == "summed":
        loss = summed_loss(y, w)
    elif kind == "oi":
        loss = observed_improvement_loss(y, w)
    elif kind == "ei":
        if fn is None:
            raise ValueError("the EI loss needs the functions (their GP prior)")
        loss = expected_improvement_loss(x, y, w, fn)
    elif kind == "log-regret":
        if y_min is None:
            raise ValueError("the log-regret loss needs each function's minimum (y_min)")
        loss = log_regret_loss(y, w, y_min, eps=regret_floor)
    else:
        raise ValueError(f"unknown loss {kind!r}; expected one of {', '.join(LOSSES)}")
    if rate_weight:
        loss = loss - rate_weight * convergence_rate(y)
    return loss


# -------------------------------------------------- gradient-input optimizers (l2l)

L2L_OBJECTIVES = ("sum", "log")


def loss_rate(f: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Mean linear convergence rate of a trajectory of losses ``f`` (B, T) > 0, from
    consecutive differences: alpha = mean_t [log f_{t-1} - log f_t]; larger is faster."""
    logf = torch.log(f + eps)
    return (logf[:, :-1] - logf[:, 1:]).mean()


def l2l_loss(f: torch.Tensor, f0: torch.Tensor, objective: str = "sum",
             w: torch.Tensor | None = None, rate_weight: float = 0.0) -> torch.Tensor:
    """The meta-loss of a learned optimizer over an unroll of losses ``f`` (B, T).

    Losses are relative to each problem's starting loss ``f0`` (B,), so problems of
    different scales weigh alike. ``sum``: sum_t w_t f_t / f0 (the paper's weighted sum);
    ``log``: sum_t w_t log(f_t / f0). ``rate_weight`` subtracts ``lambda * alpha``, the
    convergence rate of ``loss_rate`` (the design notes' convergence-rate term). ``w``
    defaults to uniform weights summing to 1.
    """
    if w is None:
        w = step_weights(f.shape[1], device=f.device, dtype=f.dtype)
    r = f / f0[:, None]
    if objective == "sum":
        loss = (r * w).sum(dim=1).mean()
    elif objective == "log":
        loss = (torch.log(r + 1e-12) * w).sum(dim=1).mean()
    else:
        raise ValueError(f"unknown objective {objective!r}; expected one of "
                         f"{', '.join(L2L_OBJECTIVES)}")
    if rate_weight:
        loss = loss - rate_weight * loss_rate(f)
    return loss
