"""``bbopt.LRMemory``: an online memory of learning rates (after Meier, Kappler & Schaal 2017).

The learning rate of a coordinate is read from a memory indexed by its gradient: a
locally weighted regression over ``z = log10 |g|`` with Gaussian receptive fields at
``centers`` (width ``width``), each holding a log learning rate ``beta_k``::

    log lr(g) = sum_k w_k(z) beta_k / sum_k w_k(z),     w_k(z) = exp(-(z - c_k)^2 / (2 width^2))

The memory learns online from the sign of consecutive gradients of each coordinate: the
same sign means the last step was too short (the loss still falls that way), opposite
signs mean it overshot. This sign is the sign of the hypergradient -g_t g_{t-1}. Each
field moves its log learning rate by ``meta_lr`` times the average sign of the
coordinates whose previous gradient fell in it, weighted by their activation::

    beta_k += meta_lr * sum_i w_k(z_i) s_i / (sum_i w_k(z_i) + 1),   s_i = sign(g_t,i g_{t-1,i})

(the +1 damps fields that saw few coordinates). One memory serves every parameter, so
what it learns carries over: ``memory()`` returns it, and ``LRMemory(params,
memory=...)`` starts a related next task from it. The learning rates scale the update of
a base optimizer (plain SGD by default): the base steps with its own learning rate and
each coordinate's step is multiplied by ``lr(g) / base lr``. A param group's ``lr``
(the constructor's ``lr`` unless the group sets its own) over the constructor's ``lr``
scales the memory's rates for that group, so torch's learning-rate schedulers (warm-up,
decay) scale the learned rates as they would a plain learning rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from bbopt.errors import check_finite_gradients

MEMORY_FORMAT = "bbopt-lr-memory-v1"


def _fields(centers: torch.Tensor, width: float, z: torch.Tensor) -> torch.Tensor:
    """(N, K) receptive-field activations of the (N,) inputs ``z``."""
    return torch.exp(-0.5 * ((z[:, None] - centers[None, :]) / width).square())


def _z(g: torch.Tensor) -> torch.Tensor:
    return torch.log10(g.abs() + 1e-12)


class LRMemory(torch.optim.Optimizer):
    """SGD (or ``base``) with per-coordinate learning rates read from a learned memory.

    ``lr``: the learning rate a fresh memory holds everywhere; ``memory``: a memory from
    ``memory()`` (or a path written by ``save_memory``) to start from instead;
    ``centers`` / ``width``: the receptive fields over log10 |g| of a fresh memory;
    ``meta_lr``: how fast the memory learns; ``lr_bounds``: the learning rates it may
    hold; ``base`` / ``base_options``: the optimizer whose steps are scaled. A group's
    ``lr`` over ``lr`` multiplies the rates the memory gives its coordinates (1 unless a
    group or a learning-rate scheduler sets it otherwise).
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-2,
                 memory: dict[str, Any] | str | Path | None = None,
                 centers: Iterable[float] | None = None, width: float | None = None,
                 meta_lr: float = 0.1, lr_bounds: tuple[float, float] = (1e-6, 10.0),
                 base: type[torch.optim.Optimizer] = torch.optim.SGD,
                 base_options: dict[str, Any] | None = None) -> None:
        if not lr > 0 or not meta_lr >= 0:
            raise ValueError("lr must be positive and meta_lr non-negative")
        lo, hi = lr_bounds
        if not 0 < lo < hi:
            raise ValueError(f"lr_bounds must be 0 < low < high, got {lr_bounds}")
        super().__init__(params, {"lr": float(lr)})
        self.meta_lr = float(meta_lr)
        self.log_bounds = (math.log(lo), math.log(hi))
        if memory is not None:
            if isinstance(memory, str | Path):
                memory = load_memory(memory)
            self._set_memory(memory)
        else:
            c = torch.linspace(-7.0, 1.0, 17) if centers is None else torch.tensor(
                list(centers), dtype=torch.float32)
            if c.ndim != 1 or len(c) < 1:
                raise ValueError("centers must be a non-empty list of numbers")
            w = float(width) if width is not None else (
                float(c[1] - c[0]) if len(c) > 1 else 1.0)
            if not w > 0:
                raise ValueError("width must be positive")
            self.centers, self.width = c, w
            self.log_lr = torch.full_like(c, math.log(lr))
        self.base_lr = float((base_options or {}).get("lr", lr))
        # One base group per group, here and in add_param_group: their states match.
        self.base = base([{"params": g["params"]} for g in self.param_groups],
                         **{"lr": self.base_lr, **(base_options or {})})

    # -- the memory -----------------------------------------------------------------------

    def _set_memory(self, memory: dict[str, Any]) -> None:
        try:
            c = torch.as_tensor(memory["centers"], dtype=torch.float32).clone()
            b = torch.as_tensor(memory["log_lr"], dtype=torch.float32).clone()
            w = float(memory["width"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a learning-rate memory: {e}") from None
        if c.shape != b.shape or c.ndim != 1 or not w > 0:
            raise ValueError("not a learning-rate memory: centers and log_lr must be "
                             "equally long vectors and width positive")
        self.centers, self.width, self.log_lr = c, w, b

    def memory(self) -> dict[str, Any]:
        """The memory (centers, width, log learning rates), to start a related task from."""
        return {"format": MEMORY_FORMAT, "centers": self.centers.clone(),
                "width": self.width, "log_lr": self.log_lr.clone()}

    def learning_rates(self, g: torch.Tensor) -> torch.Tensor:
        """The learning rates the memory gives to gradients ``g`` (any shape)."""
        z = _z(g.reshape(-1).float().cpu())
        w = _fields(self.centers, self.width, z)
        log_lr = (w * self.log_lr).sum(1) / w.sum(1).clamp_min(1e-30)
        return torch.exp(log_lr).reshape(g.shape)

    def _learn(self, g_prev: torch.Tensor, g: torch.Tensor) -> None:
        s = torch.sign(g_prev * g)
        w = _fields(self.centers, self.width, _z(g_prev))
        self.log_lr += self.meta_lr * (w * s[:, None]).sum(0) / (w.sum(0) + 1.0)
        self.log_lr.clamp_(*self.log_bounds)

    # -- torch.optim.Optimizer ------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (torch's contract); its ``lr``, if given, must be a number >= 0. A
        group added after construction is stepped by the base optimizer too."""
        lr_g = param_group.get("lr", self.defaults["lr"])
        if isinstance(lr_g, bool) or not isinstance(lr_g, int | float) or not lr_g >= 0:
            raise ValueError(f"a param group's lr must be a number >= 0, got {lr_g!r}")
        super().add_param_group(param_group)
        if hasattr(self, "base"):
            self.base.add_param_group({"params": self.param_groups[-1]["params"]})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with_grad = [(p, group["lr"] / self.defaults["lr"]) for group in self.param_groups
                     for p in group["params"] if p.grad is not None]
        if any(p.grad.is_sparse for p, _ in with_grad):
            raise RuntimeError("LRMemory does not support sparse gradients")
        items = [(p, p.grad.detach().reshape(-1).float().cpu(), scale) for p, scale in with_grad]
        # before anything changes: one NaN would spread through the shared memory
        check_finite_gradients("LRMemory.step", [p for p, _, _ in items],
                               [g for _, g, _ in items],
                               "no parameter, optimizer state or memory was changed")
        grads, prev, before = [], [], []
        for p, g, scale in items:
            state = self.state[p]
            if "prev_grad" in state:
                grads.append(g)
                prev.append(state["prev_grad"])
            state["prev_grad"] = g.clone()
            before.append((p, p.detach().clone(), g, scale))
        if grads:  # learn from this step's signs first, then step with what was learned
            self._learn(torch.cat(prev), torch.cat(grads))
        self.base.step()
        for p, old, g, scale in before:
            factor = (self.learning_rates(g) / self.base_lr * scale).reshape(p.shape).to(
                p.device, p.dtype)
            p.copy_(old + (p - old) * factor)
        return loss

    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        out["memory"] = self.memory()
        out["base"] = self.base.state_dict()
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        memory, base = state_dict.pop("memory", None), state_dict.pop("base", None)
        if memory is None:
            raise ValueError("state_dict has no learning-rate memory")
        super().load_state_dict(state_dict)
        for group in self.param_groups:  # saved before groups had an lr: the rates as read
            group.setdefault("lr", self.defaults["lr"])
        self._set_memory(memory)
        if base is not None:
            self.base.load_state_dict(base)


def save_memory(path: str | Path, memory: dict[str, Any]) -> None:
    """Write a memory (``LRMemory.memory()``) to ``path``."""
    torch.save({k: v for k, v in memory.items()}, Path(path))


def load_memory(path: str | Path) -> dict[str, Any]:
    """Read a memory written by ``save_memory``."""
    try:
        blob = torch.load(Path(path), weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"no learning-rate memory at {path}") from None
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same error to a user
        raise ValueError(f"{path} is not a learning-rate memory: {e}") from None
    if not isinstance(blob, dict) or blob.get("format") != MEMORY_FORMAT:
        raise ValueError(f"{path} is not a learning-rate memory ({MEMORY_FORMAT})")
    return blob
