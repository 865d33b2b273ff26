"""The interface every recurrent core of a policy implements.

A core maps one step of input rows ``(N, input_size)`` and its state to output rows
``(N, output_size)`` and the next state. The state is a tuple of tensors whose first
dimension is ``N``, so a caller can detach it, index rows out of it, or concatenate two
states without knowing what the core keeps inside (LSTM cells, DNC memory, ...).
"""

from __future__ import annotations

import torch
from torch import nn

State = tuple[torch.Tensor, ...]


class RecurrentCore(nn.Module):
    """One step of a recurrent network over a batch of independent rows."""

    input_size: int
    output_size: int

    def initial_state(self, n: int, device: torch.device | None = None,
                      dtype: torch.dtype = torch.float32) -> State:
        """The state before the first step, for ``n`` rows."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One step: ``x`` (N, input_size) -> output (N, output_size), next state."""
        raise NotImplementedError


def detach_state(state: State) -> State:
    """Cut the graph (truncated backpropagation through time)."""
    return tuple(s.detach() for s in state)


def select_state(state: State, index: torch.Tensor | slice) -> State:
    """The rows ``index`` of every tensor in ``state``."""
    return tuple(s[index] for s in state)
