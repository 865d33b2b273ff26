"""The coordinatewise LSTM optimizer's update rule (Andrychowicz et al. 2016).

One small LSTM, its weights shared by every coordinate of every parameter, runs on one
row per coordinate with a state of its own. Each step it reads features of that
coordinate's gradient and returns the coordinate's update. The same code serves
meta-training (a differentiable function of flat parameter vectors) and use
(``bbopt.LSTMOptimizer``, in place on a model's parameters), so there is one update rule.

Inputs per coordinate (``FEATURES`` of them):

* the paper's log/sign preprocessing of the gradient, ``(log|g| / p, sign g)`` when
  ``|g| >= exp(-p)`` and ``(-1, exp(p) g)`` otherwise, with ``p = 10``;
* scale-free features: ``g / sqrt(v)`` and momenta ``m_b / sqrt(v)`` at three time
  scales ``b`` in (0.5, 0.9, 0.99), with ``v`` the bias-corrected mean square gradient
  (b2 = 0.999), so the same weights work whatever the gradients' scale;
* with ``global_features``, two features shared by the coordinates of one problem: the
  cosine between its whole gradient and the previous one, and that cosine's moving
  average (b = 0.9). Negative cosines mean the steps overshoot, which no single
  coordinate sees reliably; with them the rule can find a problem's step size.

Output: the update is an RMS-normalized momentum step whose size and direction the LSTM
modulates, bounded so that nothing diverges far past the training horizon::

    delta = -exp(log_lr + S * tanh(s)) * (m_0.9 / sqrt(v) + min(1, |g| exp(p)) * tanh(a))

with ``s``, ``a`` the LSTM's two outputs per coordinate (zero at initialization, where
the rule is Adam with learning rate ``exp(log_lr)``), ``log_lr`` a learned scalar and
``S = 3`` (a factor of 20 either way). The offset ``tanh(a)`` fades in proportion to
``|g|`` below the preprocessing's small-gradient threshold ``exp(-p)`` (``RULE_VERSION``
2), so a coordinate whose gradient vanishes comes to rest: without the fade the offset
kept moving parameters at a minimum, and a ReLU MLP trained to a loss of 1e-6 climbed
back to 0.1 by step 1000 (BENCHMARKS.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from bbopt.nets.lstm import run_cells

FEATURES = 6
GLOBAL_FEATURES = 2
COSINE_BETA = 0.9
MOMENTA = (0.5, 0.9, 0.99)
BETA2 = 0.999
P = 10.0
EPS = 1e-8
SCALE_RANGE = 3.0
#: Coordinates per block of rows in ``L2LNet.step`` (see there).
ROWS = 16384
#: The update rule's version, part of what a weights file means (benchmark caches key
#: their runs to it): 1 until 2026-12-02, 2 with the offset's fade below exp(-P).
RULE_VERSION = 2

#: Optimizer state per coordinate: step count (a scalar tensor), three momenta, the
#: second moment, with global features the previous gradient and the cosine's average
#: (the same value in every coordinate of a problem), then the LSTM's (h, c) per layer.
L2LState = tuple[torch.Tensor, ...]


def preprocess_gradient(g: torch.Tensor, p: float = P) -> torch.Tensor:
    """The paper's preprocessing: (N,) gradients -> (N, 2) features of comparable scale."""
    big = g.abs() >= math.exp(-p)
    logmag = torch.where(big, torch.log(g.abs().clamp_min(1e-38)) / p, torch.full_like(g, -1.0))
    sign = torch.where(big, torch.sign(g), g * math.exp(p))
    return torch.stack([logmag, sign], dim=1)


class L2LNet(nn.Module):
    """The coordinatewise LSTM update rule: ``step(grad, state) -> (delta, state)``."""

    def __init__(self, hidden: int = 20, layers: int = 2, lr: float = 1e-2,
                 global_features: bool = False) -> None:
        super().__init__()
        if hidden < 1 or layers < 1 or not lr > 0:
            raise ValueError("hidden and layers must be positive integers and lr positive")
        self.hidden, self.layers = hidden, layers
        self.global_features = bool(global_features)
        n_in = FEATURES + (GLOBAL_FEATURES if global_features else 0)
        self.cells = nn.ModuleList(
            nn.LSTMCell(n_in if i == 0 else hidden, hidden) for i in range(layers)
        )
        self.head = nn.Linear(hidden, 2)
        with torch.no_grad():  # start as Adam: zero outputs
            self.head.weight.zero_()
            self.head.bias.zero_()
            for cell in self.cells:
                cell.bias_ih[hidden:2 * hidden].fill_(1.0)
                cell.bias_hh[hidden:2 * hidden].zero_()
        self.log_lr = nn.Parameter(torch.tensor(math.log(lr)))

    @property
    def config(self) -> dict[str, bool | int]:
        """The constructor arguments that fix the architecture (what weights files keep)."""
        return {"hidden": self.hidden, "layers": self.layers,
                "global_features": self.global_features}

    @property
    def _extra(self) -> int:
        return 2 if self.global_features else 0

    def initial_state(self, n: int, device: torch.device | str | None = None,
                      dtype: torch.dtype = torch.float32) -> L2LState:
        z = torch.zeros(n, device=device, dtype=dtype)
        zh = torch.zeros(n, self.hidden, device=device, dtype=dtype)
        t = torch.zeros((), device=device, dtype=dtype)
        return (t, *(z for _ in MOMENTA), z, *(z for _ in range(self._extra)),
                *(zh for _ in range(2 * self.layers)))

    def step(self, g: torch.Tensor, state: L2LState, problems: int = 1
             ) -> tuple[torch.Tensor, L2LState]:
        """One update for the (N,) gradient ``g``; returns the (N,) update to add.

        ``problems``: ``g`` holds that many independent problems one after the other
        (equal sizes), each with its own global features.

        Apart from the global features, every coordinate is its own row, so above
        ``ROWS`` coordinates the rows go through in blocks of that many: the same
        numbers, with the LSTM's intermediate arrays kept small enough for the
        processor's caches (nearly twice as fast per step for a million parameters).
        """
        t = state[0] + 1
        k = len(MOMENTA)
        extra: list[torch.Tensor] = []
        shared: torch.Tensor | None = None
        if self.global_features:
            prev, avg = state[2 + k], state[3 + k]
            gp, pp = g.view(problems, -1), prev.view(problems, -1)
            cos = (gp * pp).sum(1) / (gp.norm(dim=1) * pp.norm(dim=1) + 1e-30)
            cos = cos[:, None].expand_as(gp).reshape(-1)
            avg = COSINE_BETA * avg + (1 - COSINE_BETA) * cos
            shared = torch.stack([cos, avg], dim=1)
            extra = [g, avg]
        rows = state[1:2 + k] + state[2 + k + self._extra:]  # momenta, v, then (h, c)s
        n = g.shape[0]
        if n <= ROWS:
            delta, new_rows = self._rows(g, t, rows, shared)
        else:
            blocks = [self._rows(g[i:i + ROWS], t, [r[i:i + ROWS] for r in rows],
                                 None if shared is None else shared[i:i + ROWS])
                      for i in range(0, n, ROWS)]
            delta = torch.cat([b[0] for b in blocks])
            new_rows = [torch.cat(parts) for parts in zip(*(b[1] for b in blocks),
                                                           strict=True)]
        return delta, (t, *new_rows[:1 + k], *extra, *new_rows[1 + k:])

    def _rows(self, g: torch.Tensor, t: torch.Tensor, rows: Sequence[torch.Tensor],
              shared: torch.Tensor | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The update of a block of coordinates: ``rows`` their momenta, second moment
        and LSTM (h, c) per layer, ``shared`` their global features (or None); returns
        the update and the new rows in the same order."""
        k = len(MOMENTA)
        ms = [b * m + (1 - b) * g for b, m in zip(MOMENTA, rows[:k], strict=True)]
        v = BETA2 * rows[k] + (1 - BETA2) * g.square()
        rms = (v / (1 - BETA2 ** t)).sqrt() + EPS
        normed = [m / (1 - b ** t) / rms for b, m in zip(MOMENTA, ms, strict=True)]
        parts = [preprocess_gradient(g), (g / rms)[:, None], torch.stack(normed, dim=1)]
        if shared is not None:
            parts.append(shared)
        h, new_hc = run_cells(self.cells, torch.cat(parts, dim=1), rows[1 + k:])
        out = self.head(h)
        size = torch.exp(self.log_lr + SCALE_RANGE * torch.tanh(out[:, 0]))
        fade = (g.abs() * math.exp(P)).clamp(max=1.0)
        delta = -size * (normed[1] + fade * torch.tanh(out[:, 1]))
        return delta, [*ms, v, *new_hc]


def detach_l2l_state(state: L2LState) -> L2LState:
    """Cut the graph between unrolls (truncated backpropagation through time)."""
    return tuple(s.detach() for s in state)
