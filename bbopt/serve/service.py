"""``bbopt serve``: the HTTP service on Ray Serve, with study hosts as Ray actors.

One Serve deployment (the FastAPI ingress of ``bbopt.serve.app``) answers HTTP; it sends
each study's operations to one of ``n_hosts`` ``StudyHost`` actors (by a stable hash of
the study's name), which keep the open studies and their optimizers. When the cluster
has GPUs, the hosts are GPU actors and the learned policies run there. The actors restart
when they die; since every ask and tell is committed to the store before it is answered,
a restarted host or a restarted service continues every study from the store.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

from bbopt.serve.app import RayBackend, make_app
from bbopt.serve.hosts import StudyHost


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def start_hosts(storage: str, n_hosts: int, max_open: int = 1000) -> list[Any]:
    """Start the study-host actors (GPU actors when the cluster has GPUs)."""
    import ray

    gpus = float(ray.cluster_resources().get("GPU", 0.0))
    options: dict[str, Any] = {"num_cpus": 0, "max_restarts": -1, "max_concurrency": 1}
    if gpus > 0:
        options["num_gpus"] = min(1.0, gpus / n_hosts)
        options["runtime_env"] = {"env_vars": {"BBOPT_DEVICE": "cuda"}}
    actor = ray.remote(StudyHost)
    return [actor.options(name=f"bbopt-study-host-{i}", **options).remote(storage, max_open)
            for i in range(n_hosts)]


def build(handles: list[Any], token: str, replicas: int = 1) -> Any:
    """The Serve application: the ingress deployment bound to the host actors."""
    from ray import serve

    @serve.deployment(name="bbopt", num_replicas=replicas, max_ongoing_requests=1024,
                      ray_actor_options={"num_cpus": 0})
    @serve.ingress()
    class BBOptService:
        def __init__(self, handles: list[Any], token: str) -> None:
            self.backend = RayBackend(handles)
            self.token = token

        def __serve_build_asgi_app__(self) -> Any:
            return make_app(self.backend, self.token)

    return BBOptService.bind(handles, token)


def run(host: str, port: int, storage: str, token: str, n_hosts: int = 2,
        replicas: int = 1, address: str | None = None,
        ready: Callable[[str], None] | None = None) -> None:
    """Start Ray (or join the cluster at ``address`` / ``RAY_ADDRESS``), the hosts and
    the HTTP app, then serve until interrupted (Ctrl-C or SIGTERM)."""
    import ray
    from ray import serve

    # Fail on a bad store here, with a clear message, before starting anything.
    from bbopt.storage import SQLStorage

    SQLStorage(storage)
    ray.init(address=address or os.environ.get("RAY_ADDRESS"), namespace="bbopt",
             include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        handles = start_hosts(storage, n_hosts)
        serve.start(http_options={"host": host, "port": port},
                    logging_config={"log_level": "WARNING"})
        serve.run(build(handles, token, replicas), name="bbopt", route_prefix="/")
        if ready:
            ready(f"http://{host}:{port}")
        signal.signal(signal.SIGTERM, _interrupt)
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
