"""The GP screen of the learned policy's candidates (bbopt/nets/screen.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from bbopt.tasks.gp_prior import GPPrior

from bbopt.nets.policy import BBOPolicy, rollout
from bbopt.nets.screen import (
    FAIL_KAPPA,
    FAIL_NOISE,
    FAIL_STD_FLOOR,
    JITTER,
    LENGTHSCALE_PRIOR,
    REFINE_KAPPA,
    GPScreen,
    _distance,
    exploration_margin,
    interleaves,
    log_ei,
    screen,
    warp,
)


def _matern(a: np.ndarray, b: np.ndarray, ls: np.ndarray) -> np.ndarray:
    r = np.sqrt((((a[:, None, :] - b[None, :, :]) / ls) ** 2).sum(-1))
    s = math.sqrt(5) * r
    return (1 + s + s * s / 3) * np.exp(-s)


def _reference(X: np.ndarray, Y: np.ndarray, C: np.ndarray, ls: np.ndarray, noise: float
               ) -> np.ndarray:
    """Log EI written out with numpy for given ARD lengthscales and noise, on the values
    warped as ``warp`` documents."""
    n, d = X.shape
    q = (Y - Y.min()) / (np.sort(Y)[(n - 1) // 2] - Y.min())  # the lower median
    y = np.where(q > 1, 1 + np.log(np.maximum(q, 1)), q)
    y = (y - y.mean()) / y.std(ddof=1)
    K = _matern(X, X, ls) + (noise + JITTER) * np.eye(n)
    k = _matern(X, C, ls)
    mean = k.T @ np.linalg.solve(K, y)
    std = np.sqrt(1 - np.einsum("ij,ij->j", k, np.linalg.solve(K, k)))
    u = (y.min() - exploration_margin(n) - mean) / std
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


def _observed(X: torch.Tensor, Y: torch.Tensor) -> GPScreen:
    gp = GPScreen(X.shape[0], X.shape[2])
    for i in range(X.shape[1]):
        gp.add(X[:, i], Y[:, i])
    return gp


def test_screen_matches_a_hand_written_gp_at_its_hyperparameters():
    rng = np.random.default_rng(0)
    for d in (1, 3):
        X = rng.random((12, d))
        Y = np.sin(6 * X).sum(1) + 0.3 * X[:, 0]
        C = rng.random((20, d))
        gp = _observed(torch.tensor(X)[None], torch.tensor(Y)[None])
        got = gp.score(torch.tensor(C)[None])[0]
        theta = gp._fit[0][0].numpy()  # the hyperparameters that score candidates
        want = _reference(X, Y, C, np.exp(theta[:d]), math.exp(theta[d]))
        assert np.allclose(got.numpy(), want, rtol=1e-6, atol=1e-6)


def test_the_likelihood_gradient_is_exact():
    # The hand-written gradient of the fit against autograd of the same objective.
    torch.manual_seed(0)
    B, n, d = 3, 15, 3
    X, Y = torch.rand(B, n, d, dtype=torch.float64), torch.randn(B, n, dtype=torch.float64)
    gp = _observed(X, Y)
    theta = (gp.theta + 0.3 * torch.randn_like(gp.theta)).requires_grad_()
    Ys = gp._standardized()
    ls, noise = theta[:, :d].exp(), theta[:, d].exp()
    r = torch.cdist(X / ls[:, None], X / ls[:, None])
    s = math.sqrt(5) * r
    K = (1 + s + s * s / 3) * torch.exp(-s) + (noise + JITTER)[:, None, None] * torch.eye(n)
    L = torch.linalg.cholesky(K)
    a = torch.cholesky_solve(Ys[..., None], L)[..., 0]
    prior = ((theta[:, :d] - gp._prior_mean) ** 2).sum(-1) / (2 * LENGTHSCALE_PRIOR[1] ** 2)
    nll = 0.5 * (Ys * a).sum(-1) + L.diagonal(dim1=-2, dim2=-1).log().sum(-1) + prior
    nll.sum().backward()
    got = gp._gradient(theta.detach(), X, Ys)[0]
    assert torch.allclose(got, theta.grad, rtol=1e-8, atol=1e-10)


def test_the_fit_finds_the_relevant_coordinate():
    # A function of the first of three coordinates: its lengthscale ends far below the
    # others' (ARD), and the noise stays small for noiseless values.
    g = torch.Generator().manual_seed(3)
    X = torch.rand(1, 40, 3, dtype=torch.float64, generator=g)
    gp = _observed(X, torch.sin(8 * X[..., 0]))
    ls = gp.theta[0, :3].exp()
    assert ls[0] < 0.5 * ls[1:].min(), ls
    assert gp.theta[0, 3].exp() < 1e-2


def test_screen_is_scale_free_and_batched():
    rng = np.random.default_rng(1)
    X, C = torch.tensor(rng.random((3, 15, 2))), torch.tensor(rng.random((3, 9, 2)))
    Y = torch.tensor(rng.standard_normal((3, 15)))
    out = screen(X, Y, C)
    assert out.shape == (3, 9)
    assert torch.allclose(screen(X, 1e6 * Y - 7, C), out, atol=1e-8)
    for b in range(3):
        assert torch.allclose(screen(X[b:b + 1], Y[b:b + 1], C[b:b + 1])[0], out[b])


def test_the_exploration_margin_favours_new_regions_early_and_vanishes_later(monkeypatch):
    # It ends at 60% of the run's budget (30 observations of a run of 50), or after 20
    # observations when the budget is not known.
    assert exploration_margin(0, 50) == 1.0 and exploration_margin(15, 50) == 0.5
    assert exploration_margin(30, 50) == 0.0 and exploration_margin(500, 50) == 0.0
    assert exploration_margin(30, 100) == 0.5 and exploration_margin(60, 100) == 0.0
    assert exploration_margin(0) == 1.0 and exploration_margin(10) == 0.5
    assert exploration_margin(20) == 0.0 and exploration_margin(500) == 0.0
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="budget"):
            exploration_margin(3, bad)
        with pytest.raises(ValueError, match="budget"):
            GPScreen(1, 2, budget=bad)
    # Ten points on [0, 0.8] of a bowl with its minimum at 0.2: the minimum itself
    # against a point beyond the last observation.
    X = torch.linspace(0.0, 0.8, 10, dtype=torch.float64)[None, :, None]
    Y = (X[..., 0] - 0.2).square()
    C = torch.tensor([[[0.2], [0.95]]], dtype=torch.float64)
    with_margin = screen(X, Y, C)[0]
    monkeypatch.setattr("bbopt.nets.screen.EXPLORE_MARGIN", 0.0)
    without = screen(X, Y, C)[0]
    assert without[0] > without[1]  # plain EI refines the incumbent
    assert with_margin[1] > with_margin[0]  # the margin looks where nothing was seen
    # A screen of a ten-query run has no margin left after ten observations.
    short = GPScreen(1, 1, budget=10)
    for i in range(10):
        short.add(X[:, i], Y[:, i])
    assert torch.allclose(short.score(C)[0], without)


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


def test_subspace_candidates_redraw_a_few_of_the_incumbents_coordinates():
    """From d = 4 on, the first half of the uniform candidates keep the incumbent but
    for 1, 2, 3, 4, 1, ... coordinates, which take the uniform draws' values; below d = 4
    there are none."""
    from bbopt.nets.policy import SUBSPACE_MAX, SUBSPACE_MIN_DIM, subspace_candidates

    assert subspace_candidates(32, SUBSPACE_MIN_DIM - 1) == 0
    assert subspace_candidates(32, 8) == 16
    d, k = 8, 10
    g = torch.Generator().manual_seed(0)
    policy = BBOPolicy("lstm", hidden=8, layers=1)
    fn = GPPrior().sample(2, d, generator=g)
    gp, rs = GPScreen(2, d), policy.init(2, d)
    for _ in range(5):
        x = torch.rand(2, d, generator=g)
        rs = policy.observe(rs, x, fn(x))
        gp.add(x, fn(x))
    seen = []
    gp.score = lambda C, pending=None: seen.append(C) or torch.zeros(C.shape[:2])
    u, z, uniform = (torch.rand(2, k, d, generator=g), torch.randn(2, k, d, generator=g),
                     torch.rand(2, k, d, generator=g))
    sub = torch.rand(2, subspace_candidates(k, d), d, generator=g)
    policy.propose_screened(rs, gp, u, z, uniform, subspace=sub)
    cands = seen[0][:, k:2 * k]
    m = sub.shape[1]
    for j in range(m):
        changed = cands[:, j] != rs.best_x
        assert (changed.sum(-1) == 1 + j % SUBSPACE_MAX).all()
        # the redrawn coordinates are those with the smallest draws, at uniform's values
        smallest = sub[:, j].argsort(-1)[:, :1 + j % SUBSPACE_MAX]
        assert torch.equal(changed.nonzero()[:, 1].view(2, -1).sort(-1).values,
                           smallest.sort(-1).values)
        assert torch.equal(cands[:, j][changed], uniform[:, j][changed])
    assert torch.equal(cands[:, m:], uniform[:, m:])
    with pytest.raises(ValueError, match="subspace draws"):
        policy.propose_screened(rs, gp, u, z, uniform, subspace=torch.rand(2, k + 1, d))


def test_steps_skipped_on_the_cpu_would_change_nothing(monkeypatch):
    """The far-tail log-EI and the repeat test run on the CPU only when some entry needs
    them, on an accelerator always (no device sync): both ways must score alike."""
    import bbopt.nets.screen as screen_module

    g = torch.Generator().manual_seed(3)
    X, Y = torch.rand(2, 12, 3, generator=g, dtype=torch.float64), torch.rand(2, 12, generator=g)
    Y[:, 0] = -1e6  # an outlying incumbent
    gp = _observed(X, Y)
    C = torch.cat([X[:, :2], torch.rand(2, 20, 3, generator=g, dtype=torch.float64)], dim=1)
    us = torch.tensor([-3e5, -2e4, -50.0, -1.0, 0.5], dtype=torch.float64)
    far = torch.rand(2, 20, 3, generator=g, dtype=torch.float64)  # no repeats among them

    def scores():
        return [gp.score(C), gp.score(far), log_ei(us), log_ei(us[2:])]

    skipped = scores()
    monkeypatch.setattr(screen_module, "_may_hold", lambda mask: True)
    for a, b in zip(skipped, scores(), strict=True):
        assert torch.equal(a, b)
    assert (skipped[0][:, :2] == -math.inf).all() and torch.isfinite(skipped[0][:, 2:]).all()


def test_the_refining_phase_scores_by_the_lower_confidence_bound():
    for bad in (-1, "5", [3], True):
        with pytest.raises(ValueError, match="refine_after"):
            GPScreen(1, 2, refine_after=bad)
    g = torch.Generator().manual_seed(4)
    X = torch.rand(1, 12, 3, generator=g, dtype=torch.float64)
    Y = (X - 0.4).square().sum(-1)
    C = torch.rand(1, 50, 3, generator=g, dtype=torch.float64)
    plain, early, late = GPScreen(1, 3), GPScreen(1, 3, refine_after=13), GPScreen(
        1, 3, refine_after=12)
    for gp in (plain, early, late):
        for i in range(12):
            gp.add(X[:, i], Y[:, i])
    assert torch.equal(early.score(C), plain.score(C))  # EI until refine_after
    _, inv_ls2, L, alpha, _ = late._fit
    mean, std = late._posterior(L, alpha, _distance(late.X, C, inv_ls2))
    assert torch.allclose(late.score(C), REFINE_KAPPA * std - mean)
    # Repeats of a queried point still score -inf.
    assert late.score(X[:, :2])[0].isinf().all()


def test_interleaved_refinement_from_eight_dimensions():
    # Every other observation count from 40, or from the margin's end when later, to 100.
    assert interleaves(40, 8) and interleaves(42, 8) and interleaves(98, 20)
    assert not interleaves(41, 8) and not interleaves(38, 8) and not interleaves(40, 7)
    assert not interleaves(100, 8) and not interleaves(500, 20)  # exploring again
    assert not interleaves(50, 8, budget=100) and interleaves(60, 8, budget=100)
    assert interleaves(40, 8, budget=50) and not interleaves(38, 8, budget=50)
    g = torch.Generator().manual_seed(5)
    X = torch.rand(1, 41, 8, generator=g, dtype=torch.float64)
    Y = (X - 0.4).square().sum(-1)
    C = torch.rand(1, 50, 8, generator=g, dtype=torch.float64)
    gp = GPScreen(1, 8)
    for i in range(41):
        gp.add(X[:, i], Y[:, i])
        if i + 1 in (40, 41):
            _, inv_ls2, L, alpha, Ys = gp._fit
            mean, std = gp._posterior(L, alpha, _distance(gp.X, C, inv_ls2))
            lcb = REFINE_KAPPA * std - mean
            ei = torch.log(std) + log_ei((Ys.min(1).values[:, None] - mean) / std)
            assert torch.allclose(gp.score(C), lcb if i + 1 == 40 else ei)
            assert not torch.allclose(lcb, ei)


def test_failed_points_turn_the_screen_away_from_their_region_only():
    # Observations on the left half; candidates in the unexplored right half, where EI
    # pulls, and next to the incumbent (0.3), where a failure at 0.31 is a flaky one.
    X = torch.tensor([[[0.05], [0.15], [0.25], [0.3], [0.35], [0.45]]], dtype=torch.float64)
    Y = torch.tensor([[1.0, 0.6, 0.2, 0.1, 0.15, 0.5]], dtype=torch.float64)
    C = torch.tensor([[[0.8], [0.85], [0.299]]], dtype=torch.float64)
    F = torch.tensor([[[0.8], [0.31]]], dtype=torch.float64)
    for refine_after in (None, 0):  # scored by log EI, then by the lower confidence bound
        gp = GPScreen(1, 1, refine_after=refine_after)
        for i in range(X.shape[1]):
            gp.add(X[:, i], Y[:, i])
        free = gp.score(C)[0]
        gp.set_failed(F)
        failed = gp.score(C)[0]
        assert failed[0] == -math.inf  # a failed point is never proposed again
        assert failed[1] < free[1] - (2.0 if refine_after is None else 0.5)
        if refine_after == 0:  # the bound, in standard deviations: next to good values
            assert abs(failed[2] - free[2]) < 0.2  # a failure barely moves it
        gp.set_failed(torch.zeros(1, 0, 1, dtype=torch.float64))
        assert torch.equal(gp.score(C)[0], free)  # without failures, as before
    gp.set_failed(F)
    both = gp.score(C, pending=torch.tensor([[[0.85]]], dtype=torch.float64))[0]
    assert both[1] == -math.inf and torch.isfinite(both[2])  # both kinds of believers
    with pytest.raises(ValueError, match="do not fit"):
        gp.set_failed(torch.zeros(1, 2, 2))


def test_failure_believers_sit_above_the_mean_and_are_never_certain():
    # A failure at an observed point (where the posterior is nearly sure) and one far
    # from the data: each believed at mean + kappa * max(std, floor), with that variance
    # (times FAIL_NOISE) as its own noise, so a failure never pins the posterior.
    X = torch.tensor([[[0.1], [0.2], [0.3], [0.4]]], dtype=torch.float64)
    gp = _observed(X, torch.tensor([[0.5, 0.2, 0.1, 0.3]], dtype=torch.float64))
    _, inv_ls2, L, alpha, Ys = gp._fit
    P = torch.tensor([[[0.3], [0.95]]], dtype=torch.float64)
    mean, std = gp._posterior(L, alpha, _distance(gp.X, P, inv_ls2))
    assert std[0, 0] < FAIL_STD_FLOOR < std[0, 1]
    _, Yb, noise, _, _ = gp._believe(gp.X, Ys, torch.zeros_like(Ys), L, alpha, P,
                                     FAIL_KAPPA, FAIL_NOISE, FAIL_STD_FLOOR)
    s = torch.stack([torch.tensor(FAIL_STD_FLOOR, dtype=torch.float64), std[0, 1]])
    assert torch.allclose(Yb[0, 4:], mean[0] + FAIL_KAPPA * s)
    assert torch.allclose(noise[0, 4:], FAIL_NOISE * s.square())
    assert torch.equal(noise[0, :4], torch.zeros(4, dtype=torch.float64))


def test_the_warp_compresses_the_upper_tail_only():
    Y = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0, 100.0, 1e6],
                      [5.0, 5.0, 5.0, 5.0, 7.0, 8.0, 9.0]], dtype=torch.float64)
    Z = warp(Y)
    # below the median (3): linear, (y - min) / (median - min); above: 1 + log of that
    assert torch.allclose(Z[0, :4], torch.tensor([0.0, 1 / 3, 2 / 3, 1.0], dtype=torch.float64))
    assert torch.allclose(Z[0, 4:], 1 + torch.log(Y[0, 4:] / 3))
    assert torch.equal(Z[1], Y[1])  # a flat lower half: left as it is
    # the same for shifted and positively scaled values, and monotone
    assert torch.allclose(warp(3.0 * Y[:1] - 7.0), Z[:1]) and (Z[0].diff() > 0).all()
    # standardized, the good values are no longer a sliver next to the minimum
    gp = _observed(torch.rand(1, 7, 2, dtype=torch.float64), Y[:1])
    Ys = gp._standardized()[0]
    assert (Ys[3] - Ys[0]) / (Ys[-1] - Ys[0]) > 0.05  # unwarped: 3e-6


def test_a_run_of_unknown_length_refines_under_noise_from_60_or_80_to_100():
    from bbopt.nets.screen import NOISY_AFTER, NOISY_THRESHOLD, noisy_refines

    g = torch.Generator().manual_seed(0)
    loud, quiet = 10 * NOISY_THRESHOLD, NOISY_THRESHOLD / 10

    def after(X, Y, n, noise, **options):
        d = X.shape[-1]
        gp = GPScreen(1, d, **options)
        for i in range(n):
            gp.add(X[:, i], Y[:, i])
        gp.theta[:, d] = math.log(noise)  # the noise the GP sees (read by score)
        return gp

    for d, start in [(1, NOISY_AFTER[0]), (2, NOISY_AFTER[0]), (3, NOISY_AFTER[1]),
                     (8, NOISY_AFTER[1])]:
        X = torch.rand(1, 101, d, generator=g, dtype=torch.float64)
        Y = (X - 0.3).square().sum(-1)
        C = torch.rand(1, 50, d, generator=g, dtype=torch.float64)
        assert noisy_refines(start, d, None) and not noisy_refines(start - 1, d, None)
        # (observations, noise, budget, in the window, scored by the bound); at d = 8 the
        # odd counts, which interleaving leaves to EI
        for n, noise, budget, window, bound in [
                (start + 1, loud, None, True, True), (99, loud, None, True, True),
                (start - 1, loud, None, False, False), (101, loud, None, False, False),
                (start + 1, quiet, None, True, False), (start + 1, loud, 200, False, False)]:
            assert noisy_refines(n, d, budget) == window, (d, n, budget)
            score = after(X, Y, n, noise, budget=budget).score(C)
            lcb = after(X, Y, n, noise, budget=budget, refine_after=0).score(C)
            assert torch.equal(score, lcb) == bound, (d, n, noise, budget)
