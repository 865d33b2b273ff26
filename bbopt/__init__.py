"""bbopt: learned black-box optimization with ask/tell studies."""

from bbopt.errors import (
    BBOptError,
    SpaceError,
    StorageError,
    StudyError,
    TrialError,
    UnknownMethodError,
)
from bbopt.optimizers.base import Optimizer, available_methods, register
from bbopt.space import Categorical, Float, Int, Space
from bbopt.study import Study
from bbopt.trial import Trial, TrialState

__version__ = "0.1.0"

# The torch optimizers are imported on first use: ``import bbopt`` stays free of torch.
_LAZY = {"LSTMOptimizer": "bbopt.optimizers.l2l", "LRMemory": "bbopt.optimizers.lr_memory"}


def __getattr__(name: str):  # noqa: ANN202 - module-level lazy attributes (PEP 562)
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bbopt' has no attribute {name!r}")

__all__ = [
    "BBOptError",
    "Categorical",
    "Float",
    "Int",
    "LRMemory",
    "LSTMOptimizer",
    "Space",
    "SpaceError",
    "StorageError",
    "StudyError",
    "TrialError",
    "Optimizer",
    "Study",
    "Trial",
    "TrialState",
    "UnknownMethodError",
    "available_methods",
    "register",
]
