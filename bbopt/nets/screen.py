"""A cheap Gaussian-process screen of the policy's candidate queries.

The learned policy proposes a distribution over next queries; drawing many of them and
keeping the one with the highest expected improvement under a GP fitted to the run's own
observations turns its sampling into a model-based choice at a small fraction of full
Bayesian optimization's cost. The GP is kept cheap:

* a Matern-5/2 kernel with one lengthscale per coordinate (ARD) and a noise variance, on
  values standardized within the run after their upper tail is log-compressed
  (``warp``), under a weak log-normal prior on the lengthscales;
* no fitting from scratch: each new observation moves the hyperparameters by an Adam
  step (``FIT_STEPS``) on the log marginal likelihood (exact gradients written out, one
  Cholesky factorization per step, Adam's moments carried from one observation to the
  next), so they track the data as it grows; the last step's factorization scores the
  candidates;
* EI evaluated only at the candidates (no acquisition optimization), measured from a
  margin below the best value that shrinks to zero over the first 60% of the run's queries,
  or its first 20 when their number is not known (``exploration_margin``): explore
  first, refine after; from 8 dimensions on, every other pick from 40 to 100
  observations is made by the lower confidence bound instead (``interleaves``), and so
  is every pick from 60 (in 1 and 2 dimensions) or 80 (above) to 100 in a run of
  unknown length whose GP sees noise (``noisy_refines``).

Everything is batched over runs. The state after ``n`` observations depends only on them
and their order, not on when it was asked, so a replayed history gives the same screen.

Pending points (queries handed out without a value yet) enter as "kriging believers":
observations at the posterior mean, which leaves the mean unchanged and removes the
variance near them, so parallel proposals spread out. Failed evaluations enter as
pessimistic believers, above the mean and never certain (``FAIL_KAPPA``,
``FAIL_STD_FLOOR``), so the screen turns away from regions where evaluations fail and
does not propose them again and again.
"""

from __future__ import annotations

import math

import torch

#: Adam steps on the marginal likelihood per new observation, and their step size (in
#: log hyperparameter units). One step of 0.2 matched two of 0.1 on 256 fresh GP
#: samples per dimension (d = 2, 4, 8) at half the cost.
FIT_STEPS = 1
FIT_LR = 0.2
#: Starting lengthscale, and the centre and spread (in log units) of the lengthscale
#: prior, in units of sqrt(d) (the cube's diagonal). A centre of 0.1 sqrt(d) (0.2 in 4-D,
#: 0.35 in 12-D) against 0.5 sqrt(d) before: paired on fresh dev-stream GP samples, lower
#: regret at 100 queries on more functions in 4 to 12 dimensions (d = 8: 238 / 145,
#: d = 12: 200 / 56) and level in 2 and 3 (BENCHMARKS.md, "A shorter lengthscale prior").
LENGTHSCALE_START = 0.3
LENGTHSCALE_PRIOR = (0.1, 1.5)
LENGTHSCALE_BOUNDS = (0.01, 20.0)
#: Starting noise variance and its bounds, relative to the standardized values' variance;
#: JITTER is added to the kernel's diagonal on top.
NOISE_START = 1e-2
NOISE_BOUNDS = (1e-6, 1.0)
JITTER = 1e-6
#: Scales of the local candidates: normal perturbations of the incumbent with these
#: standard deviations (unit-cube units), clipped to the cube, which let the screen
#: refine the incumbent far below the policy's step sizes once the GP is confident.
LOCAL_SCALES = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
#: Exploration margin: early in a run, EI counts improvement over the best standardized
#: value minus ``EXPLORE_MARGIN``, a margin that shrinks linearly to zero at
#: ``EXPLORE_FRACTION`` of the run's budget of queries, or at ``EXPLORE_UNTIL_UNKNOWN``
#: observations when the budget is not known (``explore_until``). Candidates that merely
#: refine the incumbent promise little beyond it, so the first queries look for better
#: basins, and the rest refine. On fresh GP samples (BENCHMARKS.md, "An exploration
#: margin", "The margin follows the budget", "Default settings") it lowered the
#: median regret at 100 queries in 4 to 12 dimensions, where runs stuck in a local basin
#: for good set the median, and left 2 and 3 level; but a margin still open near the end
#: of a run costs its refinement (ending at 60, it lost 1 to 3.6 orders of magnitude at
#: 50 queries in 2 and 3 dimensions). Without a budget it ends at 20, which stayed within
#: 0.03 of no margin in median at 25, 50 and 100 queries and cost least at 25.
EXPLORE_MARGIN = 1.0
EXPLORE_FRACTION = 0.6
EXPLORE_UNTIL_UNKNOWN = 20.0
#: The refining phase: over the last ``REFINE_FRACTION`` of a run whose end is known,
#: candidates are scored by the lower confidence bound ``mean - REFINE_KAPPA * std``
#: instead of EI (``GPScreen(refine_after=...)``; the optimizer sets it from the study's
#: budget, ``bbopt.optimizers.learned``). Late in a run, EI over the whole cube still
#: pays for the uncertainty far from the data (in 8 dimensions most late picks were
#: uniform points), while runs end well above the bottom of the basin they found; the
#: bound goes down that basin. Chosen on fresh GP samples (BENCHMARKS.md, "A refining
#: phase"): kappa 1 against 0 (the mean alone) and 2, the last 20% against 30%. At
#: first from d = 3 on, since in 2 dimensions EI already refines to 1e-8; under noisy
#: values, though, EI's late picks spread and the lowest value told is more often a
#: lucky one, and in 1 and 2 dimensions the bound lowered the true regret at the trial
#: reported best (noise of 0.1 and 0.3 sd: 22 / 9, 12 / 5 and 21 / 9 functions lower /
#: higher; held out, on the 2-D samples of the ``noisy`` suite, 24 / 7 runs) and left
#: noise-free runs level (BENCHMARKS.md, "Refining in 1 and 2 dimensions too").
REFINE_FRACTION = 0.2
REFINE_KAPPA = 1.0
#: Interleaved refinement: from ``INTERLEAVE_MIN_DIM`` dimensions on, once the
#: exploration margin has closed and the run holds ``INTERLEAVE_AFTER`` observations,
#: and until it holds ``INTERLEAVE_UNTIL`` (``interleaves``), every other candidate is
#: picked by the refining phase's lower confidence bound, whether or not the run's end is
#: known. In 8 to 16 dimensions a run of 100 queries rarely finds the global basin (on
#: fresh GP samples, under 10% of runs end below 1e-1), and EI's late picks go on paying
#: for the uncertainty far from the data; half the picks going down the basin found
#: lowered the regret at 100 queries in most runs (default settings: d = 8 153 / 36 and
#: 142 / 49 runs lower / higher on two sets of functions, d = 12 159 / 33, d = 16 70 / 26;
#: told a budget of 100, d = 8 121 / 64), where in 3 to 6 dimensions it cost global basins
#: and the median. It still costs some runs the global basin, which a longer run would
#: have found: going on past 100 queries it left d = 8 runs of 250 higher in median
#: (0.089 against -0.011), so it stops at 100, the run length it was chosen on and the
#: policy's training horizon, and exploration takes over again (level at 250: -0.020)
#: (BENCHMARKS.md, "Interleaved refinement in 8 dimensions and more").
INTERLEAVE_MIN_DIM = 8
INTERLEAVE_AFTER = 40
INTERLEAVE_UNTIL = 100
#: Refinement under noise without a budget: when a run's end is not known, from
#: ``NOISY_AFTER[0]`` observations in up to ``NOISY_EARLY_MAX_DIM`` dimensions, and from
#: ``NOISY_AFTER[1]`` above, until ``INTERLEAVE_UNTIL``, a run whose GP's noise variance (of
#: the warped, standardized values) exceeds ``NOISY_THRESHOLD`` picks by the refining
#: phase's lower confidence bound (``noisy_refines``), as a run told its budget does over
#: its last 20%. Noisy values (or ripples the GP cannot follow, which it takes for noise)
#: make EI's late picks spread and the lowest value told a lucky one; going down the
#: basin found puts the trial reported best where the mean is low. On noise-free GP
#: samples the fitted variance falls below 1e-4 by 50 observations (noisy runs stay above
#: 3e-3), so there it rarely acts. On dev functions (BENCHMARKS.md, "Refining under noise
#: without a budget"): noisy 2-D GP samples 30 / 16 runs lower / higher, rippled cones
#: 30 / 1 (d = 2); but from 60 on, noisy 4-D samples ended higher in median (-1.16 ->
#: -0.84; the search for a better basin still pays there at 60 of 100 trials), and from
#: 80 in 3 to 8 dimensions they ended lower (d = 3 128 / 57 runs, d = 4 124 / 73 and 107 /
#: 67 with more noise, d = 8 58 / 41; rippled cones d = 4 49 / 9, d = 8 20 / 11), while
#: in 2 dimensions 80 was level with 60 (87 / 90; BENCHMARKS.md, "Refining under noise
#: from 80 trials in 3 dimensions and more").
NOISY_THRESHOLD = 1e-3
NOISY_AFTER = (60, 80)
NOISY_EARLY_MAX_DIM = 2
#: Failed evaluations (``GPScreen.set_failed``) enter the screen's GP as pessimistic
#: believers: observed at the successes' posterior mean plus ``FAIL_KAPPA`` times the
#: posterior standard deviation there (of the warped, standardized values, ``warp``), or
#: times ``FAIL_STD_FLOOR`` where that is smaller, with ``FAIL_NOISE`` times the square of
#: the same as their own noise. A failed point far from the data (an unexplored region,
#: where EI pulls) then weighs as a value well above the mean there, and EI turns
#: elsewhere; one next to good values (a flaky evaluation) moves the posterior only
#: within the floor's noise, so refinement goes on there. Left out, a failure left the
#: screen as it was, and it proposed into the failing region again and again (90 of 100
#: trials failed where a half-space 0.02 to 0.1 from the optimum failed). The floor: a
#: failed point's value is unknown, but without it a failure next to the data, where
#: the posterior is sure, became an exact observation at about the mean there, which the
#: screen then trusted. Chosen on dev problems (rotated bowls in 4 to 8 dimensions with
#: a failing half-space, or 15% of evaluations failing at random; a mixed space with
#: failing settings): kappa 1, 2, 3 with noise factors 0, 1, 4, 9 before the warp, kappa
#: 2 then; with the warp kappa 4 (kappa 2 failed three times as often in the mixed
#: space); then floors of 0.1 to 0.5 with kappa 4 to 8, where floor 0.5 and kappa 6
#: ended lower after random failures (52 / 11 and 45 / 18 runs lower / higher at d = 4
#: and 8 on fresh dev functions) and failed less on the half-spaces and the mixed space
#: at a level regret (BENCHMARKS.md, "Failed evaluations").
FAIL_KAPPA = 6.0
FAIL_STD_FLOOR = 0.5
FAIL_NOISE = 1.0
#: Candidates this close (max-norm) to a queried point count as repeats of it.
REPEAT_TOL = 1e-9
_SQRT5 = math.sqrt(5.0)
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
_SQRT_PI_2 = math.sqrt(math.pi / 2)


def log_ei(u: torch.Tensor) -> torch.Tensor:
    """log(phi(u) + u * Phi(u)), the log EI of a unit Gaussian with standardized gap ``u``
    (``(best - mean) / std``), accurate far into the tail where EI underflows: for
    u = -t < 0 it is log phi(u) + log(1 - t * R(t)) with R the Mills ratio, through erfcx."""
    log_phi = -0.5 * u * u - _LOG_SQRT_2PI
    direct = torch.log(torch.exp(log_phi) + u * torch.special.ndtr(u))
    t = (-u).clamp(min=1.0, max=1e4)
    ratio = 1.0 - t * _SQRT_PI_2 * torch.special.erfcx(t / math.sqrt(2.0))
    tail = log_phi + torch.log(ratio.clamp_min(1e-300))
    if _may_hold(u <= -1e4):  # rare: skipped, the where below would not take it
        far = log_phi - 2 * torch.log((-u).clamp_min(1.0))  # 1 - tR(t) = 1/t^2 + O(t^-4)
        tail = torch.where(u > -1e4, tail, far)
    return torch.where(u > -1.0, direct, tail)


def explore_until(budget: int | None) -> float:
    """The observations after which the exploration margin is zero, for a run of
    ``budget`` queries (``None``: not known)."""
    if budget is None:
        return EXPLORE_UNTIL_UNKNOWN
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget must be a positive integer or None, got {budget!r}")
    return EXPLORE_FRACTION * budget


def interleaves(n: int, dim: int, budget: int | None = None) -> bool:
    """Whether the screen picks the ``n + 1``-th query of a run of ``budget`` queries
    (``None``: not known) in ``dim`` dimensions by the lower confidence bound, as an
    interleaved refining step (``INTERLEAVE_MIN_DIM``): on every other observation count
    from ``INTERLEAVE_AFTER`` or the margin's end (``explore_until``), whichever is later,
    until ``INTERLEAVE_UNTIL``."""
    return (dim >= INTERLEAVE_MIN_DIM and n % 2 == 0
            and max(INTERLEAVE_AFTER, explore_until(budget)) <= n < INTERLEAVE_UNTIL)


def noisy_refines(n: int, dim: int, budget: int | None) -> bool:
    """Whether a run of unknown length (``budget`` None) in ``dim`` dimensions picks its
    ``n + 1``-th query by the lower confidence bound when its GP sees noise
    (``NOISY_THRESHOLD``): from ``NOISY_AFTER`` (by dimension) to ``INTERLEAVE_UNTIL``."""
    after = NOISY_AFTER[0] if dim <= NOISY_EARLY_MAX_DIM else NOISY_AFTER[1]
    return budget is None and after <= n < INTERLEAVE_UNTIL


def exploration_margin(n: int, budget: int | None = None) -> float:
    """How far below the best standardized value EI measures improvement after ``n``
    observations of a run of ``budget`` queries: ``EXPLORE_MARGIN`` at the start, zero
    from ``explore_until(budget)`` on."""
    return EXPLORE_MARGIN * max(0.0, 1.0 - n / explore_until(budget))


class GPScreen:
    """The screen's GP for ``batch`` runs in ``dim`` dimensions, updated one observation
    at a time (``add``); ``score`` scores candidates. ``budget``: the queries the runs
    will make (``None``: not known), which times the exploration margin."""

    def __init__(self, batch: int, dim: int, device: torch.device | str | None = None,
                 budget: int | None = None, refine_after: float | None = None) -> None:
        explore_until(budget)  # validates
        if refine_after is not None and (isinstance(refine_after, bool) or not (
                isinstance(refine_after, (int, float)) and refine_after >= 0)):
            raise ValueError(f"refine_after must be a number >= 0 or None, got {refine_after!r}")
        self.refine_after = refine_after
        self.opts: dict = {"dtype": torch.float64, "device": device}
        self.batch, self.dim, self.budget = batch, dim, budget
        self.n = 0
        self._X = torch.zeros(batch, 8, dim, **self.opts)
        self._Y = torch.zeros(batch, 8, **self.opts)
        root = math.log(math.sqrt(dim))
        self._prior_mean = math.log(LENGTHSCALE_PRIOR[0]) + root
        self._lo = torch.tensor([math.log(LENGTHSCALE_BOUNDS[0]) + root] * dim
                                + [math.log(NOISE_BOUNDS[0])], **self.opts)
        self._hi = torch.tensor([math.log(LENGTHSCALE_BOUNDS[1]) + root] * dim
                                + [math.log(NOISE_BOUNDS[1])], **self.opts)
        # theta: log lengthscales (d) and log noise variance, per run; Adam's moments
        # carry over from one observation to the next.
        self.theta = torch.cat([
            torch.full((batch, dim), math.log(LENGTHSCALE_START) + root, **self.opts),
            torch.full((batch, 1), math.log(NOISE_START), **self.opts)], dim=1)
        self._m, self._v, self._steps = torch.zeros_like(self.theta), torch.zeros_like(
            self.theta), 0
        # (theta, inverse squared lengthscales, L, alpha, Ys): the factorization that
        # scores candidates.
        self._fit: tuple[torch.Tensor, ...] | None = None
        self.failed = torch.zeros(batch, 0, dim, **self.opts)

    @property
    def X(self) -> torch.Tensor:
        return self._X[:, :self.n]

    @property
    def Y(self) -> torch.Tensor:
        return self._Y[:, :self.n]

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Observe ``x`` (B, d) with values ``y`` (B,) in every run."""
        x, y = x.detach().to(**self.opts), y.detach().to(**self.opts)
        if x.shape != (self.batch, self.dim) or y.shape != (self.batch,):
            raise ValueError(f"expected x {(self.batch, self.dim)} and y {(self.batch,)}, "
                             f"got {tuple(x.shape)} and {tuple(y.shape)}")
        if self.n == self._X.shape[1]:
            self._X = torch.cat([self._X, torch.zeros_like(self._X)], dim=1)
            self._Y = torch.cat([self._Y, torch.zeros_like(self._Y)], dim=1)
        self._X[:, self.n], self._Y[:, self.n] = x, y
        self.n += 1
        self._fit = None
        if self.n >= 2:
            self._adapt()

    def set_failed(self, x: torch.Tensor) -> None:
        """The points (B, f, d) whose evaluations failed, all of them so far (their order
        does not matter). They carry no value: the hyperparameters are fitted without
        them, and ``score`` takes them as pessimistic believers (``FAIL_KAPPA``) and never
        picks one of them again."""
        x = x.detach().to(**self.opts)
        if x.dim() != 3 or x.shape[0] != self.batch or x.shape[2] != self.dim:
            raise ValueError(f"failed points of shape {tuple(x.shape)} do not fit "
                             f"({self.batch}, f, {self.dim})")
        self.failed = x

    def _standardized(self) -> torch.Tensor:
        """The values as the GP sees them: warped (``warp``), then standardized."""
        Z = warp(self.Y)
        s = Z.std(1, keepdim=True)
        s = torch.where(s > 1e-12 * (1 + Z.abs().amax(1, keepdim=True)), s, torch.ones_like(s))
        return (Z - Z.mean(1, keepdim=True)) / s

    def _adapt(self) -> None:
        """FIT_STEPS Adam steps on the negative log marginal likelihood plus the
        lengthscale prior. Each step factorizes the kernel matrix once; the last
        factorization scores candidates (its step shows from the next observation on)."""
        X, Ys = self.X, self._standardized()
        b1, b2 = 0.9, 0.999
        for _ in range(FIT_STEPS):
            theta = self.theta
            g, inv_ls2, L, alpha = self._gradient(theta, X, Ys)
            self._fit = (theta, inv_ls2, L, alpha, Ys)
            g = torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
            self._steps += 1
            self._m = b1 * self._m + (1 - b1) * g
            self._v = b2 * self._v + (1 - b2) * g * g
            step = FIT_LR * (self._m / (1 - b1 ** self._steps)) / (
                (self._v / (1 - b2 ** self._steps)).sqrt() + 1e-8)
            self.theta = torch.minimum(torch.maximum(theta - step, self._lo), self._hi)

    def _gradient(self, theta: torch.Tensor, X: torch.Tensor, Ys: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gradient (B, d + 1) of the negative log marginal likelihood of standardized
        values ``Ys`` (B, n) at points ``X`` (B, n, d) plus the lengthscales' log-normal
        prior, with respect to ``theta`` (log lengthscales, log noise). Also returns the
        inverse squared lengthscales, the Cholesky factor and ``a = K^-1 y`` it computed.
        dNLL/dK = (K^-1 - a a^T) / 2 =: W / 2 and dK_ij/dlog(l_k) = s_ij (x_ik - x_jk)^2 /
        l_k^2, so with the symmetric M = W * s the sum over i, j of M_ij (x_ik - x_jk)^2 is
        2 (M 1)^T x_k^2 - 2 x_k^T M x_k: two matrix products, no (n, n, d) array of
        coordinate differences."""
        d = self.dim
        inv_ls2, noise = torch.exp(-2 * theta[:, :d]), theta[:, d].exp()
        K, dk = _matern(_distance(X, X, inv_ls2), slope=True)
        L = _cholesky(K, noise)
        Kinv = torch.cholesky_inverse(L)
        a = (Kinv @ Ys.unsqueeze(-1))[..., 0]
        W = Kinv - a.unsqueeze(-1) * a.unsqueeze(-2)
        M = W * dk
        quad = (M.sum(-1).unsqueeze(-1) * X.square() - (M @ X) * X).sum(1)  # (B, d)
        g = torch.cat([
            quad * inv_ls2 + (theta[:, :d] - self._prior_mean) / LENGTHSCALE_PRIOR[1] ** 2,
            0.5 * (noise * W.diagonal(dim1=-2, dim2=-1).sum(-1)).unsqueeze(-1)], dim=1)
        return g, inv_ls2, L, a

    def _factor(self, theta: torch.Tensor, inv_ls2: torch.Tensor, X: torch.Tensor,
                Ys: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cholesky factor and ``K^-1 y`` at hyperparameters ``theta`` (whose inverse
        squared lengthscales are ``inv_ls2``); ``noise`` (B, n): each observation's own
        noise variance on top of the GP's."""
        K, _ = _matern(_distance(X, X, inv_ls2))
        K.diagonal(dim1=-2, dim2=-1).add_(noise)
        L = _cholesky(K, theta[:, self.dim].exp())
        return L, torch.cholesky_solve(Ys.unsqueeze(-1), L)[..., 0]

    def _posterior(self, L: torch.Tensor, alpha: torch.Tensor, r: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and standard deviation (B, K) of the standardized latent
        function at K points whose scaled distances to the observations are ``r``
        (B, n, K)."""
        k, _ = _matern(r)
        mean = (alpha.unsqueeze(1) @ k)[:, 0]
        q = torch.linalg.solve_triangular(L, k, upper=False)
        return mean, (1.0 - q.square().sum(1)).clamp_min(1e-12).sqrt()

    def _believe(self, X: torch.Tensor, Ys: torch.Tensor, noise: torch.Tensor,
                 L: torch.Tensor, alpha: torch.Tensor, P: torch.Tensor, kappa: float,
                 own: float, floor: float = 0.0) -> tuple[torch.Tensor, ...]:
        """The observations ``X``, ``Ys`` (with their own noise variances ``noise`` and
        factorization ``L``, ``alpha``) followed by believers at ``P`` (B, p, d):
        observed at the posterior mean plus ``kappa`` times ``s``, the posterior standard
        deviation or ``floor`` if that is larger, with ``own`` times ``s`` squared as
        their own noise; refactorized."""
        theta, inv_ls2 = self._fit[:2]
        mean, std = self._posterior(L, alpha, _distance(X, P, inv_ls2))
        std = std.clamp_min(floor)
        X, Ys = torch.cat([X, P], 1), torch.cat([Ys, mean + kappa * std], 1)
        noise = torch.cat([noise, own * std.square()], 1)
        return (X, Ys, noise, *self._factor(theta, inv_ls2, X, Ys, noise))

    def score(self, C: torch.Tensor, pending: torch.Tensor | None = None) -> torch.Tensor:
        """The screen's score (B, K) of candidates ``C`` (B, K, d), higher is better, with
        ``pending`` (B, p, d) points as believers, and the failed points (``set_failed``)
        as pessimistic ones (``FAIL_KAPPA``); needs two observations or more: log
        expected improvement, counted from ``exploration_margin(n, budget)`` below the
        best value, and from ``refine_after`` observations on, or when ``interleaves(n,
        dim, budget)``, or in a run whose GP sees noise when ``noisy_refines(n, dim,
        budget)``, the negated lower confidence bound ``REFINE_KAPPA * std - mean``.
        A candidate within ``REPEAT_TOL`` of a queried point (observed, failed or
        pending) in every coordinate scores -inf."""
        if C.dim() != 3 or C.shape[0] != self.batch or C.shape[2] != self.dim:
            raise ValueError(f"candidates of shape {tuple(C.shape)} do not fit "
                             f"({self.batch}, K, {self.dim})")
        if self.n < 2 or self._fit is None:
            raise ValueError("the screen needs at least two observations")
        _, inv_ls2, L, alpha, Ys = self._fit
        margin = exploration_margin(self.n, self.budget)
        X, best = self.X, Ys.min(1).values.unsqueeze(1) - margin
        noise = torch.zeros_like(Ys)  # each observation's own noise, on top of the GP's
        if self.failed.shape[1]:
            X, Ys, noise, L, alpha = self._believe(X, Ys, noise, L, alpha, self.failed,
                                                   FAIL_KAPPA, FAIL_NOISE, FAIL_STD_FLOOR)
        if pending is not None and pending.shape[1]:
            X, Ys, noise, L, alpha = self._believe(X, Ys, noise, L, alpha,
                                                   pending.detach().to(**self.opts), 0.0, 0.0)
        C = C.detach().to(**self.opts)
        r = _distance(X, C, inv_ls2)  # (B, n, K)
        mean, std = self._posterior(L, alpha, r)
        if ((self.refine_after is not None and self.n >= self.refine_after)
                or interleaves(self.n, self.dim, self.budget)):
            score = REFINE_KAPPA * std - mean  # the lower confidence bound, negated
        else:
            score = torch.log(std) + log_ei((best - mean) / std)
            if noisy_refines(self.n, self.dim, self.budget):  # runs whose GP sees noise
                noisy = self.theta[:, self.dim].exp() > NOISY_THRESHOLD
                score = torch.where(noisy[:, None], REFINE_KAPPA * std - mean, score)
        # A candidate at a point already queried (observed or pending) would repeat that
        # query: clipped candidates land on the same face or corner again and again. Only
        # candidates within the scaled distance that REPEAT_TOL in every coordinate allows
        # (with room for rounding) of their nearest queried point can be repeats; the
        # max-norm decides for those.
        near = r.amin(1) <= (1.001 * REPEAT_TOL) * inv_ls2.sum(-1).sqrt()[:, None]
        if _may_hold(near):
            near &= repeats(X, C).any(1)
        return score.masked_fill(near, -math.inf)


def repeats(X: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """Which candidates ``C`` (B, K, d) repeat which queried points ``X`` (B, n, d): a
    (B, n, K) mask, true within ``REPEAT_TOL`` in every coordinate."""
    return torch.cdist(X, C, p=math.inf) <= REPEAT_TOL


def warp(Y: torch.Tensor) -> torch.Tensor:
    """Each run's values (B, n) with their upper tail compressed: with q = (y - min) /
    (median - min), q below the median and 1 + log q above it (continuous, with a
    continuous slope). Heavy upper tails are common (a loss near divergence, a product of
    factors) and would set the GP's scale: standardized, all the good values sit in a
    sliver just above the minimum. The lower half, where the search refines, stays
    linear, and the warp is the same for values shifted or scaled by a positive factor;
    a run whose lower half is flat stays as it is. On dev GP samples whose values were
    passed through exp(5 f), the screen with the warp ended lower / higher in 37 / 0, 43 /
    5 and 45 / 3 runs (d = 2, 4, 8); on the samples themselves, told
    a budget of 100, it was level (d = 2 52 / 29 runs lower / higher, d = 4 108 / 82 over
    two sets, d = 8 91 / 100), and on rotated bowls 15 / 33 at d = 4 and 28 / 20 at
    d = 12 (BENCHMARKS.md, "Warped values")."""
    lo = Y.min(1, keepdim=True).values
    scale = Y.median(1, keepdim=True).values - lo
    ok = scale > 1e-12 * (1 + Y.abs().amax(1, keepdim=True))
    q = (Y - lo) / torch.where(ok, scale, torch.ones_like(scale))
    return torch.where(ok, q.clamp_max(1.0) + torch.log(q.clamp_min(1.0)), Y)


def _may_hold(mask: torch.Tensor) -> bool:
    """Whether a step needed only where ``mask`` holds must run: on the CPU, when some
    entry holds; on an accelerator always (the step is exact either way, and asking
    would wait for the device at every step of a batched rollout)."""
    return mask.device.type != "cpu" or bool(mask.any())


def _distance(A: torch.Tensor, B: torch.Tensor, inv_ls2: torch.Tensor) -> torch.Tensor:
    """Scaled Euclidean distances (B, n, k) of points ``A`` (B, n, d) and ``B`` (B, k, d)
    under inverse squared lengthscales ``inv_ls2`` (B, d), summed coordinate by coordinate
    (not through the |a|^2 + |b|^2 - 2 a.b expansion, which loses nearby points)."""
    w = inv_ls2.sqrt().unsqueeze(1)
    return torch.cdist(A * w, B * w, compute_mode="donot_use_mm_for_euclid_dist")


def _matern(r: torch.Tensor, slope: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Matern-5/2 kernel values at scaled distances ``r``; with ``slope``, also the factor
    ``s`` with dk/dlog(l_j) = s * (a_j - b_j)^2 / l_j^2 (else None)."""
    s = _SQRT5 * r
    e = torch.exp(-s)
    t = s + 1  # few passes over the (n, k) arrays: this runs at every ask
    k = torch.addcmul(t, s, s, value=1.0 / 3.0).mul_(e)
    return k, (t.mul_(e).mul_(5.0 / 3.0) if slope else None)


def _cholesky(K: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Cholesky factor of ``K`` (B, n, n) plus ``noise + JITTER`` on its diagonal (added in
    place: ``K`` is the caller's scratch kernel matrix)."""
    K.diagonal(dim1=-2, dim2=-1).add_((noise + JITTER)[:, None])
    return torch.linalg.cholesky(K)


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
    return gp.score(C, pending)
