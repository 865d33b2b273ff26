"""Exceptions bbopt raises for bad input, so callers can catch one family.

Every error is raised *before* anything is written, so the study is left as it was.
"""

from __future__ import annotations


class BBOptError(Exception):
    """Base class of every error bbopt raises on purpose."""


class SpaceError(BBOptError, ValueError):
    """A search space, or parameters checked against one, is invalid."""


class TrialError(BBOptError, ValueError):
    """A tell names an unknown trial, a finished trial, or gives a bad value."""


class StudyError(BBOptError, ValueError):
    """A study is missing, already exists, or is opened with conflicting settings."""


class StorageError(BBOptError, RuntimeError):
    """The database behind a study cannot be reached or is not a bbopt store."""


class UnknownMethodError(BBOptError, ValueError):
    """`method=` names no registered optimizer."""
