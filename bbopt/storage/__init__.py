"""Where studies live: an SQLAlchemy database (SQLite by default)."""

from __future__ import annotations

from bbopt.storage.sql import SQLStorage, StudyRecord


def get_storage(storage: str | SQLStorage | None, *, create: bool = True) -> SQLStorage:
    """A storage object from a URL (``None``: a private in-memory SQLite database)."""
    if isinstance(storage, SQLStorage):
        return storage
    return SQLStorage(storage or "sqlite://", create=create)


__all__ = ["SQLStorage", "StudyRecord", "get_storage"]
