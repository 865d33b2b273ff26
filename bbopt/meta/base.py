"""What every meta-trainer shares: the loop, validation-selected best weights,
checkpoints, resume and the progress log.

A run directory holds ``last.pt`` (everything needed to resume, written every
``checkpoint_every`` iterations and at the end), ``best.pt`` (the model with the best
validation score so far, in its shipped-weights format, because longer training can
make held-out results worse), ``log.jsonl`` and, with ``snapshot_every``,
``snapshots/it_N.pt`` (the weights every that many iterations, in the same format). A
run directory that holds ``last.pt`` resumes from it. A subclass says how to build its
model, take one meta-gradient step, validate, and write shipped weights.

The same loop runs data-parallel (``bbopt.meta.distributed``): a trainer built inside
``using_world(world)`` takes its share of the batch on its rank, averages the
meta-gradient over the ranks after backward (``World.reduce_step``), and only rank 0
validates and writes files. The default ``World`` is one process, where every hook is
the identity, so the single-process path is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn


def git_commit() -> str:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=here, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, cwd=here, timeout=10)
        commit = out.stdout.strip() or "unknown"
        return commit + ("+changes" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def rank_seed(seed: int, rank: int, iteration: int = 0) -> int:
    """The sampling seed of ``rank`` in a data-parallel run: rank 0 keeps ``seed`` (so one
    worker draws what the single process draws), the others get a hash of (seed, rank,
    iteration), so workers draw different functions and a rank that joins a resumed run
    without a saved generator state does not replay the start of the run."""
    if rank == 0 and iteration == 0:
        return seed
    digest = hashlib.sha256(f"bbopt-rank-seed/{seed}/{rank}/{iteration}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class World:
    """The processes that train one model together; this base class is a single process.

    ``bbopt.meta.distributed.TorchWorld`` overrides both methods with
    ``torch.distributed`` collectives. ``shared`` holds config fields as the whole run
    sees them (the total batch, where a rank's config holds its share): they are what
    checkpoints and weights metadata record.
    """

    rank: int = 0
    size: int = 1

    def __init__(self, shared: dict[str, Any] | None = None) -> None:
        self.shared: dict[str, Any] = dict(shared or {})

    def reduce_step(self, model: nn.Module, loss: torch.Tensor,
                    finite: bool) -> tuple[float, bool]:
        """After backward: make every rank's gradients the mean over ranks, and agree on
        the loss (mean over ranks) and on whether all of them are finite."""
        return float(loss), finite

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order (a collective: every rank calls it)."""
        return [obj]


_WORLD: ContextVar[World | None] = ContextVar("bbopt_meta_world", default=None)


@contextmanager
def using_world(world: World) -> Iterator[World]:
    """Trainers built inside this block train as one rank of ``world``."""
    token = _WORLD.set(world)
    try:
        yield world
    finally:
        _WORLD.reset(token)


class MetaTrainer:
    """Trains ``self.model`` with Adam until ``config.iterations``; see the module doc.

    The config (a dataclass) needs ``lr``, ``clip``, ``iterations``, ``val_every``,
    ``checkpoint_every``, ``snapshot_every``, ``seed`` and ``device``.
    """

    #: Config fields that fix the architecture: a checkpoint must match them to resume.
    architecture_keys: ClassVar[tuple[str, ...]] = ()
    #: What the validation figure is, for the progress line.
    val_label: ClassVar[str] = "val"

    def __init__(self, config: Any, run_dir: str | Path, command: str | None = None,
                 log: Any = None) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.command = command or " ".join(["bbopt", *sys.argv[1:]])
        self.log = log or (lambda msg: print(msg, flush=True))
        self.world = _WORLD.get() or World()
        self.device = torch.device(config.device)
        torch.manual_seed(config.seed)
        self.model: nn.Module = self.make_model().to(self.device)
        self.optim = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.generator = torch.Generator().manual_seed(rank_seed(config.seed, self.world.rank))
        self.iteration = 0
        self.best_val = math.inf
        self.history: list[dict[str, Any]] = []
        last = self.run_dir / "last.pt"
        if last.exists():
            self._resume(last)
        elif getattr(config, "init", None):
            self.load_init(config.init)

    # -- what a subclass provides ---------------------------------------------------------

    def make_model(self) -> nn.Module:
        raise NotImplementedError

    def load_init(self, path: str) -> None:
        """Start from shipped-format weights (same architecture)."""
        raise NotImplementedError

    def loss(self) -> torch.Tensor:
        """The meta-loss of one fresh batch (a graph to backpropagate through)."""
        raise NotImplementedError

    def evaluate_validation(self) -> dict[str, float]:
        """Validation figures (lower is better), with the selection figure as ``mean``."""
        raise NotImplementedError

    def save_best(self, path: Path, meta: dict[str, Any]) -> None:
        raise NotImplementedError

    def meta(self) -> dict[str, Any]:
        """Metadata of shipped weights beyond command, commit, iteration and validation."""
        return {}

    # -- checkpoints ----------------------------------------------------------------------

    def _resume(self, path: Path) -> None:
        blob = torch.load(path, map_location=self.device, weights_only=False)
        saved = blob["config"]
        mine = asdict(self.config)
        for key in self.architecture_keys:
            if saved.get(key) != mine.get(key):
                raise ValueError(f"{path}: cannot resume, the checkpoint has {key}="
                                 f"{saved.get(key)!r} and this run asks for {mine.get(key)!r}")
        self.model.load_state_dict(blob["policy"])
        self.optim.load_state_dict(blob["optim"])
        rank, states = self.world.rank, blob.get("generators") or [blob["generator"]]
        if rank < len(states):
            self.generator.set_state(states[rank])
        else:  # more ranks than the run that wrote the checkpoint: a fresh stream
            self.generator.manual_seed(rank_seed(self.config.seed, rank, blob["iteration"]))
        self.iteration = blob["iteration"]
        self.best_val = blob["best_val"]
        self.history = blob["history"]
        self.log(f"resumed {path} at iteration {self.iteration} (best val {self.best_val:.3f})")

    def saved_config(self) -> dict[str, Any]:
        """The config as checkpoints record it: the whole run's (total batch), not a rank's."""
        return {**asdict(self.config), **self.world.shared}

    def _checkpoint(self) -> None:
        states = self.world.gather(self.generator.get_state())  # every rank takes part
        if self.world.rank != 0:
            return
        blob = {"config": self.saved_config(), "policy": self.model.state_dict(),
                "optim": self.optim.state_dict(), "generator": states[0],
                "iteration": self.iteration, "best_val": self.best_val,
                "history": self.history}
        if self.world.size > 1:  # every rank's sampling stream, to resume each one
            blob.update(generators=states, world_size=self.world.size)
        tmp = self.run_dir / "last.tmp"
        torch.save(blob, tmp)
        tmp.replace(self.run_dir / "last.pt")

    # -- training -------------------------------------------------------------------------

    def step(self) -> float:
        """One meta-gradient step on a fresh batch; returns the loss. A non-finite loss
        (a diverged trajectory) teaches nothing: it is logged and skipped."""
        loss = self.loss()
        finite = bool(torch.isfinite(loss))
        self.optim.zero_grad(set_to_none=True)
        if finite:
            loss.backward()
        # Data-parallel: the mean gradient over ranks; all ranks skip if any diverged.
        value, finite = self.world.reduce_step(self.model, loss.detach(), finite)
        if not finite:
            self.log(f"it {self.iteration}: non-finite meta-loss, batch skipped")
            return float("nan")
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip)
        self.optim.step()
        return value

    def validate(self) -> dict[str, float]:
        """Validation figures, and best.pt when they are the best so far; rank 0 only
        (the other ranks of a data-parallel run get NaN and go on to the next step)."""
        if self.world.rank != 0:
            return {"mean": math.nan}
        val = self.evaluate_validation()
        if val["mean"] < self.best_val:
            self.best_val = val["mean"]
            self.save_best(self.run_dir / "best.pt", self._weights_meta(val))
            val = {**val, "best": 1.0}
        return val

    def _weights_meta(self, validation: dict[str, float] | None) -> dict[str, Any]:
        """The metadata written with weights at this iteration."""
        meta = {"command": self.command, "commit": git_commit(),
                "iteration": self.iteration, **self.meta(), "validation": validation,
                "created": time.strftime("%Y-%m-%d %H:%M:%S")}
        meta.update({k: v for k, v in self.world.shared.items() if k in meta})
        if self.world.size > 1:
            meta["workers"] = self.world.size
        return meta

    def run(self) -> dict[str, Any]:
        c = self.config
        if self.iteration == 0:
            val = self.validate()
            self._record({"iteration": 0, "val": val})
        t0, losses = time.perf_counter(), []
        while self.iteration < c.iterations:
            losses.append(self.step())
            self.iteration += 1
            val = None
            if self.iteration % c.val_every == 0 or self.iteration == c.iterations:
                dt = (time.perf_counter() - t0) / len(losses)
                val = self.validate()
                finite = [v for v in losses if math.isfinite(v)] or [math.nan]
                self._record({"iteration": self.iteration, "loss": sum(finite) / len(finite),
                              "s_per_it": dt, "val": val})
                t0, losses = time.perf_counter(), []
            if (c.snapshot_every and self.iteration % c.snapshot_every == 0
                    and self.world.rank == 0):
                # Weights along the way, to choose among on held-out problems later.
                self.save_best(self.run_dir / "snapshots" / f"it_{self.iteration}.pt",
                               self._weights_meta(val))
            if self.iteration % c.checkpoint_every == 0 or self.iteration == c.iterations:
                self._checkpoint()
        return {"iteration": self.iteration, "best_val": self.best_val,
                "best": str(self.run_dir / "best.pt")}

    def _record(self, entry: dict[str, Any]) -> None:
        entry["time"] = time.strftime("%H:%M:%S")
        self.history.append(entry)
        if self.world.rank != 0:
            return
        with open(self.run_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")
        val = entry["val"]
        parts = " ".join(f"{k}={v:.3f}" for k, v in val.items() if k not in ("mean", "best"))
        loss = f" loss {entry['loss']:+.4f} ({entry['s_per_it']:.2f} s/it)" if "loss" in entry else ""
        star = " *" if val.get("best") else ""
        self.log(f"[{entry['time']}] it {entry['iteration']:>6}{loss} | {self.val_label} "
                 f"{val['mean']:.3f} ({parts}){star}")
