"""Optimizees: problems the gradient-input learned optimizers train and are judged on.

Each family samples a batch of B independent problems over flat parameter vectors,
``theta`` of shape (B, P), so one learned-optimizer step serves all of them at once:

* ``quadratic``: the paper's random 10-dimensional ``||W theta - y||^2``, W and y Gaussian;
* ``mlp-sigmoid``: the paper's MLP (one hidden layer of 20 sigmoid units) on scikit-learn's
  digits, cross-entropy on minibatches of 128; ``mlp-wide`` (100 units), ``mlp-deep``
  (three hidden layers of 20) and ``mlp-relu`` (ReLU units) vary it;
* ``cnn``: two 3x3 convolutions (8 and 16 channels, ReLU, max-pooling) and a linear layer
  on the 8x8 digit images;
* ``sparse-l1`` and ``sparse-group``: sparse regression (``bbopt.tasks.sparse``);
* ``cnn-synth`` (for training only, never benchmarked): a CNN of random widths on
  synthetic 8x8 images that the code draws per batch (10 classes, each a random pattern
  of blobs, seen shifted and noisy), so that a rule can meet convolutions in training
  without ever seeing the digits CNN;
* ``mlp-synth`` (for training only, never benchmarked): MLPs of a random width and
  activation on such synthetic images, trained on small minibatches (8 to 32), so that a
  rule meets gradients dominated by minibatch noise (the digits MLPs' minibatches of 128
  of 1,257 images are nearly the full batch) without ever seeing the digits MLPs.

``loss(theta)`` is what an optimizer sees (the minibatch loss for the MLPs and CNN, drawn
afresh at each call), ``full_loss(theta)`` what is reported (the loss on the whole
training split). The meta-trainer trains on ``TRAIN_FAMILIES`` only; the rest are held
out for the benchmark.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

TRAIN_FAMILIES = ("quadratic", "mlp-sigmoid")
#: Families that only serve as training material (augmentation); benchmarks leave them out.
TRAINING_ONLY = ("cnn-synth", "mlp-synth")


class Optimizee:
    """A batch of B problems over (B, P) parameters.

    A family of one's own subclasses it (``name``, ``batch``, ``dim``, ``theta0`` and
    ``loss``; ``full_loss`` too when ``loss`` is a minibatch's) and is named to
    ``bbopt train l2l --families`` and ``bbopt bench-gradient --families`` by its
    sampler, ``file.py:make`` with ``make(batch, generator, device)`` (``family_maker``).
    """

    name: str
    batch: int
    dim: int
    theta0: torch.Tensor

    def loss(self, theta: torch.Tensor) -> torch.Tensor:
        """(B,) losses seen by the optimizer (stochastic for minibatch problems)."""
        raise NotImplementedError

    def full_loss(self, theta: torch.Tensor) -> torch.Tensor:
        """(B,) losses to report (deterministic)."""
        return self.loss(theta)


@dataclass
class Quadratic(Optimizee):
    """``||W theta - y||^2`` per problem."""

    W: torch.Tensor
    y: torch.Tensor
    theta0: torch.Tensor
    name: str = "quadratic"

    def __post_init__(self) -> None:
        self.batch, self.dim = self.theta0.shape

    def loss(self, theta: torch.Tensor) -> torch.Tensor:
        return (torch.einsum("bij,bj->bi", self.W, theta) - self.y).square().sum(dim=1)


def _digits(device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    from bbopt.tasks.hpo import _digits_data

    X, y, _, _ = _digits_data()
    return X.to(device), y.to(device)


@dataclass
class _Minibatched(Optimizee):
    """Shared plumbing of the digits problems: layout of theta, minibatches, init."""

    shapes: list[tuple[int, ...]]
    X: torch.Tensor
    labels: torch.Tensor
    theta0: torch.Tensor
    data_generator: torch.Generator
    minibatch: int = 128
    name: str = ""
    _slices: list[slice] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.batch, self.dim = self.theta0.shape
        off = 0
        for s in self.shapes:
            n = math.prod(s)
            self._slices.append(slice(off, off + n))
            off += n

    def unflatten(self, theta: torch.Tensor) -> list[torch.Tensor]:
        B = theta.shape[0]
        return [theta[:, sl].reshape(B, *s) for sl, s in zip(self._slices, self.shapes,
                                                              strict=True)]

    def logits(self, theta: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _ce(self, theta: torch.Tensor, X: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.logits(theta, X)  # (B, N, 10)
        return F.cross_entropy(logits.transpose(1, 2), labels.expand(logits.shape[0], -1),
                               reduction="none").mean(dim=1)

    def loss(self, theta: torch.Tensor) -> torch.Tensor:
        idx = torch.randint(len(self.X), (self.minibatch,), generator=self.data_generator)
        idx = idx.to(self.X.device)
        return self._ce(theta, self.X[idx], self.labels[idx])

    def full_loss(self, theta: torch.Tensor) -> torch.Tensor:
        return self._ce(theta, self.X, self.labels)


def _init(shapes: list[tuple[int, ...]], fan_ins: list[int], batch: int,
          generator: torch.Generator) -> torch.Tensor:
    """torch's default init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), weights and biases."""
    parts = []
    for s, fan_in in zip(shapes, fan_ins, strict=True):
        bound = 1 / math.sqrt(fan_in)
        parts.append((torch.rand(batch, math.prod(s), generator=generator) * 2 - 1) * bound)
    return torch.cat(parts, dim=1)


@dataclass
class MLP(_Minibatched):
    activation: str = "sigmoid"

    def logits(self, theta: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        act = torch.sigmoid if self.activation == "sigmoid" else torch.relu
        params = self.unflatten(theta)
        h = X.expand(theta.shape[0], -1, -1)
        for i in range(0, len(params), 2):
            h = torch.baddbmm(params[i + 1][:, None, :], h, params[i])
            if i + 2 < len(params):
                h = act(h)
        return h


@dataclass
class CNN(_Minibatched):
    def _one(self, flat: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        w1, b1, w2, b2, w3, b3 = (flat[sl].reshape(s) for sl, s in
                                  zip(self._slices, self.shapes, strict=True))
        h = F.max_pool2d(F.relu(F.conv2d(X, w1, b1, padding=1)), 2)  # (N, 8, 4, 4)
        h = F.max_pool2d(F.relu(F.conv2d(h, w2, b2, padding=1)), 2)  # (N, 16, 2, 2)
        return h.flatten(1) @ w3 + b3

    def logits(self, theta: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        images = X.reshape(-1, 1, 8, 8)
        return torch.func.vmap(self._one, in_dims=(0, None))(theta, images)


def _mlp_problem(X: torch.Tensor, labels: torch.Tensor, widths: list[int], activation: str,
                 batch: int, generator: torch.Generator, device: torch.device | str,
                 name: str, minibatch: int = 128) -> Optimizee:
    """``batch`` MLPs (hidden layers of ``widths``) on the images ``X``."""
    sizes = [X.shape[1], *widths, 10]
    shapes: list[tuple[int, ...]] = []
    fans: list[int] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        shapes += [(a, b), (b,)]
        fans += [a, a]
    theta0 = _init(shapes, fans, batch, generator).to(device)
    data = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
    return MLP(shapes=shapes, X=X.to(device), labels=labels.to(device), theta0=theta0,
               data_generator=data, minibatch=minibatch, name=name, activation=activation)


def _mlp(name: str, widths: list[int], activation: str) -> Callable[..., Optimizee]:
    def make(batch: int, generator: torch.Generator, device: torch.device | str) -> Optimizee:
        X, labels = _digits(device)
        return _mlp_problem(X, labels, widths, activation, batch, generator, device, name)

    return make


def _mlp_synth(batch: int, generator: torch.Generator, device: torch.device | str
               ) -> Optimizee:
    X, labels = synthetic_images(1024, generator)
    width = int(torch.randint(16, 65, (1,), generator=generator))
    activation = ("sigmoid", "relu")[int(torch.randint(2, (1,), generator=generator))]
    minibatch = (8, 16, 32)[int(torch.randint(3, (1,), generator=generator))]
    return _mlp_problem(X, labels, [width], activation, batch, generator, device,
                        "mlp-synth", minibatch)


def _cnn_problem(X: torch.Tensor, labels: torch.Tensor, channels: tuple[int, int],
                 batch: int, generator: torch.Generator, device: torch.device | str,
                 name: str) -> Optimizee:
    """``batch`` CNNs (3x3 convolutions of ``channels``, a linear layer) on 8x8 images."""
    c1, c2 = channels
    shapes = [(c1, 1, 3, 3), (c1,), (c2, c1, 3, 3), (c2,), (4 * c2, 10), (10,)]
    fans = [9, 9, 9 * c1, 9 * c1, 4 * c2, 4 * c2]
    theta0 = _init(shapes, fans, batch, generator).to(device)
    data = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
    return CNN(shapes=shapes, X=X.to(device), labels=labels.to(device), theta0=theta0,
               data_generator=data, name=name)


def _cnn(batch: int, generator: torch.Generator, device: torch.device | str) -> Optimizee:
    X, labels = _digits(device)
    return _cnn_problem(X, labels, (8, 16), batch, generator, device, "cnn")


def synthetic_images(n: int, generator: torch.Generator, classes: int = 10,
                     size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` standardized (n, size*size) images and their labels: each class is a random
    sum of 2 to 4 Gaussian blobs; a sample is its class pattern shifted by up to one
    pixel, with random contrast and pixel noise."""
    grid = torch.arange(size, dtype=torch.float32)
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    protos = torch.zeros(classes, size, size)
    for c in range(classes):
        for _ in range(int(torch.randint(2, 5, (1,), generator=generator))):
            cy, cx = (torch.rand(2, generator=generator) * (size - 1)).tolist()
            w = 0.7 + 1.5 * float(torch.rand((), generator=generator))
            sign = 1.0 if float(torch.rand((), generator=generator)) < 0.8 else -0.5
            protos[c] += sign * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * w * w))
    labels = torch.randint(classes, (n,), generator=generator)
    shifts = torch.randint(-1, 2, (n, 2), generator=generator)
    images = torch.stack([torch.roll(protos[y], (int(a), int(b)), dims=(0, 1))
                          for y, (a, b) in zip(labels.tolist(), shifts.tolist(), strict=True)])
    images = images * (0.6 + 0.8 * torch.rand(n, 1, 1, generator=generator))
    images = images + 0.3 * torch.randn(n, size, size, generator=generator)
    X = images.reshape(n, -1)
    X = (X - X.mean(0)) / X.std(0).clamp_min(1e-6)
    return X, labels


def _cnn_synth(batch: int, generator: torch.Generator, device: torch.device | str
               ) -> Optimizee:
    X, labels = synthetic_images(1024, generator)
    c1 = int(torch.randint(4, 13, (1,), generator=generator))
    c2 = int(torch.randint(8, 25, (1,), generator=generator))
    return _cnn_problem(X, labels, (c1, c2), batch, generator, device, "cnn-synth")


def _quadratic(batch: int, generator: torch.Generator, device: torch.device | str,
               dim: int = 10) -> Optimizee:
    W = torch.randn(batch, dim, dim, generator=generator)
    y = torch.randn(batch, dim, generator=generator)
    theta0 = torch.randn(batch, dim, generator=generator)
    return Quadratic(W.to(device), y.to(device), theta0.to(device))


@dataclass
class Sparse(Optimizee):
    """Sparse regression over flat Gamma (see ``bbopt.tasks.sparse``); starts at zero."""

    problem: object
    name: str = ""

    def __post_init__(self) -> None:
        n, k = self.problem.shape  # type: ignore[attr-defined]
        self.batch = self.problem.D.shape[0]  # type: ignore[attr-defined]
        self.dim = n * k
        self.theta0 = torch.zeros(self.batch, self.dim, device=self.problem.D.device)  # type: ignore[attr-defined]

    def loss(self, theta: torch.Tensor) -> torch.Tensor:
        n, k = self.problem.shape  # type: ignore[attr-defined]
        return self.problem.objective(theta.reshape(-1, n, k))  # type: ignore[attr-defined]


def _sparse(kind: str) -> Callable[..., Optimizee]:
    def make(batch: int, generator: torch.Generator, device: torch.device | str) -> Optimizee:
        from bbopt.tasks.sparse import sample_sparse

        return Sparse(sample_sparse(batch, kind, generator=generator, device=device),
                      name=f"sparse-{kind}")

    return make


class Rescaled(Optimizee):
    """``problem`` over ``phi = theta / scale`` (``scale``: (B, 1), per problem).

    Task augmentation for meta-training: the same problem with its parameters in other
    units, so its best step size (in the optimizer's units) changes by ``1 / scale``. A
    rule trained on such problems must find the step size from what it observes instead
    of memorizing one that suits the training families.
    """

    def __init__(self, problem: Optimizee, scale: torch.Tensor) -> None:
        self.problem, self.scale = problem, scale
        self.name, self.batch, self.dim = problem.name, problem.batch, problem.dim
        self.theta0 = problem.theta0 / scale

    def loss(self, theta: torch.Tensor) -> torch.Tensor:
        return self.problem.loss(theta * self.scale)

    def full_loss(self, theta: torch.Tensor) -> torch.Tensor:
        return self.problem.full_loss(theta * self.scale)


#: name -> ``make(batch, generator, device)``.
FAMILIES: dict[str, Callable[..., Optimizee]] = {
    "quadratic": _quadratic,
    "mlp-sigmoid": _mlp("mlp-sigmoid", [20], "sigmoid"),
    "mlp-wide": _mlp("mlp-wide", [100], "sigmoid"),
    "mlp-deep": _mlp("mlp-deep", [20, 20, 20], "sigmoid"),
    "mlp-relu": _mlp("mlp-relu", [20], "relu"),
    "cnn": _cnn,
    "sparse-l1": _sparse("l1"),
    "sparse-group": _sparse("group"),
    "cnn-synth": _cnn_synth,
    "mlp-synth": _mlp_synth,
}
#: What benchmarks run by default: every family but the training-only ones.
BENCH_FAMILIES = tuple(f for f in FAMILIES if f not in TRAINING_ONLY)


_USER_FAMILIES: dict[str, Callable[..., Optimizee]] = {}


def family_maker(family: str) -> Callable[..., Optimizee]:
    """The sampler ``make(batch, generator, device) -> Optimizee`` of ``family``: a name
    of ``FAMILIES``, or ``path/to/file.py:name`` / ``package.module:name`` naming a
    user's function of that signature (to meta-train a rule for one's own problems, as
    the paper trains one per task family). Unknown names and functions that cannot be
    loaded are ValueErrors."""
    make = FAMILIES.get(family) or _USER_FAMILIES.get(family)
    if make is not None:
        return make
    from bbopt.errors import BBOptError
    from bbopt.objective import load_function

    try:
        fn = load_function(family) if ":" in family else None
    except BBOptError as e:
        raise ValueError(f"optimizee family {family!r}: {e}") from None
    if fn is None:
        raise ValueError(f"unknown optimizee family {family!r}; known: {', '.join(FAMILIES)}"
                         ", or file.py:function / module:function naming a sampler")
    _USER_FAMILIES[family] = fn
    return fn


def sample_optimizee(family: str, batch: int, generator: torch.Generator,
                     device: torch.device | str = "cpu") -> Optimizee:
    """``batch`` fresh problems of ``family`` (as ``family_maker`` reads it). What a
    user's sampler returns is checked: an ``Optimizee`` with ``theta0`` of shape
    (batch, P) and ``loss(theta0)`` of shape (batch,)."""
    make = family_maker(family)
    problem = make(batch, generator, device)
    if family not in FAMILIES:
        theta0 = getattr(problem, "theta0", None)
        if not (isinstance(problem, Optimizee) and isinstance(theta0, torch.Tensor)
                and theta0.ndim == 2 and theta0.shape[0] == batch):
            raise ValueError(f"optimizee family {family!r}: make(batch, generator, device) "
                             f"must return a bbopt.tasks.optimizees.Optimizee whose theta0 "
                             f"is a (batch={batch}, P) tensor, got {type(problem).__name__}")
        with torch.no_grad():
            shape = tuple(torch.as_tensor(problem.loss(theta0)).shape)
        if shape != (batch,):
            raise ValueError(f"optimizee family {family!r}: loss(theta) must return one "
                             f"value per problem, shape ({batch},), got {shape}")
    return problem
