"""A cheap Gaussian-process screen of the policy's candidate queries.

The learned policy proposes a distribution over next queries; drawing many of them and
keeping the one with the highest expected improvement under a GP fitted to the run's own
observations turns its sampling into a model-based choice at a small fraction of full
Bayesian optimization's cost. The GP is deliberately cheap: an isotropic Matern-5/2 kernel
on values standardized within the run, its lengthscale (times sqrt(d)) and noise picked
from a small grid by marginal likelihood (one batched Cholesky factorization for the
whole grid, no gradient-based fitting), and EI evaluated only at the candidates (no
acquisition optimization). Everything is batched over runs.

Pending points (queries handed out without a value yet) enter as "kriging believers":
observations at the posterior mean, which leaves the mean unchanged and removes the
variance near them, so parallel proposals spread out.
"""

from __future__ import annotations

import math

import torch

#: Lengthscales of the grid, in units of sqrt(d) (the cube's diagonal).
LENGTHSCALES = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)
#: Noise variances of the grid, relative to the standardized values' variance.
NOISES = (1e-4, 5e-2)
_SQRT5 = math.sqrt(5.0)
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
_SQRT_PI_2 = math.sqrt(math.pi / 2)


def _matern52(r: torch.Tensor) -> torch.Tensor:
    s = _SQRT5 * r
    return (1 + s + s * s / 3) * torch.exp(-s)


def log_ei(u: torch.Tensor) -> torch.Tensor:
    """log(phi(u) + u * Phi(u)), the log EI of a unit Gaussian with standardized gap ``u``
    (``(best - mean) / std``), accurate far into the tail where EI underflows: for
    u = -t < 0 it is log phi(u) + log(1 - t * R(t)) with R the Mills ratio, through erfcx."""
    log_phi = -0.5 * u * u - _LOG_SQRT_2PI
    direct = torch.log(torch.exp(log_phi) + u * torch.special.ndtr(u))
    t = (-u).clamp(min=1.0, max=1e4)
    ratio = 1.0 - t * _SQRT_PI_2 * torch.special.erfcx(t / math.sqrt(2.0))
    tail = log_phi + torch.log(ratio.clamp_min(1e-300))
    far = log_phi - 2 * torch.log((-u).clamp_min(1.0))  # 1 - tR(t) = 1/t^2 + O(t^-4)
    return torch.where(u > -1.0, direct, torch.where(u > -1e4, tail, far))


class GPScreen:
    """The screen's GP for ``batch`` runs in ``dim`` dimensions, updated one observation
    at a time: every grid kernel's Cholesky factor grows by one row per observation
    (O(n^2) work instead of O(n^3)), so a study's ask pays for one new row and the
    candidates, not for refactoring 12 kernel matrices.

    Values are stored shifted by the first observation of each run; standardizing them
    (mean m, standard deviation s of the run so far) needs only ``w = L^-1 y`` and
    ``v = L^-1 1``: ``L^-1 (y - m) / s = (w - m v) / s``.
    """

    def __init__(self, batch: int, dim: int, device: torch.device | str | None = None) -> None:
        self.opts: dict = {"dtype": torch.float64, "device": device}
        self.batch, self.dim = batch, dim
        self.ls = torch.tensor(LENGTHSCALES, **self.opts).repeat_interleave(
            len(NOISES)) * math.sqrt(dim)
        self.noise = torch.tensor(NOISES, **self.opts).repeat(len(LENGTHSCALES))
        G = len(self.ls)
        self.n = 0
        self._X = torch.zeros(batch, 8, dim, **self.opts)
        self._Y = torch.zeros(batch, 8, **self.opts)
        self._L = torch.zeros(batch, G, 8, 8, **self.opts)
        self._w = torch.zeros(batch, G, 8, **self.opts)
        self._v = torch.zeros(batch, G, 8, **self.opts)
        self._shift = torch.zeros(batch, **self.opts)

    @property
    def X(self) -> torch.Tensor:
        return self._X[:, :self.n]

    def _grow(self) -> None:
        cap = 2 * self._X.shape[1]

        def pad(t: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
            shape = list(t.shape)
            for i in dims:
                shape[i] = cap
            out = t.new_zeros(shape)
            out[tuple(slice(0, t.shape[i]) for i in range(t.dim()))] = t
            return out

        self._X, self._Y = pad(self._X, (1,)), pad(self._Y, (1,))
        self._L, self._w, self._v = pad(self._L, (2, 3)), pad(self._w, (2,)), pad(self._v, (2,))

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Observe ``x`` (B, d) with values ``y`` (B,) in every run."""
        x, y = x.detach().to(**self.opts), y.detach().to(**self.opts)
        if x.shape != (self.batch, self.dim) or y.shape != (self.batch,):
            raise ValueError(f"expected x {(self.batch, self.dim)} and y {(self.batch,)}, "
                             f"got {tuple(x.shape)} and {tuple(y.shape)}")
        if self.n == 0:
            self._shift = y.clone()
        if self.n == self._X.shape[1]:
            self._grow()
        n = self.n
        L, w, v = _extend(self._L[..., :n, :n], self._w[..., :n], self._v[..., :n],
                          self.X, x, y - self._shift, self.ls, self.noise)
        self._L[..., n, :n + 1], self._w[..., n], self._v[..., n] = L, w, v
        self._X[:, n], self._Y[:, n] = x, y - self._shift
        self.n += 1

    def log_ei(self, C: torch.Tensor, pending: torch.Tensor | None = None) -> torch.Tensor:
        """Log expected improvement (B, K) of candidates ``C`` (B, K, d), with ``pending``
        (B, p, d) points as believers; needs two observations or more."""
        if C.dim() != 3 or C.shape[0] != self.batch or C.shape[2] != self.dim:
            raise ValueError(f"candidates of shape {tuple(C.shape)} do not fit "
                             f"({self.batch}, K, {self.dim})")
        if self.n < 2:
            raise ValueError("the screen needs at least two observations")
        n, B = self.n, self.batch
        Y = self._Y[:, :n]
        m = Y.mean(1)
        s = Y.std(1)
        s = torch.where(s > 1e-12 * (1 + Y.abs().max(1).values), s, torch.ones_like(s))
        L, w, v = self._L[..., :n, :n], self._w[..., :n], self._v[..., :n]
        mm = m[:, None]
        quad = ((w * w).sum(-1) - 2 * mm * (w * v).sum(-1) + mm * mm * (v * v).sum(-1))
        ll = -0.5 * quad / (s * s)[:, None] - L.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        ll = torch.where(torch.isfinite(ll), ll, torch.full_like(ll, -math.inf))
        pick = ll.argmax(dim=1)  # (B,) the grid point of highest marginal likelihood
        rows = torch.arange(B, device=pick.device)
        ls, noise = self.ls[pick][:, None], self.noise[pick][:, None]  # (B, 1)
        L, w, v = L[rows, pick][:, None], w[rows, pick][:, None], v[rows, pick][:, None]
        X = self.X
        if pending is not None and pending.shape[1]:
            P = pending.detach().to(**self.opts)
            believer = m[:, None] + s[:, None] * _posterior(L, w, v, X, P, ls, m, s)[0]
            for j in range(P.shape[1]):
                k = L.shape[-1]
                Lr, wr, vr = _extend(L, w, v, X, P[:, j], believer[:, j], ls, noise)
                L = torch.cat([torch.cat([L, L.new_zeros(B, 1, k, 1)], -1),
                               Lr.unsqueeze(-2)], -2)
                w, v = torch.cat([w, wr[..., None]], -1), torch.cat([v, vr[..., None]], -1)
                X = torch.cat([X, P[:, j:j + 1]], 1)
        mean, std = _posterior(L, w, v, X, C.detach().to(**self.opts), ls, m, s)
        best = ((Y.min(1).values - m) / s)[:, None]
        return torch.log(std) + log_ei((best - mean) / std)


def _kernel(A: torch.Tensor, B: torch.Tensor, ls: torch.Tensor) -> torch.Tensor:
    """Matern-5/2 between A (B, n, d) and B (B, k, d) for lengthscales ``ls`` (B or 1,
    G): (B, G, n, k)."""
    return _matern52(torch.cdist(A, B).unsqueeze(1) / ls[..., None, None])


def _extend(L: torch.Tensor, w: torch.Tensor, v: torch.Tensor, X: torch.Tensor,
            x: torch.Tensor, y: torch.Tensor, ls: torch.Tensor, noise: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The new last row of the Cholesky factors ``L`` (B, G, n, n) of K(X, X) + noise I
    when ``x`` (B, d) joins ``X`` (B, n, d), and the new entries of ``w = L^-1 y`` and
    ``v = L^-1 1``. Returns (B, G, n + 1), (B, G), (B, G)."""
    diag = torch.sqrt(1.0 + noise).expand(L.shape[:2])
    if X.shape[1] == 0:
        return diag[..., None], y[:, None] / diag, 1.0 / diag
    k = _kernel(X, x[:, None], ls)  # (B, G, n, 1)
    lrow = torch.linalg.solve_triangular(L, k, upper=False)[..., 0]  # (B, G, n)
    dg = (1.0 + noise - lrow.square().sum(-1)).clamp_min(1e-12).sqrt()
    return (torch.cat([lrow, dg[..., None]], -1), (y[:, None] - (lrow * w).sum(-1)) / dg,
            (1.0 - (lrow * v).sum(-1)) / dg)


def _posterior(L: torch.Tensor, w: torch.Tensor, v: torch.Tensor, X: torch.Tensor,
               C: torch.Tensor, ls: torch.Tensor, m: torch.Tensor, s: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and standard deviation (B, K) of the standardized latent function at
    ``C`` (B, K, d), for one grid point per run (``L`` (B, 1, n, n), ``ls`` (B, 1))."""
    k = _kernel(X, C, ls)  # (B, 1, n, K)
    q = torch.linalg.solve_triangular(L, k, upper=False)[:, 0]  # (B, n, K)
    alpha = ((w - m[:, None, None] * v) / s[:, None, None])[:, 0]  # (B, n)
    mean = (q * alpha[..., None]).sum(1)
    std = (1.0 - q.square().sum(1)).clamp_min(1e-12).sqrt()
    return mean, std


def screen(X: torch.Tensor, Y: torch.Tensor, C: torch.Tensor,
           pending: torch.Tensor | None = None) -> torch.Tensor:
    """Log expected improvement of candidates under a GP of each run's observations.

    ``X`` (B, n, d) observed points in the unit cube, ``Y`` (B, n) their values (to
    minimize, any scale; n >= 2), ``C`` (B, K, d) candidates, ``pending`` (B, p, d) points
    awaiting values or None. Returns (B, K) log EI; the ranking within a run is what counts.
    A one-shot ``GPScreen``.
    """
    if X.dim() != 3 or Y.shape != X.shape[:2]:
        raise ValueError(f"shapes X {tuple(X.shape)}, Y {tuple(Y.shape)} do not fit "
                         "(B, n, d), (B, n)")
    gp = GPScreen(X.shape[0], X.shape[2], X.device)
    for i in range(X.shape[1]):
        gp.add(X[:, i], Y[:, i])
    return gp.log_ei(C, pending)
