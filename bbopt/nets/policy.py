"""The learned black-box optimizer's policy (Chen et al. 2017, with a structured proposal).

The policy reads the history one observation at a time and proposes the next query in
the unit cube. Two choices make one set of weights work for any dimension and any scale
of values:

* **Coordinatewise core.** The recurrent core (LSTM or DNC) runs on one row per
  coordinate with shared weights, like the coordinatewise optimizer of Andrychowicz et
  al. 2016. Each row sees its own coordinate's features, the function-level features
  (value ranks and values normalized within the run) and the mean of all rows' previous
  outputs, so coordinates coordinate through a permutation-invariant pooling.
* **Stochastic, structured proposal.** The network does not emit a point; it emits how
  to sample one::

      local = x_best + alpha * (m_elite - x_best) + beta * s_elite + sigma * z
      x     = reflect((1 - g) * u + g * local)          u ~ U[0,1]^d, z ~ N(0, I)

  where ``x_best`` is the incumbent, ``m_elite`` / ``s_elite`` the mean and spread of the
  best 20% of points per coordinate, ``sigma = exp(l) * s_elite`` and the gate ``g`` (one
  per run) moves between uniform search (g = 0) and local search around the incumbent
  (g = 1). Sampling is reparameterized (gradients flow through ``u`` and ``z``), so the
  policy is meta-trained by backpropagation through differentiable training functions,
  and several proposals from one state are distinct, which is the parallel mode.
* **GP screen.** ``propose_screened`` draws many proposals from one state and keeps the
  one with the highest expected improvement under a cheap GP of the run's values
  (``bbopt.nets.screen``), with uniform points, the incumbent with a few coordinates
  redrawn uniformly, and perturbations of the incumbent at scales down to 1e-6 as extra
  candidates. The perturbations are clipped to the cube rather than reflected, so an
  optimum on a face or corner of the search space (common for smooth functions) can be
  reached exactly. The shipped optimizers propose this way; meta-training samples
  single draws (``rollout(..., screen=K)`` evaluates, and could train, the screened
  policy).

Everything in ``RunState`` is batched over ``B`` independent runs of dimension ``d``;
inference is the same code with ``B = 1``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from bbopt.nets.base import RecurrentCore, State
from bbopt.nets.screen import LOCAL_SCALES, GPScreen

ELITE_FRACTION = 0.2
#: Subspace candidates (``subspace_candidates``) redraw at most this many of the
#: incumbent's coordinates, and the screen has them from this dimension on.
SUBSPACE_MAX = 4
SUBSPACE_MIN_DIM = 4
#: Uniform candidates per policy draw in the screen (``uniform_candidates``).
UNIFORM_PER_DRAW = 8
_FUNCTION_FEATURES = 7
_COORD_FEATURES = 6
_EPS_SPREAD = 1e-3


def reflect(v: torch.Tensor) -> torch.Tensor:
    """Fold the real line onto [0, 1] by reflection at the faces (a triangle wave)."""
    w = torch.remainder(v, 2.0)
    return 1.0 - (w - 1.0).abs()


def make_core(kind: str, input_size: int, **kwargs: Any) -> RecurrentCore:
    """A recurrent core by name: ``"lstm"`` or ``"dnc"``."""
    if kind == "lstm":
        from bbopt.nets.lstm import LSTMCore

        return LSTMCore(input_size, **kwargs)
    if kind == "dnc":
        from bbopt.nets.dnc import DNCCore

        return DNCCore(input_size, **kwargs)
    raise ValueError(f"unknown core {kind!r}; expected 'lstm' or 'dnc'")


@dataclass
class RunState:
    """Everything the policy knows about ``B`` runs after ``n`` observations."""

    core: State
    out: torch.Tensor  # (B*d, H) the core's latest output
    X: torch.Tensor  # (B, n, d) observed points
    Y: torch.Tensor  # (B, n) observed values (raw; normalized inside the policy)
    best_x: torch.Tensor  # (B, d)
    elite_mean: torch.Tensor  # (B, d)
    elite_spread: torch.Tensor  # (B, d)
    since_best: torch.Tensor  # (B,) observations since the last improvement
    log_sigma: torch.Tensor  # (B, d) the last proposal's log step multiplier
    gate: torch.Tensor  # (B,) the last proposal's gate

    @property
    def n(self) -> int:
        return self.X.shape[1]

    @property
    def batch(self) -> int:
        return self.X.shape[0]

    @property
    def dim(self) -> int:
        return self.X.shape[2]


class BBOPolicy(nn.Module):
    """Coordinatewise recurrent policy that proposes queries in [0, 1]^d.

    ``core``: ``"lstm"`` or ``"dnc"``; ``core_options`` go to the core (``hidden``,
    ``layers``, and the DNC's memory sizes).
    """

    def __init__(self, core: str = "lstm", hidden: int = 64, **core_options: Any) -> None:
        super().__init__()
        self.config = {"core": core, "hidden": hidden, **core_options}
        self.hidden = hidden
        in_size = _FUNCTION_FEATURES + _COORD_FEATURES + hidden
        self.core = make_core(core, in_size, hidden=hidden, **core_options)
        # Per coordinate: beta (shift in elite spreads), log sigma, alpha logit, gate logit.
        self.head = nn.Linear(2 * hidden, 4)
        # Initialised as a fixed local search that samples around the incumbent with e times
        # the elite spread (gate ~0.95): on held-out GP samples this already beats uniform
        # search, and meta-training makes every output depend on the run's state.
        with torch.no_grad():
            self.head.weight.mul_(0.1)
            self.head.bias.copy_(torch.tensor([0.0, 1.0, -2.0, 3.0]))

    # -- running ------------------------------------------------------------------------

    def init(self, batch: int, dim: int, device: torch.device | None = None,
             dtype: torch.dtype = torch.float32) -> RunState:
        """The state of ``batch`` fresh runs in ``dim`` dimensions."""
        z = torch.zeros(batch, dim, device=device, dtype=dtype)
        return RunState(
            core=self.core.initial_state(batch * dim, device, dtype),
            out=torch.zeros(batch * dim, self.hidden, device=device, dtype=dtype),
            X=torch.zeros(batch, 0, dim, device=device, dtype=dtype),
            Y=torch.zeros(batch, 0, device=device, dtype=dtype),
            best_x=z + 0.5, elite_mean=z + 0.5, elite_spread=z + 0.5,
            since_best=torch.zeros(batch, device=device, dtype=dtype),
            log_sigma=z.clone(), gate=torch.zeros(batch, device=device, dtype=dtype),
        )

    def observe(self, rs: RunState, x: torch.Tensor, y: torch.Tensor) -> RunState:
        """Ingest one observation per run: ``x`` (B, d) and its value ``y`` (B,)."""
        B, d = x.shape
        X = torch.cat([rs.X, x.unsqueeze(1)], dim=1)
        Y = torch.cat([rs.Y, y.unsqueeze(1)], dim=1)
        n = X.shape[1]
        with torch.no_grad():  # value features are ranks and normalized values: no gradient
            Yd = Y.detach()
            prev_best = rs.Y.detach().min(dim=1).values if rs.n else torch.full_like(y, math.inf)
            last = Yd[:, -1]
            better = last < prev_best
            improved = better.to(x.dtype)
            since = torch.where(better, torch.zeros_like(rs.since_best), rs.since_best + 1)
            mu = Yd.mean(dim=1)
            sd = Yd.std(dim=1, unbiased=False) if n > 1 else torch.ones_like(mu)
            sd = torch.where(sd > 1e-12 * (1 + mu.abs()), sd, torch.ones_like(sd))
            ynorm = ((last - mu) / sd).clamp(-5, 5)
            gap = ((last - torch.minimum(prev_best, last)) / sd).clamp(0, 10)
            rank = (Yd < Yd[:, -1:]).to(x.dtype).mean(dim=1)
            k = max(2, math.ceil(ELITE_FRACTION * n)) if n > 1 else 1
            idx = Yd.topk(k, dim=1, largest=False).indices  # (B, k), best first
        elite = X.gather(1, idx.unsqueeze(-1).expand(-1, -1, d))  # (B, k, d), differentiable
        best_x = elite[:, 0]
        elite_mean = elite.mean(dim=1)
        elite_spread = (elite.std(dim=1, unbiased=False) if k > 1
                        else torch.full_like(best_x, 0.5))

        feats_f = torch.stack([
            ynorm / 2, rank, improved, gap / 5, torch.log1p(since) / 3,
            torch.full_like(ynorm, math.log1p(n) / 5), rs.gate.detach(),
        ], dim=1)  # (B, 7)
        sp = elite_spread.detach()
        feats_c = torch.stack([
            x.detach(), best_x.detach(), elite_mean.detach(),
            torch.log(sp + 1e-4) / 4,
            ((x.detach() - best_x.detach()) / (sp + _EPS_SPREAD)).clamp(-5, 5) / 5,
            rs.log_sigma.detach() / 3,
        ], dim=2)  # (B, d, 6)
        pooled = rs.out.view(B, d, -1).mean(dim=1, keepdim=True).expand(B, d, -1)
        inp = torch.cat([feats_f.unsqueeze(1).expand(B, d, -1), feats_c, pooled], dim=2)
        out, core = self.core(inp.reshape(B * d, -1), rs.core)
        return replace(rs, core=core, out=out, X=X, Y=Y, best_x=best_x,
                       elite_mean=elite_mean, elite_spread=elite_spread, since_best=since)

    def propose(self, rs: RunState, u: torch.Tensor, z: torch.Tensor
                ) -> tuple[torch.Tensor, RunState]:
        """Sample queries from uniform draws ``u`` and normal draws ``z``: (B, d) for one
        query per run, or (B, K, d) for K draws per run from the same state.

        Returns the queries (shaped like ``u``) and the state with the proposal's step
        size and gate remembered (they are inputs of the next observation and do not
        depend on the draws). Without observations the query is ``u`` itself.
        """
        if rs.n == 0:
            return u, rs
        B, d = rs.batch, rs.dim
        o = rs.out.view(B, d, -1)
        pooled = o.mean(dim=1, keepdim=True).expand(B, d, -1)
        h = self.head(torch.cat([o, pooled], dim=2))  # (B, d, 4)
        beta = 2.0 * torch.tanh(h[..., 0])
        log_sigma = h[..., 1].clamp(-6.0, 3.0)
        alpha = torch.sigmoid(h[..., 2])
        gate = torch.sigmoid(h[..., 3].mean(dim=1))  # (B,)
        spread = rs.elite_spread + _EPS_SPREAD
        center = rs.best_x + alpha * (rs.elite_mean - rs.best_x) + beta * spread
        step, g = torch.exp(log_sigma) * spread, gate[:, None]
        if u.dim() == 3:
            center, step, g = center.unsqueeze(1), step.unsqueeze(1), g.unsqueeze(1)
        x = reflect((1 - g) * u + g * (center + step * z))
        return x, replace(rs, log_sigma=log_sigma, gate=gate)

    def propose_screened(self, rs: RunState, gp: GPScreen, u: torch.Tensor, z: torch.Tensor,
                         uniform: torch.Tensor, local: torch.Tensor | None = None,
                         pending: torch.Tensor | None = None,
                         snap: Callable[[torch.Tensor], torch.Tensor] | None = None,
                         subspace: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, RunState]:
        """One query per run, chosen by the GP screen ``gp`` (``bbopt.nets.screen``,
        holding the same observations as ``rs``) among the policy's draws ``u``, ``z``
        (B, K, d), the uniform candidates ``uniform`` (B, K', d) and perturbations of the
        incumbent by the normal draws ``local`` (B, K'', d), the j-th scaled by
        ``LOCAL_SCALES[j % 6]`` and clipped to the cube. With ``subspace`` (B, m, d)
        uniform draws (m <= K'), the first m uniform candidates become subspace
        candidates: the j-th keeps the incumbent but for its ``1 + j % min(d,
        SUBSPACE_MAX)`` coordinates with the smallest draws in ``subspace[:, j]``, which
        take the uniform values (``subspace_candidates``). ``pending`` (B, p, d) are
        queries awaiting values. ``snap`` maps candidates to the points their params
        encode to (``Space.snap``, for integer and categorical parameters) before they
        are scored, so the screen sees what would be evaluated and never repeats a
        query. With fewer than two observations the policy's first draw is the query.
        Gradients flow through the chosen draw (without ``snap``)."""
        x, rs = self.propose(rs, u, z)
        if gp.n < 2:
            return x[:, 0], rs
        uniform = uniform.to(x.dtype)
        if subspace is not None and subspace.shape[1]:
            m, d = subspace.shape[1], rs.dim
            if subspace.shape != (rs.batch, m, d) or m > uniform.shape[1]:
                raise ValueError(f"subspace draws of shape {tuple(subspace.shape)} do not fit "
                                 f"({rs.batch}, m <= {uniform.shape[1]}, {d})")
            redrawn = 1 + torch.arange(m, device=x.device) % min(d, SUBSPACE_MAX)
            mask = subspace.argsort(-1).argsort(-1) < redrawn[:, None]  # (B, m, d)
            incumbent = rs.best_x.detach().unsqueeze(1)
            uniform = torch.cat([torch.where(mask, uniform[:, :m], incumbent),
                                 uniform[:, m:]], dim=1)
        cands = [x, uniform]
        if local is not None and local.shape[1]:
            scales = _local_scales(local.shape[1], x.dtype, x.device)
            cands.append((rs.best_x.detach().unsqueeze(1)
                          + scales[:, None] * local.to(x.dtype)).clamp(0.0, 1.0))
        cands = torch.cat(cands, dim=1)
        if snap is not None:
            cands = snap(cands)
        pick = gp.score(cands, pending).argmax(dim=1)
        return cands[torch.arange(rs.batch, device=x.device), pick], rs


@functools.lru_cache(maxsize=64)
def _local_scales(k: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The scales of ``k`` local candidates, ``LOCAL_SCALES`` in turn; made once (a normal
    tensor, whatever mode the first caller is in) and only ever read."""
    with torch.inference_mode(False), torch.no_grad():
        scales = torch.tensor(LOCAL_SCALES, dtype=dtype, device=device)
        return scales.repeat(-(-k // len(LOCAL_SCALES)))[:k]


def uniform_candidates(screen: int) -> int:
    """How many uniform candidates go with ``screen`` policy draws: ``UNIFORM_PER_DRAW``
    per draw (256 at the default 32). They are what the screen explores with; under the
    exploration margin (``bbopt.nets.screen.exploration_margin``) more of them find the
    global basin more often (on fresh GP samples, 256 against 32 lowered the median log10
    regret at 100 evaluations at d = 4 from -2.0 to -3.2 and -2.8 on two sets of functions
    and helped from d = 3 to 12; BENCHMARKS.md, "More uniform candidates"), for about
    0.3 ms per ask. 512 gained a little more and cost twice that."""
    return UNIFORM_PER_DRAW * max(screen, 0)


def subspace_candidates(n_uniform: int, dim: int) -> int:
    """How many of ``n_uniform`` uniform candidates are subspace candidates (the
    incumbent with 1 .. ``SUBSPACE_MAX`` coordinates redrawn uniformly): half, from
    ``SUBSPACE_MIN_DIM`` dimensions on, none below. There the screen picks uniform
    candidates for most of a run's second half, once the policy's draws around the
    incumbent stop promising improvement, and uniform points in the whole cube are
    sparse; redrawing a few coordinates of the incumbent at a time explores near it
    along few axes. On fresh GP samples this lowered the regret at 100 evaluations in
    4 to 12 dimensions and not in 2 or 3 (BENCHMARKS.md, "Subspace candidates")."""
    return n_uniform // 2 if dim >= SUBSPACE_MIN_DIM else 0


def local_candidates(screen: int) -> int:
    """How many local candidates go with ``screen`` policy draws: four per scale of
    ``LOCAL_SCALES`` at the default 32, in proportion otherwise."""
    return 0 if screen <= 0 else max(len(LOCAL_SCALES), round(0.75 * screen))


def rollout(policy: BBOPolicy, fn: Any, horizon: int, *, parallel: int = 1,
            generator: torch.Generator | None = None, screen: int = 0
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``policy`` on a batch of functions for ``horizon`` queries.

    ``fn``: a batch of functions (callable (B, d) -> (B,), with ``batch_size``, ``dim``,
    ``device``, ``dtype``, e.g. ``tasks.gp_prior.GPFunctions``). ``parallel``: queries are
    made in rounds of this many before their values are seen (simulated delays); the
    values of a round are ingested one by one when it completes. ``screen``: when
    positive, each query is the GP screen's pick among this many policy draws,
    ``uniform_candidates(screen)`` uniform points (half of them subspace candidates from
    d = 4 on, ``subspace_candidates``) and
    ``local_candidates(screen)`` perturbations of the incumbent
    (``BBOPolicy.propose_screened``), the round's earlier queries pending; its
    exploration margin spans the first 60% of the ``horizon``.
    Returns the queries (B, T, d) and their values (B, T), differentiable with respect to
    the policy.
    """
    if horizon < 1 or parallel < 1 or screen < 0:
        raise ValueError("horizon and parallel must be positive, screen not negative")
    B, d = fn.batch_size, fn.dim
    dev, dt = fn.device, fn.dtype
    rs = policy.init(B, d, dev, dt)
    gp = GPScreen(B, d, dev, budget=horizon) if screen else None
    n_local, n_uni = local_candidates(screen), uniform_candidates(screen)
    n_sub = subspace_candidates(n_uni, d)
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    for t in range(horizon):
        if t and t % parallel == 0:
            for j in range(t - parallel, t):
                rs = policy.observe(rs, xs[j], ys[j])
                if gp is not None:
                    gp.add(xs[j], ys[j])
        if gp is not None:
            u = torch.rand(B, screen + n_uni, d, generator=generator, device=dev, dtype=dt)
            z = torch.randn(B, screen + n_local, d, generator=generator, device=dev, dtype=dt)
            sub = torch.rand(B, n_sub, d, generator=generator, device=dev, dtype=dt)
            start = t - t % parallel
            pending = torch.stack(xs[start:], dim=1) if start < t else None
            x, rs = policy.propose_screened(rs, gp, u[:, :screen], z[:, :screen],
                                            u[:, screen:], z[:, screen:], pending,
                                            subspace=sub)
        else:
            u = torch.rand(B, d, generator=generator, device=dev, dtype=dt)
            z = torch.randn(B, d, generator=generator, device=dev, dtype=dt)
            x, rs = policy.propose(rs, u, z)
        xs.append(x)
        ys.append(fn(x))
    return torch.stack(xs, dim=1), torch.stack(ys, dim=1)
