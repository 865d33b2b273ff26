"""bbopt: learned black-box optimization with ask/tell studies."""

from bbopt.errors import (
    BBOptError,
    NoCompletedTrialError,
    NonFiniteGradientError,
    NotFoundError,
    ServiceError,
    SpaceError,
    StorageError,
    StudyError,
    TrialError,
    UnknownMethodError,
    UnknownStudyError,
    UnknownTrialError,
)
from bbopt.optimizers.base import Optimizer, available_methods, register
from bbopt.space import Categorical, Float, Int, Space
from bbopt.study import Study
from bbopt.trial import Trial, TrialState

__version__ = "0.1.0"

# Imported on first use: ``import bbopt`` stays free of torch, Ray and HTTP libraries.
_LAZY = {
    "LSTMOptimizer": "bbopt.optimizers.l2l",
    "LRMemory": "bbopt.optimizers.lr_memory",
    "Client": "bbopt.serve.client",
    "BBOptSearch": "bbopt.serve.tune",
}


def __getattr__(name: str):  # noqa: ANN202 - module-level lazy attributes (PEP 562)
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bbopt' has no attribute {name!r}")

__all__ = [
    "BBOptError",
    "BBOptSearch",
    "Client",
    "Categorical",
    "Float",
    "Int",
    "LRMemory",
    "LSTMOptimizer",
    "NoCompletedTrialError",
    "NonFiniteGradientError",
    "NotFoundError",
    "Space",
    "SpaceError",
    "StorageError",
    "StudyError",
    "TrialError",
    "Optimizer",
    "ServiceError",
    "Study",
    "Trial",
    "TrialState",
    "UnknownMethodError",
    "UnknownStudyError",
    "UnknownTrialError",
    "available_methods",
    "register",
]
