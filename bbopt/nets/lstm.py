"""A multi-layer LSTM core (``nn.LSTMCell`` stack) behind the ``RecurrentCore`` interface."""

from __future__ import annotations

import torch
from torch import nn

from bbopt.nets.base import RecurrentCore, State


class LSTMCore(RecurrentCore):
    """``layers`` stacked LSTM cells of width ``hidden``; the output is the top layer's h.

    The state is ``(h_1, c_1, ..., h_L, c_L)``, each (N, hidden).
    """

    def __init__(self, input_size: int, hidden: int = 64, layers: int = 2) -> None:
        super().__init__()
        if input_size < 1 or hidden < 1 or layers < 1:
            raise ValueError("input_size, hidden and layers must be positive")
        self.input_size, self.output_size = input_size, hidden
        self.hidden, self.layers = hidden, layers
        self.cells = nn.ModuleList(
            nn.LSTMCell(input_size if i == 0 else hidden, hidden) for i in range(layers)
        )
        for cell in self.cells:  # forget-gate bias 1: remember by default
            with torch.no_grad():
                cell.bias_ih[hidden:2 * hidden].fill_(1.0)
                cell.bias_hh[hidden:2 * hidden].zero_()

    def initial_state(self, n: int, device: torch.device | None = None,
                      dtype: torch.dtype = torch.float32) -> State:
        z = torch.zeros(n, self.hidden, device=device, dtype=dtype)
        return tuple(z for _ in range(2 * self.layers))

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        h, new = run_cells(self.cells, x, state)
        return h, tuple(new)


def run_cells(cells: nn.ModuleList, x: torch.Tensor, state: State
              ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One step of stacked ``nn.LSTMCell`` layers whose states lead ``state`` as (h_1,
    c_1, ..., h_L, c_L): the top layer's h and the new states in that order. Each cell
    runs as its op, without the module's call and checks (a fifth of its cost at the
    few rows of an ask)."""
    new: list[torch.Tensor] = []
    h = x
    for i, cell in enumerate(cells):
        h, c = torch.lstm_cell(h, (state[2 * i], state[2 * i + 1]), cell.weight_ih,
                               cell.weight_hh, cell.bias_ih, cell.bias_hh)
        new += [h, c]
    return h, new
