"""Benchmark of the gradient-input optimizers against tuned hand-designed ones.

Every method optimizes the same problems (``bbopt.tasks.optimizees``: a seed fixes the
problems, their starting points and their minibatches) for ``steps`` steps, and the full
training loss is recorded at ``RECORD`` steps. The baselines (SGD, Nesterov momentum,
RMSprop, Adam) run at every learning rate of ``LR_GRID`` and each table row shows the
best one *for that task and that step* (the median over problems decides), which favors
them; the learned optimizer (``lstm``: ``bbopt.LSTMOptimizer`` with its shipped weights
and default settings) and the learning-rate memory (``lr-memory``: a fresh
``bbopt.LRMemory`` with its default settings) get no tuning. The sparse-regression tasks
add ISTA and FISTA. Finished runs go to ``OUT/runs.jsonl``; a re-run skips them unless
they were made with other settings or, for ``lstm``, other weights.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import statistics
from collections.abc import Callable, Sequence
from concurrent.futures import as_completed
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

LR_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
BASELINES = ("sgd", "nag", "rmsprop", "adam")
UNTUNED = ("lstm", "lr-memory")
PROXIMAL = ("ista", "fista")
RECORD = (100, 200, 1000)
#: Seeds of benchmark problems: apart from meta-training (0..) and its validation.
BENCH_SEED = 555_000_000


def _record(steps: int) -> list[int]:
    """The steps reported: those of RECORD within the budget, and the last one."""
    return sorted({t for t in RECORD if t < steps} | {steps})


def _weights_path(method: str) -> Path | None:
    """The weights file of a learned method: ``lstm`` the default rule, ``lstm:NAME`` a
    shipped one by name, ``lstm:PATH`` other weights (an ablation's, say); None for the
    other methods."""
    if method != "lstm" and not method.startswith("lstm:"):
        return None
    from bbopt.optimizers.l2l import weights_path

    return weights_path(method[len("lstm:"):] or None)


def _make(method: str, lr: float | None) -> Callable[[list[Any]], Any]:
    import torch

    import bbopt

    if method == "sgd":
        return lambda p: torch.optim.SGD(p, lr=lr)
    if method == "nag":
        return lambda p: torch.optim.SGD(p, lr=lr, momentum=0.9, nesterov=True)
    if method == "rmsprop":
        return lambda p: torch.optim.RMSprop(p, lr=lr)
    if method == "adam":
        return lambda p: torch.optim.Adam(p, lr=lr)
    if method == "lr-memory":
        return lambda p: bbopt.LRMemory(p)
    weights = _weights_path(method)
    if weights is not None:
        return lambda p: bbopt.LSTMOptimizer(p, weights=weights, problems=p[0].shape[0])
    raise ValueError(f"unknown method {method!r}")


def weights_id(method: str) -> str | None:
    """A learned method's weights by content (a digest of the file and the update rule's
    version), so that cached runs made with weights or a rule since replaced are not
    reused; None for the other methods."""
    from bbopt.nets.l2l import RULE_VERSION

    path = _weights_path(method)
    if path is None:
        return None
    return hashlib.sha256(path.read_bytes() + f"rule {RULE_VERSION}".encode()).hexdigest()[:16]


def run_one(family: str, method: str, lr: float | None, seed: int, problems: int,
            steps: int, problem_seed: int = BENCH_SEED) -> dict[str, Any]:
    """One method on one seed's batch of problems (drawn from ``problem_seed + 1009 *
    seed``); the (problems,) losses at RECORD."""
    import torch

    from bbopt.meta.l2l import run_optimizer
    from bbopt.tasks.optimizees import sample_optimizee

    torch.set_num_threads(1)
    problem = sample_optimizee(family, problems, torch.Generator().manual_seed(
        problem_seed + 1009 * seed), "cpu")
    record = (0, *_record(steps))
    if method in PROXIMAL:
        from bbopt.tasks.sparse import ista

        _, values = ista(problem.problem, steps, fast=method == "fista")  # type: ignore[attr-defined]
        losses = {t: values[:, t] for t in record}
    else:
        losses = run_optimizer(_make(method, lr), problem, steps, record)
    return {"family": family, "method": method, "lr": lr, "seed": seed,
            "problems": problems, "steps": steps, "problem_seed": problem_seed,
            "weights": weights_id(method),
            "losses": {str(t): [float(v) if math.isfinite(v) else None
                                for v in losses[t].tolist()] for t in record}}


def _key(family: str, method: str, lr: float | None, seed: int) -> str:
    return f"{family}|{method}|{lr}|{seed}"


def _learned(weights: Sequence[str]) -> list[str]:
    """The learned rules run: the shipped one and ``weights`` (as ``lstm:PATH``)."""
    return ["lstm", *(f"lstm:{w}" for w in weights)]


def _untuned(weights: Sequence[str]) -> list[str]:
    return [*_learned(weights), *(m for m in UNTUNED if m != "lstm")]


def plan(families: Sequence[str], seeds: int, weights: Sequence[str] = ()
         ) -> list[tuple[str, str, float | None, int]]:
    runs: list[tuple[str, str, float | None, int]] = []
    for fam in families:
        methods: list[tuple[str, float | None]] = [(m, None) for m in _untuned(weights)]
        methods += [(m, lr) for m in BASELINES for lr in LR_GRID]
        if fam.startswith("sparse"):
            methods += [(m, None) for m in PROXIMAL]
        runs += [(fam, m, lr, s) for m, lr in methods for s in range(seeds)]
    return runs


def benchmark_gradient(families: Sequence[str], seeds: int, problems: int, steps: int,
                       out: Path, jobs: int = 1, command: str = "",
                       markdown: Path | None = None, log: Callable[[str], None] = print,
                       weights: Sequence[str] = (), problem_seed: int = BENCH_SEED
                       ) -> dict[str, Any]:
    """Run what ``plan`` lists (``weights``: more LSTM weights files, as methods
    ``lstm:PATH``), write ``OUT/table.md`` and ``OUT/summary.json``, return the summary.
    ``problem_seed``: the problems' seed stream; another than ``BENCH_SEED`` gives other
    problems of the same families (to choose among weights without looking at the
    benchmark's problems).

    Finished runs are kept in ``OUT/runs.jsonl`` and reused by a later call with the same
    ``problems``, ``steps`` and ``problem_seed`` (and for a learned method, the same
    weights); runs made otherwise are ignored, not mixed in."""
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "runs.jsonl"
    done: dict[str, dict[str, Any]] = {}
    stale = 0
    ids = {m: weights_id(m) for m in _untuned(weights)}
    if cache.exists():
        for line in cache.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                if ((r.get("problems"), r.get("steps"), r.get("problem_seed", BENCH_SEED))
                        != (problems, steps, problem_seed)
                        or (r["method"] in ids and r.get("weights") != ids[r["method"]])):
                    stale += 1
                    continue
                done[_key(r["family"], r["method"], r["lr"], r["seed"])] = r
    todo = [r for r in plan(families, seeds, weights) if _key(*r) not in done]
    log(f"{len(done)} runs cached, {len(todo)} to run" + (
        f" ({stale} cached runs with other --problems, --steps, --problem-seed or weights "
        "ignored)"
        if stale else ""))
    with open(cache, "a") as f:
        def keep(r: dict[str, Any]) -> None:
            done[_key(r["family"], r["method"], r["lr"], r["seed"])] = r
            f.write(json.dumps(r) + "\n")
            f.flush()

        if jobs == 1:
            for i, r in enumerate(todo):
                keep(run_one(*r, problems, steps, problem_seed))
                log(f"[{i + 1}/{len(todo)}] {r}")
        else:
            from bbopt.bench import worker_pool

            with worker_pool(jobs) as pool:
                futs = {pool.submit(run_one, *r, problems, steps, problem_seed): r
                        for r in todo}
                for i, fut in enumerate(as_completed(futs)):
                    keep(fut.result())
                    log(f"[{i + 1}/{len(todo)}] {futs[fut]}")
    summary = summarize(done, families, seeds, steps, weights)
    text = to_markdown(summary, command, seeds, problems, problem_seed)
    (out / "table.md").write_text(text)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    if markdown:
        with open(markdown, "a") as f:
            f.write("\n" + text)
    return summary


def summarize(done: dict[str, dict[str, Any]], families: Sequence[str], seeds: int,
              steps: int, weights: Sequence[str] = ()) -> dict[str, Any]:
    """Per family, method and recorded step: the median loss over all problems (the best
    learning rate for the baselines, with that rate)."""
    record = _record(steps)
    out: dict[str, Any] = {}
    for fam in families:
        rows: dict[str, dict[str, Any]] = {}
        methods = [*_untuned(weights), *BASELINES,
                   *(PROXIMAL if fam.startswith("sparse") else ())]
        for m in methods:
            lrs = LR_GRID if m in BASELINES else (None,)
            row: dict[str, Any] = {}
            for t in (0, *record):
                best = None
                for lr in lrs:
                    med = statistics.median(_losses(done, fam, m, lr, seeds, t))
                    if best is None or med < best[0]:
                        best = (med, lr)
                row[str(t)] = {"median": best[0], "lr": best[1]}  # type: ignore[index]
            rows[m] = row
        out[fam] = rows
        for m in _learned(weights):
            for t in record:  # paired: the same problems, Adam at its best rate for step t
                ours = _losses(done, fam, m, None, seeds, t)
                adam = _losses(done, fam, "adam", rows["adam"][str(t)]["lr"], seeds, t)
                rows[m][str(t)]["beats_adam"] = sum(a < b for a, b in zip(
                    ours, adam, strict=True)) / len(ours)
    return {"families": out, "record": record, "learned": _learned(weights)}


def _losses(done: dict[str, dict[str, Any]], fam: str, method: str, lr: float | None,
            seeds: int, t: int) -> list[float]:
    """One method's losses at step t over every problem of every seed (inf: diverged)."""
    return [math.inf if v is None else v for s in range(seeds)
            for v in done[_key(fam, method, lr, s)]["losses"][str(t)]]


def to_markdown(summary: dict[str, Any], command: str, seeds: int, problems: int,
                problem_seed: int = BENCH_SEED) -> str:
    from bbopt.meta.base import git_commit

    record = summary["record"]
    lines = [f"### `{command}`", "",
             f"{datetime.now(UTC):%Y-%m-%d}, commit {git_commit()}, {platform.machine()}, "
             f"{os.cpu_count()} cores; {seeds} seeds x {problems} problems per task"
             + ("" if problem_seed == BENCH_SEED else
                f" (problem seeds {problem_seed} + 1009 s, not the benchmark's)")
             + ". Median "
             "full training loss over the problems at each step (lower is better); for the "
             "baselines the best learning rate of the grid "
             f"{', '.join(f'{lr:g}' for lr in LR_GRID)} at that step, shown in brackets. "
             "`lstm` and `lr-memory` are untuned. inf: diverged. Last rows: each learned "
             "rule's median over tuned Adam's, and the share of problems on which it ends "
             "lower than Adam at that rate, problem by problem.", ""]
    for fam, rows in summary["families"].items():
        start = rows["lstm"]["0"]["median"]
        lines += [f"**{fam}** (loss at step 0: {start:.4g})", "",
                  "| method | " + " | ".join(f"step {t}" for t in record) + " |",
                  "|---|" + "---|" * len(record)]
        for m, row in rows.items():
            cells = []
            for t in record:
                c = row[str(t)]
                lr = f" [{c['lr']:g}]" if c["lr"] is not None else ""
                cells.append(f"{c['median']:.4g}{lr}")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        adam = rows["adam"]
        for m in summary["learned"]:
            ratio = [rows[m][str(t)]["median"] / adam[str(t)]["median"]
                     if adam[str(t)]["median"] > 0 else math.nan for t in record]
            wins = [rows[m][str(t)]["beats_adam"] for t in record]
            lines += [f"| {m} / tuned adam | " + " | ".join(f"{r:.3g}" for r in ratio) + " |",
                      f"| problems where {m} < tuned adam | "
                      + " | ".join(f"{w:.0%}" for w in wins) + " |"]
        lines.append("")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ learning-rate memory

MEMORY_TASKS = (2, 3, 4)  # 1 vs 2, then 1 vs 3, then 1 vs 4
MEMORY_TARGET = 0.98


def _binary_digits(k: int) -> tuple[Any, Any, Any, Any]:
    """Digit 1 (label 0) against digit k (label 1): the standardized train / test split of
    ``bbopt.tasks.hpo``."""
    from bbopt.tasks.hpo import _digits_data

    X, y, Xt, yt = _digits_data()
    m, mt = (y == 1) | (y == k), (yt == 1) | (yt == k)
    return X[m], (y[m] == k).float(), Xt[mt], (yt[mt] == k).float()


def samples_to_target(k: int, make: Callable[[list[Any]], Any], seed: int,
                      max_samples: int, target: float = MEMORY_TARGET) -> tuple[int | None, Any]:
    """Logistic regression on 1 vs ``k``, one training example per step (epochs in a
    seeded random order): the number of examples seen when test accuracy first reaches
    ``target`` (None if never within ``max_samples``), and the optimizer."""
    import torch

    X, y, Xt, yt = _binary_digits(k)
    w = torch.zeros(X.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = make([w, b])
    g = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(len(X), generator=g)
                       for _ in range(max_samples // len(X) + 1)])[:max_samples]
    for n, i in enumerate(order.tolist(), start=1):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(X[i] @ w + b, y[i:i + 1])
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            acc = float(((Xt @ w + b > 0).float() == yt).float().mean())
        if acc >= target:
            return n, opt
    return None, opt


def lr_memory_benchmark(seeds: int = 5, max_samples: int = 2000) -> dict[str, Any]:
    """Samples to ``MEMORY_TARGET`` test accuracy on the sequence of ``MEMORY_TASKS`` for
    SGD and Adam (each at the grid's best learning rate per task), SGD with a fresh
    ``LRMemory`` on every task, and SGD with the memory carried from the previous task
    (the first task starts fresh). Medians over seeds (orders of the examples)."""
    import torch

    import bbopt

    torch.set_num_threads(1)
    res: dict[str, dict[str, Any]] = {"sgd": {}, "adam": {}, "memory-fresh": {},
                                      "memory-reloaded": {}}
    cap = max_samples + 1  # "never" counts as one more than the budget in the median

    def med(ns: list[int | None]) -> float:
        return statistics.median(cap if n is None else n for n in ns)

    for k in MEMORY_TASKS:
        for name, cls in (("sgd", torch.optim.SGD), ("adam", torch.optim.Adam)):
            best = None
            for lr in LR_GRID:
                ns = [samples_to_target(k, lambda p, lr=lr, cls=cls: cls(p, lr=lr), s,
                                        max_samples)[0] for s in range(seeds)]
                if best is None or med(ns) < best[0]:
                    best = (med(ns), lr, ns)
            res[name][f"1v{k}"] = {"median": best[0], "lr": best[1], "runs": best[2]}  # type: ignore[index]
        ns = [samples_to_target(k, lambda p: bbopt.LRMemory(p), s, max_samples)[0]
              for s in range(seeds)]
        res["memory-fresh"][f"1v{k}"] = {"median": med(ns), "runs": ns}
    # the reloaded memory: a chain of tasks per seed
    chains: dict[int, list[int | None]] = {k: [] for k in MEMORY_TASKS}
    for s in range(seeds):
        memory = None
        for k in MEMORY_TASKS:
            n, opt = samples_to_target(k, lambda p, m=memory: bbopt.LRMemory(p, memory=m), s,
                                       max_samples)
            chains[k].append(n)
            memory = opt.memory()
    for k in MEMORY_TASKS:
        res["memory-reloaded"][f"1v{k}"] = {"median": med(chains[k]), "runs": chains[k]}
    return {"results": res, "seeds": seeds, "max_samples": max_samples,
            "target": MEMORY_TARGET}


def lr_memory_markdown(summary: dict[str, Any], command: str) -> str:
    from bbopt.meta.base import git_commit

    tasks = [f"1v{k}" for k in MEMORY_TASKS]
    lines = [f"### `{command}`", "",
             f"{datetime.now(UTC):%Y-%m-%d}, commit {git_commit()}. Logistic regression on "
             "pairs of scikit-learn digits, one example per step; examples seen until test "
             f"accuracy first reaches {summary['target']:.0%}, median over "
             f"{summary['seeds']} example orders (lower is better; "
             f">{summary['max_samples']}: not within the budget). SGD and Adam at the best "
             f"learning rate of {', '.join(f'{lr:g}' for lr in LR_GRID)} per task "
             "(in brackets); the memories untuned (a fresh one starts at 0.01 everywhere); "
             "the reloaded memory is the one the previous column's task ended with.", "",
             "| method | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    cap = summary["max_samples"] + 1
    for name, row in summary["results"].items():
        cells = []
        for t in tasks:
            c = row[t]
            v = f">{summary['max_samples']}" if c["median"] >= cap else f"{c['median']:g}"
            cells.append(v + (f" [{c['lr']:g}]" if "lr" in c else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
