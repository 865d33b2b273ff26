"""A Differentiable Neural Computer core behind the ``RecurrentCore`` interface.

Graves et al. 2016, "Hybrid computing using a neural network with dynamic external memory"
(Nature 538, Methods section). Notation: ``N`` rows of the batch, ``S`` memory slots,
``W`` word size, ``R`` read heads. Every step is batched over rows, heads and slots.

One step of :class:`DNCCore`, in the paper's order:

1. the LSTM controller reads ``x_t`` concatenated with the previous read vectors;
2. its top ``h`` is mapped to the interface vector (write key and strength, erase and write
   vectors, free gates, allocation and write gates, read keys, strengths and modes);
3. usage ``u_t`` from ``u_{t-1}``, the previous write weights and the retention ``psi``
   (free gates times the previous read weights) -> allocation weights;
4. write weights ``w^w = g^w (g^a a + (1 - g^a) c^w)``, content ``c^w`` on ``M_{t-1}``;
5. erase and write the memory -> ``M_t``;
6. temporal link matrix ``L_t`` and precedence ``p_t``;
7. read weights ``w^r = pi_b b + pi_c c^r + pi_f f``: backward ``b = L^T w^r_{t-1}``,
   forward ``f = L w^r_{t-1}``, content ``c^r`` on ``M_t``; read vectors ``r = M_t^T w^r``;
8. the output is ``Linear(h ++ r_t)`` with no nonlinearity, as the paper's
   ``y_t = W_y [h_t] + W_r [r_t]``.

Memory starts at zero; cosine similarity uses ``sqrt(|x|^2 + eps)`` norms, so zero
memory gives uniform content weights and finite gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bbopt.nets.base import RecurrentCore, State
from bbopt.nets.lstm import run_cells

EPS = 1e-6


def oneplus(x: torch.Tensor) -> torch.Tensor:
    """``1 + softplus(x)``: a strength in ``[1, inf)``."""
    return 1.0 + F.softplus(x)


def content_weights(memory: torch.Tensor, keys: torch.Tensor,
                    strengths: torch.Tensor) -> torch.Tensor:
    """Content-based addressing: ``softmax_s(beta_h * cos(k_h, M[s]))``.

    ``memory`` (N, S, W), ``keys`` (N, H, W), ``strengths`` (N, H) -> (N, H, S), each
    row a distribution over the slots.
    """
    dot = torch.einsum("nhw,nsw->nhs", keys, memory)
    k_norm = torch.sqrt((keys * keys).sum(-1) + EPS)  # (N, H)
    m_norm = torch.sqrt((memory * memory).sum(-1) + EPS)  # (N, S)
    cos = dot / (k_norm.unsqueeze(-1) * m_norm.unsqueeze(-2))
    return torch.softmax(strengths.unsqueeze(-1) * cos, dim=-1)


def update_usage(usage: torch.Tensor, write_w: torch.Tensor, read_w: torch.Tensor,
                 free_gates: torch.Tensor) -> torch.Tensor:
    """``u_t = (u + w^w - u * w^w) * psi``, ``psi = prod_h (1 - f_h w^r_h)``.

    ``usage`` (N, S), previous ``write_w`` (N, S), previous ``read_w`` (N, H, S),
    ``free_gates`` (N, H) -> (N, S).
    """
    psi = torch.prod(1.0 - free_gates.unsqueeze(-1) * read_w, dim=1)
    return (usage + write_w - usage * write_w) * psi


def allocation_weights(usage: torch.Tensor) -> torch.Tensor:
    """``a[phi_j] = (1 - u[phi_j]) prod_{i<j} u[phi_i]``, ``phi`` = slots by usage ascending.

    ``usage`` (N, S) in [0, 1] -> (N, S), a sub-distribution that favours the least used
    slots. Differentiable w.r.t. ``usage`` (not through the sort order).
    """
    sorted_u, order = torch.sort(usage, dim=-1, stable=True)
    prod = torch.cumprod(sorted_u, dim=-1)
    exclusive = torch.cat([torch.ones_like(prod[..., :1]), prod[..., :-1]], dim=-1)
    sorted_a = (1.0 - sorted_u) * exclusive
    return torch.zeros_like(usage).scatter(-1, order, sorted_a)


def write_memory(memory: torch.Tensor, write_w: torch.Tensor, erase: torch.Tensor,
                 write_vec: torch.Tensor) -> torch.Tensor:
    """``M_t = M * (1 - w^w e^T) + w^w v^T``.

    ``memory`` (N, S, W), ``write_w`` (N, S), ``erase`` (N, W) in [0, 1],
    ``write_vec`` (N, W) -> (N, S, W).
    """
    w = write_w.unsqueeze(-1)
    return memory * (1.0 - w * erase.unsqueeze(-2)) + w * write_vec.unsqueeze(-2)


def update_link(link: torch.Tensor, precedence: torch.Tensor,
                write_w: torch.Tensor) -> torch.Tensor:
    """``L_t[i, j] = (1 - w[i] - w[j]) L[i, j] + w[i] p[j]``, zero diagonal.

    ``L[i, j]`` ~ 1 means slot ``i`` was written right after slot ``j``. ``link``
    (N, S, S), the previous ``precedence`` (N, S), the new ``write_w`` (N, S) -> (N, S, S).
    Update the precedence afterwards with :func:`update_precedence`.
    """
    w_i = write_w.unsqueeze(-1)
    w_j = write_w.unsqueeze(-2)
    new = (1.0 - w_i - w_j) * link + w_i * precedence.unsqueeze(-2)
    eye = torch.eye(link.shape[-1], dtype=torch.bool, device=link.device)
    return new.masked_fill(eye, 0.0)


def update_precedence(precedence: torch.Tensor, write_w: torch.Tensor) -> torch.Tensor:
    """``p_t = (1 - sum_i w[i]) p + w``: (N, S), (N, S) -> (N, S)."""
    return (1.0 - write_w.sum(-1, keepdim=True)) * precedence + write_w


def temporal_weights(link: torch.Tensor,
                     read_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward ``f = L w^r`` and backward ``b = L^T w^r`` weights.

    ``link`` (N, S, S), previous ``read_w`` (N, H, S) -> ``(forward, backward)``, each
    (N, H, S).
    """
    forward = torch.einsum("nij,nhj->nhi", link, read_w)
    backward = torch.einsum("nij,nhi->nhj", link, read_w)
    return forward, backward


class DNCCore(RecurrentCore):
    """An LSTM controller (``layers`` cells of width ``hidden``) with DNC memory.

    The state is the flat tuple ``(h_1, c_1, ..., h_L, c_L, memory, usage, link,
    precedence, read_w, write_w, read_vectors)`` with shapes (N, hidden) for the
    controller, then (N, S, W), (N, S), (N, S, S), (N, S), (N, R, S), (N, S), (N, R, W).
    The output (N, hidden) is linear in the controller's top ``h`` and the new read vectors.
    """

    def __init__(self, input_size: int, hidden: int = 64, memory_slots: int = 16,
                 word_size: int = 16, read_heads: int = 4, layers: int = 1) -> None:
        super().__init__()
        if min(input_size, hidden, memory_slots, word_size, read_heads, layers) < 1:
            raise ValueError("all sizes must be positive")
        self.input_size, self.output_size = input_size, hidden
        self.hidden, self.layers = hidden, layers
        self.memory_slots, self.word_size, self.read_heads = memory_slots, word_size, read_heads
        w, r = word_size, read_heads
        self.cells = nn.ModuleList(
            nn.LSTMCell(input_size + r * w if i == 0 else hidden, hidden) for i in range(layers)
        )
        for cell in self.cells:  # forget-gate bias 1: remember by default
            with torch.no_grad():
                cell.bias_ih[hidden:2 * hidden].fill_(1.0)
                cell.bias_hh[hidden:2 * hidden].zero_()
        # write key, write strength, erase, write vector, free gates, allocation gate,
        # write gate, read keys, read strengths, read modes (backward, content, forward)
        self._split = [w, 1, w, w, r, 1, 1, r * w, r, 3 * r]
        self.interface = nn.Linear(hidden, sum(self._split))
        self.out = nn.Linear(hidden + r * w, hidden)

    def initial_state(self, n: int, device: torch.device | None = None,
                      dtype: torch.dtype = torch.float32) -> State:
        s, w, r = self.memory_slots, self.word_size, self.read_heads

        def z(*shape: int) -> torch.Tensor:
            return torch.zeros(n, *shape, device=device, dtype=dtype)

        controller = tuple(z(self.hidden) for _ in range(2 * self.layers))
        return controller + (z(s, w), z(s), z(s, s), z(s), z(r, s), z(s), z(r, w))

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        n_ctrl = 2 * self.layers
        memory, usage, link, precedence, read_w, write_w, read_vec = state[n_ctrl:]
        n, r, w = x.shape[0], self.read_heads, self.word_size

        h, new = run_cells(self.cells, torch.cat([x, read_vec.reshape(n, r * w)], dim=-1), state)

        (w_key, w_str, erase, w_vec, free, alloc_g, write_g, r_keys, r_str,
         modes) = torch.split(self.interface(h), self._split, dim=-1)
        w_key, w_str = w_key.unsqueeze(1), oneplus(w_str)  # (N, 1, W), (N, 1)
        erase, free = torch.sigmoid(erase), torch.sigmoid(free)
        alloc_g, write_g = torch.sigmoid(alloc_g), torch.sigmoid(write_g)
        r_keys, r_str = r_keys.reshape(n, r, w), oneplus(r_str)
        modes = torch.softmax(modes.reshape(n, r, 3), dim=-1)

        # write
        usage = update_usage(usage, write_w, read_w, free)
        alloc = allocation_weights(usage)
        w_content = content_weights(memory, w_key, w_str).squeeze(1)
        write_w = write_g * (alloc_g * alloc + (1.0 - alloc_g) * w_content)
        memory = write_memory(memory, write_w, erase, w_vec)
        link = update_link(link, precedence, write_w)
        precedence = update_precedence(precedence, write_w)

        # read
        fwd, bwd = temporal_weights(link, read_w)
        r_content = content_weights(memory, r_keys, r_str)
        read_w = modes[..., 0:1] * bwd + modes[..., 1:2] * r_content + modes[..., 2:3] * fwd
        read_vec = torch.einsum("nhs,nsw->nhw", read_w, memory)

        out = self.out(torch.cat([h, read_vec.reshape(n, r * w)], dim=-1))
        return out, tuple(new) + (memory, usage, link, precedence, read_w, write_w, read_vec)
