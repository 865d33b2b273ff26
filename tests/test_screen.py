"""The GP screen of the learned policy's candidates (bbopt/nets/screen.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from bbopt.tasks.gp_prior import GPPrior

from bbopt.nets.policy import BBOPolicy, rollout
from bbopt.nets.screen import LENGTHSCALES, NOISES, log_ei, screen


def _matern(a: np.ndarray, b: np.ndarray, ls: float) -> np.ndarray:
    r = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)) / ls
    s = math.sqrt(5) * r
    return (1 + s + s * s / 3) * np.exp(-s)


def _reference(X: np.ndarray, Y: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Log EI written out with numpy: grid search of the marginal likelihood, then the
    posterior at the candidates."""
    n, d = X.shape
    y = (Y - Y.mean()) / Y.std(ddof=1)
    best_ll, best = -math.inf, None
    for ls in LENGTHSCALES:
        for noise in NOISES:
            K = _matern(X, X, ls * math.sqrt(d)) + noise * np.eye(n)
            a = np.linalg.solve(K, y)
            ll = -0.5 * y @ a - 0.5 * np.linalg.slogdet(K)[1]
            if ll > best_ll:
                best_ll, best = ll, (ls * math.sqrt(d), K, a)
    ls, K, a = best
    k = _matern(X, C, ls)
    mean = k.T @ a
    var = 1 - np.einsum("ij,ij->j", k, np.linalg.solve(K, k))
    std = np.sqrt(var)
    u = (y.min() - mean) / std

    return np.log(std) + np.array([_log_ei_exact(v) for v in u])


def _log_ei_exact(u: float) -> float:
    import mpmath

    mpmath.mp.dps = 60
    u = mpmath.mpf(u)
    return float(mpmath.log(mpmath.npdf(u) + u * mpmath.ncdf(u)))


def test_log_ei_is_the_closed_form_far_into_the_tail():
    us = [-3e3, -500.0, -40.0, -10.0, -6.0, -1.5, -1.0, -0.3, 0.0, 0.7, 3.0, 8.0]
    got = log_ei(torch.tensor(us, dtype=torch.float64))
    assert torch.isfinite(got).all() and (got.diff() > 0).all()
    for u, g in zip(us, got.tolist(), strict=True):
        assert g == pytest.approx(_log_ei_exact(u), rel=1e-8, abs=1e-10), u


def test_screen_matches_a_hand_written_gp():
    rng = np.random.default_rng(0)
    for d in (1, 3):
        X = rng.random((12, d))
        Y = np.sin(6 * X).sum(1) + 0.3 * X[:, 0]
        C = rng.random((20, d))
        got = screen(torch.tensor(X)[None], torch.tensor(Y)[None], torch.tensor(C)[None])[0]
        assert np.allclose(got.numpy(), _reference(X, Y, C), rtol=1e-6, atol=1e-6)


def test_screen_is_scale_free_and_batched():
    rng = np.random.default_rng(1)
    X, C = torch.tensor(rng.random((3, 15, 2))), torch.tensor(rng.random((3, 9, 2)))
    Y = torch.tensor(rng.standard_normal((3, 15)))
    out = screen(X, Y, C)
    assert out.shape == (3, 9)
    assert torch.allclose(screen(X, 1e6 * Y - 7, C), out, atol=1e-8)
    for b in range(3):
        assert torch.allclose(screen(X[b:b + 1], Y[b:b + 1], C[b:b + 1])[0], out[b])


def test_pending_points_lower_the_ei_next_to_them():
    X = torch.tensor([[[0.1], [0.5], [0.9]]], dtype=torch.float64)
    Y = torch.tensor([[1.0, 0.0, 1.0]], dtype=torch.float64)
    C = torch.tensor([[[0.45], [0.55], [0.3]]], dtype=torch.float64)
    free = screen(X, Y, C)[0]
    taken = screen(X, Y, C, pending=torch.tensor([[[0.45]]], dtype=torch.float64))[0]
    assert taken[0] < free[0] - 1.0  # the pending point's own spot loses most
    assert taken[0] < taken[1]  # so the symmetric candidate now wins


def test_screen_rejects_bad_shapes():
    X, Y = torch.rand(1, 5, 2), torch.rand(1, 5)
    with pytest.raises(ValueError, match="do not fit"):
        screen(X, Y, torch.rand(1, 4, 3))
    with pytest.raises(ValueError, match="do not fit"):
        screen(X, torch.rand(1, 4), torch.rand(1, 4, 2))
    with pytest.raises(ValueError, match="two observations"):
        screen(X[:, :1], Y[:, :1], torch.rand(1, 4, 2))


def test_screened_rollout_is_differentiable_and_spreads_parallel_rounds():
    torch.manual_seed(0)
    policy = BBOPolicy("lstm", hidden=8, layers=1)
    fn = GPPrior().sample(3, 2, generator=torch.Generator().manual_seed(0))
    x, y = rollout(policy, fn, 12, parallel=4, screen=4,
                   generator=torch.Generator().manual_seed(1))
    assert x.shape == (3, 12, 2) and y.shape == (3, 12)
    y.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.parameters())
    # Within a round, later queries are screened with the earlier ones pending: distinct.
    for r in range(4, 12, 4):
        rnd = x[:, r:r + 4].detach()
        gaps = torch.cdist(rnd, rnd) + torch.eye(4) * 10
        assert gaps.min() > 1e-6
    with pytest.raises(ValueError):
        rollout(policy, fn, 5, screen=-1)
