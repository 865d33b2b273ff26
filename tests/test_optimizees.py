"""Optimizee families and sparse regression with its ISTA / FISTA baselines."""

import pytest
import torch
from bbopt.tasks.optimizees import BENCH_FAMILIES, FAMILIES, sample_optimizee, synthetic_images
from bbopt.tasks.sparse import SparseProblem, ista, penalty, prox, sample_sparse


@pytest.mark.parametrize("family", list(FAMILIES))
def test_families_give_finite_differentiable_batched_losses(family):
    problem = sample_optimizee(family, 3, torch.Generator().manual_seed(0))
    theta = problem.theta0.clone().requires_grad_(True)
    loss = problem.loss(theta)
    assert loss.shape == (3,) and torch.isfinite(loss).all()
    (g,) = torch.autograd.grad(loss.sum(), theta)
    assert g.shape == theta.shape and torch.isfinite(g).all()
    # problems are independent: the gradient of problem 0 touches only its own row
    (g0,) = torch.autograd.grad(problem.full_loss(theta)[0], theta)
    assert g0[1:].abs().max() == 0


def test_batched_mlp_matches_torch_modules():
    problem = sample_optimizee("mlp-relu", 2, torch.Generator().manual_seed(1))
    params = problem.unflatten(problem.theta0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 20), torch.nn.ReLU(), torch.nn.Linear(20, 10))
    with torch.no_grad():
        net[0].weight.copy_(params[0][1].T)
        net[0].bias.copy_(params[1][1])
        net[2].weight.copy_(params[2][1].T)
        net[2].bias.copy_(params[3][1])
        expected = torch.nn.functional.cross_entropy(net(problem.X), problem.labels)
    assert torch.isclose(problem.full_loss(problem.theta0)[1], expected, atol=1e-5)


def test_synthetic_images_are_a_learnable_training_only_family():
    X, y = synthetic_images(512, torch.Generator().manual_seed(3))
    X2, y2 = synthetic_images(512, torch.Generator().manual_seed(3))
    assert torch.equal(X, X2) and torch.equal(y, y2)  # drawn from the generator alone
    assert X.shape == (512, 64) and set(y.tolist()) == set(range(10))
    assert X.mean(0).abs().max() < 1e-4 and (X.std(0) - 1).abs().max() < 1e-3
    # the classes are told apart by their patterns: nearest class mean beats chance by far
    means = torch.stack([X[y == c].mean(0) for c in range(10)])
    assert (torch.cdist(X, means).argmin(1) == y).float().mean() > 0.5
    assert "cnn-synth" in FAMILIES and "cnn-synth" not in BENCH_FAMILIES
    assert "cnn" in BENCH_FAMILIES  # the digits CNN stays a held-out benchmark


def test_noisy_synthetic_mlps_are_a_training_only_family():
    # MLPs on the synthetic images with small minibatches: the loss an optimizer sees
    # is a noisy estimate of the full loss, and the family never enters a benchmark.
    sizes, acts = set(), set()
    for seed in range(12):
        p = sample_optimizee("mlp-synth", 3, torch.Generator().manual_seed(seed), "cpu")
        sizes.add(p.minibatch)
        acts.add(p.activation)
        assert p.theta0.shape == (3, p.dim) and 16 * 64 < p.dim < 65 * 75
    assert sizes <= {8, 16, 32} and len(sizes) > 1 and acts == {"sigmoid", "relu"}
    draws = torch.stack([p.loss(p.theta0) for _ in range(20)])
    assert torch.isfinite(draws).all() and (draws.std(0) > 0).all()
    assert (draws.mean(0) - p.full_loss(p.theta0)).abs().max() < 0.2
    assert "mlp-synth" in FAMILIES and "mlp-synth" not in BENCH_FAMILIES


def test_unknown_family_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown optimizee family"):
        sample_optimizee("resnet", 1, torch.Generator())


def test_sparse_objective_on_hand_computed_values():
    D = torch.eye(2)[None]
    Y = torch.tensor([[[1.0], [2.0]]])
    gamma = torch.tensor([[[0.5], [-1.0]]])
    p = SparseProblem(D, Y, lam=0.1, kind="l1")
    # residual (0.5, 3): 0.25 + 9; L1: 1.5
    assert torch.isclose(p.objective(gamma), torch.tensor([9.25 + 0.15]))
    g2 = torch.tensor([[[3.0, 4.0], [0.0, 0.0]]])
    assert torch.isclose(penalty(g2, "group"), torch.tensor([5.0]))
    assert torch.allclose(prox(torch.tensor([1.5, -0.2, 0.5]), 0.5, "l1"),
                          torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(prox(g2, 2.5, "group"), torch.tensor([[[1.5, 2.0], [0.0, 0.0]]]))


@pytest.mark.parametrize("kind", ["l1", "group"])
@pytest.mark.parametrize("fast", [False, True])
def test_ista_reaches_the_closed_form_solution(kind, fast):
    """With an orthogonal dictionary the minimizer is the prox of D^T Y at lam / 2."""
    torch.manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(6, 6))
    Y = torch.randn(1, 6, 3)
    problem = SparseProblem(Q[None], Y, lam=0.8, kind=kind)
    closed = prox(Q.T @ Y[0], 0.4, kind)
    gamma, values = ista(problem, 300, fast=fast)
    assert torch.allclose(gamma[0], closed, atol=1e-5)
    assert values[0, -1] <= values[0, 0]


def test_sparse_problems_have_the_sparsity_asked_for():
    p = sample_sparse(2, "group", m=10, n=30, k=4, active=3, generator=torch.Generator())
    assert p.D.shape == (2, 10, 30) and p.Y.shape == (2, 10, 4)
    assert torch.allclose(p.D.norm(dim=1), torch.ones(2, 30))
    with pytest.raises(ValueError, match="unknown penalty"):
        sample_sparse(1, "l0")
