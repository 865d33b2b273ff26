"""``bbopt.Client``: the service's studies with the same ask/tell calls as ``bbopt.Study``.

    remote = bbopt.Client("http://127.0.0.1:8000", token="...")   # or BBOPT_TOKEN
    study = remote.study("mlp", space=space, method="learned")   # creates or opens
    trial = study.ask()
    study.tell(trial, 0.37)
    study.best_trial

Errors come back as the exceptions ``bbopt.Study`` raises (``TrialError``,
``UnknownStudyError``, ``SpaceError``, ...), so code written for a local study works
against the service. An unreachable service, a refused token or a server failure raise
``ServiceError`` (with ``.status``). A request that never reached the service (the
service is restarting) is retried for ``retry_for`` seconds; a tell whose answer was lost
is retried too and counts as done when the store already holds that value.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, overload

import requests

from bbopt import errors
from bbopt.errors import BBOptError, ServiceError, TrialError
from bbopt.space import Space
from bbopt.study import check_value, trial_id
from bbopt.trial import Trial, TrialState


def _error_class(name: str) -> type[BBOptError]:
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, BBOptError):
        return cls
    return ServiceError


class Client:
    """A connection to ``bbopt serve`` at ``url``; ``token`` defaults to ``BBOPT_TOKEN``.
    Safe to share between threads (one HTTP session per thread)."""

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 120.0,
                 retry_for: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.token = token if token is not None else os.environ.get("BBOPT_TOKEN", "")
        self.timeout = timeout
        self.retry_for = retry_for
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # -- HTTP ------------------------------------------------------------------------------

    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
            s.headers["Authorization"] = f"Bearer {self.token}"
        return s

    def request(self, method: str, path: str, body: Any = None, *,
                resend: bool = False) -> Any:
        """One call to the service; returns the JSON answer or raises (see the module doc).
        ``resend``: the request may be sent again after a lost answer (idempotent)."""
        deadline = time.monotonic() + self.retry_for
        self._local.resent = False
        while True:
            try:
                r = self._session().request(method, self.url + path, json=body,
                                            timeout=self.timeout)
            except requests.ReadTimeout:
                raise ServiceError(f"no answer from {self.url}{path} within "
                                   f"{self.timeout} s") from None
            except requests.RequestException as e:  # refused, reset, cut-off answer
                never_sent = isinstance(e, requests.ConnectionError) and (
                    "NewConnectionError" in repr(e) or "Connection refused" in str(e))
                if (never_sent or resend) and time.monotonic() < deadline:
                    self._local.resent |= not never_sent
                    time.sleep(0.5)
                    continue
                raise ServiceError(f"cannot reach the bbopt service at {self.url}: {e}") \
                    from None
            if time.monotonic() < deadline:
                if r.status_code == 503:
                    self._local.resent = True  # a study host died, perhaps after the write
                    time.sleep(0.5)  # it is restarting
                    continue
                if r.status_code == 404 and not _ours(r):
                    time.sleep(0.5)  # Ray Serve's proxy is up, the app not deployed yet
                    continue
            return self._decode(r, path)

    def _decode(self, r: requests.Response, path: str) -> Any:
        try:
            data = r.json()
        except ValueError:
            data = None
        if r.ok and data is not None:
            return data
        err = (data or {}).get("error") if isinstance(data, dict) else None
        if not isinstance(err, dict):
            raise ServiceError(f"{r.status_code} from {self.url}{path}: {r.text[:200]}",
                               r.status_code)
        message = str(err.get("message", ""))
        if r.status_code == 401:
            raise ServiceError(f"401 from {self.url}: {message}", 401)
        cls = _error_class(str(err.get("type", "")))
        if cls is ServiceError:
            raise ServiceError(f"{r.status_code} from {self.url}{path}: "
                               f"{err.get('type')}: {message}", r.status_code)
        raise cls(message)

    # -- the service -----------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return self.request("GET", "/health", resend=True)

    def studies(self) -> list[str]:
        """Names of every study in the service's store."""
        return self.request("GET", "/studies", resend=True)["studies"]

    def study(self, name: str, space: Space | Mapping[str, Any] | None = None,
              method: str | None = None, direction: str | None = None,
              seed: int | None = None, **options: Any) -> RemoteStudy:
        """Create the study ``name`` (needs ``space``) or open it (settings given must
        match the stored ones), like ``bbopt.Study(..., name=name, storage=...)``."""
        if space is not None:
            space = (space if isinstance(space, Space) else Space(space)).to_dict()
        info = self.request("POST", "/studies", {
            "name": name, "space": space, "method": method, "direction": direction,
            "seed": seed, "options": options}, resend=True)
        return RemoteStudy(self, info)


class RemoteStudy:
    """A study on the service; the calls of ``bbopt.Study``."""

    def __init__(self, client: Client, info: dict[str, Any]) -> None:
        self.client = client
        self.name: str = info["name"]
        self.space = Space(info["space"])
        self.method: str = info["method"]
        self._direction: str = info["direction"]
        self._seed: int = info["seed"]
        self._path = f"/studies/{requests.utils.quote(self.name, safe='')}"

    def __repr__(self) -> str:
        return (f"RemoteStudy(name={self.name!r}, method={self.method!r}, "
                f"url={self.client.url!r})")

    @property
    def direction(self) -> str:
        return self._direction

    @property
    def seed(self) -> int:
        return self._seed

    def info(self) -> dict[str, Any]:
        """Settings, trial counts and best trial, as the service reports them."""
        return self.client.request("GET", self._path, resend=True)

    @property
    def trials(self) -> list[Trial]:
        got = self.client.request("GET", self._path + "/trials", resend=True)
        return [Trial.from_dict(t) for t in got["trials"]]

    @property
    def best_trial(self) -> Trial:
        got = self.client.request("GET", self._path + "/best", resend=True)
        return Trial.from_dict(got["trial"])

    @overload
    def ask(self, n: None = None) -> Trial: ...
    @overload
    def ask(self, n: int) -> list[Trial]: ...

    def ask(self, n: int | None = None, *, heartbeat: bool = False) -> Trial | list[Trial]:
        """One new pending trial, or a list of ``n`` distinct ones (``heartbeat``: see
        ``bbopt.Study.ask``)."""
        got = self.client.request("POST", self._path + "/ask",
                                  {"n": 1 if n is None else n, "heartbeat": heartbeat})
        trials = [Trial.from_dict(t) for t in got["trials"]]
        return trials if n is not None else trials[0]

    def heartbeat(self, *trials: Trial | int) -> list[int]:
        """See ``bbopt.Study.heartbeat``."""
        if not trials:
            return []
        ids = [trial_id(t) for t in trials]
        return self.client.request("POST", self._path + "/heartbeat", {"trials": ids},
                                   resend=True)["finished"]

    def fail_stale_trials(self, grace: float) -> list[Trial]:
        """See ``bbopt.Study.fail_stale_trials``."""
        got = self.client.request("POST", self._path + "/fail-stale", {"grace": grace},
                                  resend=True)
        return [Trial.from_dict(t) for t in got["trials"]]

    def tell(self, trial: Trial | int, value: float | None = None, *,
             grad: Mapping[str, float] | Sequence[float] | None = None,
             failed: bool = False, reason: str | None = None) -> Trial:
        """Record a pending trial's value (or ``failed=True``); see ``bbopt.Study.tell``."""
        number = trial_id(trial)
        if grad is not None and not isinstance(grad, Mapping):
            grad = [float(g) for g in grad]
        if value is not None:
            value = check_value(value)  # NaN cannot even be sent as JSON
        body = {"value": value, "failed": failed, "reason": reason, "grad": grad}
        try:
            got = self.client.request("POST", f"{self._path}/trials/{number}/tell", body,
                                      resend=True)
        except TrialError:
            # A resent tell whose first answer was lost: done if the store has our value.
            if getattr(self.client._local, "resent", False):
                done = next((t for t in self.trials if t.id == number), None)
                if done is not None and _same_outcome(done, value, failed):
                    return done
            raise
        return Trial.from_dict(got["trial"])


def _ours(r: requests.Response) -> bool:
    """Whether an answer comes from bbopt's app (every app error is a JSON error)."""
    try:
        return isinstance(r.json().get("error"), dict)
    except (ValueError, AttributeError):
        return False


def _same_outcome(trial: Trial, value: float | None, failed: bool) -> bool:
    if failed:
        return trial.state is TrialState.FAILED
    return (trial.state is TrialState.COMPLETE and isinstance(value, float)
            and math.isclose(trial.value, value, rel_tol=0, abs_tol=0))
