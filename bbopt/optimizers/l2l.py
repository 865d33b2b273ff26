"""``bbopt.LSTMOptimizer``: the coordinatewise learned optimizer as a ``torch.optim.Optimizer``.

The update rule is ``bbopt.nets.l2l.L2LNet`` (Andrychowicz et al. 2016 with scale-free
inputs and a bounded output); this class applies it in place to a model's parameters,
one row of LSTM state per coordinate, and loads the shipped weights by default.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bbopt.errors import StudyError, check_finite_gradients
from bbopt.nets.l2l import L2LNet
from bbopt.optimizers.base import History, Optimizer, register

WEIGHTS_FORMAT = "bbopt-l2l-v1"
_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
#: The shipped update rules by name. ``general``, the default, was meta-trained on the
#: paper's quadratics, MLPs on digits and synthetic CNNs, for any model; ``quadratic``
#: on the paper's random 10-dimensional quadratics alone, as the paper trains one rule
#: per task family: faster there, not meant for other problems (BENCHMARKS.md).
SHIPPED_WEIGHTS = {"general": _WEIGHTS_DIR / "l2l-lstm.pt",
                   "quadratic": _WEIGHTS_DIR / "l2l-quadratic.pt"}
DEFAULT_WEIGHTS = SHIPPED_WEIGHTS["general"]


def weights_path(weights: str | Path | None) -> Path:
    """The file of ``weights``: None the default rule, a name of ``SHIPPED_WEIGHTS``
    that shipped rule, anything else a path."""
    if weights is None:
        return DEFAULT_WEIGHTS
    if isinstance(weights, str) and weights in SHIPPED_WEIGHTS:
        return SHIPPED_WEIGHTS[weights]
    return Path(weights)


def save_l2l(path: str | Path, net: L2LNet, meta: dict[str, Any]) -> None:
    """Write an update rule in the shipped-weights format (config + state_dict + metadata)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"format": WEIGHTS_FORMAT, "config": net.config, "state_dict": net.state_dict(),
                "meta": meta}, tmp)
    os.replace(tmp, path)


def load_l2l(path: str | Path | None = None, device: str | torch.device = "cpu"
             ) -> tuple[L2LNet, dict[str, Any]]:
    """Read weights written by ``save_l2l`` (``path`` as ``weights_path`` reads it): the
    net (eval mode, no gradients) and metadata."""
    path = weights_path(path)
    try:
        blob = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"no learned-optimizer weights at {path}") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise ValueError(f"{path} is not a bbopt learned optimizer ({WEIGHTS_FORMAT}): "
                         f"{str(e).splitlines()[0]}") from None
    if not isinstance(blob, dict) or blob.get("format") != WEIGHTS_FORMAT:
        raise ValueError(f"{path} is not a bbopt learned optimizer ({WEIGHTS_FORMAT})")
    net = L2LNet(**blob["config"])
    net.load_state_dict(blob["state_dict"])
    net.to(device).eval().requires_grad_(False)
    return net, blob.get("meta", {})


class LSTMOptimizer(torch.optim.Optimizer):
    """The learned coordinatewise LSTM optimizer.

    ``weights``: the name of a shipped rule (``SHIPPED_WEIGHTS``: ``"general"``, the
    default, for any model; ``"quadratic"``, trained on quadratics alone), a path to
    weights written by ``save_l2l``, or an ``L2LNet`` (the meta-trainer validates the
    net it trains this way).
    ``lr`` (per parameter group) multiplies every update: 1 is what was learned, so it is
    not a learning rate to tune, but torch's learning-rate schedulers (warm-up, decay)
    work on it as on any optimizer's. ``scale`` is its former name.
    ``problems``: for benchmarks that optimize a batch of independent problems at once,
    one parameter whose first dimension indexes them (each gets its own global
    features, and a problem whose gradient turns NaN or infinite is left diverged);
    otherwise all parameters form one problem, and a step whose gradient has a NaN or
    infinite entry raises ``NonFiniteGradientError`` (a ValueError) and changes nothing.

    Use it like any torch optimizer::

        opt = bbopt.LSTMOptimizer(model.parameters())
        loss.backward(); opt.step(); opt.zero_grad()
    """

    def __init__(self, params: Iterable[Any], weights: str | Path | L2LNet | None = None,
                 lr: float = 1.0, problems: int = 1, *, scale: float | None = None) -> None:
        if scale is not None:
            if lr != 1.0:
                raise ValueError("give lr or its former name scale, not both")
            lr = scale
        if isinstance(lr, bool) or not (isinstance(lr, int | float) and lr > 0):
            raise ValueError(f"lr (the multiplier of the learned steps) must be a positive "
                             f"number, got {lr!r}")
        super().__init__(params, {"lr": float(lr)})
        if problems != 1:
            ps = [p for g in self.param_groups for p in g["params"]]
            if len(ps) != 1 or ps[0].ndim < 1 or ps[0].shape[0] != problems:
                raise ValueError("problems > 1 needs one parameter whose first dimension "
                                 "is the number of problems")
        self.problems = problems
        if isinstance(weights, L2LNet):
            self.net, self.meta = weights, {}
        else:
            self.net, self.meta = load_l2l(weights)
        self._net_device = next(self.net.parameters()).device
        self._state_len = len(self.net.initial_state(0))

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:  # state saved when the multiplier was "scale"
            if "lr" not in group and "scale" in group:
                group["lr"] = group.pop("scale")

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One update of every parameter that has a gradient: a single pass of the net
        over all their coordinates (the global features see the whole gradient)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        items = []  # (param, its group's multiplier)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("LSTMOptimizer does not support sparse gradients")
                items.append((p, group["lr"]))
        if not items:
            return loss
        dev = self._net_device
        grads = [p.grad.reshape(-1).to(dev, torch.float32) for p, _ in items]
        flat = torch.cat(grads)
        if self.problems == 1 and not bool(torch.isfinite(flat).all()):
            # checked before anything changes: one NaN would reach every coordinate
            # through the global features and stay in the state for good (a batch of
            # problems keeps them apart: there a diverged problem stays diverged)
            check_finite_gradients(
                "LSTMOptimizer.step", [p for p, _ in items], grads,
                "no parameter or optimizer state was changed (skip such steps, as "
                "torch.amp.GradScaler does, or fix the loss)")
        states = []
        for (p, _), g in zip(items, grads, strict=True):
            state = self.state[p]
            if "l2l" not in state:
                state["l2l"] = list(self.net.initial_state(g.numel(), dev))
            if len(state["l2l"]) != self._state_len:
                raise ValueError("optimizer state does not match the loaded weights")
            # load_state_dict casts saved state to the parameter's dtype; the net is float32
            states.append([s.to(dev, torch.float32) for s in state["l2l"]])
        # one state for all coordinates: the step count is shared, the rest concatenated
        joint = tuple(states[0][0] if i == 0 else torch.cat([st[i] for st in states])
                      for i in range(self._state_len))
        delta, new = self.net.step(flat, joint, problems=self.problems)
        sizes = [g.numel() for g in grads]
        per_param = [torch.split(s, sizes) for s in new[1:]]
        for j, ((p, mult), d) in enumerate(zip(items, torch.split(delta, sizes), strict=True)):
            self.state[p]["l2l"] = [new[0], *(piece[j] for piece in per_param)]
            p.add_(d.view_as(p).to(p.device, p.dtype), alpha=mult)
        return loss


@register("l2l")
class L2LMethod(Optimizer):
    """Gradient mode of a study: the learned optimizer's trajectory through the unit cube.

    It starts at the centre of the cube (or at ``start``, a unit-cube point) and each ask
    proposes the last completed point plus the update the LSTM optimizer makes from the
    gradients told so far (``study.tell(trial, value, grad=...)``; the study converts
    them to unit-cube coordinates). It follows one trajectory, so it proposes one point
    at a time and needs the previous point told first. Trials told without a gradient
    (``study.add``) and failed trials are not part of the trajectory.
    """

    needs_gradient = True

    def __init__(self, dim: int, seed: int = 0, weights: str | None = None,
                 start: list[float] | None = None, scale: float = 1.0) -> None:
        super().__init__(dim, seed)
        self.net, _ = load_l2l(weights)
        self.start = np.full(dim, 0.5) if start is None else np.asarray(start, dtype=float)
        if self.start.shape != (dim,) or not np.all((self.start >= 0) & (self.start <= 1)):
            raise ValueError(f"start must be a point of the unit cube of dimension {dim}")
        if not scale > 0:
            raise ValueError("scale must be positive")
        self.scale = float(scale)
        # (number of gradients replayed, LSTM state, last update): asks in a row replay
        # only the newest gradient.
        self._cache: tuple[int, Any, np.ndarray] | None = None

    def propose(self, history: History, n: int) -> np.ndarray:
        if n != 1:
            raise StudyError("method 'l2l' follows one trajectory: ask one trial at a time")
        if len(history.pending):
            raise StudyError("method 'l2l' needs the pending trial told (with its gradient) "
                             "before it can propose the next one")
        if history.grads is None:
            return self.start[None, :].copy()
        rows = ~np.isnan(history.grads).any(axis=1)
        X, G = history.X[rows], history.grads[rows]
        if not len(G):
            return self.start[None, :].copy()
        if self._cache is not None and self._cache[0] <= len(G):
            done, state, delta = self._cache
        else:
            done, state, delta = 0, self.net.initial_state(self.dim), np.zeros(self.dim)
        with torch.no_grad():
            for g in G[done:]:
                d, state = self.net.step(torch.as_tensor(g, dtype=torch.float32), state)
                delta = d.numpy().astype(float)
        self._cache = (len(G), state, delta)
        return np.clip(X[-1] + self.scale * delta, 0.0, 1.0)[None, :]
