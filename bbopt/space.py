"""Search spaces: typed parameters and the map between user values and the unit cube.

Optimizers only ever see points in [0, 1]^d, one coordinate per parameter, in the
order the parameters were given. ``Space.encode`` / ``Space.decode`` translate:

* ``Float``: linear (or linear in log space when ``log=True``) between low and high.
* ``Int``: the interval [low - 0.5, high + 0.5] (log: its logarithm) is split into
  equal bins, one per integer, so every integer gets the same share of the cube;
  an integer encodes to its bin centre and decoding rounds.
* ``Categorical``: k equal bins in order of ``choices``; a choice encodes to its bin
  centre and decoding takes the bin a coordinate falls in.

``decode(encode(p)) == p`` for every valid ``p`` (floats up to rounding error).
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bbopt.errors import SpaceError

Scalar = str | int | float | bool | None


def _is_real(v: Any) -> bool:
    # The exact types first: every told or read value is one, and the ABC check is slow.
    return type(v) in (float, int) or (isinstance(v, numbers.Real) and not isinstance(v, bool))


def _is_integral(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, numbers.Integral):
        return True
    return isinstance(v, float | np.floating) and math.isfinite(v) and float(v).is_integer()


@dataclass(frozen=True)
class Float:
    """A real parameter in [low, high], sampled on a log scale when ``log``."""

    low: float
    high: float
    log: bool = False

    def __post_init__(self) -> None:
        if not (_is_real(self.low) and _is_real(self.high)):
            raise SpaceError(f"Float bounds must be numbers, got low={self.low!r}, high={self.high!r}")
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise SpaceError(f"Float bounds must be finite, got [{self.low}, {self.high}]")
        if self.low >= self.high:
            raise SpaceError(f"Float needs low < high, got low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise SpaceError(f"Float with log=True needs low > 0, got low={self.low}")
        object.__setattr__(self, "low", float(self.low))
        object.__setattr__(self, "high", float(self.high))

    def _t(self, v: float) -> float:
        return math.log(v) if self.log else v

    def encode(self, v: float) -> float:
        lo, hi = self._t(self.low), self._t(self.high)
        return (self._t(v) - lo) / (hi - lo)

    def snap(self, u: np.ndarray) -> np.ndarray:
        return np.clip(u, 0.0, 1.0)

    def decode(self, u: float) -> float:
        if u <= 0.0 or u >= 1.0:  # the bounds exactly, without log/exp rounding
            return self.low if u <= 0.0 else self.high
        lo, hi = self._t(self.low), self._t(self.high)
        x = lo + u * (hi - lo)
        v = math.exp(x) if self.log else x
        return min(max(v, self.low), self.high)

    def check(self, name: str, v: Any) -> float:
        if not _is_real(v):
            raise SpaceError(f"parameter {name!r} must be a number, got {v!r}")
        if not math.isfinite(v) or not (self.low <= v <= self.high):
            raise SpaceError(f"parameter {name!r}={v!r} is outside [{self.low}, {self.high}]")
        return float(v)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "float", "low": self.low, "high": self.high, "log": self.log}


@dataclass(frozen=True)
class Int:
    """An integer parameter in [low, high] (both included), log-scaled when ``log``."""

    low: int
    high: int
    log: bool = False

    def __post_init__(self) -> None:
        if not (_is_integral(self.low) and _is_integral(self.high)):
            raise SpaceError(f"Int bounds must be integers, got low={self.low!r}, high={self.high!r}")
        if self.low >= self.high:
            raise SpaceError(f"Int needs low < high, got low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise SpaceError(f"Int with log=True needs low > 0, got low={self.low}")
        object.__setattr__(self, "low", int(self.low))
        object.__setattr__(self, "high", int(self.high))

    def _t(self, v: float) -> float:
        return math.log(v) if self.log else v

    def _edges(self) -> tuple[float, float]:
        # log ints have low >= 1, so low - 0.5 > 0 and its log exists
        return self._t(self.low - 0.5), self._t(self.high + 0.5)

    def encode(self, v: int) -> float:
        lo, hi = self._edges()
        return (self._t(v) - lo) / (hi - lo)

    def snap(self, u: np.ndarray) -> np.ndarray:
        lo, hi = self._edges()
        x = lo + np.clip(u, 0.0, 1.0) * (hi - lo)
        v = np.clip(np.floor((np.exp(x) if self.log else x) + 0.5), self.low, self.high)
        return ((np.log(v) if self.log else v) - lo) / (hi - lo)

    def decode(self, u: float) -> int:
        lo, hi = self._edges()
        x = lo + min(max(u, 0.0), 1.0) * (hi - lo)
        v = math.exp(x) if self.log else x
        return int(min(max(math.floor(v + 0.5), self.low), self.high))

    def check(self, name: str, v: Any) -> int:
        if not _is_integral(v):
            raise SpaceError(f"parameter {name!r} must be an integer, got {v!r}")
        if not (self.low <= v <= self.high):
            raise SpaceError(f"parameter {name!r}={v!r} is outside [{self.low}, {self.high}]")
        return int(v)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "int", "low": self.low, "high": self.high, "log": self.log}


def _same(a: Any, b: Any) -> bool:
    """Equality that keeps True, 1 and 1.0 apart (they are different choices)."""
    return type(a) is type(b) and a == b


@dataclass(frozen=True)
class Categorical:
    """One of a fixed, ordered list of JSON scalar choices."""

    choices: tuple[Scalar, ...]

    def __init__(self, choices: Sequence[Scalar]) -> None:
        if isinstance(choices, str | bytes) or not isinstance(choices, Sequence):
            raise SpaceError(f"Categorical needs a list of choices, got {choices!r}")
        choices = tuple(choices)
        if not choices:
            raise SpaceError("Categorical needs at least one choice")
        for c in choices:
            if not (c is None or isinstance(c, str | bool | int | float)):
                raise SpaceError(f"Categorical choices must be str, number, bool or None, got {c!r}")
            if isinstance(c, float) and not math.isfinite(c):
                raise SpaceError(f"Categorical choices must be finite, got {c!r}")
        for i, c in enumerate(choices):
            if any(_same(c, d) for d in choices[:i]):
                raise SpaceError(f"Categorical choices must be unique, {c!r} appears twice")
        object.__setattr__(self, "choices", choices)

    def encode(self, v: Scalar) -> float:
        i = next(i for i, c in enumerate(self.choices) if _same(c, v))
        return (i + 0.5) / len(self.choices)

    def snap(self, u: np.ndarray) -> np.ndarray:
        k = len(self.choices)
        return (np.clip(np.floor(u * k), 0, k - 1) + 0.5) / k

    def decode(self, u: float) -> Scalar:
        k = len(self.choices)
        return self.choices[min(max(int(math.floor(u * k)), 0), k - 1)]

    def check(self, name: str, v: Any) -> Scalar:
        if not any(_same(c, v) for c in self.choices):
            raise SpaceError(f"parameter {name!r}={v!r} is not one of {list(self.choices)}")
        return v

    def to_dict(self) -> dict[str, Any]:
        return {"type": "categorical", "choices": list(self.choices)}


Param = Float | Int | Categorical
_TYPES = {"float": Float, "int": Int, "categorical": Categorical}


def param_from_dict(name: str, spec: Mapping[str, Any]) -> Param:
    """Build one parameter from its file form, e.g. ``{"type": "int", "low": 1, "high": 4}``."""
    if not isinstance(spec, Mapping):
        raise SpaceError(f"parameter {name!r}: expected a mapping with a 'type', got {spec!r}")
    spec = dict(spec)
    kind = spec.pop("type", None)
    if kind not in _TYPES:
        raise SpaceError(f"parameter {name!r}: 'type' must be one of {sorted(_TYPES)}, got {kind!r}")
    allowed = {"choices"} if kind == "categorical" else {"low", "high", "log"}
    unknown = set(spec) - allowed
    if unknown:
        raise SpaceError(f"parameter {name!r}: unknown keys {sorted(unknown)} for type {kind!r}")
    try:
        return _TYPES[kind](**spec)
    except TypeError as e:  # missing low/high/choices
        raise SpaceError(f"parameter {name!r}: {e}") from None


class Space:
    """An ordered set of named parameters; the domain of a study."""

    def __init__(self, params: Mapping[str, Param | Mapping[str, Any]]) -> None:
        if not isinstance(params, Mapping) or not params:
            raise SpaceError("a Space needs a non-empty mapping of parameter names to parameters")
        self.params: dict[str, Param] = {}
        for name, p in params.items():
            if not isinstance(name, str) or not name:
                raise SpaceError(f"parameter names must be non-empty strings, got {name!r}")
            if isinstance(p, Float | Int | Categorical):
                self.params[name] = p
            else:
                self.params[name] = param_from_dict(name, p)

    # -- basics ---------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self.params)

    @property
    def dim(self) -> int:
        """Dimension of the unit cube optimizers work in (one coordinate per parameter)."""
        return len(self.params)

    def __len__(self) -> int:
        return len(self.params)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Space) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"Space({self.params!r})"

    # -- validation and the unit cube -----------------------------------------
    def validate(self, params: Any) -> dict[str, Any]:
        """Check a params dict against the space; return it normalized (ints as int)."""
        if not isinstance(params, Mapping):
            raise SpaceError(f"params must be a dict, got {type(params).__name__}")
        unknown = [k for k in params if k not in self.params]
        if unknown:
            raise SpaceError(f"unknown parameter(s) {unknown}; the space has {self.names}")
        missing = [k for k in self.params if k not in params]
        if missing:
            raise SpaceError(f"missing parameter(s) {missing}")
        return {name: p.check(name, params[name]) for name, p in self.params.items()}

    def encode(self, params: Mapping[str, Any]) -> np.ndarray:
        """Params dict -> point in the unit cube (validated first)."""
        params = self.validate(params)
        return np.array([p.encode(params[n]) for n, p in self.params.items()], dtype=float)

    def check_grad(self, grad: Any) -> dict[str, float]:
        """A gradient of the objective with respect to the params: a dict by name, or a
        sequence in the space's order. Every parameter must be a Float (a gradient over
        integers or choices has no meaning). Returns it as a dict of finite floats."""
        bad = [n for n, p in self.params.items() if not isinstance(p, Float)]
        if bad:
            raise SpaceError(f"a gradient needs Float parameters only; {bad} are not")
        if isinstance(grad, Mapping):
            unknown = [k for k in grad if k not in self.params]
            missing = [k for k in self.params if k not in grad]
            if unknown or missing:
                raise SpaceError(f"gradient names must be the space's {self.names}; "
                                 f"unknown {unknown}, missing {missing}")
            values = [grad[n] for n in self.params]
        else:
            try:
                values = list(np.asarray(grad, dtype=float).reshape(-1)) if not isinstance(
                    grad, str | bytes) else None
            except (TypeError, ValueError):
                values = None
            if values is None or np.ndim(grad) != 1 or len(values) != self.dim:
                raise SpaceError(f"gradient must be a dict by name or a sequence of "
                                 f"{self.dim} numbers, got {grad!r}")
        out = {}
        for n, v in zip(self.params, values, strict=True):
            if not _is_real(v) or not math.isfinite(float(v)):
                raise SpaceError(f"gradient of {n!r} must be a finite number, got {v!r}")
            out[n] = float(v)
        return out

    def grad_to_unit(self, params: Mapping[str, Any], grad: Mapping[str, float]) -> np.ndarray:
        """The gradient with respect to the unit-cube point of ``params`` (chain rule
        through each Float's linear or log map)."""
        out = np.empty(self.dim)
        for i, (n, p) in enumerate(self.params.items()):
            assert isinstance(p, Float)
            span = p._t(p.high) - p._t(p.low)
            dx_du = span * params[n] if p.log else span
            out[i] = grad[n] * dx_du
        return out

    @property
    def continuous(self) -> bool:
        """True when every parameter is a Float: every point of the cube is its own."""
        return all(isinstance(p, Float) for p in self.params.values())

    def snap(self, U: np.ndarray) -> np.ndarray:
        """Points of the unit cube (..., dim) -> the points their params encode to:
        ``encode(decode(u))`` for many points at once. Points in one integer's or one
        choice's share of an axis snap to the same coordinate, so an optimizer can see
        that two proposals, or a proposal and a trial, are the same params."""
        U = np.asarray(U, dtype=float)
        if U.shape[-1:] != (self.dim,):
            raise SpaceError(f"expected points of shape (..., {self.dim}), got {U.shape}")
        return np.stack([p.snap(U[..., i]) for i, p in enumerate(self.params.values())],
                        axis=-1)

    def decode(self, u: Sequence[float] | np.ndarray) -> dict[str, Any]:
        """Point in the unit cube -> params dict; coordinates outside [0, 1] are clipped."""
        u = np.asarray(u, dtype=float)
        if u.shape != (self.dim,):
            raise SpaceError(f"expected a point of shape ({self.dim},), got {u.shape}")
        if not np.all(np.isfinite(u)):
            raise SpaceError(f"point has non-finite coordinates: {u.tolist()}")
        return {n: p.decode(x) for (n, p), x in zip(self.params.items(), u.tolist(), strict=True)}

    # -- files -----------------------------------------------------------------
    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {n: p.to_dict() for n, p in self.params.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Space:
        return cls(d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Space:
        try:
            return cls(json.loads(text))
        except json.JSONDecodeError as e:
            raise SpaceError(f"space is not valid JSON: {e}") from None

    @classmethod
    def load(cls, path: str | Path) -> Space:
        """Read a space file: JSON, or YAML for .yaml/.yml."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as e:
            raise SpaceError(f"cannot read space file {str(path)!r}: {e.strerror}") from None
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            try:
                return cls(yaml.safe_load(text))
            except yaml.YAMLError as e:
                raise SpaceError(f"space file {str(path)!r} is not valid YAML: {e}") from None
        return cls.from_json(text)

    def dump(self, path: str | Path) -> None:
        """Write the space file (YAML for .yaml/.yml, JSON otherwise)."""
        path = Path(path)
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        else:
            path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
