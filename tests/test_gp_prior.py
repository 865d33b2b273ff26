"""The GP-prior training functions: covariance, determinism, minima, bad input."""

import math

import pytest
import torch
from bbopt.tasks.gp_prior import GPPrior


@pytest.mark.parametrize("kernel", ["rbf", "matern52"])
def test_empirical_covariance_matches_kernel(kernel):
    # Many functions with the same hyperparameters, evaluated at a few fixed points: the
    # sample covariance of f - offset must match outputscale * k(x, x').
    prior = GPPrior(kernel=kernel, lengthscale_range=(0.3, 0.3), outputscale_range=(1.5, 1.5),
                    offset_std=0.0, num_features=256)
    g = torch.Generator().manual_seed(0)
    fn = prior.sample(20000, 2, generator=g, dtype=torch.float64)
    pts = torch.tensor([[0.1, 0.2], [0.15, 0.25], [0.5, 0.5], [0.9, 0.1]], dtype=torch.float64)
    y = fn(pts.expand(fn.batch_size, -1, -1))  # (B, 4)
    emp = torch.cov(y.T)
    exact = fn.select(0).kernel_matrix(pts[None], pts[None])[0]
    assert torch.allclose(emp, exact, atol=0.06), (emp, exact)
    assert abs(float(y.mean())) < 0.05


def test_kernel_formulas():
    prior = GPPrior(kernel="matern52", lengthscale_range=(0.5, 0.5),
                    outputscale_range=(2.0, 2.0))
    fn = prior.sample(1, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x1 = torch.tensor([[[0.0]]], dtype=torch.float64)
    x2 = torch.tensor([[[0.25]]], dtype=torch.float64)
    r = 0.5  # distance 0.25 over lengthscale 0.5
    s = math.sqrt(5) * r
    expected = 2.0 * (1 + s + s * s / 3) * math.exp(-s)
    assert float(fn.kernel_matrix(x1, x2)) == pytest.approx(expected, rel=1e-9)


def test_same_seed_same_functions_and_gradients():
    prior = GPPrior(kernel="mixed")
    a = prior.sample(4, 3, generator=torch.Generator().manual_seed(5))
    b = prior.sample(4, 3, generator=torch.Generator().manual_seed(5))
    x = torch.rand(4, 7, 3, requires_grad=True)
    assert torch.equal(a(x), b(x))
    a(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_minimum_is_below_random_points():
    prior = GPPrior()
    fn = prior.sample(8, 3, generator=torch.Generator().manual_seed(1))
    x_min, f_min = fn.minimum(generator=torch.Generator().manual_seed(2))
    assert ((x_min >= 0) & (x_min <= 1)).all()
    assert torch.allclose(fn(x_min), f_min, atol=1e-5)
    y = fn(torch.rand(8, 2000, 3, generator=torch.Generator().manual_seed(3)))
    assert (f_min <= y.min(dim=1).values + 1e-6).all()


def test_bad_input():
    with pytest.raises(ValueError, match="unknown kernel"):
        GPPrior(kernel="cubic")
    with pytest.raises(ValueError, match="lengthscale_range"):
        GPPrior(lengthscale_range=(0.0, 1.0))
    fn = GPPrior().sample(2, 3)
    with pytest.raises(ValueError, match="dimension"):
        fn(torch.rand(2, 4))
    with pytest.raises(ValueError, match="batch size"):
        fn(torch.rand(3, 3))
