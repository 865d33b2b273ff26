"""Functions sampled from a Gaussian-process prior on the unit cube, for meta-training.

The learned optimizer (a recurrent policy, as in Chen et al. 2017, "Learning to learn
without gradient descent by gradient descent") is trained on many functions drawn from a
GP prior. Exact GP samples cannot be evaluated at arbitrary new points cheaply, so each
function is a random-Fourier-feature (RFF) approximation (Rahimi & Recht 2007):

    f(x) = offset + sqrt(outputscale) * sqrt(2 / M) * sum_m w_m cos(W_m . x + b_m)

with frequencies ``W_m`` drawn from the kernel's spectral density, phases ``b_m`` uniform
on [0, 2 pi) and weights ``w_m ~ N(0, 1)``. Over the random draws, ``f - offset`` has
exactly the kernel's covariance; for fixed draws it is a smooth function, batched over
functions and differentiable in ``x`` with plain torch ops.

``GPPrior`` is the distribution (kernel family and hyperparameter ranges); ``GPPrior.sample``
returns a ``GPFunctions`` batch that evaluates, observes with noise, gives the exact kernel
matrix (for an exact-GP expected-improvement loss) and estimates each function's minimum
(for regret on held-out samples).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

KERNELS: tuple[str, ...] = ("rbf", "matern52")
"""Kernel names, indexed by ``GPFunctions.kernel_id``."""
RBF, MATERN52 = 0, 1
_KERNEL_CHOICES = (*KERNELS, "mixed")
_MATERN_DOF = 5  # the spectral density of Matern-nu is Student-t with 2 * nu dof


def _check_range(name: str, value: Any, *, positive: bool) -> tuple[float, float]:
    """Validate a ``(low, high)`` range and return it as a tuple of floats."""
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (low, high) of numbers, got {value!r}") from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if positive and low <= 0:
        raise ValueError(f"{name} must be positive (low > 0), got {value!r}")
    if low < 0:
        raise ValueError(f"{name} must be non-negative (low >= 0), got {value!r}")
    if low > high:
        raise ValueError(f"{name} needs low <= high, got {value!r}")
    return low, high


def _check_count(name: str, value: Any) -> int:
    """Validate a positive integer (bools rejected)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _draw_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    """Where random draws happen: the generator's device, so results do not depend on
    the device the functions end up on."""
    return generator.device if generator is not None else device


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device,
          dtype: torch.dtype) -> torch.Tensor:
    dev = _draw_device(generator, device)
    return torch.rand(shape, generator=generator, device=dev, dtype=dtype).to(device)


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device,
           dtype: torch.dtype) -> torch.Tensor:
    dev = _draw_device(generator, device)
    return torch.randn(shape, generator=generator, device=dev, dtype=dtype).to(device)


def _scale_from_unit(u: torch.Tensor, low: float, high: float, log: bool) -> torch.Tensor:
    """Map uniform draws ``u`` in [0, 1) to [low, high], log-uniformly if ``log``."""
    if low == high:
        return torch.full_like(u, low)
    if log:
        return torch.exp(math.log(low) + u * (math.log(high) - math.log(low)))
    return low + u * (high - low)


@dataclass(frozen=True)
class GPPrior:
    """A distribution over functions on [0, 1]^d: a zero-mean GP plus a random constant.

    Each sampled function gets its own hyperparameters: ARD lengthscales (log-uniform,
    independently per dimension), an outputscale (log-uniform), a constant offset
    ``~ N(0, offset_std^2)`` and an observation-noise std (log-uniform if its range's low
    end is > 0, else uniform; the default (0, 0) is noise-free). A range with
    ``low == high`` fixes the value. ``kernel="mixed"`` draws each function's kernel
    uniformly from ``KERNELS``.
    """

    kernel: str = "rbf"
    lengthscale_range: tuple[float, float] = (0.05, 2.0)
    outputscale_range: tuple[float, float] = (0.5, 2.0)
    offset_std: float = 1.0
    noise_std_range: tuple[float, float] = (0.0, 0.0)
    num_features: int = 512

    def __post_init__(self) -> None:
        if self.kernel not in _KERNEL_CHOICES:
            raise ValueError(
                f"unknown kernel {self.kernel!r}; expected one of {', '.join(_KERNEL_CHOICES)}"
            )
        set_ = object.__setattr__  # frozen dataclass: normalize the fields in place
        set_(self, "lengthscale_range",
             _check_range("lengthscale_range", self.lengthscale_range, positive=True))
        set_(self, "outputscale_range",
             _check_range("outputscale_range", self.outputscale_range, positive=True))
        set_(self, "noise_std_range",
             _check_range("noise_std_range", self.noise_std_range, positive=False))
        try:
            offset_std = float(self.offset_std)
        except (TypeError, ValueError):
            raise ValueError(f"offset_std must be a number, got {self.offset_std!r}") from None
        if not math.isfinite(offset_std) or offset_std < 0:
            raise ValueError(f"offset_std must be finite and >= 0, got {self.offset_std!r}")
        set_(self, "offset_std", offset_std)
        _check_count("num_features", self.num_features)

    def sample(
        self,
        batch: int,
        dim: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> GPFunctions:
        """Draw ``batch`` functions on [0, 1]^``dim``.

        Draws are made in float64 on the generator's device (without one: from torch's
        global CPU generator) in a fixed order, then cast and moved: the same seed gives
        the same functions whatever ``device``/``dtype`` (up to rounding).
        """
        _check_count("batch", batch)
        _check_count("dim", dim)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        device = torch.device(device) if device is not None else torch.device("cpu")
        draw_dev = generator.device if generator is not None else torch.device("cpu")
        B, d, M = batch, dim, self.num_features
        f64 = torch.float64

        def rand(*shape: int) -> torch.Tensor:
            return _rand(shape, generator, draw_dev, f64)

        def randn(*shape: int) -> torch.Tensor:
            return _randn(shape, generator, draw_dev, f64)

        # Every draw is always made (even when unused) so the stream is consumed the same way.
        u_kernel = rand(B)
        lengthscale = _scale_from_unit(rand(B, d), *self.lengthscale_range, log=True)
        outputscale = _scale_from_unit(rand(B), *self.outputscale_range, log=True)
        offset = self.offset_std * randn(B)
        low, high = self.noise_std_range
        noise_std = _scale_from_unit(rand(B), low, high, log=low > 0)
        z = randn(B, M, d)
        chi2 = randn(B, M, _MATERN_DOF).square().sum(-1, keepdim=True)
        phase = 2 * math.pi * rand(B, M)
        weight = randn(B, M)

        if self.kernel == "mixed":
            kernel_id = (u_kernel >= 0.5).long()
        else:
            kernel_id = torch.full((B,), KERNELS.index(self.kernel), dtype=torch.long,
                                   device=draw_dev)
        # RBF: N(0, I / l^2). Matern-5/2: multivariate Student-t with 5 dof, scale I / l^2.
        t_scale = torch.rsqrt(chi2 / _MATERN_DOF)
        is_matern = (kernel_id == MATERN52)[:, None, None]
        freq = torch.where(is_matern, z * t_scale, z) / lengthscale[:, None, :]

        return GPFunctions(
            lengthscale=lengthscale, outputscale=outputscale, offset=offset,
            noise_std=noise_std, kernel_id=kernel_id, freq=freq, phase=phase, weight=weight,
        ).to(device=device, dtype=dtype)


@dataclass
class GPFunctions:
    """A batch of ``B`` functions on [0, 1]^d sampled from a ``GPPrior`` (RFF form).

    Fields: ``lengthscale`` (B, d), ``outputscale`` (B,), ``offset`` (B,), ``noise_std``
    (B,), ``kernel_id`` (B,) long indexing ``KERNELS``, and the RFF parameters ``freq``
    W (B, M, d), ``phase`` b (B, M), ``weight`` w (B, M).
    """

    lengthscale: torch.Tensor
    outputscale: torch.Tensor
    offset: torch.Tensor
    noise_std: torch.Tensor
    kernel_id: torch.Tensor
    freq: torch.Tensor
    phase: torch.Tensor
    weight: torch.Tensor

    def __post_init__(self) -> None:
        if self.freq.dim() != 3:
            raise ValueError(f"freq must have shape (B, M, d), got {tuple(self.freq.shape)}")
        B, M, d = self.freq.shape
        expected = {
            "lengthscale": (B, d), "outputscale": (B,), "offset": (B,), "noise_std": (B,),
            "kernel_id": (B,), "phase": (B, M), "weight": (B, M),
        }
        for name, shape in expected.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(f"{name} must have shape {shape}, got {got}")
        if B < 1:
            raise ValueError("a GPFunctions batch needs at least one function")

    # -- shape and bookkeeping ------------------------------------------------------------

    @property
    def batch_size(self) -> int:
        """Number of functions B."""
        return self.freq.shape[0]

    @property
    def dim(self) -> int:
        """Input dimension d."""
        return self.freq.shape[2]

    @property
    def num_features(self) -> int:
        """Number of random Fourier features M."""
        return self.freq.shape[1]

    @property
    def device(self) -> torch.device:
        return self.freq.device

    @property
    def dtype(self) -> torch.dtype:
        return self.freq.dtype

    @property
    def kernels(self) -> list[str]:
        """Each function's kernel name."""
        return [KERNELS[i] for i in self.kernel_id.tolist()]

    def __len__(self) -> int:
        return self.batch_size

    def __repr__(self) -> str:
        names = sorted(set(self.kernels))
        return (f"GPFunctions(batch_size={self.batch_size}, dim={self.dim}, "
                f"num_features={self.num_features}, kernels={names}, "
                f"dtype={self.dtype}, device={self.device})")

    def to(self, device: torch.device | str | None = None,
           dtype: torch.dtype | None = None) -> GPFunctions:
        """A copy on ``device`` and/or with floating fields cast to ``dtype``."""
        out = {}
        for f in fields(self):
            t = getattr(self, f.name)
            out[f.name] = t.to(device=device, dtype=dtype if t.is_floating_point() else None)
        return GPFunctions(**out)

    def select(self, indices: int | slice | Sequence[int] | torch.Tensor) -> GPFunctions:
        """The sub-batch at ``indices`` (int, slice, index list/tensor or bool mask).

        An int gives a batch of one, so shapes keep their batch dimension.
        """
        if isinstance(indices, bool):
            raise ValueError("select needs integer indices, a slice or a mask, not a bool")
        if isinstance(indices, int):
            if not -self.batch_size <= indices < self.batch_size:
                raise ValueError(f"index {indices} out of range for batch of {self.batch_size}")
            indices = slice(indices, indices + 1 if indices != -1 else None)
        if not isinstance(indices, slice):
            indices = torch.as_tensor(indices, device=self.device)
            if indices.dtype == torch.bool:
                if indices.shape != (self.batch_size,):
                    raise ValueError(f"a mask must have shape ({self.batch_size},), "
                                     f"got {tuple(indices.shape)}")
            elif indices.dtype not in (torch.int64, torch.int32) or indices.dim() != 1:
                raise ValueError("indices must be a 1-D sequence of integers or a bool mask")
            elif indices.numel() and not (
                (indices >= -self.batch_size).all() and (indices < self.batch_size).all()
            ):
                raise ValueError(f"indices out of range for batch of {self.batch_size}")
        out = {f.name: getattr(self, f.name)[indices] for f in fields(self)}
        if out["freq"].shape[0] == 0:
            raise ValueError("selection is empty: a GPFunctions batch needs at least one function")
        return GPFunctions(**out)

    def __getitem__(self, indices: int | slice | Sequence[int] | torch.Tensor) -> GPFunctions:
        return self.select(indices)

    # -- evaluation -----------------------------------------------------------------------

    def _check_x(self, x: torch.Tensor, name: str = "x",
                 allow_2d: bool = True) -> tuple[torch.Tensor, bool]:
        """Validate ``x`` as (B, T, d) (or (B, d) if allowed); return it as (B, T, d)."""
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        shapes = "(B, T, d) or (B, d)" if allow_2d else "(B, T, d)"
        if x.dim() not in ((2, 3) if allow_2d else (3,)):
            raise ValueError(f"{name} must have shape {shapes}, got {tuple(x.shape)}")
        if x.shape[0] != self.batch_size:
            raise ValueError(f"{name} has batch size {x.shape[0]}, "
                             f"the functions have {self.batch_size}")
        if x.shape[-1] != self.dim:
            raise ValueError(f"{name} has dimension {x.shape[-1]}, the functions have {self.dim}")
        single = x.dim() == 2
        x = x.unsqueeze(1) if single else x
        return x.to(dtype=self.dtype), single

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Noise-free values at ``x`` (B, T, d) -> (B, T), or (B, d) -> (B,); differentiable."""
        x, single = self._check_x(x)
        proj = torch.baddbmm(self.phase.unsqueeze(1), x, self.freq.transpose(1, 2))  # B,T,M
        amp = torch.sqrt(self.outputscale * (2.0 / self.num_features))
        coef = (self.weight * amp[:, None]).unsqueeze(-1)  # (B, M, 1)
        y = torch.bmm(torch.cos(proj), coef).squeeze(-1) + self.offset[:, None]
        return y.squeeze(1) if single else y

    def observe(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Noisy observations at ``x``: ``f(x) + noise_std * N(0, 1)``, iid per point."""
        y = self(x)
        eps = _randn(tuple(y.shape), generator, self.device, self.dtype)
        noise = self.noise_std.view(-1, *([1] * (y.dim() - 1)))
        return y + noise * eps

    def kernel_matrix(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """Exact prior covariance of ``f - offset``: (B, T1, d), (B, T2, d) -> (B, T1, T2).

        ``outputscale * k(r)`` with ``r = ||(x1 - x2) / lengthscale||``; RBF:
        ``exp(-r^2 / 2)``, Matern-5/2: ``(1 + sqrt5 r + 5 r^2 / 3) exp(-sqrt5 r)``. Pairwise
        distances avoid the ``|a|^2 + |b|^2 - 2ab`` trick for accuracy, and are finite-
        gradient at coincident points.
        """
        x1, _ = self._check_x(x1, "x1", allow_2d=False)
        x2, _ = self._check_x(x2, "x2", allow_2d=False)
        ls = self.lengthscale.unsqueeze(1)
        r = torch.cdist(x1 / ls, x2 / ls, compute_mode="donot_use_mm_for_euclid_dist")
        has = set(self.kernel_id.unique().tolist())
        k = None
        if RBF in has:
            k = torch.exp(-0.5 * r.square())
        if MATERN52 in has:
            s5r = math.sqrt(5.0) * r
            k_m = (1.0 + s5r + s5r.square() / 3.0) * torch.exp(-s5r)
            k = k_m if k is None else torch.where(
                (self.kernel_id == MATERN52)[:, None, None], k_m, k)
        assert k is not None
        return self.outputscale[:, None, None] * k

    # -- global minimum ---------------------------------------------------------------------

    def minimum(
        self,
        n_candidates: int = 4096,
        refine_steps: int = 100,
        generator: torch.Generator | None = None,
        n_starts: int = 8,
        lr: float = 0.05,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Estimate each function's global minimum on [0, 1]^d -> (x_min (B, d), f_min (B,)).

        Evaluates a scrambled Sobol set of ``n_candidates`` points (shared by the batch),
        then refines each function's ``n_starts`` best with ``refine_steps`` projected Adam
        steps in lengthscale-scaled coordinates (step ``lr`` in units of lengthscale,
        cosine-decayed), keeping the best point ever evaluated. Noise-free; no gradients.
        """
        _check_count("n_candidates", n_candidates)
        _check_count("n_starts", n_starts)
        if isinstance(refine_steps, bool) or not isinstance(refine_steps, int) or refine_steps < 0:
            raise ValueError(f"refine_steps must be a non-negative integer, got {refine_steps!r}")
        B, d, M = self.batch_size, self.dim, self.num_features
        seed = int(torch.randint(0, 2**62, (1,), generator=generator,
                                 device=_draw_device(generator, torch.device("cpu"))))
        sobol = torch.quasirandom.SobolEngine(d, scramble=True, seed=seed)
        cand = sobol.draw(n_candidates, dtype=torch.float64).to(self.device, self.dtype)

        with torch.no_grad():
            chunk = max(1, (1 << 24) // (B * M))
            vals = torch.cat([
                self(cand[i:i + chunk].expand(B, -1, -1)) for i in range(0, n_candidates, chunk)
            ], dim=1)  # (B, n_candidates)
            k = min(n_starts, n_candidates)
            best_vals, idx = vals.topk(k, dim=1, largest=False)
            starts = cand[idx]  # (B, k, d)
            best_x, best_f = starts[:, 0].clone(), best_vals[:, 0].clone()

        if refine_steps > 0:
            ls = self.lengthscale.detach().unsqueeze(1)  # optimize u = x / lengthscale
            u = (starts / ls).detach().requires_grad_(True)
            opt = torch.optim.Adam([u], lr=lr)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, refine_steps, lr * 1e-2)
            rows = torch.arange(B, device=self.device)
            with torch.enable_grad():
                for step in range(refine_steps + 1):
                    x = (u * ls).clamp(0.0, 1.0)
                    f = self(x)  # (B, k)
                    with torch.no_grad():
                        f_best, j = f.min(dim=1)
                        better = f_best < best_f
                        best_f = torch.where(better, f_best, best_f)
                        best_x = torch.where(better[:, None], x[rows, j], best_x)
                    if step == refine_steps:
                        break
                    opt.zero_grad(set_to_none=True)
                    f.sum().backward()
                    opt.step()
                    sched.step()
                    with torch.no_grad():  # project back onto the cube
                        u.copy_(torch.minimum(u.clamp_min(0.0), 1.0 / ls))
        return best_x.detach().clamp(0.0, 1.0), best_f.detach()


# -- held-out benchmark tasks -------------------------------------------------------------

#: Seeds of the benchmark functions: a stream that neither training (seed 0..) nor the
#: trainer's validation set (10_000_019 + ...) draws from.
HELD_OUT_SEED = 777_000_000


def _held_out(dim: int, index: int = 0) -> Any:
    """Held-out sample ``index`` in ``dim`` dimensions, as a task."""
    from bbopt.tasks.base import Task, gp_task_name

    from bbopt.space import Float, Space

    g = torch.Generator().manual_seed(HELD_OUT_SEED + 1000 * index + dim)
    fn = GPPrior(kernel="mixed").sample(1, dim, generator=g, dtype=torch.float64)
    _, f_min = fn.minimum(n_candidates=16384, refine_steps=200, n_starts=16, generator=g)
    names = [f"x{i}" for i in range(dim)]

    def value(params: dict[str, Any]) -> float:
        x = torch.tensor([[float(params[n]) for n in names]], dtype=torch.float64)
        return float(fn(x))

    return Task(gp_task_name(dim, index),
                Space({n: Float(0.0, 1.0) for n in names}), value, optimum=float(f_min),
                description=f"a held-out {dim}-D GP-prior sample (kernel {fn.kernels[0]}), "
                            "never trained on")


def _register_held_out() -> None:
    from functools import partial

    from bbopt.tasks.base import GP_HELD_OUT_DIMS, gp_held_out_count, gp_task_name, register_lazy

    for dim in GP_HELD_OUT_DIMS:
        for index in range(gp_held_out_count(dim)):
            register_lazy(gp_task_name(dim, index), partial(_held_out, dim, index))


_register_held_out()
