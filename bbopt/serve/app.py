"""The HTTP ask/tell service: a FastAPI app over study hosts, run on Ray Serve.

``make_app(backend, token)`` is the whole HTTP surface; the backend says where the
study hosts run (``RayBackend``: Ray actors, what ``bbopt serve`` uses; ``LocalBackend``:
threads of this process, for tests and debugging). Every route but ``/health`` and the
OpenAPI description needs ``Authorization: Bearer <token>``.

Routes (JSON in, JSON out; an error is ``{"error": {"type", "message"}}`` with a 4xx
status, and leaves the study unchanged):

    GET  /health                               liveness, version, number of hosts
    GET  /stats                                each host's pid, open studies, memory
    GET  /studies                              {"studies": [name, ...]}
    POST /studies                              create or open {name, space, method, ...}
    GET  /studies/{name}                       settings, trial counts, best trial
    POST /studies/{name}/ask                   {"n": 4} -> {"trials": [...]}
    POST /studies/{name}/trials/{id}/tell      {"value": 0.3} | {"failed": true, "reason"}
    POST /studies/{name}/heartbeat             {"trials": [ids]} -> {"finished": [ids]}
    POST /studies/{name}/fail-stale            {"grace": 120} -> {"trials": [failed ones]}
    GET  /studies/{name}/trials                {"trials": [...]}
    GET  /studies/{name}/best                  {"trial": {...}}  (404 before any value)
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from bbopt.serve.hosts import StudyHost, host_index

OPEN_PATHS = {"/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


class Backend(Protocol):
    """Where the study hosts run; ``call`` answers like ``StudyHost.call``."""

    n_hosts: int

    async def call(self, host: int, op: str, name: str | None, args: dict[str, Any]
                   ) -> dict[str, Any]: ...


class LocalBackend:
    """Study hosts in this process, each behind a lock (one operation at a time)."""

    def __init__(self, storage: str, n_hosts: int = 1) -> None:
        self.hosts = [StudyHost(storage) for _ in range(n_hosts)]
        self.locks = [threading.Lock() for _ in range(n_hosts)]
        self.n_hosts = n_hosts

    async def call(self, host: int, op: str, name: str | None, args: dict[str, Any]
                   ) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            with self.locks[host]:
                return self.hosts[host].call(op, name, args)

        return await asyncio.to_thread(run)


class RayBackend:
    """Study hosts as Ray actors (``bbopt.serve.run``): actor handles, in host order."""

    def __init__(self, handles: list[Any]) -> None:
        self.handles = handles
        self.n_hosts = len(handles)

    async def call(self, host: int, op: str, name: str | None, args: dict[str, Any]
                   ) -> dict[str, Any]:
        import ray.exceptions

        try:
            return await self.handles[host].call.remote(op, name, args)
        except ray.exceptions.RayActorError as e:  # restarted by Ray; nothing was lost
            return {"error": {"status": 503, "type": "ServiceError",
                              "message": f"study host {host} died and is restarting ({e}); "
                                         "retry the request"}}


# -- request bodies -------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OpenStudy(_Body):
    name: str = Field(min_length=1, max_length=255)
    space: dict[str, Any] | None = Field(
        default=None, description="bbopt space (as in a space file); needed to create")
    method: str | None = None
    direction: str | None = None
    seed: int | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class Ask(_Body):
    n: int = Field(default=1, ge=1, le=1000)
    heartbeat: bool = Field(
        default=False, description="the caller will send heartbeats while it evaluates")


class Heartbeat(_Body):
    trials: list[int] = Field(min_length=1, max_length=1000)


class FailStale(_Body):
    grace: float = Field(gt=0, description="seconds without a heartbeat")


class Tell(_Body):
    value: float | None = None
    failed: bool = False
    reason: str | None = None
    grad: list[float] | dict[str, float] | None = None


def _answer(reply: dict[str, Any], key: str | None = None) -> Any:
    if "error" in reply:
        err = dict(reply["error"])
        status = err.pop("status")
        return JSONResponse({"error": err}, status_code=status)
    result = reply["result"]
    return {key: result} if key else result


def make_app(backend: Backend, token: str) -> FastAPI:
    """The service's FastAPI app (see the module doc)."""
    from bbopt import __version__

    if not token:
        raise ValueError("the service needs an API token")
    app = FastAPI(title="bbopt", version=__version__,
                  description="Ask/tell black-box optimization studies over HTTP.")

    @app.middleware("http")
    async def authenticate(request: Request, call_next: Any) -> Any:
        if request.url.path not in OPEN_PATHS:
            given = request.headers.get("authorization", "")
            scheme, _, value = given.partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(value.encode(),
                                                                        token.encode()):
                what = "missing" if not given else "invalid"
                return JSONResponse(
                    {"error": {"type": "AuthenticationError",
                               "message": f"{what} API token: send 'Authorization: Bearer "
                                          "<token>'"}},
                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        def one(e: dict[str, Any]) -> str:
            if e.get("type") == "json_invalid":
                return f"malformed JSON body (at character {e['loc'][-1]}): {e.get('msg')}"
            where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
            return f"{where}: {e.get('msg')}"

        problems = "; ".join(one(e) for e in exc.errors())
        return JSONResponse({"error": {"type": "RequestError", "message": problems}},
                            status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": {"type": "HTTPError", "message": str(exc.detail)}},
                            status_code=exc.status_code)

    async def on_study(op: str, name: str, **args: Any) -> dict[str, Any]:
        return await backend.call(host_index(name, backend.n_hosts), op, name, args)

    @app.get("/health", summary="Liveness (no token needed)")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "hosts": backend.n_hosts}

    @app.get("/stats", summary="Each study host's process, open studies and memory")
    async def stats() -> Any:
        replies = await asyncio.gather(*(backend.call(i, "stats", None, {})
                                         for i in range(backend.n_hosts)))
        for reply in replies:
            if "error" in reply:
                return _answer(reply)
        return {"hosts": [r["result"] for r in replies]}

    @app.get("/studies", summary="Names of all studies in the store")
    async def list_studies() -> Any:
        return _answer(await backend.call(0, "list", None, {}), "studies")

    @app.post("/studies", summary="Create a study, or open it if it exists")
    async def open_study(body: OpenStudy) -> Any:
        return _answer(await on_study("open", body.name, **body.model_dump(exclude={"name"})))

    @app.get("/studies/{name}", summary="A study's settings, trial counts and best trial")
    async def get_study(name: str) -> Any:
        return _answer(await on_study("info", name))

    @app.post("/studies/{name}/ask", summary="Hand out n new pending trials")
    async def ask(name: str, body: Ask | None = None) -> Any:
        body = body or Ask()
        return _answer(await on_study("ask", name, n=body.n, heartbeat=body.heartbeat),
                       "trials")

    @app.post("/studies/{name}/heartbeat",
              summary="Workers of these pending trials are alive; answers those no longer "
                      "pending")
    async def heartbeat(name: str, body: Heartbeat) -> Any:
        return _answer(await on_study("heartbeat", name, trials=body.trials), "finished")

    @app.post("/studies/{name}/fail-stale",
              summary="Fail pending trials with no heartbeat for `grace` seconds")
    async def fail_stale(name: str, body: FailStale) -> Any:
        return _answer(await on_study("fail_stale", name, grace=body.grace), "trials")

    @app.post("/studies/{name}/trials/{trial_id}/tell",
              summary="Record a pending trial's value, or its failure")
    async def tell(name: str, trial_id: int, body: Tell) -> Any:
        return _answer(await on_study("tell", name, trial_id=trial_id,
                                      **body.model_dump()), "trial")

    @app.get("/studies/{name}/trials", summary="Every trial, in the order they were asked")
    async def trials(name: str) -> Any:
        return _answer(await on_study("trials", name), "trials")

    @app.get("/studies/{name}/best", summary="The completed trial with the best value")
    async def best(name: str) -> Any:
        return _answer(await on_study("best", name), "trial")

    return app
