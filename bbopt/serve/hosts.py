"""Study hosts: where the service keeps each study's optimizer state.

A ``StudyHost`` holds the open ``Study`` objects (each with its optimizer and whatever
that optimizer caches, such as the learned policy's recurrent state) of the studies that
hash to it, and runs every operation on them one at a time. The service runs several
hosts as Ray actors (on GPUs when the cluster has them); a study always goes to the same
host, so its operations are serialized without locks, and different studies proceed in
parallel on different hosts.

Nothing lives only on a host: every ask and tell is committed to the SQL store before the
host answers, so a host that dies (or a service that is killed) loses no told value, and
a new host reopens a study from the store on first use.
"""

from __future__ import annotations

import os
import zlib
from collections import OrderedDict
from typing import Any

from bbopt.errors import (
    BBOptError,
    NotFoundError,
    StorageError,
    StudyError,
    UnknownStudyError,
)
from bbopt.space import Space
from bbopt.storage import SQLStorage
from bbopt.study import Study
from bbopt.trial import Trial, TrialState


def host_index(name: str, n_hosts: int) -> int:
    """The host of study ``name``: a stable hash, the same in every process and restart."""
    return zlib.crc32(name.encode()) % n_hosts


def error_payload(e: Exception) -> dict[str, Any]:
    """An exception as the JSON error the service answers, with its HTTP status."""
    if isinstance(e, NotFoundError):
        status = 404
    elif isinstance(e, StorageError):
        status = 503
    elif isinstance(e, BBOptError | ValueError | TypeError | KeyError):
        status = 400
    else:
        status = 500
    return {"status": status, "type": type(e).__name__, "message": str(e)}


def study_info(study: Study) -> dict[str, Any]:
    """What GET /studies/{name} answers: the study's settings and a summary of its trials."""
    trials = study.trials
    counts = {s.value: 0 for s in TrialState}
    for t in trials:
        counts[t.state.value] += 1
    done = [t for t in trials if t.state is TrialState.COMPLETE]
    best = None
    if done:
        pick = min if study.direction == "minimize" else max
        best = pick(done, key=lambda t: t.value).to_dict()
    return {"name": study.name, "space": study.space.to_dict(), "method": study.method,
            "direction": study.direction, "seed": study.seed, "n_trials": len(trials),
            "counts": counts, "best_trial": best}


class StudyHost:
    """Holds open studies of one store and runs operations on them (see the module doc).

    At most ``max_open`` studies stay open; the least recently used one is closed (it
    reopens from the store on its next request), which bounds a host's memory.
    """

    def __init__(self, storage: str, max_open: int = 1000) -> None:
        self.storage = SQLStorage(storage)
        self.max_open = max_open
        self._open: OrderedDict[str, Study] = OrderedDict()

    # -- the one entry point: returns {"result": ...} or {"error": {...}}, never raises --

    def call(self, op: str, name: str | None = None, args: dict[str, Any] | None = None
             ) -> dict[str, Any]:
        """Run ``op`` ('open', 'info', 'ask', 'tell', 'heartbeat', 'fail_stale', 'trials',
        'best', 'list', 'stats')."""
        try:
            fn = getattr(self, f"_op_{op}", None)
            if fn is None:
                raise StudyError(f"unknown operation {op!r}")
            return {"result": fn(name, **(args or {}))}
        except Exception as e:  # noqa: BLE001 - every failure becomes a JSON error
            return {"error": error_payload(e)}

    def _study(self, name: str | None) -> Study:
        if not name:
            raise StudyError("a study name is required")
        study = self._open.get(name)
        if study is None:
            if self.storage.get_study(name) is None:
                raise UnknownStudyError(f"no study named {name!r}")
            study = Study(storage=self.storage, name=name)
            self._remember(study)
        self._open.move_to_end(name)
        return study

    def _remember(self, study: Study) -> None:
        self._open[study.name] = study
        while len(self._open) > self.max_open:
            self._open.popitem(last=False)

    # -- operations -------------------------------------------------------------------

    def _op_open(self, name: str | None, space: dict[str, Any] | None = None,
                 method: str | None = None, direction: str | None = None,
                 seed: int | None = None, options: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
        """Create the study, or open it when it exists with matching settings."""
        if not name:
            raise StudyError("a study name is required")
        record = self.storage.get_study(name)
        if record is not None:
            # One study, one optimizer for every client: opening it with another method
            # would switch the optimizer under the other clients' feet.
            if method is not None and method != record.method:
                raise StudyError(f"study {name!r} exists with method {record.method!r}")
            if options and options != record.options:
                raise StudyError(f"study {name!r} exists with options {record.options}")
            study = self._open.get(name)
            if study is None:
                study = Study(space, direction=direction, seed=seed, storage=self.storage,
                              name=name)
            else:  # already open: only check the settings against the record
                Study._check_matches(record, None if space is None else Space(space),
                                     direction, seed)
        else:
            if space is None:
                raise UnknownStudyError(f"no study named {name!r}; give a space to create it")
            study = Study(space, method=method, direction=direction, seed=seed,
                          storage=self.storage, name=name, **(options or {}))
        self._remember(study)
        return study_info(study)

    def _op_info(self, name: str | None) -> dict[str, Any]:
        return study_info(self._study(name))

    def _op_ask(self, name: str | None, n: int = 1, heartbeat: bool = False
                ) -> list[dict[str, Any]]:
        return [t.to_dict() for t in self._study(name).ask(n, heartbeat=heartbeat)]

    def _op_heartbeat(self, name: str | None, trials: list[int]) -> list[int]:
        return self._study(name).heartbeat(*trials)

    def _op_fail_stale(self, name: str | None, grace: float) -> list[dict[str, Any]]:
        return [t.to_dict() for t in self._study(name).fail_stale_trials(grace)]

    def _op_tell(self, name: str | None, trial_id: int, value: float | None = None,
                 failed: bool = False, reason: str | None = None,
                 grad: Any = None) -> dict[str, Any]:
        # Study.tell checks everything (unknown id, NaN/inf, gradient shape) before it
        # writes, so a bad tell leaves the study as it was.
        trial = self._study(name).tell(trial_id, value, grad=grad, failed=failed,
                                       reason=reason)
        return trial.to_dict()

    def _op_trials(self, name: str | None) -> list[dict[str, Any]]:
        return [t.to_dict() for t in self._study(name).trials]

    def _op_best(self, name: str | None) -> dict[str, Any]:
        best: Trial = self._study(name).best_trial
        return best.to_dict()

    def _op_list(self, name: str | None = None) -> list[str]:
        return self.storage.study_names()

    def _op_stats(self, name: str | None = None) -> dict[str, Any]:
        """The host's process and size, for health checks and the memory benchmark."""
        import resource

        rss_kb = _rss_kb()
        return {"pid": os.getpid(), "open_studies": len(self._open),
                "rss_mb": rss_kb / 1024 if rss_kb else None,
                "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _rss_kb() -> int | None:
    """Resident set size now (Linux /proc), not the peak."""
    try:
        with open(f"/proc/{os.getpid()}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None
