"""Benchmark harness: methods side by side on a suite of tasks, in one run.

Every (task, method, seed) run goes through the same loop, a ``bbopt.Study`` with
``ask`` / ``tell``, so peers (Optuna, CMA-ES) pay the same overheads as bbopt's own
optimizers. Each finished run is appended to ``OUT/runs.jsonl``; an interrupted
benchmark re-run with the same arguments skips the runs already there.

Figures, per task: median and quartiles over seeds of log10 simple regret (best
value so far minus the optimum; tasks with no known optimum use the best value any
run found; on a noisy task, the noise-free value of the trial with the lowest value
told) at several budgets. A normalized score per task,
``100 * (1 - median regret / median regret of random search)``, 0 for random
search and 100 for the optimum, is averaged over tasks. Over groups of tasks that
are samples of one family (``gp4``, ``gp4-1``, ... ``gp4-15``), the runs are also
pooled: median and mean log10 regret at the budget, and runs lower / higher than
gp-ei's on the same task and seed. Ask latency is the time of ``study.ask()`` when the
study holds 10, 50 and 100 observations.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import statistics
import threading
import time
import zlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

#: Observations at which an ask is timed. 99 as well as 100: until the learned methods
#: went on past their training horizon (100) they restarted there, so the earlier tables
#: of BENCHMARKS.md compare them at 99, where they paid for a full history.
LATENCY_AT = (10, 50, 99, 100)
REFERENCE = "random"
#: Pooled figures are paired against this method when it ran.
POOL_REFERENCE = "gp-ei"
REGRET_FLOOR = 1e-12


@dataclass(frozen=True)
class RunSpec:
    task: str
    method: str
    seed: int
    budget: int
    #: whether the optimizer is told the budget (``budget_options``); untold, a study
    #: runs with default settings, as a user of ``bbopt.Study`` who sets nothing.
    told: bool = True

    @property
    def key(self) -> str:
        return f"{self.task}|{self.method}|{self.seed}|{self.budget}" + (
            "" if self.told else "|untold")

    @classmethod
    def of(cls, result: dict[str, Any]) -> RunSpec:
        return cls(result["task"], result["method"], result["seed"], result["budget"],
                   result.get("told", True))


def run_one(spec: RunSpec) -> dict[str, Any]:
    """One study of ``spec.budget`` evaluations; returns best-so-far values and latencies.

    The best value so far is the noise-free value of the trial with the lowest value
    told; with noise (``Task.noise``) that is the trial the study reports as best, whose
    told value may be a lucky draw."""
    import torch

    from bbopt.optimizers.base import budget_options
    from bbopt.study import Study
    from bbopt.tasks.base import get_task

    torch.set_num_threads(1)  # runs go side by side in processes, one core each
    task = get_task(spec.task)
    options = budget_options(spec.method, spec.budget) if spec.told else {}
    study = Study(task.space, method=spec.method, seed=spec.seed, **options)
    # A noisy task's draws depend on the seed and the task only: every method meets the
    # same ones, in the order of its evaluations.
    rng = np.random.default_rng([spec.seed, zlib.crc32(spec.task.encode())])
    best, best_told, curve, latency, failed = math.inf, math.inf, [], {}, 0
    start = time.perf_counter()
    for i in range(spec.budget + 1):
        t0 = time.perf_counter()
        trial = study.ask()
        if i in LATENCY_AT:
            latency[str(i)] = time.perf_counter() - t0
        if i == spec.budget:  # the last ask only measures latency at `budget` observations
            break
        try:
            value, told = task.evaluate(trial.params, rng)
        except Exception:  # noqa: BLE001 - a failed evaluation is part of the benchmark
            study.tell(trial, failed=True)
            failed += 1
            curve.append(best)
            continue
        study.tell(trial, told)
        if told < best_told:  # the trial the study reports as best, and its true value
            best_told, best = told, value
        curve.append(best)
    return {
        "task": spec.task,
        "method": spec.method,
        "seed": spec.seed,
        "budget": spec.budget,
        "told": spec.told,
        "best": curve,
        "latency": latency,
        "failed": failed,
        "seconds": time.perf_counter() - start,
    }


def _exit_with_parent(parent: int) -> None:
    """Worker initializer: end the worker when its parent is gone. A bench stopped by a
    signal the pool does not see (``kill``, a lost terminal) would otherwise leave its
    workers running queued runs on the cores for as long as the queue lasts."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def worker_pool(jobs: int) -> ProcessPoolExecutor:
    """``jobs`` spawned worker processes (one core each) that end with their parent."""
    return ProcessPoolExecutor(jobs, mp_context=get_context("spawn"),
                               initializer=_exit_with_parent, initargs=(os.getpid(),))


def run_all(
    specs: Sequence[RunSpec],
    out: Path,
    jobs: int = 1,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run every spec not already in ``out/runs.jsonl``; return all matching results."""
    out.mkdir(parents=True, exist_ok=True)
    log = out / "runs.jsonl"
    done: dict[str, dict[str, Any]] = {}
    if log.exists():
        for line in log.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                done[RunSpec.of(r).key] = r
    todo = [s for s in specs if s.key not in done]
    if todo:
        from rich.progress import Progress

        with Progress(disable=not progress) as bar, log.open("a") as fh:
            tid = bar.add_task(f"bench ({len(done)} runs cached)", total=len(todo))

            def record(r: dict[str, Any]) -> None:
                fh.write(json.dumps(r) + "\n")
                fh.flush()
                done[RunSpec.of(r).key] = r
                bar.update(tid, advance=1, description=f"{r['task']} {r['method']} s{r['seed']}")

            if jobs <= 1:
                for s in todo:
                    record(run_one(s))
            else:
                with worker_pool(jobs) as pool:
                    for fut in as_completed([pool.submit(run_one, s) for s in todo]):
                        record(fut.result())
    return [done[s.key] for s in specs]


# -- summaries ---------------------------------------------------------------------------
def _quartiles(xs: Iterable[float]) -> tuple[float, float, float]:
    q = np.percentile(np.asarray(list(xs), dtype=float), [25, 50, 75])
    return float(q[1]), float(q[0]), float(q[2])


def checkpoints(budget: int) -> list[int]:
    return sorted({b for b in (10, 25, 50, 100, 200, 500) if b < budget} | {budget})


def log10_regret(best: float, optimum: float) -> float:
    """log10 of a run's simple regret, floored at ``REGRET_FLOOR`` (a run that reaches
    the optimum, or passes a numerically found one)."""
    return math.log10(max(best - optimum, REGRET_FLOOR))


def task_group(task: str) -> str:
    """The group a task is pooled in: its name without a trailing ``-<index>``
    (``gp4-3`` -> ``gp4``, the 16 held-out 4-D samples of ``gp-prior-16``); other names
    are their own group."""
    return re.sub(r"-\d+$", "", task)


def _pooled(results: Sequence[dict[str, Any]], optimum: dict[str, float],
            methods: Sequence[str], budget: int) -> dict[str, Any]:
    """Per group of two or more tasks (``task_group``): each method's median and mean
    log10 regret at ``budget`` over all its runs on the group's tasks, the share of runs
    below a regret of 0.1, and the runs lower / higher than ``POOL_REFERENCE``'s on the
    same task and seed. One function per task and a few seeds give noisy per-task
    medians; pooled over many functions of one family, the medians say more."""
    groups: dict[str, list[str]] = {}
    for t in optimum:
        groups.setdefault(task_group(t), []).append(t)
    out: dict[str, Any] = {}
    for g, ts in groups.items():
        if len(ts) < 2:
            continue
        logs: dict[str, dict[tuple[str, int], float]] = {}
        for r in results:
            if r["task"] in ts:
                logs.setdefault(r["method"], {})[(r["task"], r["seed"])] = log10_regret(
                    r["best"][budget - 1], optimum[r["task"]])
        ref = logs.get(POOL_REFERENCE)
        entry: dict[str, Any] = {"tasks": len(ts), "reference": POOL_REFERENCE if ref else None}
        for m in methods:
            if m not in logs:
                continue
            v = list(logs[m].values())
            fig: dict[str, Any] = {"runs": len(v), "median": statistics.median(v),
                                   "mean": statistics.fmean(v),
                                   "below_-1": sum(x < -1 for x in v) / len(v)}
            if ref is not None and m != POOL_REFERENCE:
                pairs = [(x, ref[k]) for k, x in logs[m].items() if k in ref]
                fig["lower"] = sum(x < y for x, y in pairs)
                fig["higher"] = sum(x > y for x, y in pairs)
            entry[m] = fig
        out[g] = entry
    return out


def summarize(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Regret quartiles per task/method/budget, normalized scores, latencies, and
    figures pooled over groups of tasks (``task_group``)."""
    from bbopt.tasks.base import get_task

    tasks = list(dict.fromkeys(r["task"] for r in results))
    methods = list(dict.fromkeys(r["method"] for r in results))
    budget = min(r["budget"] for r in results)
    cps = checkpoints(budget)
    regret: dict[str, dict[str, dict[str, list[float]]]] = {}
    score: dict[str, dict[str, float]] = {}
    optimum: dict[str, float] = {}
    for t in tasks:
        runs = [r for r in results if r["task"] == t]
        known = get_task(t).optimum
        opt = known if known is not None else min(min(r["best"]) for r in runs)
        optimum[t] = opt
        regret[t] = {}
        final: dict[str, float] = {}
        for m in methods:
            rs = [r for r in runs if r["method"] == m]
            if not rs:
                continue
            regret[t][m] = {}
            for b in cps:
                logs = [log10_regret(r["best"][b - 1], opt) for r in rs]
                regret[t][m][str(b)] = list(_quartiles(logs))
            final[m] = statistics.median(max(r["best"][budget - 1] - opt, 0.0) for r in rs)
        if REFERENCE in final and final[REFERENCE] > 0:
            score[t] = {m: 100.0 * (1.0 - v / final[REFERENCE]) for m, v in final.items()}
    mean_score = {
        m: statistics.fmean(score[t][m] for t in score if m in score[t])
        for m in methods
        if any(m in score[t] for t in score)
    }
    # Failed evaluations per run (runs recorded before they were counted have none).
    counts: dict[str, dict[str, list[int]]] = {}
    for r in results:
        counts.setdefault(r["task"], {}).setdefault(r["method"], []).append(r.get("failed", 0))
    failed = {t: {m: statistics.median(v) for m, v in per.items()} for t, per in counts.items()}
    latency = {
        m: {
            k: statistics.median(r["latency"][k] for r in results if r["method"] == m)
            for k in map(str, LATENCY_AT)
            if all(k in r["latency"] for r in results if r["method"] == m)
        }
        for m in methods
    }
    return {
        "tasks": tasks,
        "methods": methods,
        "budget": budget,
        "checkpoints": cps,
        "seeds": len({r["seed"] for r in results}),
        "optimum": optimum,
        "log10_regret": regret,
        "score": score,
        "mean_score": mean_score,
        "latency": latency,
        "failed": failed,
        "pooled": _pooled(results, optimum, methods, budget),
    }


def _fmt(q: list[float]) -> str:
    med, lo, hi = q
    return f"{med:.2f} [{lo:.2f}, {hi:.2f}]"


def to_markdown(summary: dict[str, Any], command: str) -> str:
    from bbopt.meta.base import git_commit

    methods, cps = summary["methods"], summary["checkpoints"]
    lines = [
        f"### `{command}`",
        "",
        f"{datetime.now(UTC):%Y-%m-%d}, commit {git_commit()}, {platform.machine()}, "
        f"{os.cpu_count()} cores, {summary['seeds']} seeds, budget {summary['budget']}.",
        "",
        "log10 simple regret, median [25%, 75%] over seeds (lower is better):",
        "",
        "| task | evals | " + " | ".join(methods) + " |",
        "|---|---|" + "---|" * len(methods),
    ]
    for t in summary["tasks"]:
        for b in cps:
            cells = []
            meds = {m: summary["log10_regret"][t][m][str(b)][0]
                    for m in methods if m in summary["log10_regret"][t]}
            best = min(meds.values())
            for m in methods:
                if m not in meds:
                    cells.append("")
                    continue
                cell = _fmt(summary["log10_regret"][t][m][str(b)])
                cells.append(f"**{cell}**" if meds[m] == best else cell)
            lines.append(f"| {t} | {b} | " + " | ".join(cells) + " |")
    if summary["mean_score"]:
        lines += [
            "",
            f"Normalized score at {summary['budget']} evaluations, mean over "
            f"{len(summary['score'])} tasks (0 = median random search, 100 = optimum):",
            "",
            "| " + " | ".join(summary["mean_score"]) + " |",
            "|" + "---|" * len(summary["mean_score"]),
            "| " + " | ".join(f"{v:.1f}" for v in summary["mean_score"].values()) + " |",
        ]
    pooled = summary.get("pooled") or {}
    if pooled:
        ref = next((p["reference"] for p in pooled.values() if p["reference"]), None)
        pair = f"; runs lower / higher than {ref}'s on the same task and seed" if ref else ""
        lines += [
            "",
            f"Pooled over the tasks of each group (all runs): median / mean log10 regret at "
            f"{summary['budget']} evaluations, share of runs below -1{pair}:",
            "",
            "| group | tasks | " + " | ".join(methods) + " |",
            "|---|---|" + "---|" * len(methods),
        ]
        for g, p in pooled.items():
            best = min(p[m]["median"] for m in methods if m in p)
            cells = []
            for m in methods:
                if m not in p:
                    cells.append("")
                    continue
                f = p[m]
                med = f"**{f['median']:.2f}**" if f["median"] == best else f"{f['median']:.2f}"
                cell = f"{med} / {f['mean']:.2f}, {f['below_-1']:.2f}"
                if "lower" in f:
                    cell += f" ({f['lower']} / {f['higher']})"
                cells.append(cell)
            lines.append(f"| {g} | {p['tasks']} | " + " | ".join(cells) + " |")
    failed = summary.get("failed") or {}
    if any(v for per in failed.values() for v in per.values()):
        lines += [
            "",
            "Failed evaluations per run, median over seeds (each one counts against the "
            "budget):",
            "",
            "| task | " + " | ".join(methods) + " |",
            "|---|" + "---|" * len(methods),
        ]
        for t, per in failed.items():
            lines.append(f"| {t} | " + " | ".join(
                f"{per[m]:g}" if m in per else "" for m in methods) + " |")
    lat = summary["latency"]
    ks = [k for k in map(str, LATENCY_AT) if all(k in lat[m] for m in methods)]
    if ks:
        ref = "gp-ei" if "gp-ei" in methods else methods[0]
        lines += [
            "",
            f"Median ask latency in ms at n observations (ratio to {ref} in brackets):",
            "",
            "| method | " + " | ".join(f"n={k}" for k in ks) + " |",
            "|---|" + "---|" * len(ks),
        ]
        for m in methods:
            cells = [f"{1e3 * lat[m][k]:.1f} ({lat[m][k] / lat[ref][k]:.3g}x)" for k in ks]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results: Sequence[dict[str, Any]], summary: dict[str, Any], path: Path) -> None:
    """Regret curves, median with the interquartile band, one panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, methods = summary["tasks"], summary["methods"]
    cols = min(4, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, t in zip(axes.flat, tasks, strict=False):
        opt = summary["optimum"][t]
        for m in methods:
            rs = [r for r in results if r["task"] == t and r["method"] == m]
            if not rs:
                continue
            curves = np.log10(np.maximum(np.array([r["best"] for r in rs]) - opt, REGRET_FLOOR))
            lo, med, hi = np.percentile(curves, [25, 50, 75], axis=0)
            x = np.arange(1, curves.shape[1] + 1)
            ax.plot(x, med, label=m)
            ax.fill_between(x, lo, hi, alpha=0.2)
        ax.set_title(t)
        ax.set_xlabel("evaluations")
        ax.set_ylabel("log10 regret")
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def benchmark(
    tasks: Sequence[str],
    methods: Sequence[str],
    budget: int,
    seeds: int,
    out: Path,
    jobs: int = 1,
    command: str = "bbopt bench",
    markdown: Path | None = None,
    progress: bool = True,
    tell_budget: bool = True,
) -> dict[str, Any]:
    """Run, summarize, and write ``out/summary.json``, ``out/regret.png``,
    ``out/table.md`` (and append the table to ``markdown`` when given). Optimizers
    that take a budget are told it unless ``tell_budget`` is false."""
    methods = list(methods)
    if REFERENCE not in methods:  # the normalized score is relative to random search
        methods.insert(0, REFERENCE)
    specs = [RunSpec(t, m, s, budget, tell_budget) for t in tasks for m in methods
             for s in range(seeds)]
    results = run_all(specs, out, jobs=jobs, progress=progress)
    summary = summarize(results)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    plot(results, summary, out / "regret.png")
    table = to_markdown(summary, command)
    (out / "table.md").write_text(table)
    if markdown is not None:
        with markdown.open("a") as fh:
            fh.write("\n" + table)
    return summary
