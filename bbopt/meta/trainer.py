"""Meta-training of the black-box policy on functions sampled from a GP prior.

Backpropagation through whole trajectories (``horizon`` queries, 100 by default) on
batches of random functions, Adam with gradient-norm clipping, validation on a fixed set
of held-out GP samples; checkpoints, best weights and resume as in ``bbopt.meta.base``.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bbopt.meta.base import MetaTrainer
from bbopt.meta.losses import LOSSES, bbo_loss, step_weights
from bbopt.nets.policy import BBOPolicy, rollout

WEIGHTS_FORMAT = "bbopt-bbo-policy-v1"


@dataclass
class BBOTrainConfig:
    """Everything that defines a meta-training run (saved with every checkpoint)."""

    core: str = "lstm"
    hidden: int = 64
    layers: int = 2
    dims: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12)
    horizon: int = 100
    batch: int = 64
    loss: str = "ei"
    step_weighting: str = "uniform"
    rate_weight: float = 0.0
    parallel: tuple[int, ...] = (1, 1, 1, 2, 4, 8)
    lr: float = 3e-4
    clip: float = 1.0
    iterations: int = 2000
    val_every: int = 100
    checkpoint_every: int = 50
    snapshot_every: int = 0  # also keep the weights every this many iterations (0: never)
    val_dims: tuple[int, ...] = (2, 4, 8)
    val_functions: int = 32
    kernel: str = "mixed"
    lengthscale_range: tuple[float, float] = (0.05, 2.0)
    noise_std_range: tuple[float, float] = (0.0, 0.0)
    num_features: int = 256
    seed: int = 0
    device: str = "cpu"
    core_options: dict[str, Any] = field(default_factory=dict)
    regret_floor: float = 1e-4
    init: str | None = None  # shipped-format weights to start from (same architecture)
    # Policy draws per query of a GP screen in the loop (``rollout``'s ``screen``), in
    # training and validation alike: the policy learns to propose as it is used, among
    # the screen's other candidates (gradients flow when one of its draws is picked).
    # 0: the policy's own draw is the query.
    screen: int = 0

    def __post_init__(self) -> None:
        if not self.regret_floor > 0:
            raise ValueError("regret_floor must be positive")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; expected one of {', '.join(LOSSES)}")
        if self.core not in ("lstm", "dnc"):
            raise ValueError(f"unknown core {self.core!r}; expected 'lstm' or 'dnc'")
        for name in ("dims", "val_dims", "parallel"):
            vals = tuple(int(v) for v in getattr(self, name))
            if not vals or min(vals) < 1:
                raise ValueError(f"{name} must be a non-empty list of positive integers")
            setattr(self, name, vals)
        for name in ("horizon", "batch", "iterations", "val_every", "checkpoint_every",
                     "val_functions", "hidden", "layers", "num_features"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer")
        if int(self.snapshot_every) < 0:
            raise ValueError("snapshot_every must be an integer >= 0")
        if int(self.screen) < 0:
            raise ValueError("screen must be an integer >= 0")
        self.lengthscale_range = tuple(self.lengthscale_range)  # type: ignore[assignment]
        self.noise_std_range = tuple(self.noise_std_range)  # type: ignore[assignment]

    def make_policy(self) -> BBOPolicy:
        opts = dict(self.core_options)
        if self.core == "lstm":
            opts.setdefault("layers", self.layers)
        return BBOPolicy(self.core, hidden=self.hidden, **opts)

    def prior(self) -> Any:
        from bbopt.tasks.gp_prior import GPPrior

        return GPPrior(kernel=self.kernel, lengthscale_range=self.lengthscale_range,
                       noise_std_range=self.noise_std_range, num_features=self.num_features)


def _scaled(fn: Any, y: torch.Tensor) -> torch.Tensor:
    """Values in units of the function's prior standard deviation, offset removed."""
    return (y - fn.offset[:, None]) / fn.outputscale.sqrt()[:, None]


@torch.no_grad()
def final_log_regret(policy: BBOPolicy | None, fn: Any, f_min: torch.Tensor, horizon: int,
                     parallel: int, generator: torch.Generator, floor: float,
                     screen: int = 0) -> torch.Tensor:
    """log10(simple regret + floor) after ``horizon`` queries, regret in prior std units,
    per function of the batch ``fn``; ``policy=None`` is uniform random search."""
    if policy is None:
        x = torch.rand(fn.batch_size, horizon, fn.dim, generator=generator,
                       device=fn.device, dtype=fn.dtype)
        y = fn(x)
    else:
        _, y = rollout(policy, fn, horizon, parallel=parallel, generator=generator,
                       screen=screen)
    regret = (y.min(dim=1).values - f_min).clamp_min(0) / fn.outputscale.sqrt()
    return torch.log10(regret + floor)


class ValidationSet:
    """Held-out GP samples (seeded apart from training) with their estimated minima."""

    def __init__(self, prior: Any, dims: tuple[int, ...], n: int, seed: int,
                 device: torch.device, floor: float = 1e-4) -> None:
        self.floor = floor
        self.sets = []
        for d in dims:
            g = torch.Generator().manual_seed(10_000_019 + 7919 * seed + d)
            fn = prior.sample(n, d, generator=g, device=device)
            _, fmin = fn.minimum(generator=g)
            self.sets.append((d, fn, fmin))

    def evaluate(self, policy: BBOPolicy, horizon: int, parallel: int = 1,
                 seed: int = 0, screen: int = 0) -> dict[str, float]:
        """Mean log10 (simple regret + floor), regret in prior std units, at the horizon,
        per dim and overall; ``screen`` as in ``rollout``."""
        policy.eval()
        out: dict[str, float] = {}
        for d, fn, fmin in self.sets:
            g = torch.Generator(device=fn.device).manual_seed(seed + d)
            logr = final_log_regret(policy, fn, fmin, horizon, parallel, g, self.floor,
                                    screen)
            out[f"d{d}"] = float(logr.mean())
        out["mean"] = sum(out[f"d{d}"] for d, _, _ in self.sets) / len(self.sets)
        policy.train()
        return out


def save_policy(path: str | Path, policy: BBOPolicy, meta: dict[str, Any]) -> None:
    """Write a policy in the shipped-weights format (config + state_dict + metadata)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"format": WEIGHTS_FORMAT, "config": policy.config,
                "state_dict": policy.state_dict(), "meta": meta}, tmp)
    os.replace(tmp, path)


def load_policy(path: str | Path, device: str | torch.device = "cpu"
                ) -> tuple[BBOPolicy, dict[str, Any]]:
    """Read a policy written by ``save_policy``; returns it (in eval mode) and its metadata."""
    try:
        blob = torch.load(Path(path), map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise ValueError(f"{path} is not a bbopt black-box policy ({WEIGHTS_FORMAT}): "
                         f"{str(e).splitlines()[0]}") from None
    if not isinstance(blob, dict) or blob.get("format") != WEIGHTS_FORMAT:
        raise ValueError(f"{path} is not a bbopt black-box policy ({WEIGHTS_FORMAT})")
    config = dict(blob["config"])
    core = config.pop("core")
    hidden = config.pop("hidden")
    policy = BBOPolicy(core, hidden=hidden, **config)
    policy.load_state_dict(blob["state_dict"])
    policy.to(device).eval()
    return policy, blob.get("meta", {})


class BBOTrainer(MetaTrainer):
    """Meta-trains a ``BBOPolicy``; ``run()`` trains until ``config.iterations``."""

    architecture_keys = ("core", "hidden", "layers", "core_options")
    val_label = "val log10 regret"

    def __init__(self, config: BBOTrainConfig, run_dir: str | Path,
                 command: str | None = None, log: Any = None) -> None:
        self.prior = config.prior()
        super().__init__(config, run_dir, command, log)
        self.policy: BBOPolicy = self.model  # type: ignore[assignment]
        self.val = ValidationSet(self.prior, config.val_dims, config.val_functions,
                                 config.seed, self.device, config.regret_floor)

    def make_model(self) -> BBOPolicy:
        return self.config.make_policy()

    def load_init(self, path: str) -> None:
        start, _ = load_policy(path, self.device)
        if start.config != self.model.config:
            raise ValueError(f"{path}: its policy is {start.config}, this run asks "
                             f"for {self.model.config}")
        self.model.load_state_dict(start.state_dict())

    def save_best(self, path: Path, meta: dict[str, Any]) -> None:
        save_policy(path, self.policy, meta)

    def meta(self) -> dict[str, Any]:
        c = self.config
        return {
            "dims": list(c.dims), "horizon": c.horizon, "loss": c.loss,
            "step_weighting": c.step_weighting, "rate_weight": c.rate_weight,
            "parallel": list(c.parallel), "batch": c.batch, "lr": c.lr,
            "prior": {"kernel": c.kernel, "lengthscale_range": list(c.lengthscale_range),
                      "noise_std_range": list(c.noise_std_range)},
            "init": c.init, "regret_floor": c.regret_floor, "screen": c.screen,
            "validation_metric": f"mean log10(simple regret + {c.regret_floor:g}) at the "
                                 "horizon, regret in prior std units, held-out GP samples"
                                 + (f", GP screen {c.screen}" if c.screen else ""),
        }

    def loss(self) -> torch.Tensor:
        c, g = self.config, self.generator
        d = c.dims[int(torch.randint(len(c.dims), (1,), generator=g))]
        q = c.parallel[int(torch.randint(len(c.parallel), (1,), generator=g))]
        fn = self.prior.sample(c.batch, d, generator=g, device=self.device)
        x, y = rollout(self.policy, fn, c.horizon, parallel=q, generator=g, screen=c.screen)
        w = step_weights(c.horizon, c.step_weighting, device=self.device, dtype=y.dtype)
        y_min = None
        if c.loss == "log-regret":
            _, f_min = fn.minimum(n_candidates=2048, refine_steps=30, generator=g)
            y_min = _scaled(fn, f_min[:, None])[:, 0]
        return bbo_loss(c.loss, x, _scaled(fn, y), w, fn=fn, rate_weight=c.rate_weight,
                        y_min=y_min, regret_floor=c.regret_floor)

    def evaluate_validation(self) -> dict[str, float]:
        return self.val.evaluate(self.policy, self.config.horizon, screen=self.config.screen)


#: Seeds of the evaluation functions of ``evaluate``: apart from training (seed 0..),
#: validation (10_000_019..) and the benchmark tasks (777_000_000..).
EVAL_SEED = 333_000_000


def evaluate(policies: dict[str, BBOPolicy | None], dims: tuple[int, ...], functions: int,
             horizon: int = 100, parallel: int = 1, seed: int = EVAL_SEED,
             device: str | torch.device = "cpu", screen: int = 0
             ) -> dict[str, dict[str, float]]:
    """Median and mean log10 simple regret at ``horizon`` on fresh GP-prior samples.

    ``policies`` maps a label to a policy, or to None for uniform random search (the
    reference). The functions (mixed RBF / Matern-5/2 prior) and the random draws are the
    same for every policy; ``screen`` as in ``rollout``. Returns ``{label: {"d2 median": ..., "d2 mean": ..., ...}}``.
    """
    from bbopt.tasks.gp_prior import GPPrior

    prior = GPPrior(kernel="mixed")
    out: dict[str, dict[str, float]] = {label: {} for label in policies}
    for d in dims:
        g = torch.Generator().manual_seed(seed + d)
        fn = prior.sample(functions, d, generator=g, device=device)
        _, f_min = fn.minimum(generator=g)
        for label, policy in policies.items():
            draws = torch.Generator(device=fn.device).manual_seed(seed + 1000 + d)
            if policy is not None:
                policy.eval()
            logr = final_log_regret(policy, fn, f_min, horizon, parallel, draws, 1e-6,
                                    screen)
            out[label][f"d{d} median"] = float(logr.median())
            out[label][f"d{d} mean"] = float(logr.mean())
    return out
