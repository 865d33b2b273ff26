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

__all__ = [
    "BBOptError",
    "Categorical",
    "Float",
    "Int",
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
