"""Exceptions bbopt raises for bad input, so callers can catch one family.

Every error is raised *before* anything is written, so the study is left as it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class BBOptError(Exception):
    """Base class of every error bbopt raises on purpose."""


class SpaceError(BBOptError, ValueError):
    """A search space, or parameters checked against one, is invalid."""


class TrialError(BBOptError, ValueError):
    """A tell names an unknown trial, a finished trial, or gives a bad value."""


class StudyError(BBOptError, ValueError):
    """A study is missing, already exists, or is opened with conflicting settings."""


class NotFoundError(BBOptError, LookupError):
    """A study or trial named by the caller does not exist (the service answers 404)."""


class UnknownStudyError(StudyError, NotFoundError):
    """No study of that name in the store."""


class UnknownTrialError(TrialError, NotFoundError):
    """No trial of that id in the study."""


class NoCompletedTrialError(StudyError, NotFoundError):
    """The study has no completed trial yet, so it has no best trial."""


class ServiceError(BBOptError, RuntimeError):
    """The bbopt service cannot be reached, refused the token, or failed (``status``: the
    HTTP status, 0 when there was no answer)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class StorageError(BBOptError, RuntimeError):
    """The database behind a study cannot be reached or is not a bbopt store."""


class NonFiniteGradientError(BBOptError, ValueError):
    """A learned torch optimizer's step saw a NaN or infinite gradient; it changed no
    parameter and no optimizer state (skip the step, or fix the loss)."""


def check_finite_gradients(owner: str, params: Sequence[Any], grads: Sequence[Any],
                           unchanged: str) -> None:
    """Raise NonFiniteGradientError naming the first of ``params`` (torch tensors, those
    with a gradient) whose gradient in ``grads`` has a NaN or infinite entry; ``owner``
    (the optimizer's step) and ``unchanged`` (what it left as it was) go in the message.
    Called before a step changes anything."""
    for i, (p, g) in enumerate(zip(params, grads, strict=True)):
        if not bool(g.isfinite().all()):
            raise NonFiniteGradientError(
                f"{owner}: the gradient of parameter {i} (of those with a gradient, shape "
                f"{tuple(p.shape)}) has NaN or infinite entries; {unchanged}")


class UnknownMethodError(BBOptError, ValueError):
    """`method=` names no registered optimizer."""
