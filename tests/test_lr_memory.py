"""The online learning-rate memory: its update rule, reading, saving and reloading."""

import copy
import math

import pytest
import torch

import bbopt
from bbopt.optimizers.lr_memory import load_memory, save_memory


def _one_field(meta_lr=0.2):
    p = torch.nn.Parameter(torch.tensor([0.0]))
    opt = bbopt.LRMemory([p], lr=0.1, centers=[0.0], width=1.0, meta_lr=meta_lr)
    return p, opt


def _step(p, opt, g):
    p.grad = torch.tensor([g])
    opt.step()


def test_update_rule_in_one_dimension():
    """One field at log10|g| = 0: |g| = 1 activates it fully (w = 1), so each step moves
    its log learning rate by meta_lr * sign(g_t g_{t-1}) * 1 / (1 + 1)."""
    p, opt = _one_field()
    _step(p, opt, 1.0)  # first gradient: nothing to compare with; SGD step at lr 0.1
    assert float(p.detach()) == pytest.approx(-0.1)
    assert float(opt.log_lr[0]) == pytest.approx(math.log(0.1))
    _step(p, opt, 1.0)  # same sign: the rate grows, then this step uses it
    grown = math.log(0.1) + 0.2 / 2
    assert float(opt.log_lr[0]) == pytest.approx(grown)
    assert float(p.detach()) == pytest.approx(-0.1 - math.exp(grown))
    _step(p, opt, -1.0)  # sign flip: it shrinks again
    assert float(opt.log_lr[0]) == pytest.approx(math.log(0.1))
    # the field that learns is the previous gradient's: -1 (w = 1), same sign: grows
    _step(p, opt, -1e-3)
    assert float(opt.log_lr[0]) == pytest.approx(math.log(0.1) + 0.1, rel=1e-5)
    # a previous gradient far from the field (|g| = 1e-3, z = -3) barely teaches it
    _step(p, opt, 1e-3)
    w = math.exp(-0.5 * 9)
    assert float(opt.log_lr[0]) == pytest.approx(math.log(0.1) + 0.1 - 0.2 * w / (w + 1),
                                                 rel=1e-5)


def test_rates_stay_within_bounds():
    p = torch.nn.Parameter(torch.tensor([0.0]))
    opt = bbopt.LRMemory([p], lr=0.1, meta_lr=5.0, lr_bounds=(0.01, 1.0))
    for _ in range(20):
        _step(p, opt, 1.0)
    assert float(opt.learning_rates(torch.tensor([1.0]))) <= 1.0 + 1e-6


def test_memory_reload_and_state_dict(tmp_path):
    p, opt = _one_field()
    for g in (1.0, 1.0, 1.0):
        _step(p, opt, g)
    memory = opt.memory()
    q = torch.nn.Parameter(torch.tensor([0.0]))
    again = bbopt.LRMemory([q], memory=memory)
    g = torch.tensor([1.0, 0.01])
    assert torch.allclose(again.learning_rates(g), opt.learning_rates(g))
    save_memory(tmp_path / "m.pt", memory)
    from_file = bbopt.LRMemory([q], memory=tmp_path / "m.pt")
    assert torch.allclose(from_file.learning_rates(g), opt.learning_rates(g))
    fresh = bbopt.LRMemory([q], lr=0.5)
    fresh.load_state_dict(opt.state_dict())
    assert torch.allclose(fresh.learning_rates(g), opt.learning_rates(g))


def test_bad_memory_input_is_a_clear_error(tmp_path):
    q = [torch.nn.Parameter(torch.zeros(1))]
    with pytest.raises(FileNotFoundError, match="no learning-rate memory"):
        bbopt.LRMemory(q, memory=tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a learning-rate memory"):
        load_memory(tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="not a learning-rate memory"):
        bbopt.LRMemory(q, memory={"centers": [0.0, 1.0], "log_lr": [0.0], "width": 1.0})
    with pytest.raises(ValueError, match="lr_bounds"):
        bbopt.LRMemory(q, lr_bounds=(1.0, 0.1))


def test_wraps_another_base_optimizer():
    """With Adam as the base, the memory scales Adam's step coordinate by coordinate."""
    p = torch.nn.Parameter(torch.zeros(2))
    opt = bbopt.LRMemory([p], lr=0.1, base=torch.optim.Adam, base_options={"lr": 0.01},
                         meta_lr=0.0)
    p.grad = torch.tensor([3.0, -0.5])
    opt.step()
    # Adam's first step is -0.01 * sign(g); the memory's rate 0.1 makes it 10 times longer
    assert torch.allclose(p.detach(), torch.tensor([-0.1, 0.1]), atol=1e-5)


def test_learns_a_digits_task_online():
    from bbopt.bench_gradient import samples_to_target

    n, _ = samples_to_target(3, lambda params: bbopt.LRMemory(params), seed=0, max_samples=1000)
    assert n is not None


def test_group_lr_and_schedulers_scale_the_memorys_rates():
    """A group's lr over the constructor's scales that group's learned rates, so a
    scheduler's factor does what a smaller lr does; the memory itself is unchanged, and
    a state saved before groups had an lr still loads."""
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    opt = bbopt.LRMemory([{"params": [a]}, {"params": [b], "lr": 0.05}], lr=0.1, meta_lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 0.5 if epoch else 1.0)
    for p in (a, b):
        p.grad = torch.ones(3)
    opt.step()
    assert torch.allclose(a.detach(), torch.full((3,), 0.9))
    assert torch.allclose(b.detach(), torch.full((3,), 0.95))
    sched.step()
    opt.step()
    assert torch.allclose(a.detach(), torch.full((3,), 0.85))
    assert torch.allclose(b.detach(), torch.full((3,), 0.925))
    assert torch.allclose(opt.learning_rates(torch.ones(1)), torch.tensor([0.1]))
    old = opt.state_dict()
    for group in old["param_groups"]:
        del group["lr"]
    again = bbopt.LRMemory([{"params": [a]}, {"params": [b]}], lr=0.1)
    again.load_state_dict(old)
    assert [g["lr"] for g in again.param_groups] == [0.1, 0.1]
    with pytest.raises(ValueError, match="lr must be a number >= 0"):
        bbopt.LRMemory([{"params": [a], "lr": -1.0}])


def test_a_group_added_later_is_checked_and_stepped():
    """``add_param_group`` after construction (fine-tuning a new head, say): a bad lr is
    refused with nothing added, a good group is stepped at its own scale."""
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    opt = bbopt.LRMemory([a], lr=0.1, meta_lr=0.0)
    for bad in (-1.0, "0.1", True, float("nan")):
        with pytest.raises(ValueError, match="lr must be a number >= 0"):
            opt.add_param_group({"params": [b], "lr": bad})
    assert len(opt.param_groups) == 1 and len(opt.base.param_groups) == 1
    opt.add_param_group({"params": [b], "lr": 0.05})
    a.grad, b.grad = torch.ones(3), torch.ones(2)
    opt.step()
    assert torch.allclose(a.detach(), torch.full((3,), 0.9))
    assert torch.allclose(b.detach(), torch.full((2,), 0.95))
    again = bbopt.LRMemory([{"params": [a]}, {"params": [b], "lr": 0.05}], lr=0.1)
    again.load_state_dict(opt.state_dict())
    assert [g["lr"] for g in again.param_groups] == [0.1, 0.05]


def test_a_non_finite_gradient_is_an_error_that_changes_nothing():
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    opt = bbopt.LRMemory([a, b])
    for _ in range(2):
        a.grad, b.grad = torch.ones(3), torch.full((2,), -1.0)
        opt.step()
    before = copy.deepcopy(opt.state_dict())
    values = (a.detach().clone(), b.detach().clone())
    for bad in (float("nan"), float("-inf")):
        b.grad = torch.tensor([1.0, bad])
        with pytest.raises(ValueError, match="parameter 1 .*NaN or infinite"):
            opt.step()
        assert torch.equal(a, values[0]) and torch.equal(b, values[1])
        after = opt.state_dict()
        assert torch.equal(after["memory"]["log_lr"], before["memory"]["log_lr"])
        for k, v in before["state"].items():
            assert torch.equal(after["state"][k]["prev_grad"], v["prev_grad"])
        assert after["base"] == before["base"]
    b.grad = torch.ones(2)
    opt.step()
    assert torch.isfinite(a).all() and torch.isfinite(b).all()


def test_sparse_gradients_are_a_clear_error():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = bbopt.LRMemory(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    before = emb.weight.detach().clone()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        opt.step()
    assert torch.equal(emb.weight, before)
