"""``method="learned"`` (LSTM policy, the default) and ``"learned-dnc"`` (DNC policy).

The meta-trained policy of ``bbopt.nets.policy`` reads the completed trials in order and
samples the next queries. It keeps its recurrent state between asks, so an ask costs one
recurrent step per new observation plus one proposal (milliseconds on CPU); when the
history is not an extension of what it has seen (a resumed study, trials completed out of
order), it replays the history from the start.

* Any dimension: the policy is coordinatewise (shared weights, pooled cross-coordinate
  features), so one set of weights serves d = 1 .. 12 (the dimensions it was trained on)
  and above, with the same code; above 12 it runs unchanged and is tested to beat random
  search.
* Any number of trials: the policy and the screen go on past the training horizon
  (``T = 100`` trials, from the weights' metadata) over all of a study's trials, until
  they hold ``CARRY + T`` (300) of them; from the next multiple of ``T`` on, each episode
  of ``T`` trials starts from the best ``CARRY`` earlier trials (in the order they were
  made, replayed through the policy and the screen: about 0.3 s, once per episode), which
  bounds the screen's GP at ``CARRY + T`` points (asks of 5 to 10 ms at d = 8 between 200
  and 300 trials, 2 to 3 ms at 100). Going on found lower values than restarting from
  scratch every ``T`` trials, the earlier design, on fresh bowls and GP samples at 200 to
  500 trials (BENCHMARKS.md, "Past the horizon: going on instead of restarting"), where
  restarts threw away the best region and stalled on every function with one. Tested on
  500-trial studies against random search.
* GP screen (``screen``, default 32): each proposal is the pick, by expected improvement
  under the cheap GP of ``bbopt.nets.screen`` fitted to the episode's trials (ARD
  Matern-5/2; improvement counted from a margin below the best value that vanishes
  over the first 60% of the horizon, or of the budget when that is shorter, 30 trials
  with ``budget=50``, and over the first 20 trials when neither is known), among
  ``screen`` draws from the policy, eight times as many uniform points (from d = 4 on,
  half of them the incumbent with only 1 to 4 of its coordinates redrawn) and 24
  perturbations of the incumbent at scales 1e-1 .. 1e-6, clipped to the cube (so optima
  on its faces are reached exactly); ``screen=0`` takes the policy's own draw.
  The GP's hyperparameters move by one marginal-likelihood step per new observation,
  like the policy's recurrent state. With a budget, the last 20 trials before it (a
  fifth of the horizon, or of a shorter budget) refine: the screen picks by the GP's
  lower confidence bound instead of EI, going down the basin found
  (``bbopt.nets.screen.REFINE_FRACTION``). From d = 8 on, with or without a budget,
  every other pick from 40 trials (or the margin's end) to 100 is made that way too
  (``bbopt.nets.screen.interleaves``): there runs of a hundred trials rarely find the
  global basin, and going down the one found paid more than exploring on. Without a
  budget, every pick from 60 trials (in 1 and 2 dimensions; from 80 above) to 100 is
  made that way too when the screen's GP sees noise
  (``bbopt.nets.screen.noisy_refines``), so that the trial reported best is not a lucky
  draw.
* A space-filling start: in 8 to 12 dimensions (``SOBOL_START_DIMS``), a study's
  first ``dim + 1`` trials are its scrambled Sobol points, which the policy and the
  screen then observe like any trials; there the screen's own first picks search along
  few axes around an early incumbent and miss trends across the cube.
* ``budget`` (optional): the trials the study will run. The screen then explores for
  60% of the first episode's horizon or of the budget when that is shorter (later
  episodes open with ``CARRY`` trials, past any margin), which found lower values at 50
  and 100 trials than the margin that ends at 20 trials without a budget (BENCHMARKS.md,
  "The margin follows the budget" and "Default settings: the margin without a budget"),
  and refines over its last 20 trials (above). The short margin is
  the default because a long one costs a study that stops early far more than a short
  one costs a long study. ``bbopt tune``, ``bbopt bench`` and ``BBOptSearch`` (from
  Tune's ``num_samples``) pass it.
* Parallel asks: ``ask(n)`` draws ``n`` proposals from the same state with independent
  noise, so they are distinct; the screen treats pending trials (other workers' and the
  ask's earlier proposals) as observed at the GP's mean, so it does not pick next to
  them again.
* Failed trials (``tell(trial, failed=True)``, or failed as stale): the screen takes
  their points as pessimistic believers, above the GP's mean there and never certain
  (``bbopt.nets.screen.FAIL_KAPPA``, ``FAIL_STD_FLOOR``), and never proposes one
  again, so a region where evaluations fail (a learning rate that diverges) is left
  while one failure among good values (a flaky evaluation) barely moves it. The policy
  sees completed trials only.
* Int and Categorical parameters work through the space encoding; the screen scores
  candidates at the points their params encode to (``Optimizer.snap``), so a proposal
  never repeats a trial's params while other candidates remain.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bbopt.nets.policy import local_candidates, subspace_candidates, uniform_candidates
from bbopt.nets.screen import REFINE_FRACTION, GPScreen, explore_until, repeats
from bbopt.optimizers.base import History, Optimizer, register
from bbopt.optimizers.random import sobol_points

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


#: Default GP screen size: each proposal is the screen's pick among this many policy
#: draws, ``uniform_candidates(SCREEN)`` uniform points (half of them subspace candidates
#: from d = 4 on) and ``local_candidates(SCREEN)`` perturbations of the incumbent
#: (``bbopt.nets.screen``); 0 takes the policy's draw.
SCREEN = 32

#: A space-filling start: from ``SOBOL_START_DIMS[0]`` to ``SOBOL_START_DIMS[1]``
#: dimensions, a study's first ``dim + 1`` trials are its scrambled Sobol points
#: (``sobol_points``), as Bayesian optimization starts with a design; the policy and the
#: screen observe them as any other trials. In 10 dimensions the screen's picks from the
#: second trial on were mostly the incumbent with a few coordinates redrawn: a search
#: along few axes around an early incumbent, whose values did not show a trend across
#: the cube that spread points show (a GP fitted to 40 of them put its minimum near the
#: optimum of rippled cones, one fitted to the policy's 40 did not). On dev rippled cones
#: it found the cone in 26 of 64 runs against 19 at d = 10 (44 / 20 runs lower / higher)
#: and in 26 of 32 against 20 at d = 8; on dev GP samples and rotated bowls in 8 to 12
#: dimensions it was level (GP samples 233 / 214 runs lower / higher, bowls 107 / 85).
#: It cost the median on GP samples in 4 dimensions (two sets) and on bowls in 16 and 20
#: (27 / 37 runs each), where 100 trials leave less room for a design, so it stops at
#: 12, the last dimension the policy was trained on (BENCHMARKS.md, "A space-filling
#: start in 8 to 12 dimensions").
SOBOL_START_DIMS = (8, 12)

#: Past the training horizon the policy and the screen go on over the study's trials until
#: they hold ``CARRY`` + horizon of them; each later episode of a horizon's trials starts
#: from the best ``CARRY`` earlier trials, which bounds the screen's GP (``_episode``).
CARRY = 200


@contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run on one CPU thread, then restore the caller's setting (torch keeps it per
    thread, so other threads are not affected). An ask is hundreds of small tensor ops
    (a 100 x 100 Cholesky, a few hundred candidates): on one thread it took 2.4 to 2.7 ms
    at 99 observations on a 2-core machine; with torch's default of a thread per core
    the same asks took 6 ms in median and up to 119 ms (2026-12-03, d = 2 to 8), time
    spent handing tiny ops between threads."""
    n = torch.get_num_threads()
    if device.type != "cpu" or n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


_POLICIES: dict[tuple[str, int, str], tuple[Any, dict[str, Any]]] = {}
_POLICIES_LOCK = threading.Lock()


def _shared_policy(path: Path, device: torch.device) -> tuple[Any, dict[str, Any]]:
    """One loaded policy per weights file and device in a process: the policy is a
    stateless module (each study keeps its own recurrent state), so the service's study
    hosts, holding hundreds of studies, keep one copy of the weights."""
    from bbopt.meta.trainer import load_policy

    key = (str(path.resolve()), path.stat().st_mtime_ns, str(device))
    with _POLICIES_LOCK:
        if key not in _POLICIES:
            _POLICIES[key] = load_policy(path, device)
        return _POLICIES[key]


class _PolicyOptimizer(Optimizer):
    """Runs a shipped (or given) black-box policy behind the optimizer interface."""

    weights_name: str = ""

    takes_budget = True

    def __init__(self, dim: int, seed: int = 0, weights: str | None = None,
                 device: str | None = None, screen: int = SCREEN,
                 budget: int | None = None) -> None:
        super().__init__(dim, seed)
        if isinstance(screen, bool) or not isinstance(screen, int) or screen < 0:
            raise ValueError(f"screen must be an integer >= 0, got {screen!r}")
        explore_until(budget)  # a positive integer or None, else ValueError
        self.screen, self.budget = screen, budget
        # BBOPT_DEVICE lets a host (the service's GPU actors) place every study's policy
        # without writing a device into the studies' stored options.
        device = device or os.environ.get("BBOPT_DEVICE", "cpu")
        path = Path(weights) if weights else WEIGHTS_DIR / self.weights_name
        if not path.exists():
            raise FileNotFoundError(f"policy weights not found: {path}")
        self.weights_path = path
        self.device = torch.device(device)
        self.policy, self.meta = _shared_policy(path, self.device)
        self.horizon = int(self.meta.get("horizon", 100))
        self._X = np.zeros((0, dim))
        self._y = np.zeros(0)
        self._rs: Any = None
        self._proposed = True  # the proposal after the last observation is in _rs
        self._gp: GPScreen | None = None

    def _episode_budget(self, start: int) -> int | None:
        """The run length that times the exploration margin of the screen of the
        episode that starts at trial ``start`` (``GPScreen``'s ``budget``): the horizon,
        or what is left of the budget when that is less, though the first episode goes on
        past it (``_episode``); ``None`` (not known) without a budget or past it."""
        if self.budget is None or self.budget <= start:
            return None
        return min(self.horizon, self.budget - start)

    def _refine_after(self, start: int, carried: int) -> float | None:
        """Observations after which the screen of the episode that starts at trial
        ``start`` with ``carried`` earlier trials refines (``GPScreen``'s
        ``refine_after``): over the study's last ``REFINE_FRACTION`` of the horizon, or of
        the budget when that is less, before the budget; ``None`` without a budget or
        past it."""
        if self.budget is None or self.budget <= start:
            return None
        at = self.budget - REFINE_FRACTION * min(self.horizon, self.budget)
        return carried + max(at - start, 0.0)

    def _episode(self, y: np.ndarray) -> tuple[int, np.ndarray]:
        """The current episode of a study whose completed trials have values ``y``: its
        first trial, and the indices of the earlier trials carried into it (the best
        ``CARRY``, in the order they were made). Episodes start at multiples of the
        horizon past ``CARRY`` trials; until then the one episode holds every trial."""
        start = self.horizon * (len(y) // self.horizon)
        if start <= CARRY:
            return 0, np.zeros(0, dtype=int)
        return start, np.sort(np.argsort(y[:start], kind="stable")[:CARRY])

    def _state(self, X: np.ndarray, y: np.ndarray) -> Any:
        """The policy's state after the current episode's trials (``_episode``: the
        carried trials, then the episode's own), reusing the cached prefix. The last
        observation's proposal may not be applied yet (``self._proposed``): the next
        proposal applies it, as it computes the same step size and gate."""
        start, keep = self._episode(y)
        X, y = np.concatenate([X[keep], X[start:]]), np.concatenate([y[keep], y[start:]])
        m = len(self._y)
        if (self._rs is None or m > len(y) or not np.array_equal(self._X, X[:m])
                or not np.array_equal(self._y, y[:m])):
            self._rs, m = self.policy.init(1, self.dim, self.device), 0
            self._proposed = True
            self._gp = (GPScreen(1, self.dim, self.device, self._episode_budget(start),
                                 self._refine_after(start, len(keep)))
                        if self.screen else None)
        rs = self._rs
        if m < len(y):
            ys = torch.as_tensor(y[m:], dtype=torch.float32, device=self.device)
            xs = torch.as_tensor(X[m:], dtype=torch.float32, device=self.device)
            for j, i in enumerate(range(m, len(y))):
                # The proposal's step size and gate are inputs of the next observation:
                # replay them as in training (they do not depend on the random draws).
                if not self._proposed:
                    dummy = torch.zeros(1, self.dim, device=self.device)
                    _, rs = self.policy.propose(rs, dummy, dummy)
                rs = self.policy.observe(rs, xs[j:j + 1], ys[j:j + 1])
                self._proposed = False
                if self._gp is not None:
                    self._gp.add(torch.from_numpy(X[i:i + 1]), torch.from_numpy(y[i:i + 1]))
        self._rs, self._X, self._y = rs, X.copy(), y.copy()
        return rs

    @property
    def _sobol_start(self) -> int:
        """The trials of the space-filling start (``SOBOL_START_DIMS``)."""
        lo, hi = SOBOL_START_DIMS
        return self.dim + 1 if lo <= self.dim <= hi else 0

    def _start_point(self, point: torch.Tensor, screened: torch.Tensor, history: History,
                     pending: torch.Tensor, snap: Any) -> torch.Tensor:
        """The study's Sobol ``point`` (1, d) as a start trial, unless its params repeat
        those of a trial handed out (integer and categorical parameters snap points to
        cells); then the screen's pick ``screened``."""
        point = point.double()
        if snap is not None:
            point = snap(point.unsqueeze(1))[:, 0]
        seen = torch.cat([torch.as_tensor(history.X, device=point.device),
                          torch.as_tensor(history.failed, device=point.device),
                          pending[0]]).to(point)
        if len(seen) and bool(repeats(seen[None], point[None]).any()):
            return screened
        return point

    def propose(self, history: History, n: int) -> np.ndarray:
        with _one_cpu_thread(self.device):
            return self._propose(history, n)

    def _propose(self, history: History, n: int) -> np.ndarray:
        d, dev = self.dim, self.device
        with torch.inference_mode():
            rs = self._state(history.X, history.y)
            # Uniform draws: the study's scrambled Sobol sequence at the next unused index
            # (distinct across asks, workers and resumes); the other draws seeded likewise.
            sobol = torch.from_numpy(sobol_points(d, self.seed, history.n_trials, n)).to(dev)
            u0 = sobol.float()
            g = torch.Generator().manual_seed(
                int(np.random.SeedSequence([self.seed, history.n_trials]).generate_state(1)[0]))
            if not self.screen:
                z = torch.randn(n, d, generator=g).to(dev)
                xs = []
                for i in range(n):
                    x, proposed = self.policy.propose(rs, u0[i:i + 1], z[i:i + 1])
                    xs.append(x)
                self._rs, self._proposed = proposed, True
                return torch.cat(xs).double().clamp(0.0, 1.0).cpu().numpy()
            k, n_local, n_uni = (self.screen, local_candidates(self.screen),
                                 uniform_candidates(self.screen))
            pending = torch.as_tensor(history.pending, dtype=torch.float64,
                                      device=dev).reshape(1, -1, d)
            snap = None
            if self.snap is not None:
                def snap(c: torch.Tensor) -> torch.Tensor:  # float64: exact cell points
                    return torch.from_numpy(self.snap(c.double().cpu().numpy())).to(dev)
            self._gp.set_failed(torch.as_tensor(history.failed, device=dev).reshape(1, -1, d))
            xs = []
            for i in range(n):
                u = torch.rand(1, k + n_uni, d, generator=g).to(dev)
                u[0, 0] = u0[i]
                z = torch.randn(1, k + n_local, d, generator=g).to(dev)
                sub = torch.rand(1, subspace_candidates(n_uni, d), d, generator=g).to(dev)
                x, proposed = self.policy.propose_screened(rs, self._gp, u[:, :k], z[:, :k],
                                                           u[:, k:], z[:, k:], pending, snap,
                                                           sub)
                if history.n_trials + i < self._sobol_start:
                    x = self._start_point(sobol[i:i + 1], x, history, pending, snap)
                x = x.double()
                xs.append(x)
                pending = torch.cat([pending, x.unsqueeze(1)], dim=1)
            self._rs, self._proposed = proposed, True
        return torch.cat(xs).clamp(0.0, 1.0).cpu().numpy()


@register("learned")
class LearnedLSTM(_PolicyOptimizer):
    """The meta-trained coordinatewise LSTM policy (``bbopt/weights/learned-lstm.pt``)."""

    weights_name = "learned-lstm.pt"


@register("learned-dnc")
class LearnedDNC(_PolicyOptimizer):
    """The meta-trained coordinatewise DNC policy (``bbopt/weights/learned-dnc.pt``)."""

    weights_name = "learned-dnc.pt"
