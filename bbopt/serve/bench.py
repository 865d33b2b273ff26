"""``bbopt bench-serve``: throughput and latency of the HTTP service, and its memory per
open study.

Each client is a thread with its own ``bbopt.Client`` and its own study, running
ask-then-tell pairs back to back for a fixed time; the figures are pairs per second over
all clients and the p50/p99 latency of one pair. Memory per open study is the growth of
the study hosts' resident memory (``/stats``) after opening many small studies, divided
by their number.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import requests

from bbopt.serve.client import Client

SPACE = {f"x{i}": {"type": "float", "low": -1.0, "high": 1.0} for i in range(4)}


def _objective(params: dict[str, float]) -> float:
    return sum((v - 0.2) ** 2 for v in params.values())


@contextmanager
def local_service(n_hosts: int = 2, log: Callable[[str], None] = print
                  ) -> Iterator[tuple[str, str]]:
    """``bbopt serve`` on a free loopback port with a fresh SQLite file; (url, token)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = "bench-token"
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env["BBOPT_TOKEN"] = token
        logfile = Path(tmp) / "serve.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "bbopt.cli", "serve", "--port", str(port), "--storage",
             f"sqlite:///{tmp}/bench.db", "--hosts", str(n_hosts)],
            stdout=logfile.open("w"), stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the service did not start:\n"
                                       + logfile.read_text()[-2000:])
                try:
                    if requests.get(url + "/health", timeout=2).ok:
                        break
                except requests.RequestException:
                    pass
                time.sleep(0.5)
            log(f"service up at {url} ({n_hosts} study hosts)")
            yield url, token
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


def load(url: str, token: str, clients: int, seconds: float, method: str,
         warmup: int = 3, tag: str = "") -> dict[str, Any]:
    """``clients`` threads asking and telling for ``seconds``; pairs/s and latency."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[Exception] = []
    start = threading.Barrier(clients + 1)
    stop = threading.Event()

    def work(i: int) -> None:
        try:
            study = Client(url, token).study(f"bench{tag}-{clients}-{i}", space=SPACE,
                                             method=method, seed=i)
            for _ in range(warmup):  # connections, the host's first load of the weights
                t = study.ask()
                study.tell(t, _objective(t.params))
        except Exception as e:  # noqa: BLE001
            errors.append(e)
        start.wait()
        try:
            while not stop.is_set():
                t0 = time.perf_counter()
                trial = study.ask()
                study.tell(trial, _objective(trial.params))
                latencies[i].append(time.perf_counter() - t0)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(120)
    elapsed = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} client errors, first: {errors[0]!r}")
    lat = np.array([x for xs in latencies for x in xs])
    return {"clients": clients, "pairs": int(lat.size), "pairs_per_s": lat.size / elapsed,
            "p50_ms": 1e3 * float(np.percentile(lat, 50)),
            "p99_ms": 1e3 * float(np.percentile(lat, 99))}


def memory_per_study(url: str, token: str, studies: int, trials: int, method: str
                     ) -> dict[str, Any]:
    """Hosts' resident memory growth per open study (each with ``trials`` told)."""
    client = Client(url, token)
    headers = {"Authorization": f"Bearer {token}"}

    def rss() -> float:
        hosts = requests.get(url + "/stats", headers=headers, timeout=60).json()["hosts"]
        return sum(h["rss_mb"] for h in hosts), sum(h["open_studies"] for h in hosts)

    # Warm the hosts (imports, the policy weights) so only per-study memory is counted.
    for i in range(4):
        s = client.study(f"mem-warm-{i}", space=SPACE, method=method, seed=i)
        s.tell(s.ask(), 1.0)
    before, open_before = rss()
    for i in range(studies):
        s = client.study(f"mem-{i}", space=SPACE, method=method, seed=i)
        for _ in range(trials):
            t = s.ask()
            s.tell(t, _objective(t.params))
    after, open_after = rss()
    return {"studies": open_after - open_before, "trials": trials,
            "rss_before_mb": before, "rss_after_mb": after,
            "kb_per_study": 1024 * (after - before) / max(1, open_after - open_before)}


def run(clients: list[int], seconds: float, method: str, studies: int, trials: int,
        n_hosts: int, url: str | None = None, token: str | None = None,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every figure in one run against one service (started here unless ``url``)."""

    def measure(url: str, token: str) -> dict[str, Any]:
        rows = []
        tag = f"-{int(time.time())}"
        for c in clients:
            row = load(url, token, c, seconds, method, tag=tag)
            log(f"{c:>3} clients: {row['pairs_per_s']:.1f} pairs/s, p50 "
                f"{row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms")
            rows.append(row)
        mem = memory_per_study(url, token, studies, trials, method)
        log(f"memory: {mem['kb_per_study']:.0f} KB per open study "
            f"({mem['studies']} studies, {trials} trials each)")
        return {"load": rows, "memory": mem}

    if url:
        return measure(url, token or os.environ.get("BBOPT_TOKEN", ""))
    with local_service(n_hosts, log) as (u, t):
        return measure(u, t)


def to_markdown(result: dict[str, Any], command: str, method: str, seconds: float,
                n_hosts: int) -> str:
    cpu = os.cpu_count()
    lines = [
        "## Service throughput and latency (issue 5)", "",
        f"Command: `{command}`", "",
        f"`bbopt serve` on a local Ray instance ({n_hosts} study-host actors, SQLite file "
        f"store, {cpu} CPU cores shared by the service, Ray and the clients). Each client "
        f"is a thread with its own study (method `{method}`, 4 float parameters) running "
        f"ask-then-tell pairs back to back for {seconds:g} s; latency is one pair (two "
        "HTTP round trips, each committed to the database before the answer).", "",
        "| concurrent clients | pairs/s | p50 pair latency (ms) | p99 pair latency (ms) |",
        "|---:|---:|---:|---:|",
    ]
    for r in result["load"]:
        lines.append(f"| {r['clients']} | {r['pairs_per_s']:.1f} | {r['p50_ms']:.1f} | "
                     f"{r['p99_ms']:.1f} |")
    m = result["memory"]
    lines += ["", f"Memory per open study: **{m['kb_per_study']:.0f} KB** (study hosts' "
              f"resident memory {m['rss_before_mb']:.0f} MB -> {m['rss_after_mb']:.0f} MB "
              f"after opening {m['studies']} studies of {m['trials']} told trials each; "
              "a host keeps at most 1000 studies open and reopens others from the store).",
              ""]
    return "\n".join(lines)

