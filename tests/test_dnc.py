"""The Differentiable Neural Computer core: addressing helpers, state handling, learning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bbopt.nets.base import detach_state, select_state
from bbopt.nets.dnc import (
    DNCCore,
    allocation_weights,
    content_weights,
    temporal_weights,
    update_link,
    update_precedence,
)


def test_content_weights_are_distributions_peaked_on_the_matching_slot() -> None:
    torch.manual_seed(0)
    memory = torch.randn(3, 6, 5)
    keys = memory[:, [4, 1]]  # head 0 looks for slot 4, head 1 for slot 1
    soft = content_weights(memory, keys, torch.full((3, 2), 2.0))
    sharp = content_weights(memory, keys, torch.full((3, 2), 20.0))
    for w in (soft, sharp):
        assert w.shape == (3, 2, 6)
        assert (w >= 0).all()
        torch.testing.assert_close(w.sum(-1), torch.ones(3, 2))
        assert (w.argmax(-1) == torch.tensor([4, 1])).all()
    assert (sharp[:, 0, 4] > soft[:, 0, 4]).all()
    assert (sharp[:, 1, 1] > soft[:, 1, 1]).all()


def test_content_weights_on_zero_memory_are_uniform_and_finite() -> None:
    memory = torch.zeros(2, 4, 3, requires_grad=True)
    keys = torch.zeros(2, 1, 3, requires_grad=True)
    w = content_weights(memory, keys, torch.ones(2, 1))
    torch.testing.assert_close(w, torch.full((2, 1, 4), 0.25))
    (w * torch.arange(4.0)).sum().backward()
    assert torch.isfinite(memory.grad).all() and torch.isfinite(keys.grad).all()


def test_allocation_prefers_free_slots() -> None:
    usage = torch.tensor([[0.9, 0.1, 0.5, 1.0]], requires_grad=True)
    a = allocation_weights(usage)
    # order by usage: slot 1 (0.1), slot 2 (0.5), slot 0 (0.9), slot 3 (1.0)
    expected = torch.tensor([[0.1 * 0.1 * 0.5, 0.9, 0.5 * 0.1, 0.0]])
    torch.testing.assert_close(a, expected)
    assert a.argmax().item() == 1
    assert a.sum().item() <= 1.0 + 1e-6
    a[0, 2].backward()  # a[2] = (1 - u[2]) u[1]
    torch.testing.assert_close(usage.grad, torch.tensor([[0.0, 0.5, -0.1, 0.0]]))


def test_links_record_write_order() -> None:
    s = 4
    link, prec = torch.zeros(1, s, s), torch.zeros(1, s)
    for slot in (2, 0, 3):
        w = F.one_hot(torch.tensor([slot]), s).float()
        link = update_link(link, prec, w)
        prec = update_precedence(prec, w)
    assert link[0, 0, 2].item() == pytest.approx(1.0)  # slot 0 written after slot 2
    assert link[0, 3, 0].item() == pytest.approx(1.0)  # slot 3 written after slot 0
    assert torch.diagonal(link[0]).abs().max().item() == 0.0
    assert link.sum().item() == pytest.approx(2.0)
    torch.testing.assert_close(prec, F.one_hot(torch.tensor([3]), s).float())
    read = F.one_hot(torch.tensor([[2], [0]]), s).float().transpose(0, 1)  # (1, 2 heads, S)
    fwd, bwd = temporal_weights(link, read)
    assert fwd[0, 0].argmax().item() == 0 and fwd[0, 0, 0].item() == pytest.approx(1.0)
    assert fwd[0, 1].argmax().item() == 3  # after slot 0 came slot 3
    assert bwd[0, 1].argmax().item() == 2  # before slot 0 came slot 2


@pytest.mark.parametrize("layers", [1, 2])
def test_forward_keeps_state_shapes_and_passes_gradients(layers: int) -> None:
    torch.manual_seed(0)
    n, slots, word, heads, hidden = 5, 6, 4, 2, 8
    core = DNCCore(3, hidden=hidden, memory_slots=slots, word_size=word, read_heads=heads,
                   layers=layers)
    assert (core.input_size, core.output_size) == (3, hidden)
    state = core.initial_state(n)
    assert len(state) == 2 * layers + 7
    xs = torch.randn(5, n, 3, requires_grad=True)
    total = torch.zeros(())
    for t in range(5):
        out, state = core(xs[t], state)
        assert out.shape == (n, hidden) and torch.isfinite(out).all()
        assert all(s.shape[0] == n and torch.isfinite(s).all() for s in state)
        memory, usage, link, prec, read_w, write_w, read_vec = state[2 * layers:]
        assert memory.shape == (n, slots, word) and link.shape == (n, slots, slots)
        assert read_w.shape == (n, heads, slots) and read_vec.shape == (n, heads, word)
        for w in (read_w, write_w, prec):
            assert (w >= 0).all() and (w.sum(-1) <= 1 + 1e-5).all()
        assert ((usage >= 0) & (usage <= 1 + 1e-6)).all()
        total = total + out.sum()
    total.backward()
    assert xs.grad is not None and torch.isfinite(xs.grad).all() and xs.grad.abs().sum() > 0
    for name, p in core.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name

    # the state is a plain tuple of tensors: rows can be detached, selected and joined
    rows = select_state(detach_state(state), torch.tensor([0, 3]))
    both = tuple(torch.cat([a, b]) for a, b in zip(rows, core.initial_state(1), strict=True))
    out, nxt = core(torch.randn(3, 3), both)
    assert out.shape == (3, hidden) and all(s.shape[0] == 3 for s in nxt)


def test_rejects_non_positive_sizes() -> None:
    with pytest.raises(ValueError):
        DNCCore(3, read_heads=0)


def _copy_loss(core: DNCCore, head: nn.Linear, bits: torch.Tensor) -> torch.Tensor:
    """Show ``k`` binary vectors, then a recall flag for ``k`` steps; BCE of the recall."""
    n, k, width = bits.shape
    state = core.initial_state(n)
    for t in range(k):
        _, state = core(torch.cat([bits[:, t], torch.zeros(n, 1)], -1), state)
    flag = torch.cat([torch.zeros(n, width), torch.ones(n, 1)], -1)
    loss = torch.zeros(())
    for t in range(k):
        out, state = core(flag, state)
        loss = loss + F.binary_cross_entropy_with_logits(head(out), bits[:, t])
    return loss / k


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread is faster and steadier on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_learns_a_small_copy_task() -> None:
    # Held-out loss after/before: 0.04-0.06 after 250 steps with seeds 0, 1, 2 (0.16-0.18
    # after 200, ~0.5 after 100); about 3 s on one CPU thread.
    torch.manual_seed(0)
    k, width, batch = 3, 4, 32
    core = DNCCore(width + 1, hidden=32, memory_slots=8, word_size=8, read_heads=1)
    head = nn.Linear(32, width)
    opt = torch.optim.Adam([*core.parameters(), *head.parameters()], lr=1e-2)
    test_bits = torch.randint(0, 2, (256, k, width)).float()
    with torch.no_grad():
        before = _copy_loss(core, head, test_bits).item()
    for _ in range(250):
        loss = _copy_loss(core, head, torch.randint(0, 2, (batch, k, width)).float())
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = _copy_loss(core, head, test_bits).item()
    assert before > 0.6
    assert after < 0.25 * before
