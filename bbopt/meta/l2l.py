"""Meta-training of the coordinatewise LSTM optimizer (Andrychowicz et al. 2016).

Truncated backpropagation through time: an episode optimizes a fresh batch of problems
from ``TRAIN_FAMILIES`` for ``horizon`` steps, cut into unrolls of ``unroll`` steps;
each unroll is one meta-gradient step (Adam on the net's weights, gradient clipping) on
the meta-loss of ``bbopt.meta.losses.l2l_loss``. The optimizee's gradients are inputs
with no gradient of their own (detached, as in the paper), so no second derivatives are
needed. Validation runs the net as a ``bbopt.LSTMOptimizer`` on fixed held-out problems
of the training families for twice the horizon. Checkpoints, best weights, resume and the
log are those of ``bbopt.meta.base``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bbopt.errors import NonFiniteGradientError
from bbopt.meta.base import MetaTrainer
from bbopt.meta.losses import L2L_OBJECTIVES, l2l_loss
from bbopt.nets.l2l import L2LNet, detach_l2l_state
from bbopt.optimizers.l2l import LSTMOptimizer, load_l2l, save_l2l
from bbopt.tasks.optimizees import (
    TRAIN_FAMILIES,
    Optimizee,
    Rescaled,
    family_maker,
    sample_optimizee,
)

#: Seeds of validation problems, apart from training (seed 0..) and the benchmark.
VAL_SEED = 20_000_003


@dataclass
class L2LTrainConfig:
    """Everything that defines a meta-training run (saved with every checkpoint)."""

    hidden: int = 20
    layers: int = 2
    init_lr: float = 3e-2  # the rule's step size at initialization (it starts as Adam)
    global_features: bool = True  # per-problem gradient cosines (see bbopt.nets.l2l)
    families: tuple[str, ...] = TRAIN_FAMILIES
    batch: int = 8
    horizon: int = 100
    unroll: int = 20
    objective: str = "log"
    grad_scale_decades: float = 2.0  # gradients seen scaled by 10^U(-x, x) per problem
    param_scale_decades: float = 1.0  # parameters in units 10^U(-x, x) per problem
    rate_weight: float = 0.0
    lr: float = 1e-3
    clip: float = 1.0
    iterations: int = 1000  # meta-gradient steps (unrolls)
    val_every: int = 50
    checkpoint_every: int = 25
    snapshot_every: int = 0  # also keep the weights every this many iterations (0: never)
    val_problems: int = 16
    seed: int = 0
    device: str = "cpu"
    init: str | None = None

    def __post_init__(self) -> None:
        self.families = tuple(self.families)
        for fam in self.families:
            family_maker(fam)  # a known family or a user's sampler, else ValueError
        if not self.families:
            raise ValueError("families must name at least one optimizee family")
        if self.objective not in L2L_OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; expected one of "
                             f"{', '.join(L2L_OBJECTIVES)}")
        for name in ("hidden", "layers", "batch", "horizon", "unroll", "iterations",
                     "val_every", "checkpoint_every", "val_problems"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer")
        if int(self.snapshot_every) < 0:
            raise ValueError("snapshot_every must be an integer >= 0")
        if self.horizon % self.unroll:
            raise ValueError(f"horizon ({self.horizon}) must be a multiple of unroll "
                             f"({self.unroll})")
        if self.grad_scale_decades < 0 or self.param_scale_decades < 0:
            raise ValueError("grad_scale_decades and param_scale_decades must be >= 0")
        if not (self.init_lr > 0 and self.lr > 0 and self.clip > 0):
            raise ValueError("init_lr, lr and clip must be positive")


def run_optimizer(make: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
                  problem: Optimizee, steps: int, record: Sequence[int]) -> dict[int, torch.Tensor]:
    """Optimize ``problem`` (all B at once: every optimizer here is elementwise) with the
    optimizer ``make([theta])`` for ``steps`` steps; returns the (B,) full losses after
    each step count in ``record`` (0: the start). A problem whose loss becomes NaN or
    infinite keeps that value (it diverged); an optimizer that refuses a non-finite
    gradient (one memory shared by all problems) leaves every problem diverged."""
    theta = problem.theta0.clone().requires_grad_(True)
    opt = make([theta])
    out: dict[int, torch.Tensor] = {}
    wanted = set(record)
    for t in range(steps + 1):
        if t in wanted:
            with torch.no_grad():
                out[t] = problem.full_loss(theta).detach().clone()
        if t == steps:
            break
        opt.zero_grad(set_to_none=True)
        problem.loss(theta).sum().backward()
        try:
            opt.step()
        except NonFiniteGradientError:
            with torch.no_grad():
                theta.fill_(math.nan)
    return out


class L2LTrainer(MetaTrainer):
    """Meta-trains an ``L2LNet``; ``run()`` trains until ``config.iterations`` unrolls."""

    architecture_keys = ("hidden", "layers", "global_features")
    val_label = "val log10 loss ratio"

    def __init__(self, config: L2LTrainConfig, run_dir: str | Path,
                 command: str | None = None, log: Any = None) -> None:
        super().__init__(config, run_dir, command, log)
        self.net: L2LNet = self.model  # type: ignore[assignment]
        self._episode: tuple[Any, ...] | None = None
        self.val_sets = []
        for i, fam in enumerate(config.families):
            g = torch.Generator().manual_seed(VAL_SEED + 101 * config.seed + i)
            problem = sample_optimizee(fam, config.val_problems, g, self.device)
            if config.param_scale_decades:  # validate on the training distribution: the
                # problems in units spread evenly over the augmentation's range
                u = torch.linspace(-1, 1, config.val_problems, device=self.device)[:, None]
                problem = Rescaled(problem, 10.0 ** (config.param_scale_decades * u))
            self.val_sets.append((fam, problem))

    def make_model(self) -> L2LNet:
        c = self.config
        return L2LNet(hidden=c.hidden, layers=c.layers, lr=c.init_lr,
                      global_features=c.global_features)

    def load_init(self, path: str) -> None:
        start, _ = load_l2l(path, self.device)
        if start.config != self.model.config:
            raise ValueError(f"{path}: its net is {start.config}; this run asks for "
                             f"{self.model.config}")
        self.model.load_state_dict(start.state_dict())

    def save_best(self, path: Path, meta: dict[str, Any]) -> None:
        save_l2l(path, self.net, meta)

    def meta(self) -> dict[str, Any]:
        c = self.config
        return {"families": list(c.families), "horizon": c.horizon, "unroll": c.unroll,
                "objective": c.objective, "rate_weight": c.rate_weight, "batch": c.batch,
                "grad_scale_decades": c.grad_scale_decades, "init_lr": c.init_lr,
                "param_scale_decades": c.param_scale_decades,
                "lr": c.lr, "init": c.init,
                "validation_metric": "mean over the training families' held-out problems "
                                     "of log10(full loss / starting loss) at the horizon "
                                     "and at twice the horizon"}

    # -- episodes -------------------------------------------------------------------------

    def _new_episode(self) -> None:
        c, g = self.config, self.generator
        fam = c.families[int(torch.randint(len(c.families), (1,), generator=g))]
        problem = sample_optimizee(fam, c.batch, g, self.device)
        if c.param_scale_decades:
            u = torch.rand(c.batch, 1, generator=g) * 2 - 1
            problem = Rescaled(problem, (10.0 ** (c.param_scale_decades * u)).to(self.device))
        theta = problem.theta0.clone()
        with torch.no_grad():
            f0 = problem.loss(theta).clamp_min(1e-12)
        state = self.net.initial_state(theta.numel(), self.device)
        # Task augmentation: the same problem with its loss scaled, as the net sees it
        # (its update should not depend on the units of the loss), and above, with its
        # parameters in other units (its step size must adapt to the problem).
        u = torch.rand(c.batch, 1, generator=g) * 2 - 1
        scale = (10.0 ** (c.grad_scale_decades * u)).to(self.device)
        self._episode = (problem, theta, state, f0, scale, 0)

    def loss(self) -> torch.Tensor:
        c = self.config
        if self._episode is None:
            self._new_episode()
        problem, theta, state, f0, scale, done = self._episode  # type: ignore[misc]
        theta = theta.detach().requires_grad_(True)
        state = detach_l2l_state(state)
        fs = []
        for _ in range(c.unroll):
            f = problem.loss(theta)
            (g,) = torch.autograd.grad(f.sum(), theta, retain_graph=True)
            delta, state = self.net.step((g.detach() * scale).reshape(-1), state,
                                         problems=c.batch)
            fs.append(f)
            theta = theta + delta.view_as(theta)
        f_last = problem.loss(theta)
        loss = l2l_loss(torch.stack([*fs[1:], f_last], dim=1), f0, c.objective,
                        rate_weight=c.rate_weight)
        done += c.unroll
        if done >= c.horizon or not torch.isfinite(loss):
            self._episode = None
        else:
            self._episode = (problem, theta.detach(), detach_l2l_state(state), f0, scale, done)
        return loss

    def evaluate_validation(self) -> dict[str, float]:
        h = self.config.horizon
        out: dict[str, float] = {}
        self.net.eval()
        for fam, problem in self.val_sets:
            res = run_optimizer(
                lambda p: LSTMOptimizer(p, weights=self.net, problems=p[0].shape[0]),
                problem, 2 * h, (0, h, 2 * h))
            for t in (h, 2 * h):
                ratio = torch.nan_to_num(res[t] / res[0], nan=1e6, posinf=1e6)
                out[f"{fam}@{t}"] = float(torch.log10(ratio.clamp_min(1e-12)).mean())
        self.net.train()
        out["mean"] = sum(out.values()) / len(out)
        return out
