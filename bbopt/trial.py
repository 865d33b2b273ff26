"""Trials: one evaluation of the objective at one set of parameters."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class TrialState(enum.StrEnum):
    """PENDING: handed out, no value yet. COMPLETE: has a value. FAILED: evaluation failed."""

    PENDING = "pending"
    COMPLETE = "complete"
    FAILED = "failed"


@dataclass(frozen=True)
class Trial:
    """A snapshot of a trial. ``id`` numbers the trials of a study from 0; ``value`` is
    None unless the trial is complete."""

    id: int
    params: dict[str, Any]
    state: TrialState = TrialState.PENDING
    value: float | None = None
    created_at: datetime | None = None
    finished_at: datetime | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, used by the CLI and the service."""
        return {
            "id": self.id,
            "params": self.params,
            "state": self.state.value,
            "value": self.value,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trial:
        """The inverse of ``to_dict`` (the client reads the service's trials with it)."""

        def when(s: str | None) -> datetime | None:
            return datetime.fromisoformat(s) if s else None

        return cls(id=int(d["id"]), params=dict(d["params"]), state=TrialState(d["state"]),
                   value=d.get("value"), created_at=when(d.get("created_at")),
                   finished_at=when(d.get("finished_at")), info=dict(d.get("info") or {}))
