"""The coordinatewise LSTM optimizer: update rule, torch optimizer, meta-training,
shipped weights, and gradient mode in studies."""

import copy
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from bbopt.tasks.optimizees import sample_optimizee

import bbopt
from bbopt.errors import SpaceError, StudyError, TrialError
from bbopt.meta.l2l import L2LTrainConfig, L2LTrainer, run_optimizer
from bbopt.meta.losses import l2l_loss, loss_rate
from bbopt.nets.l2l import L2LNet, preprocess_gradient
from bbopt.optimizers.l2l import load_l2l, save_l2l


def test_preprocessing_on_hand_computed_values():
    g = torch.tensor([1.0, math.exp(-5), -math.exp(-20), 0.0, -math.exp(3)])
    out = preprocess_gradient(g, p=10.0)
    expected = torch.tensor([[0.0, 1.0], [-0.5, 1.0], [-1.0, -math.exp(-10)], [-1.0, 0.0],
                             [0.3, -1.0]])
    assert torch.allclose(out, expected, atol=1e-6)


def test_fresh_rule_is_adam_with_momentum():
    """Zero outputs at initialization: the first step is -lr * sign(g), like Adam's."""
    net = L2LNet(lr=0.01)
    delta, state = net.step(torch.tensor([2.0, -3.0, 0.5]), net.initial_state(3))
    assert torch.allclose(delta, torch.tensor([-0.01, 0.01, -0.01]), atol=1e-6)
    assert float(state[0]) == 1.0


def test_meta_losses_on_hand_computed_values():
    f = torch.tensor([[4.0, 2.0, 1.0]])
    f0 = torch.tensor([4.0])
    assert torch.isclose(l2l_loss(f, f0, "sum"), torch.tensor((1 + 0.5 + 0.25) / 3))
    assert torch.isclose(l2l_loss(f, f0, "log"),
                         torch.tensor((0 + math.log(0.5) + math.log(0.25)) / 3), atol=1e-6)
    assert torch.isclose(loss_rate(f), torch.tensor(math.log(2.0)), atol=1e-6)
    with_rate = l2l_loss(f, f0, "sum", rate_weight=0.5)
    assert torch.isclose(with_rate, torch.tensor(0.5833333 - 0.5 * math.log(2.0)), atol=1e-5)
    with pytest.raises(ValueError, match="unknown objective"):
        l2l_loss(f, f0, "mean")


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


@pytest.mark.parametrize("busy", [False, True])
def test_lstm_optimizer_state_dict_round_trip_and_closure(busy):
    """With the shipped weights, and with a net that has global features."""
    weights = _busy_net() if busy else None
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    a = _model()
    opt_a = bbopt.LSTMOptimizer(a.parameters(), weights=weights)
    for _ in range(5):
        opt_a.zero_grad()
        torch.nn.functional.mse_loss(a(x), y).backward()
        opt_a.step()
    b = _model()
    b.load_state_dict(a.state_dict())
    opt_b = bbopt.LSTMOptimizer(b.parameters(), weights=weights)
    opt_b.load_state_dict(opt_a.state_dict())

    def closure(model, opt):
        def f():
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss
        return f

    for _ in range(3):
        la = opt_a.step(closure(a, opt_a))
        lb = opt_b.step(closure(b, opt_b))
        assert torch.equal(la, lb)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_learning_rate_schedulers_scale_the_learned_steps():
    """lr multiplies the learned steps, so a scheduler's factor does what lr= does; and
    an optimizer state saved when the multiplier was named "scale" still loads."""
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    a, b = _model(), _model()
    opt_a = bbopt.LSTMOptimizer(a.parameters(), lr=0.5)
    opt_b = bbopt.LSTMOptimizer(b.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt_b, lambda epoch: 0.5)
    for model, opt in ((a, opt_a), (b, opt_b)):
        for _ in range(3):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    sched.step()
    assert all(torch.equal(pa, pb) for pa, pb in zip(a.parameters(), b.parameters(),
                                                     strict=True))
    old = opt_a.state_dict()
    for group in old["param_groups"]:
        group["scale"] = group.pop("lr")
    opt_c = bbopt.LSTMOptimizer(b.parameters())
    opt_c.load_state_dict(old)
    assert opt_c.param_groups[0]["lr"] == 0.5
    opt_c.zero_grad()
    torch.nn.functional.mse_loss(b(x), y).backward()
    opt_c.step()


def test_lstm_optimizer_bad_input():
    for bad in (0, -1.0, True, "1"):
        with pytest.raises(ValueError, match="multiplier of the learned steps"):
            bbopt.LSTMOptimizer(_model().parameters(), lr=bad)
    with pytest.raises(ValueError, match="multiplier of the learned steps"):
        bbopt.LSTMOptimizer(_model().parameters(), scale=0)
    with pytest.raises(ValueError, match="not both"):
        bbopt.LSTMOptimizer(_model().parameters(), lr=0.5, scale=0.5)
    with pytest.raises(FileNotFoundError, match="no learned-optimizer weights"):
        bbopt.LSTMOptimizer(_model().parameters(), weights="/nonexistent/w.pt")
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = bbopt.LSTMOptimizer(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    before = emb.weight.detach().clone()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        opt.step()
    assert torch.equal(emb.weight, before) and not opt.state


def test_a_non_finite_gradient_is_an_error_that_changes_nothing():
    model = _model()
    opt = bbopt.LSTMOptimizer(model.parameters())
    x = torch.randn(16, 4)
    model(x).square().mean().backward()
    opt.step()  # some state to keep
    params = [p.detach().clone() for p in model.parameters()]
    state = copy.deepcopy(opt.state_dict())
    for bad in (float("nan"), float("inf")):
        ps = list(model.parameters())
        ps[-1].grad[0] = bad  # one entry of the last parameter
        with pytest.raises(ValueError, match=f"parameter {len(ps) - 1} .*NaN or infinite"):
            opt.step()
        assert all(torch.equal(a, b) for a, b in zip(params, model.parameters(), strict=True))
        after = opt.state_dict()["state"]
        for k, v in state["state"].items():
            assert all(torch.equal(a, b) for a, b in zip(v["l2l"], after[k]["l2l"], strict=True))
    model.zero_grad()
    model(x).square().mean().backward()
    opt.step()  # goes on from where it was, finite
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_corrupt_or_foreign_weights_are_a_clear_error(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a bbopt learned optimizer"):
        load_l2l(junk)
    other = tmp_path / "other.pt"
    torch.save({"format": "something-else"}, other)
    with pytest.raises(ValueError, match="not a bbopt learned optimizer"):
        load_l2l(other)
    net = L2LNet(hidden=4, layers=1)
    save_l2l(tmp_path / "w.pt", net, {"note": "test"})
    loaded, meta = load_l2l(tmp_path / "w.pt")
    assert meta == {"note": "test"} and loaded.hidden == 4


def test_tiny_meta_training_lowers_validation_loss(tmp_path):
    config = L2LTrainConfig(families=("quadratic",), batch=8, horizon=20, unroll=10,
                            iterations=40, val_every=20, checkpoint_every=20,
                            val_problems=8, init_lr=1e-3, lr=1e-2)
    trainer = L2LTrainer(config, tmp_path / "run", command="test", log=lambda m: None)
    result = trainer.run()
    first = trainer.history[0]["val"]["mean"]
    assert result["best_val"] < first - 0.1
    _, meta = load_l2l(tmp_path / "run" / "best.pt")
    assert meta["families"] == ["quadratic"] and meta["command"] == "test"
    # resume: the run continues from last.pt
    config.iterations = 60
    again = L2LTrainer(config, tmp_path / "run", command="test", log=lambda m: None)
    assert again.iteration == 40
    again.config.snapshot_every = 10  # weights kept along the way, in the shipped format
    again.run()
    assert again.iteration == 60
    snaps = sorted((tmp_path / "run" / "snapshots").iterdir())
    assert [p.name for p in snaps] == ["it_50.pt", "it_60.pt"]
    net, meta = load_l2l(snaps[-1])
    assert meta["iteration"] == 60 and meta["validation"] is not None
    assert load_l2l(snaps[0])[1]["validation"] is None  # no validation at iteration 50
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(),
                                                 again.model.state_dict().values(), strict=True))
    # --init: a new run starts from those weights (same architecture), other ones refused
    start = L2LTrainer(replace(config, init=str(tmp_path / "run" / "best.pt")),
                       tmp_path / "from-best", log=lambda m: None)
    trained, _ = load_l2l(tmp_path / "run" / "best.pt")
    assert all(torch.equal(a, b) for a, b in zip(start.model.state_dict().values(),
                                                 trained.state_dict().values(), strict=True))
    with pytest.raises(ValueError, match="this run asks for"):
        L2LTrainer(replace(config, init=str(tmp_path / "run" / "best.pt"), hidden=7),
                   tmp_path / "other", log=lambda m: None)


def test_train_config_rejects_bad_settings():
    with pytest.raises(ValueError, match="unknown optimizee family"):
        L2LTrainConfig(families=("nope",))
    with pytest.raises(ValueError, match="multiple of unroll"):
        L2LTrainConfig(horizon=30, unroll=20)
    with pytest.raises(ValueError, match="snapshot_every"):
        L2LTrainConfig(snapshot_every=-1)


@pytest.mark.parametrize("weights", [None, "quadratic"])
def test_shipped_weights_beat_sgd_on_fresh_quadratics(weights):
    """Same step budget (100), the same 32 fresh quadratics; SGD at the best rate of a grid."""
    problem = sample_optimizee("quadratic", 32, torch.Generator().manual_seed(4242))
    lstm = run_optimizer(lambda p: bbopt.LSTMOptimizer(p, weights=weights, problems=32),
                         problem, 100, (100,))[100]
    best_sgd = min(
        float(run_optimizer(lambda p, lr=lr: torch.optim.SGD(p, lr=lr), problem, 100,
                            (100,))[100].nan_to_num(math.inf).median())
        for lr in (1e-3, 3e-3, 1e-2, 3e-2))
    assert float(lstm.median()) < best_sgd
    assert torch.isfinite(lstm).all()


@pytest.mark.parametrize("weights", [None, "quadratic"])
def test_shipped_weights_stay_finite_far_past_the_horizon(weights):
    """Ten times the training horizon (BENCHMARKS.md has the MLPs and CNN too)."""
    problem = sample_optimizee("quadratic", 16, torch.Generator().manual_seed(7))
    out = run_optimizer(lambda p: bbopt.LSTMOptimizer(p, weights=weights, problems=16),
                        problem, 1000, (0, 1000))
    assert torch.isfinite(out[1000]).all() and (out[1000] < out[0]).all()


def test_the_quadratic_rule_beats_tuned_adam_on_fresh_quadratics():
    """The rule trained on quadratics alone (as the paper trains one per task family)
    against Adam at its best rate of the benchmark's grid at step 100, on 32 quadratics
    from a stream of their own (BENCHMARKS.md: about 0.1 to 0.15 times Adam's median)."""
    problem = sample_optimizee("quadratic", 32, torch.Generator().manual_seed(31337))
    ours = run_optimizer(lambda p: bbopt.LSTMOptimizer(p, weights="quadratic", problems=32),
                         problem, 100, (100,))[100]
    adam = min(float(run_optimizer(lambda p, lr=lr: torch.optim.Adam(p, lr=lr), problem,
                                   100, (100,))[100].median())
               for lr in (0.03, 0.1, 0.3, 1.0))
    assert float(ours.median()) < 0.5 * adam


def test_weights_by_name_or_path(tmp_path):
    from bbopt.optimizers.l2l import DEFAULT_WEIGHTS, SHIPPED_WEIGHTS, weights_path

    assert weights_path(None) == DEFAULT_WEIGHTS == SHIPPED_WEIGHTS["general"]
    assert weights_path("quadratic").name == "l2l-quadratic.pt"
    for path in SHIPPED_WEIGHTS.values():
        _, meta = load_l2l(path)
        assert meta["command"].startswith("bbopt train l2l") and meta["selection"]
    w = torch.nn.Parameter(torch.zeros(2))
    assert bbopt.LSTMOptimizer([w], weights="quadratic").meta["families"] == ["quadratic"]
    with pytest.raises(FileNotFoundError, match="no learned-optimizer weights at quadratc"):
        bbopt.LSTMOptimizer([w], weights="quadratc")


def test_a_coordinate_without_gradient_stays_put():
    """The learned offset fades with |g| below exp(-P): a parameter whose gradient is
    exactly zero does not move (it drifted at the rule's offset before)."""
    w = torch.nn.Parameter(torch.ones(3))
    opt = bbopt.LSTMOptimizer([w])
    for _ in range(5):
        w.grad = torch.tensor([0.0, 1e-9, 0.5])
        opt.step()
    assert w[0].item() == 1.0
    assert w[1].item() < 1.0 and w[2].item() < 0.99  # like Adam, scale-free otherwise


def test_a_relu_mlp_trained_to_zero_loss_stays_there():
    """A held-out model (a ReLU MLP on scikit-learn's wine, full batch) driven to a loss
    near 1e-6: with the offset's fade the rule stays there to step 1000; without it the
    loss climbed back to about 0.1 (BENCHMARKS.md)."""
    from sklearn.datasets import load_wine

    X, y = load_wine(return_X_y=True)
    X = torch.tensor((X - X.mean(0)) / X.std(0), dtype=torch.float32)
    y = torch.tensor(y)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(13, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 3))
    opt = bbopt.LSTMOptimizer(model.parameters())
    losses = []
    for _ in range(1000):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(X), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert max(losses[200:]) < 1e-4, max(losses[200:])


# -- gradient mode in studies ---------------------------------------------------------------

SPACE = {"x": bbopt.Float(-5, 5), "y": bbopt.Float(0.01, 100, log=True)}


def _value_and_grad(p):
    x, y = p["x"], p["y"]
    ly = math.log10(y)
    return (x - 1) ** 2 + (ly - 1) ** 2, {"x": 2 * (x - 1), "y": 2 * (ly - 1) / (y * math.log(10))}


def test_gradient_mode_minimizes_a_smooth_function():
    study = bbopt.Study(SPACE, method="l2l", seed=0)
    first = None
    for _ in range(60):
        trial = study.ask()
        value, grad = _value_and_grad(trial.params)
        first = value if first is None else first
        study.tell(trial, value, grad=grad)
    assert study.best_trial.value < 1e-2 * first


def test_gradient_mode_bad_input_leaves_the_study_unchanged():
    study = bbopt.Study(SPACE, method="l2l", seed=0)
    trial = study.ask()
    with pytest.raises(TrialError, match="needs the gradient"):
        study.tell(trial, 1.0)
    with pytest.raises(SpaceError, match="sequence of 2 numbers"):
        study.tell(trial, 1.0, grad=[1.0])
    with pytest.raises(SpaceError, match="finite"):
        study.tell(trial, 1.0, grad={"x": float("nan"), "y": 0.0})
    with pytest.raises(SpaceError, match="unknown"):
        study.tell(trial, 1.0, grad={"x": 1.0, "z": 0.0})
    with pytest.raises(TrialError, match="failed trial"):
        study.tell(trial, failed=True, grad=[1.0, 1.0])
    with pytest.raises(StudyError, match="pending trial told"):
        study.ask()
    assert study.trials[0].state is bbopt.TrialState.PENDING
    study.tell(trial, 1.0, grad=[0.5, -0.5])  # a sequence in the space's order
    with pytest.raises(StudyError, match="one trial at a time"):
        study.ask(2)
    assert len(study.trials) == 1


def test_gradient_needs_float_parameters():
    study = bbopt.Study({"k": bbopt.Int(1, 5)}, method="l2l", seed=0)
    trial = study.ask()
    with pytest.raises(SpaceError, match="Float parameters only"):
        study.tell(trial, 1.0, grad=[1.0])


def test_gradient_mode_resumes_from_the_database(tmp_path):
    url = f"sqlite:///{tmp_path / 'g.db'}"
    straight = bbopt.Study(SPACE, method="l2l", seed=0)
    for _ in range(8):
        t = straight.ask()
        v, g = _value_and_grad(t.params)
        straight.tell(t, v, grad=g)
    for _ in range(8):  # the same trajectory with a new process-like reopen at every step
        study = bbopt.Study(SPACE, method="l2l", seed=0, storage=url, name="g")
        t = study.ask()
        v, g = _value_and_grad(t.params)
        study.tell(t, v, grad=g)
    reopened = bbopt.Study.load("g", url)
    a = [t.params for t in straight.trials]
    b = [t.params for t in reopened.trials]
    np.testing.assert_allclose([list(p.values()) for p in a], [list(p.values()) for p in b],
                               rtol=1e-5)
    assert "grad" in reopened.trials[0].info


def test_maximize_flips_the_gradient():
    study = bbopt.Study({"x": bbopt.Float(-5, 5)}, method="l2l", seed=0, direction="maximize")
    for _ in range(40):
        t = study.ask()
        x = t.params["x"]
        study.tell(t, -(x - 2) ** 2, grad=[-2 * (x - 2)])
    assert abs(study.best_trial.params["x"] - 2) < 0.2


def _busy_net():
    torch.manual_seed(3)
    net = L2LNet(hidden=8, layers=2, global_features=True)
    with torch.no_grad():  # non-zero outputs, so the LSTM and its inputs matter
        net.head.weight.normal_(0, 0.5)
    return net.requires_grad_(False)


def test_batched_problems_are_independent_and_parameters_form_one_problem():
    """A batch of problems run together equals each run alone (the global features are
    per problem), and a model's parameters split over tensors equal one flat tensor."""
    net = _busy_net()
    problem = sample_optimizee("quadratic", 3, torch.Generator().manual_seed(11))
    together = run_optimizer(lambda p: bbopt.LSTMOptimizer(p, weights=net, problems=3),
                             problem, 30, (30,))[30]
    for i in range(3):
        theta = problem.theta0[i:i + 1].clone().requires_grad_(True)
        opt = bbopt.LSTMOptimizer([theta], weights=net)
        for _ in range(30):
            opt.zero_grad()
            problem.loss(torch.cat([problem.theta0[:i], theta,
                                    problem.theta0[i + 1:]]))[i].backward()
            opt.step()
        alone = problem.full_loss(torch.cat([problem.theta0[:i], theta.detach(),
                                             problem.theta0[i + 1:]]))[i]
        assert torch.isclose(alone, together[i], rtol=1e-4)
    flat = torch.nn.Parameter(torch.arange(6.0))
    a, b = torch.nn.Parameter(torch.arange(2.0)), torch.nn.Parameter(torch.arange(2.0, 6.0))
    opt_flat = bbopt.LSTMOptimizer([flat], weights=net)
    opt_split = bbopt.LSTMOptimizer([{"params": [a]}, {"params": [b]}], weights=net)
    for _ in range(5):
        for p in (flat, a, b):
            p.grad = torch.sin(p.detach() * 3)
        opt_flat.step()
        opt_split.step()
    assert torch.allclose(flat.detach(), torch.cat([a.detach(), b.detach()]))
    with pytest.raises(ValueError, match="problems > 1"):
        bbopt.LSTMOptimizer([a, b], weights=net, problems=2)


def test_benchmark_runs_record_divergence_instead_of_raising():
    """In a batch of problems a non-finite gradient is that problem's divergence: the
    LSTM optimizer keeps it to its problem, LRMemory (one memory for all) leaves every
    problem diverged; neither stops the run."""
    problem = sample_optimizee("quadratic", 3, torch.Generator().manual_seed(5))
    out = run_optimizer(lambda p: bbopt.LRMemory(p, lr=1e6), problem, 40, (0, 40))
    assert torch.isfinite(out[0]).all() and not torch.isfinite(out[40]).any()
    theta = problem.theta0.clone().requires_grad_(True)
    opt = bbopt.LSTMOptimizer([theta], problems=3)
    for _ in range(3):
        opt.zero_grad()
        problem.loss(theta).sum().backward()
        theta.grad[1, 0] = math.nan
        opt.step()
    assert torch.isfinite(theta[[0, 2]]).all() and not torch.isfinite(theta[1]).any()


def test_rows_in_blocks_give_the_same_update(monkeypatch):
    """Above ROWS coordinates the net runs its rows in blocks: the same numbers (and the
    same meta-gradient) as all rows at once, global features per problem included.
    (At the shipped ROWS and 200,001 coordinates they were bit for bit the same.)"""
    import bbopt.nets.l2l as l2l_net

    net = _busy_net()
    gen = torch.Generator().manual_seed(3)
    grads = [torch.randn(50, generator=gen) * 10.0 ** torch.randint(-5, 2, (50,), generator=gen)
             for _ in range(4)]

    def run():
        net.zero_grad()
        state, total, deltas = net.initial_state(50), 0.0, []
        for g in grads:
            delta, state = net.step(g, state, problems=2)
            total = total + (delta * torch.arange(50.0)).sum()
            deltas.append(delta.detach())
        total.backward()
        return deltas, [s.detach() for s in state], [p.grad.clone() for p in net.parameters()]

    with torch.enable_grad():
        net.requires_grad_(True)
        whole = run()
        monkeypatch.setattr(l2l_net, "ROWS", 7)
        blocks = run()
        net.requires_grad_(False)
    for a, b in zip(whole, blocks, strict=True):  # equal up to float32 rounding (matrix
        for x, y in zip(a, b, strict=True):  # products of 7 rows may round otherwise)
            assert torch.allclose(x, y, rtol=1e-5, atol=1e-6 * float(x.abs().max()))
