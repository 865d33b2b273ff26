"""Data-parallel meta-training on Ray Train: N workers train one model together.

``train_distributed(BBOTrainer, config, run_dir, workers=N)`` runs the ordinary
``MetaTrainer.run`` loop on N Ray Train workers (``ray.train.torch.TorchTrainer``;
``torch.distributed`` with Ray Train's default backend: gloo on CPU, NCCL with
``gpus=True``, one GPU per worker). There is one training loop, ``MetaTrainer.run``;
each worker builds the trainer inside ``using_world(TorchWorld(...))``, which makes it:

- draw its share ``config.batch / N`` of the total batch (the total must divide by N),
  from its own sampling stream (``bbopt.meta.base.rank_seed``: rank 0 keeps the seed, so
  a 1-worker run draws exactly what the in-process run draws). Each rank draws its own
  dimension / parallel setting / optimizee family for its share, so one step mixes N
  draws where the single process uses one: the same distribution of meta-gradients,
  at equal total batch, with a little less variance;
- average the meta-gradient over the workers after backward (one ``all_reduce`` of the
  flattened gradients, the loss and a finite flag per step; a step is skipped on every
  rank when any rank's loss diverged, as the single process skips it). Clipping and
  Adam then run identically on every rank, so the replicas stay equal (no DDP: the
  rollouts are custom loops and some parameters get no gradient on some ranks);
- validate and write ``log.jsonl``, ``best.pt`` and ``last.pt`` on rank 0 only, on the
  same validation set as the single process. ``last.pt`` also keeps every rank's
  generator state, so a resume with the same worker count continues every sampling
  stream; other ranks (a different count) start fresh streams seeded from the iteration.

Resume works as in the single process: every rank loads ``run_dir/last.pt`` and starts
at its iteration (the ranks check that they agree, and rank 0's weights are broadcast).
The run directory must therefore be a path every worker sees: on one machine any local
path; on a cluster a shared file system (NFS, a mounted bucket) at the same path on
every node, as for Ray Train's own storage, which lives under ``run_dir/ray``.

On a cluster, submit the same command as a job; ``ray.init()`` joins the cluster that
``ray job submit`` names in ``RAY_ADDRESS``::

    ray job submit --address http://HEAD:8265 -- \\
        bbopt train bbo --out /shared/runs/bbo --workers 8 --gpus --batch 256
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from bbopt.meta.base import MetaTrainer, World, using_world


def split_batch(batch: int, workers: int) -> int:
    """Each worker's share of the total ``batch``; a clear error unless it divides."""
    if workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers}")
    if batch % workers:
        raise ValueError(f"the batch ({batch}) must divide by the number of workers "
                         f"({workers}): each worker trains on batch / workers functions, "
                         f"e.g. --batch {batch - batch % workers or workers}")
    return batch // workers


class TorchWorld(World):
    """One rank of a ``torch.distributed`` process group (set up by Ray Train)."""

    def __init__(self, rank: int, size: int, device: torch.device,
                 shared: dict[str, Any] | None = None) -> None:
        super().__init__(shared)
        self.rank, self.size, self.device = rank, size, device

    def reduce_step(self, model: nn.Module, loss: torch.Tensor,
                    finite: bool) -> tuple[float, bool]:
        """One all_reduce of [gradients, which parameters have one, loss, diverged]."""
        params = [p for p in model.parameters() if p.requires_grad]
        dtype = params[0].dtype
        parts = [p.grad.detach().reshape(-1).to(dtype) if finite and p.grad is not None
                 else torch.zeros(p.numel(), dtype=dtype, device=self.device)
                 for p in params]
        has = [1.0 if finite and p.grad is not None else 0.0 for p in params]
        tail = [float(loss) if finite else 0.0, 0.0 if finite else 1.0]
        buf = torch.cat([*parts, torch.tensor(has + tail, dtype=dtype, device=self.device)])
        dist.all_reduce(buf)
        if float(buf[-1]) > 0:  # some rank diverged: every rank skips this batch
            for p in params:
                p.grad = None
            return float("nan"), False
        offset, present = 0, buf[-2 - len(params):-2]
        for i, p in enumerate(params):
            n = p.numel()
            p.grad = (buf[offset:offset + n].view_as(p) / self.size).clone() \
                if present[i] > 0 else None
            offset += n
        return float(buf[-2]) / self.size, True

    def gather(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out


def _quiet(msg: str) -> None:
    """The log of ranks other than 0 (and of quiet runs)."""


def echo(msg: str) -> None:
    """Rank 0's progress line on its stdout, which Ray forwards to the driver's terminal.
    Not ``print``: Ray Train patches it in workers to go to its logger as well, which
    shows every line twice."""
    sys.stdout.write(msg + "\n")
    sys.stdout.flush()


def _digest(tensors: list[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _start_in_step(trainer: MetaTrainer, world: TorchWorld) -> None:
    """Every rank at the same iteration (a run directory that some workers cannot see
    would split them), and rank 0's weights on every rank."""
    seen = world.gather(trainer.iteration)
    if len(set(seen)) > 1:
        raise RuntimeError(f"the workers found different resume points in {trainer.run_dir} "
                           f"(iterations by rank: {seen}): the run directory must be a path "
                           "that every worker shares")
    with torch.no_grad():
        for t in [*trainer.model.parameters(), *trainer.model.buffers()]:
            dist.broadcast(t.data, src=0)


def _worker_loop(cfg: dict[str, Any]) -> None:
    """Ray Train's per-worker function: build this rank's trainer, run, report."""
    import ray.train

    ctx = ray.train.get_context()
    rank, size = ctx.get_world_rank(), ctx.get_world_size()
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    if cfg["gpus"]:
        import ray.train.torch

        device = ray.train.torch.get_device()
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    config = replace(cfg["config"], device=str(device))
    world = TorchWorld(rank, size, device, shared={"batch": cfg["total_batch"]})
    with using_world(world):
        trainer = cfg["trainer_cls"](config, cfg["run_dir"], command=cfg["command"],
                                     log=cfg["log"] if rank == 0 else _quiet)
    _start_in_step(trainer, world)
    start, generator = trainer.iteration, _digest([trainer.generator.get_state()])
    t0 = time.perf_counter()
    result = trainer.run()
    ranks = world.gather({
        "rank": rank, "host": socket.gethostname(), "pid": os.getpid(),
        "device": str(device), "batch": config.batch, "start_iteration": start,
        "generator_at_start": generator, "seconds": time.perf_counter() - t0,
        "weights": _digest(list(trainer.model.state_dict().values())),
    })
    if rank == 0:
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "result.json").write_text(json.dumps({**result, "ranks": ranks}))
            ray.train.report({**result, "ranks": ranks},
                             checkpoint=ray.train.Checkpoint.from_directory(tmp))
    else:
        ray.train.report({})


def ensure_ray(workers: int, gpus: bool = False, cpus_per_worker: int = 1) -> None:
    """Join the Ray cluster in ``RAY_ADDRESS`` (as ``ray job submit`` sets it) or one this
    process already joined, else start a local instance; without a cluster address, fail
    early if the workers cannot all be placed (rather than wait for them forever)."""
    import ray

    address = os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        if address:
            ray.init(address=address, logging_level="WARNING")
        else:
            ray.init(include_dashboard=False, logging_level="WARNING")
    if address:
        return  # a cluster may autoscale: let Ray Train wait for the resources
    have = ray.cluster_resources()
    need = {"CPU": workers * cpus_per_worker, **({"GPU": workers} if gpus else {})}
    for kind, n in need.items():
        if have.get(kind, 0) < n:
            raise ValueError(f"{workers} workers need {n:g} {kind}s, this Ray instance has "
                             f"{have.get(kind, 0):g} (set RAY_ADDRESS to use a cluster)")


def train_distributed(trainer_cls: type[MetaTrainer], config: Any, run_dir: str | Path,
                      workers: int, gpus: bool = False, command: str | None = None,
                      log: Callable[[str], None] | None = echo,
                      threads: int | None = None, max_failures: int = 3) -> dict[str, Any]:
    """Meta-train ``trainer_cls`` on ``workers`` Ray Train workers at total batch
    ``config.batch``; resumes from ``run_dir/last.pt`` like the single process.

    ``log`` gets rank 0's progress lines, on the worker (the default, ``echo``, writes
    them to its stdout, which Ray forwards to this terminal; None: quiet); ``threads`` is torch's CPU threads per worker
    (and the CPUs each worker reserves; default 1). A worker that dies (killed, its node
    lost) makes Ray Train restart the whole group, up to ``max_failures`` times (-1:
    always); the new workers resume from ``run_dir/last.pt``, so at most the steps since
    the last checkpoint are redone. Returns rank 0's ``run()`` result with
    ``workers`` and ``ranks`` (per rank: host, pid, device, batch share, iteration it
    started at, a digest of its generator state then, and of its final weights).
    """
    import ray.train
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    share = split_batch(config.batch, workers)
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    ensure_ray(workers, gpus, threads or 1)
    name = f"fit-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"trainer_cls": trainer_cls, "config": replace(config, batch=share),
                           "total_batch": config.batch, "run_dir": str(run_dir),
                           "command": command, "log": log or _quiet, "gpus": gpus,
                           "threads": threads},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus,
                                     resources_per_worker={"CPU": threads or 1,
                                                           **({"GPU": 1} if gpus else {})}),
        run_config=RunConfig(storage_path=str(run_dir / "ray"), name=name,
                             checkpoint_config=CheckpointConfig(num_to_keep=1),
                             failure_config=FailureConfig(max_failures=max_failures)),
    )
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as e:
        raise _worker_error(e) from None
    try:
        assert result.checkpoint is not None
        with result.checkpoint.as_directory() as d:
            out = json.loads(Path(d, "result.json").read_text())
    finally:  # Ray Train's bookkeeping of this fit; the run's files are in run_dir
        shutil.rmtree(run_dir / "ray" / name, ignore_errors=True)
        try:
            (run_dir / "ray").rmdir()  # only if no other fit is using it
        except OSError:
            pass
    return {**out, "workers": workers}


def _worker_error(e: Exception) -> Exception:
    """The first worker's exception (a ValueError stays one, for the CLI's message)."""
    failures = getattr(e, "worker_failures", None) or {}
    for _, err in sorted(failures.items()):
        cause = getattr(err, "cause", None) or err
        if isinstance(cause, ValueError):
            return ValueError(str(cause))
        return RuntimeError(f"distributed meta-training failed: {cause}")
    return RuntimeError(f"distributed meta-training failed: {e}")


# -- throughput benchmark (bbopt bench-train) ----------------------------------------------


def bench_config(trainer: str, iterations: int, batch: int, horizon: int, seed: int = 0,
                 dims: tuple[int, ...] = (4,), families: tuple[str, ...] = ("quadratic",),
                 unroll: int = 20) -> tuple[type[MetaTrainer], Any]:
    """The trainer class and a config for timing: the default architecture, one
    validation at the start and one at the end (both outside the timed loop), and one
    checkpoint at the end."""
    if trainer == "bbo":
        from bbopt.meta.trainer import BBOTrainConfig, BBOTrainer

        return BBOTrainer, BBOTrainConfig(
            dims=dims, parallel=(1,), horizon=horizon, batch=batch, iterations=iterations,
            val_every=iterations, checkpoint_every=iterations, val_dims=dims[:1],
            val_functions=4, seed=seed)
    if trainer == "l2l":
        from bbopt.meta.l2l import L2LTrainConfig, L2LTrainer

        return L2LTrainer, L2LTrainConfig(
            families=families, batch=batch, horizon=horizon, unroll=min(unroll, horizon),
            iterations=iterations, val_every=iterations, checkpoint_every=iterations,
            val_problems=2, seed=seed)
    raise ValueError(f"unknown trainer {trainer!r}; expected 'bbo' or 'l2l'")


def throughput(trainer: str, workers: list[int], in_process_threads: tuple[int, ...] = (),
               gpus: bool = False, log: Callable[[str], None] = _quiet,
               **settings: Any) -> list[dict[str, Any]]:
    """Meta-training throughput at the same total batch: in this process with each torch
    thread count of ``in_process_threads``, then on Ray Train with each worker count (one
    thread per worker). Each run trains a fresh model in a temporary run directory.

    ``seconds_per_step`` is the training loop's own time per meta-gradient step (from
    log.jsonl: start-up, validation and the final checkpoint excluded); ``wall_s`` is the
    whole call, Ray's worker start-up included. ``functions_per_s`` counts the functions
    (bbo: whole trajectories of ``horizon`` queries) or problems (l2l: one unroll of
    ``unroll`` optimizer steps each) of the total batch, per second of that loop.
    """
    cls, config = bench_config(trainer, **settings)
    rows: list[dict[str, Any]] = []
    runs = [("in process", 1, t) for t in in_process_threads]
    runs += [("Ray Train", n, 1) for n in workers]
    default_threads = torch.get_num_threads()
    for mode, n, threads in runs:
        with tempfile.TemporaryDirectory(prefix="bbopt-bench-train-") as tmp:
            t0 = time.perf_counter()
            if mode == "in process":
                torch.set_num_threads(threads)
                try:
                    cls(config, tmp, command="bench", log=_quiet).run()
                finally:
                    torch.set_num_threads(default_threads)
            else:
                train_distributed(cls, config, tmp, workers=n, gpus=gpus, command="bench",
                                  log=None)
            wall = time.perf_counter() - t0
            last = [json.loads(line) for line in Path(tmp, "log.jsonl").read_text().splitlines()
                    if line.strip()][-1]
        per_step = float(last["s_per_it"])
        rows.append({"mode": mode, "workers": n, "threads": threads,
                     "batch_per_worker": config.batch // n,
                     "seconds_per_step": per_step, "functions_per_s": config.batch / per_step,
                     "wall_s": wall})
        log(f"{mode}, {n} worker(s) x {threads} thread(s): {per_step:.3f} s/step, "
            f"{config.batch / per_step:.1f} functions/s, {wall:.1f} s wall")
    return rows


def throughput_markdown(trainer: str, rows: list[dict[str, Any]], command: str,
                        settings: dict[str, Any]) -> str:
    """A dated table (speed-up relative to 1 Ray worker) under its command."""
    import platform

    import ray

    from bbopt.meta.base import git_commit

    unit = "functions/s" if trainer == "bbo" else "problems/s"
    ref = next((r["functions_per_s"] for r in rows
                if r["mode"] == "Ray Train" and r["workers"] == 1), None)
    lines = [f"| run | workers | threads each | batch per worker | s per meta-step | {unit} "
             "| vs 1 Ray worker | wall s (with start-up) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['functions_per_s'] / ref:.2f}x" if ref else "-"
        lines.append(f"| {r['mode']} | {r['workers']} | {r['threads']} | "
                     f"{r['batch_per_worker']} | {r['seconds_per_step']:.3f} | "
                     f"{r['functions_per_s']:.1f} | {ratio} | {r['wall_s']:.1f} |")
    what = ", ".join(f"{k} {v}" for k, v in settings.items())
    return (f"\n### `{command}`\n\n{time.strftime('%Y-%m-%d')}, commit {git_commit()}, "
            f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"ray {ray.__version__}; {trainer}: {what}.\n\n" + "\n".join(lines) + "\n")
