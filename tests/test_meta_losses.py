"""The meta-training losses on hand-computed cases."""

import math

import pytest
import torch
from bbopt.tasks.gp_prior import GPPrior

from bbopt.meta.losses import (
    bbo_loss,
    convergence_rate,
    expected_improvement_loss,
    log_regret_loss,
    observed_improvement_loss,
    step_weights,
    summed_loss,
)

Y = torch.tensor([[3.0, 1.0, 2.0, 0.5], [1.0, 2.0, 0.0, 0.1]])
W = torch.tensor([0.1, 0.2, 0.3, 0.4])


def test_step_weights():
    assert torch.allclose(step_weights(4), torch.full((4,), 0.25))
    assert torch.allclose(step_weights(4, "late"), torch.tensor([1.0, 2, 3, 4]) / 10)
    with pytest.raises(ValueError, match="weighting"):
        step_weights(4, "early")


def test_summed():
    # run 1: .3 + .2 + .6 + .2 = 1.3; run 2: .1 + .4 + 0 + .04 = .54
    assert float(summed_loss(Y, W)) == pytest.approx(0.92)


def test_observed_improvement():
    # run 1: improvements min(1-3,0)=-2 (w .2), min(2-1,0)=0, min(.5-1,0)=-.5 (w .4) -> -.6
    # run 2: min(2-1,0)=0, min(0-1,0)=-1 (w .3), min(.1-0,0)=0 -> -.3
    assert float(observed_improvement_loss(Y, W)) == pytest.approx(-0.45)


def test_observed_improvement_gradient_only_on_improving_points():
    y = Y.clone().requires_grad_(True)
    observed_improvement_loss(y, W).backward()
    expected = torch.tensor([[0.0, 0.2, 0.0, 0.4], [0.0, 0.0, 0.3, 0.0]]) / 2
    assert torch.allclose(y.grad, expected)


def test_log_regret():
    y_min = torch.tensor([0.0, -1.0])
    # run 1 best so far 3,1,1,.5 ; run 2: 1,1,0,0 minus -1 -> 2,2,1,1
    r1 = [3, 1, 1, 0.5]
    r2 = [2, 2, 1, 1]
    for eps in (1e-2, 1e-4):
        exp = sum(w * math.log10(r + eps) for w, r in zip(W.tolist(), r1, strict=True))
        exp += sum(w * math.log10(r + eps) for w, r in zip(W.tolist(), r2, strict=True))
        assert float(log_regret_loss(Y, W, y_min, eps=eps)) == pytest.approx(exp / 2, rel=1e-5)
    # The default floor is 1e-4 prior std units.
    assert float(log_regret_loss(Y, W, y_min)) == float(log_regret_loss(Y, W, y_min, eps=1e-4))


def test_convergence_rate():
    y = torch.tensor([[1.0, 0.1, 0.01]])
    # gaps to the lowest value: .99, .09, 0 -> log(.99+e)-log(.09+e), log(.09+e)-log(e)
    e = 1e-3
    exp = (math.log(0.99 + e) - math.log(e)) / 2
    assert float(convergence_rate(y, eps=e)) == pytest.approx(exp, rel=1e-5)
    loss = bbo_loss("summed", None, y, torch.full((3,), 1 / 3), rate_weight=0.5)
    assert float(loss) == pytest.approx(0.37 - 0.5 * exp, rel=1e-5)


def test_expected_improvement_matches_closed_form():
    # One observation at 0 with value 0 (scaled units), RBF l=1, no noise; the query at x
    # has posterior mean 0 (prior mean 0 and y=0) and variance 1 - k^2 (plus jitter effects).
    prior = GPPrior(kernel="rbf", lengthscale_range=(1.0, 1.0), outputscale_range=(1.0, 1.0),
                    offset_std=0.0)
    fn = prior.sample(1, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = torch.tensor([[[0.0], [0.5]]], dtype=torch.float64)
    y = torch.tensor([[0.0, 0.3]], dtype=torch.float64)
    w = torch.tensor([0.0, 1.0], dtype=torch.float64)
    k = math.exp(-0.5 * 0.25)
    jitter = 1e-4
    var = 1 - k * k / (1 + jitter)
    ei = math.sqrt(var) / math.sqrt(2 * math.pi)  # best = mean = 0: EI = sigma * phi(0)
    assert float(expected_improvement_loss(x, y, w, fn, jitter=jitter)) == pytest.approx(
        -ei, rel=1e-6)


def test_unknown_or_incomplete_loss():
    with pytest.raises(ValueError, match="unknown loss"):
        bbo_loss("mse", None, Y, W)
    with pytest.raises(ValueError, match="needs the functions"):
        bbo_loss("ei", None, Y, W)
    with pytest.raises(ValueError, match="minimum"):
        bbo_loss("log-regret", None, Y, W)
