"""The ``bbopt`` command: tune objectives, inspect studies, drive ask/tell from a shell,
plot, and benchmark."""

from __future__ import annotations

import json
import shlex
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

from bbopt.errors import BBOptError, StudyError, TrialError
from bbopt.study import Study
from bbopt.tasks.base import SUITES
from bbopt.trial import Trial, TrialState

DEFAULT_STORAGE = "sqlite:///bbopt.db"
INTERRUPTED = "interrupted"

storage_option = click.option(
    "--storage", envvar="BBOPT_STORAGE", default=DEFAULT_STORAGE, show_default=True,
    help="SQLAlchemy URL of the study database (env BBOPT_STORAGE).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


class _Group(click.Group):
    """Turns bbopt's own errors, and files that cannot be read or written (an output in
    a folder that does not exist, no permission), into a one-line message and exit
    status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BBOptError as e:
            raise click.ClickException(str(e)) from None
        except OSError as e:
            if e.filename is None:  # not about a file: a bug to see in full
                raise
            raise click.ClickException(f"{e.strerror or e}: {e.filename}") from None


@click.group(cls=_Group)
@click.version_option(package_name="bbopt")
def main() -> None:
    """bbopt: black-box optimization with ask/tell studies."""


def _open(name: str, storage: str) -> Study:
    return Study.load(name, storage)


def _echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=None))


def _counts(trials: list[Trial]) -> dict[str, int]:
    return {s.value: sum(t.state is s for t in trials) for s in TrialState}


def _finished(trials: list[Trial]) -> int:
    """Trials that count toward a budget: complete or failed, not interrupted."""
    return sum(
        t.state is TrialState.COMPLETE
        or (t.state is TrialState.FAILED and t.info.get("reason") != INTERRUPTED
            and not t.info.get("stale"))  # never evaluated: a dead worker's trial
        for t in trials
    )


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*("" if v is None else str(v) for v in r))
    Console().print(table)


def _fmt(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


# -- tune ----------------------------------------------------------------------------------
@main.command()
@click.argument("objective")
@click.option("--space", "space_file", type=click.Path(dir_okay=False),
              help="Space file (JSON or YAML); optional for a function with a .space attribute.")
@click.option("--budget", type=click.IntRange(min=1), required=True,
              help="Finished trials the study should reach (a re-run resumes up to it).")
@click.option("--method", default=None, help="Optimizer (default: the study's, else learned).")
@click.option("--direction", type=click.Choice(["minimize", "maximize"]), default=None)
@storage_option
@click.option("--study", "name", default=None, help="Study name (default: from the objective).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Evaluations run at once (threads; each asks and tells on its own).")
@click.option("--seed", type=click.IntRange(min=0), default=None)
@click.option("--service", default=None, metavar="URL",
              help="Run against a study of `bbopt serve` at URL instead of --storage; "
                   "several tune processes can share one study this way.")
@click.option("--token", envvar="BBOPT_TOKEN", default=None,
              help="API token of the service (env BBOPT_TOKEN).")
@click.option("--heartbeat", type=click.FloatRange(min=0), default=30.0, show_default=True,
              metavar="SECONDS",
              help="Send a heartbeat for the running trials this often; a trial of the "
                   "study with none for 4 times as long (its worker was killed) is marked "
                   "failed as stale and no longer counts toward the budget. 0: off.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def tune(objective: str, space_file: str | None, budget: int, method: str | None,
         direction: str | None, storage: str, name: str | None, workers: int,
         seed: int | None, service: str | None, token: str | None, heartbeat: float,
         quiet: bool) -> None:
    """Optimize OBJECTIVE: path/to/file.py:function, module:function, or a shell
    command with {name} placeholders whose last printed number is the value.

    Ctrl-C stops cleanly (running trials are marked failed as interrupted, and do not
    count toward the budget); running the same command again resumes. Trials of a
    killed process go stale (see --heartbeat) and are evaluated again by the others.
    """
    from bbopt.objective import (
        ObjectiveError,
        ShellObjective,
        evaluate,
        load_function,
        params_call,
    )
    from bbopt.space import Space

    fn = load_function(objective)
    space = Space.load(space_file) if space_file else getattr(fn, "space", None)
    name = name or (objective.split(":")[-1] if fn is not None else "shell")
    from bbopt.optimizers.base import DEFAULT_METHOD, budget_options

    # A new study's learned optimizer plans for --budget; an existing one keeps the
    # options it was created with (locally, unless --method is given).
    plan = budget_options(method or DEFAULT_METHOD, budget)
    settings: dict[str, Any] = {"method": method, "direction": direction, "seed": seed}
    if service:
        from bbopt.serve.client import Client

        client = Client(service, token)
        try:
            study: Any = client.study(name, space, **settings, **plan)
        except StudyError:
            if not plan:
                raise
            # It exists with other options: open it as it is (a mismatch in the other
            # settings raises again, with the service's message).
            study = client.study(name, space, **settings)
    else:
        study = Study(space, storage=storage, name=name, **settings, **plan)
    fn = (ShellObjective(objective, study.space.names) if fn is None
          else params_call(fn, study.space.names))

    grace = 4 * heartbeat
    if heartbeat:  # trials of dead workers from earlier runs
        _report_stale(study.fail_stale_trials(grace))
    trials = study.trials
    # Pending trials nobody sends heartbeats for (asked by hand, or by a run without
    # them): they may never finish, so they do not count as running.
    stale = {t.id for t in trials if t.state is TrialState.PENDING
             and not (heartbeat and t.info.get("heartbeat"))}
    if stale:
        click.echo(f"note: {len(stale)} pending trial(s) from earlier runs stay open "
                   f"(ids {sorted(stale)[:10]}); close one with `bbopt tell {name} ID --failed`.",
                   err=True)
    others = sorted(t.id for t in trials if t.state is TrialState.PENDING and t.id not in stale)
    if others:
        click.echo(f"note: {len(others)} trial(s) asked by another process are running (ids "
                   f"{others[:10]}); if that process died, they are failed as stale after "
                   f"{grace:g} s without a heartbeat.", err=True)
    lock = threading.Lock()
    # inflight: thread -> its trial (None while it asks); asked: ids this process asked.
    state = {"finished": _finished(trials), "inflight": {}, "asked": set(), "failures": 0,
             "error": None}
    stop = threading.Event()
    best: list[float | None] = [_best_value(study)]

    def used() -> tuple[int, int, bool]:
        """Trials toward the budget (finished, running here, and for a study shared
        through the service, running in other processes too), the finished ones, and
        whether a trial of another process that sends heartbeats is running (it may die,
        go stale and need asking again)."""
        if not service:
            return state["finished"] + len(state["inflight"]), state["finished"], False
        now = study.trials
        mine = {t.id for t in state["inflight"].values() if t is not None}
        running = [t for t in now if t.state is TrialState.PENDING and t.id not in stale]
        done = _finished(now)
        watched = any(t.info.get("heartbeat") and t.id not in mine for t in running)
        return (done + len(running) + sum(v is None for v in state["inflight"].values()),
                done, watched)

    def claim() -> bool:
        while True:
            with lock:
                if stop.is_set():
                    return False
                taken, done, watched = used()
                if taken < budget:
                    state["inflight"][threading.get_ident()] = None
                    return True
                # Shared study: wait while other processes' trials run; if one of them
                # dies, its trial goes stale and is asked again here.
                if done >= budget or not watched or not heartbeat:
                    return False
            stop.wait(min(1.0, heartbeat))

    def worker() -> None:
        me = threading.get_ident()
        while claim():
            try:
                trial = study.ask(heartbeat=heartbeat > 0)
                with lock:
                    state["inflight"][me] = trial
                    state["asked"].add(trial.id)
                if stop.is_set():
                    return  # interrupted while asking: the main thread fails the trial
                try:
                    value = evaluate(fn, trial.params, trial.id)
                except ObjectiveError as e:
                    if stop.is_set():
                        return  # interrupted: the main thread records it
                    study.tell(trial, failed=True, reason=str(e))
                    click.echo(f"trial {trial.id} failed: {e}", err=True)
                    with lock:
                        state["failures"] += 1
                        if state["failures"] >= 10:
                            state["error"] = f"10 evaluations in a row failed; last: {e}"
                            stop.set()
                else:
                    if stop.is_set():
                        return
                    try:
                        study.tell(trial, value)
                    except TrialError:
                        if not _failed_as_stale(study, trial.id):
                            raise
                        click.echo(f"trial {trial.id} was failed as stale while it ran (no "
                                   f"heartbeat for {grace:g} s); its value {value!r} is not "
                                   "recorded", err=True)
                        with lock:  # not finished here: it does not count
                            state["inflight"][me] = None
                        continue
                    with lock:
                        state["failures"] = 0
                        b = best[0]
                        sign = 1 if study.direction == "minimize" else -1
                        if b is None or sign * value < sign * b:
                            best[0] = value
            except Exception as e:  # noqa: BLE001 - surface storage errors and stop
                with lock:
                    state["error"] = str(e)
                stop.set()
            finally:
                with lock:
                    state["finished"] += state["inflight"].pop(me, None) is not None
            if stop.is_set():
                return

    def beat() -> None:
        """Heartbeats for this process's running trials; fail other workers' stale ones."""
        while not stop.wait(heartbeat):
            with lock:
                running = [t for t in state["inflight"].values() if t is not None]
            try:
                if running:
                    study.heartbeat(*running)
                _report_stale(study.fail_stale_trials(grace))
            except BBOptError as e:  # a transient store or service error: try next time
                click.echo(f"heartbeat failed: {e}", err=True)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    if heartbeat:
        threading.Thread(target=beat, daemon=True).start()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), disable=quiet)
    try:
        with progress:
            bar = progress.add_task(name, total=budget, completed=state["finished"])
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                time.sleep(0.1)
                b = best[0]
                progress.update(bar, completed=state["finished"],
                                description=f"{name} best={_fmt(b) if b is not None else '-'}")
    except KeyboardInterrupt:
        stop.set()
        if isinstance(fn, ShellObjective):
            fn.stop()
        # A worker may be inside ask(): wait for it, or its trial would stay pending.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with lock:
                if all(t is not None for t in state["inflight"].values()):
                    break
            time.sleep(0.05)
        with lock:
            asked = set(state["asked"])
        for t in study.trials:
            if t.id in asked and t.state is TrialState.PENDING:
                try:
                    study.tell(t, failed=True, reason=INTERRUPTED)
                except BBOptError:
                    pass  # finished in the meantime
        done = _finished(study.trials)
        click.echo(f"\ninterrupted: {done}/{budget} trials finished in study {name!r}; "
                   "run the same command again to resume.", err=True)
        sys.exit(130)
    stop.set()  # ends the heartbeat thread
    if state["error"]:
        raise click.ClickException(state["error"])
    _print_best(study)


def _report_stale(trials: list[Trial]) -> None:
    if trials:
        click.echo(f"failed {len(trials)} stale trial(s) whose worker stopped sending "
                   f"heartbeats (ids {[t.id for t in trials][:10]}); they are asked again",
                   err=True)


def _failed_as_stale(study: Any, number: int) -> bool:
    t = next((t for t in study.trials if t.id == number), None)
    return t is not None and bool(t.info.get("stale"))


def _best_value(study: Study) -> float | None:
    try:
        return study.best_trial.value
    except BBOptError:
        return None


def _print_best(study: Study) -> None:
    try:
        t = study.best_trial
    except BBOptError as e:
        click.echo(str(e))
        return
    click.echo(f"best trial {t.id}: value {_fmt(t.value)}  params {json.dumps(t.params)}")


# -- inspecting studies ----------------------------------------------------------------
@main.command()
@storage_option
@json_option
def studies(storage: str, as_json: bool) -> None:
    """List the studies in a database."""
    from bbopt.storage import get_storage

    store = get_storage(storage, create=False)
    rows = []
    for n in store.study_names():
        s = Study.load(n, store)
        trials = s.trials
        rows.append({"name": n, "method": s.method, "direction": s.direction,
                     **_counts(trials), "best": _best_value(s)})
    if as_json:
        _echo_json(rows)
    else:
        cols = ["name", "method", "direction", "complete", "pending", "failed", "best"]
        _table(f"studies in {storage}", cols, [[_fmt(r[c]) if r[c] is not None else None
                                                 for c in cols] for r in rows])


@main.command()
@click.argument("name")
@storage_option
@json_option
def trials(name: str, storage: str, as_json: bool) -> None:
    """List the trials of study NAME."""
    study = _open(name, storage)
    ts = study.trials
    if as_json:
        _echo_json([t.to_dict() for t in ts])
        return
    names = study.space.names
    _table(f"{name}: {len(ts)} trials", ["id", "state", "value", *names],
           [[t.id, t.state.value, _fmt(t.value) if t.value is not None else None,
             *(_fmt(t.params[n]) for n in names)] for t in ts])


@main.command()
@click.argument("name")
@storage_option
@json_option
def best(name: str, storage: str, as_json: bool) -> None:
    """Print the best trial of study NAME."""
    study = _open(name, storage)
    t = study.best_trial
    if as_json:
        _echo_json(t.to_dict())
    else:
        _table(f"{name}: best of {len(study.trials)} trials", ["id", "value", *study.space.names],
               [[t.id, _fmt(t.value), *(_fmt(t.params[n]) for n in study.space.names)]])


# -- shell-driven ask/tell ------------------------------------------------------------------
@main.command()
@click.argument("name")
@storage_option
@click.option("-n", "n", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--space", "space_file", type=click.Path(dir_okay=False),
              help="Creates the study with this space if it does not exist.")
@click.option("--method", default=None,
              help="The optimizer a new study gets [learned]; for an existing study, the "
                   "one this ask proposes with (the study's own stays).")
@click.option("--direction", type=click.Choice(["minimize", "maximize"]), default=None,
              help="With --space, for a new study [minimize].")
@click.option("--seed", type=click.IntRange(min=0), default=None,
              help="With --space, for a new study [random].")
def ask(name: str, storage: str, n: int, space_file: str | None, method: str | None,
        direction: str | None, seed: int | None) -> None:
    """Hand out N trials of study NAME, one JSON object per line: {"id", "params"}."""
    from bbopt.space import Space

    if space_file:
        study = Study(Space.load(space_file), method=method, direction=direction, seed=seed,
                      storage=storage, name=name)
    elif direction is not None or seed is not None:
        raise click.UsageError("--direction and --seed apply when --space creates the study")
    else:  # --method switches the optimizer for this ask, as Study(method=...) does
        study = Study.load(name, storage, method=method)
    for t in study.ask(n):
        _echo_json({"id": t.id, "params": t.params})


# Negative values (-0.5, -1e3) are values, not unknown options.
@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("trial_id", type=int)
@click.argument("value", type=float, required=False)
@click.option("--failed", is_flag=True, help="Record a failed evaluation instead of a value.")
@click.option("--grad", default=None,
              help='The gradient, as JSON: {"x": 0.1, ...} or a list in the space\'s order '
                   "(gradient-input methods such as l2l need it).")
@storage_option
def tell(name: str, trial_id: int, value: float | None, failed: bool, grad: str | None,
         storage: str) -> None:
    """Record VALUE (or --failed) for trial TRIAL_ID of study NAME."""
    try:
        gradient = json.loads(grad) if grad is not None else None
    except json.JSONDecodeError as e:
        raise click.BadParameter(f"not JSON: {e}", param_hint="--grad") from None
    t = _open(name, storage).tell(trial_id, value, grad=gradient, failed=failed)
    click.echo(f"trial {t.id}: {t.state.value}" + (f" {_fmt(t.value)}" if t.value is not None
                                                  else ""))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@storage_option
@click.option("--token", envvar="BBOPT_TOKEN", default=None,
              help="API token clients must send (env BBOPT_TOKEN); a random one is made "
                   "and printed when none is given.")
@click.option("--hosts", "n_hosts", type=click.IntRange(min=1), default=2, show_default=True,
              help="Study-host actors holding the studies' optimizers.")
@click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True,
              help="HTTP ingress replicas.")
@click.option("--address", default=None,
              help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray instance).")
def serve(host: str, port: int, storage: str, token: str | None, n_hosts: int,
          replicas: int, address: str | None) -> None:
    """Serve studies over HTTP (Ray Serve): create, ask, tell, best; see /docs."""
    import secrets

    from bbopt.serve.service import run

    if not token:
        token = secrets.token_urlsafe(24)
        click.echo(f"API token (set BBOPT_TOKEN or --token to choose one): {token}", err=True)

    def ready(url: str) -> None:
        click.echo(f"bbopt service on {url} (storage {storage}, {n_hosts} study hosts); "
                   f"OpenAPI at {url}/docs; Ctrl-C stops", err=True)

    run(host, port, storage, token, n_hosts=n_hosts, replicas=replicas, address=address,
        ready=ready)


@main.command()
@click.argument("name")
@storage_option
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True,
              help="PNG file to write.")
def plot(name: str, storage: str, output: str) -> None:
    """Plot the optimization history and parameter slices of study NAME."""
    from bbopt.plot import plot_study

    plot_study(_open(name, storage), Path(output))
    click.echo(f"wrote {output}")


# -- benchmarks --------------------------------------------------------------------------------
@main.command()
@click.option("--suite", default="synthetic", show_default=True,
              help=f"Task suite: {', '.join(SUITES)}.")
@click.option("--tasks", "task_list", default=None, help="Comma-separated tasks (overrides suite).")
@click.option("--methods", default="random,gp-ei,optuna-tpe,optuna-gp,cma-es", show_default=True)
@click.option("--budget", type=click.IntRange(min=2), default=100, show_default=True)
@click.option("--seeds", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Runs side by side (processes, one core each).")
@click.option("--out", type=click.Path(file_okay=False), default="bench_out", show_default=True,
              help="Folder for runs.jsonl (cache; re-runs resume), summary.json, regret.png.")
@click.option("--markdown", type=click.Path(dir_okay=False), default=None,
              help="Append the tables to this file (e.g. BENCHMARKS.md).")
@click.option("--tell-budget/--no-tell-budget", default=True, show_default=True,
              help="Tell optimizers that take a budget (the learned ones) the budget; "
                   "--no-tell-budget runs every study with default settings. Use a "
                   "separate --out for each.")
def bench(suite: str, task_list: str | None, methods: str, budget: int, seeds: int, jobs: int,
          out: str, markdown: str | None, tell_budget: bool) -> None:
    """Run methods side by side on a suite of tasks and report regret, scores, latency."""
    from bbopt.bench import benchmark
    from bbopt.optimizers.base import available_methods
    from bbopt.tasks.base import get_suite, get_task

    tasks = ([get_task(t.strip()).name for t in task_list.split(",")] if task_list
             else [t.name for t in get_suite(suite)])
    ms = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = [m for m in ms if m not in available_methods()]
    if unknown:
        raise click.UsageError(f"unknown methods {unknown}; available: {available_methods()}")
    which = ["--tasks", task_list] if task_list else ["--suite", suite]
    words = [*which, "--methods", ",".join(ms), "--budget", budget, "--seeds", seeds,
             "--jobs", jobs, "--out", out, *(["--markdown", markdown] if markdown else []),
             *([] if tell_budget else ["--no-tell-budget"])]
    command = "bbopt bench " + " ".join(shlex.quote(str(w)) for w in words)
    summary = benchmark(tasks, ms, budget, seeds, Path(out), jobs=jobs, command=command,
                        markdown=Path(markdown) if markdown else None,
                        tell_budget=tell_budget)
    click.echo((Path(out) / "table.md").read_text())
    click.echo(f"mean normalized score: {json.dumps(summary['mean_score'])}")


@main.command("bench-serve")
@click.option("--clients", default="1,8,32", show_default=True,
              help="Comma-separated numbers of concurrent clients.")
@click.option("--seconds", type=float, default=20.0, show_default=True,
              help="Load time per client count.")
@click.option("--method", default="learned", show_default=True)
@click.option("--studies", type=click.IntRange(min=1), default=200, show_default=True,
              help="Studies opened for the memory figure.")
@click.option("--trials", type=click.IntRange(min=0), default=20, show_default=True,
              help="Trials told in each of those studies.")
@click.option("--hosts", "n_hosts", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--url", default=None, help="Measure a running service instead of starting one.")
@click.option("--token", envvar="BBOPT_TOKEN", default=None)
@click.option("--markdown", type=click.Path(dir_okay=False), default=None,
              help="Append the table to this file (BENCHMARKS.md).")
def bench_serve(clients: str, seconds: float, method: str, studies: int, trials: int,
                n_hosts: int, url: str | None, token: str | None,
                markdown: str | None) -> None:
    """Service throughput (ask+tell pairs/s), p50/p99 latency and memory per study."""
    from bbopt.serve.bench import run, to_markdown

    result = run(list(_ints(clients)), seconds, method, studies, trials, n_hosts, url, token)
    if markdown:
        text = to_markdown(result, " ".join(["bbopt", *sys.argv[1:]]), method, seconds,
                           n_hosts)
        with open(markdown, "a") as f:
            f.write("\n" + text)
        click.echo(f"appended to {markdown}")


@main.command("bench-gradient")
@click.option("--families", default=None,
              help="Comma-separated optimizee families (default: all but the training-only "
                   "cnn-synth and mlp-synth); a user's as file.py:function (see train l2l).")
@click.option("--steps", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--problems", type=click.IntRange(min=1), default=8, show_default=True,
              help="Problems per seed.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default="bench_out/gradient",
              show_default=True, help="Folder for runs.jsonl (cache; re-runs resume).")
@click.option("--markdown", type=click.Path(dir_okay=False), default=None,
              help="Append the tables to this file (e.g. BENCHMARKS.md).")
@click.option("--weights", multiple=True,
              help="More LSTM optimizer weights to run, a path or the name of a shipped "
                   "rule (as method lstm:PATH or lstm:NAME); repeatable.")
@click.option("--problem-seed", type=click.IntRange(min=0), default=None,
              help="Draw the problems from this seed stream instead of the benchmark's "
                   "(to choose among weights on problems the benchmark does not use; "
                   "training draws from seed 0 on, so keep far from it, e.g. 777000000).")
def bench_gradient(families: str | None, steps: int, seeds: int, problems: int, jobs: int,
                   out: str, markdown: str | None, weights: tuple[str, ...],
                   problem_seed: int | None) -> None:
    """The learned gradient-input optimizers against SGD, Nesterov, RMSprop and Adam with
    tuned learning rates (and ISTA / FISTA on sparse regression)."""
    from bbopt.bench_gradient import BENCH_SEED, benchmark_gradient
    from bbopt.tasks.optimizees import BENCH_FAMILIES, family_maker

    fams = ([f.strip() for f in families.split(",") if f.strip()] if families
            else list(BENCH_FAMILIES))
    for f in fams:
        try:
            family_maker(f)
        except ValueError as e:
            raise click.UsageError(str(e)) from None
    from bbopt.optimizers.l2l import SHIPPED_WEIGHTS, weights_path

    for w in weights:
        if not weights_path(w).is_file():
            raise click.BadParameter(f"{w!r} is neither a weights file nor a shipped rule "
                                     f"({', '.join(SHIPPED_WEIGHTS)})", param_hint="--weights")
    command = "bbopt bench-gradient " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    benchmark_gradient(fams, seeds, problems, steps, Path(out), jobs=jobs, command=command,
                       markdown=Path(markdown) if markdown else None, log=click.echo,
                       weights=weights,
                       problem_seed=BENCH_SEED if problem_seed is None else problem_seed)
    click.echo((Path(out) / "table.md").read_text())


@main.command("bench-lr-memory")
@click.option("--seeds", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--max-samples", type=click.IntRange(min=1), default=2000, show_default=True)
@click.option("--markdown", type=click.Path(dir_okay=False), default=None,
              help="Append the table to this file (e.g. BENCHMARKS.md).")
def bench_lr_memory(seeds: int, max_samples: int, markdown: str | None) -> None:
    """Samples to 98% test accuracy on sequential binary digit tasks: SGD, Adam, SGD with
    a fresh learning-rate memory, and with the memory reloaded from the previous task."""
    from bbopt.bench_gradient import lr_memory_benchmark, lr_memory_markdown

    command = "bbopt bench-lr-memory " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    text = lr_memory_markdown(lr_memory_benchmark(seeds, max_samples), command)
    click.echo(text)
    if markdown:
        with open(markdown, "a") as f:
            f.write("\n" + text)


@main.command("bench-train")
@click.option("--trainer", type=click.Choice(["bbo", "l2l"]), default="bbo", show_default=True)
@click.option("--workers", "worker_counts", default="1,2", show_default=True,
              help="Comma-separated Ray Train worker counts to time, in one run.")
@click.option("--iterations", type=click.IntRange(min=1), default=20, show_default=True,
              help="Meta-gradient steps timed per run.")
@click.option("--batch", type=click.IntRange(min=1), default=32, show_default=True,
              help="Total batch (functions / problems per step), shared by the workers.")
@click.option("--horizon", type=click.IntRange(min=1), default=50, show_default=True,
              help="bbo: queries per trajectory; l2l: optimizer steps per episode.")
@click.option("--dims", default="4", show_default=True, help="bbo: function dimensions.")
@click.option("--families", default="quadratic", show_default=True,
              help="l2l: comma-separated optimizee families.")
@click.option("--unroll", type=click.IntRange(min=1), default=20, show_default=True,
              help="l2l: optimizer steps per meta-gradient step.")
@click.option("--in-process-threads", default="1,2", show_default=True,
              help="Also time the ordinary in-process trainer with these torch thread "
                   "counts (comma-separated; empty: not at all).")
@click.option("--gpus", is_flag=True, help="One GPU per Ray Train worker.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--markdown", type=click.Path(dir_okay=False), default=None,
              help="Append the table (with this command) to this file (e.g. BENCHMARKS.md).")
def bench_train(trainer: str, worker_counts: str, iterations: int, batch: int, horizon: int,
                dims: str, families: str, unroll: int, in_process_threads: str,
                gpus: bool, seed: int, markdown: str | None) -> None:
    """Meta-training throughput (functions or problems per second) in this process and on
    Ray Train with each worker count, at the same total batch."""
    from bbopt.meta.distributed import throughput, throughput_markdown

    counts = _ints(worker_counts)
    settings: dict[str, Any] = {"iterations": iterations, "batch": batch, "horizon": horizon,
                                "seed": seed}
    if trainer == "bbo":
        settings["dims"] = _ints(dims)
    else:
        settings.update(families=tuple(f.strip() for f in families.split(",") if f.strip()),
                        unroll=unroll)
    try:
        for n in counts:
            if n < 1 or batch % n:
                raise ValueError(f"the batch ({batch}) must divide by every worker count; "
                                 f"{n} does not")
        rows = throughput(trainer, list(counts), in_process_threads=_ints(in_process_threads),
                          gpus=gpus, log=click.echo, **settings)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    command = "bbopt bench-train " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    text = throughput_markdown(trainer, rows, command, settings)
    click.echo(text)
    if markdown:
        with open(markdown, "a") as f:
            f.write(text)


# -- meta-training -----------------------------------------------------------------------------
def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from None


@main.group()
def train() -> None:
    """Meta-train learned optimizers."""


workers_option = click.option(
    "--workers", type=click.IntRange(min=1), default=1, show_default=True,
    help="Data-parallel Ray Train workers sharing --batch (it must divide by them); 1 "
         "trains in this process. Joins the cluster in RAY_ADDRESS (ray job submit), else "
         "starts Ray here; OUT must then be a path every worker shares. A dead worker "
         "restarts the group from OUT/last.pt (up to 3 times).")
gpus_option = click.option(
    "--gpus", is_flag=True,
    help="One GPU per Ray Train worker (NCCL); runs on Ray even with --workers 1.")


def _train_device(device: str | None, workers: int, gpus: bool) -> str:
    """The config's device: --device, else cuda if present; Ray workers pick their own."""
    import torch

    if workers > 1 or gpus:
        if device:
            raise click.UsageError("--device is for training in this process; Ray workers "
                                   "train on their GPU with --gpus, else on the CPU")
        return "cpu"
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def _meta_train(trainer_cls: Any, config: Any, run_dir: str, workers: int, gpus: bool,
                threads: int | None) -> dict[str, Any]:
    """Run a MetaTrainer here, or on Ray Train workers (bbopt.meta.distributed)."""
    command = "bbopt " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    try:
        if workers == 1 and not gpus:
            trainer = trainer_cls(config, run_dir, command=command)
        else:
            from bbopt.meta.distributed import train_distributed

            return train_distributed(trainer_cls, config, run_dir, workers, gpus=gpus,
                                     command=command, threads=threads)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    return trainer.run()


@train.command("bbo")
@click.option("--out", "run_dir", type=click.Path(file_okay=False), required=True,
              help="Run folder: log.jsonl, last.pt (resume point), best.pt (best on validation).")
@click.option("--core", type=click.Choice(["lstm", "dnc"]), default="lstm", show_default=True)
@click.option("--loss", type=click.Choice(["log-regret", "oi", "summed", "ei"]),
              default="ei", show_default=True)
@click.option("--iterations", type=click.IntRange(min=1), default=2000, show_default=True)
@click.option("--horizon", type=click.IntRange(min=2), default=100, show_default=True)
@click.option("--batch", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--dims", default="1,2,3,4,6,8,12", show_default=True,
              help="Dimensions of the training functions (one drawn per batch).")
@click.option("--parallel", default="1,1,1,2,4,8", show_default=True,
              help="Rounds of proposals made before their values are seen (one drawn per batch).")
@click.option("--hidden", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--layers", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--lr", type=float, default=3e-4, show_default=True)
@click.option("--step-weighting", type=click.Choice(["uniform", "late"]), default="uniform",
              show_default=True)
@click.option("--rate-weight", type=float, default=0.0, show_default=True,
              help="Weight lambda of the convergence-rate term.")
@click.option("--regret-floor", type=float, default=1e-4, show_default=True,
              help="Floor of the log-regret loss and of validation, in prior std units.")
@click.option("--init", "init", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Start from these weights (same architecture) instead of a fresh policy.")
@click.option("--val-every", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--snapshot-every", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also keep the weights every this many iterations in OUT/snapshots/ "
                   "(0: never), to choose among later.")
@click.option("--screen", type=click.IntRange(min=0), default=0, show_default=True,
              help="Train and validate with the GP screen in the loop, this many policy "
                   "draws per query (32 as used); 0: the policy's draw is the query.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--device", default=None, help="torch device (default: cuda if present, else cpu).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch CPU threads (per worker with --workers).")
@workers_option
@gpus_option
def train_bbo(run_dir: str, core: str, loss: str, iterations: int, horizon: int, batch: int,
              dims: str, parallel: str, hidden: int, layers: int, lr: float,
              step_weighting: str, rate_weight: float, regret_floor: float, init: str | None,
              val_every: int, snapshot_every: int, screen: int, seed: int,
              device: str | None, threads: int | None, workers: int, gpus: bool) -> None:
    """Meta-train the black-box policy on GP-prior functions; resumes from OUT/last.pt."""
    import torch

    from bbopt.meta.trainer import BBOTrainConfig, BBOTrainer

    if threads:
        torch.set_num_threads(threads)
    device = _train_device(device, workers, gpus)
    try:
        config = BBOTrainConfig(core=core, loss=loss, iterations=iterations, horizon=horizon,
                                batch=batch, dims=_ints(dims), parallel=_ints(parallel),
                                hidden=hidden, layers=layers, lr=lr,
                                step_weighting=step_weighting, rate_weight=rate_weight,
                                regret_floor=regret_floor, init=init, val_every=val_every,
                                snapshot_every=snapshot_every, screen=screen,
                                seed=seed, device=device)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    click.echo(json.dumps(_meta_train(BBOTrainer, config, run_dir, workers, gpus, threads)))


@train.command("l2l")
@click.option("--out", "run_dir", type=click.Path(file_okay=False), required=True,
              help="Run folder: log.jsonl, last.pt (resume point), best.pt (best on validation).")
@click.option("--iterations", type=click.IntRange(min=1), default=None,
              help="Meta-gradient steps, one per unroll [1000].")
@click.option("--horizon", type=click.IntRange(min=1), default=None,
              help="Optimizer steps per episode [100].")
@click.option("--unroll", type=click.IntRange(min=1), default=None,
              help="Steps per truncated-BPTT unroll [20].")
@click.option("--batch", type=click.IntRange(min=1), default=None,
              help="Problems per episode [8].")
@click.option("--families", default=None,
              help="Comma-separated training families [quadratic,mlp-sigmoid]; a "
                   "family of one's own as file.py:function or module:function, a "
                   "function make(batch, generator, device) returning a "
                   "bbopt.tasks.optimizees.Optimizee.")
@click.option("--objective", type=click.Choice(["sum", "log"]), default=None,
              help="Meta-loss: sum of relative losses, or of their logs [log].")
@click.option("--rate-weight", type=float, default=None,
              help="Weight lambda of the convergence-rate term [0].")
@click.option("--param-units", "param_scale_decades", type=click.FloatRange(min=0),
              default=None, help="Augmentation: each problem's parameters in units "
                                 "10^U(-x, x), validation too [1]; 0: as drawn.")
@click.option("--grad-units", "grad_scale_decades", type=click.FloatRange(min=0),
              default=None, help="Augmentation: the gradients the rule sees scaled by "
                                 "10^U(-x, x) per problem [2]; 0: as computed.")
@click.option("--hidden", type=click.IntRange(min=1), default=None, help="LSTM width [20].")
@click.option("--layers", type=click.IntRange(min=1), default=None, help="LSTM layers [2].")
@click.option("--lr", type=float, default=None, help="Meta learning rate [1e-3].")
@click.option("--init", "init", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Start from these weights (same architecture).")
@click.option("--val-every", type=click.IntRange(min=1), default=None, help="[50]")
@click.option("--snapshot-every", type=click.IntRange(min=0), default=None,
              help="Also keep the weights every this many iterations in OUT/snapshots/ "
                   "[0: never], to choose among later (bench-gradient --problem-seed).")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="[0]")
@click.option("--device", default=None, help="torch device (default: cuda if present, else cpu).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch CPU threads (per worker with --workers).")
@workers_option
@gpus_option
def train_l2l(run_dir: str, families: str | None, device: str | None, threads: int | None,
              workers: int, gpus: bool, **options: Any) -> None:
    """Meta-train the coordinatewise LSTM optimizer (truncated BPTT on quadratics and
    digits MLPs); resumes from OUT/last.pt. Defaults in brackets."""
    import torch

    from bbopt.meta.l2l import L2LTrainConfig, L2LTrainer

    if threads:
        torch.set_num_threads(threads)
    settings = {k: v for k, v in options.items() if v is not None}
    if families is not None:
        settings["families"] = tuple(f.strip() for f in families.split(",") if f.strip())
    settings["device"] = _train_device(device, workers, gpus)
    try:
        config = L2LTrainConfig(**settings)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    click.echo(json.dumps(_meta_train(L2LTrainer, config, run_dir, workers, gpus, threads)))


@train.command("eval")
@click.argument("weights", nargs=-1, required=True)
@click.option("--dims", default="2,4,8", show_default=True)
@click.option("--functions", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--horizon", type=click.IntRange(min=2), default=100, show_default=True)
@click.option("--parallel", default="1", show_default=True,
              help="Comma-separated proposal round sizes to evaluate (parallel mode).")
@click.option("--screen", default="0", show_default=True,
              help="Comma-separated GP screen sizes to evaluate: each query is the screen's "
                   "pick among this many policy draws, eight times as many uniform points and "
                   "perturbations of the incumbent; 0 is the policy's own draw.")
@click.option("--markdown", type=click.Path(dir_okay=False), default=None,
              help="Append the table (with this command) to this file.")
def train_eval(weights: tuple[str, ...], dims: str, functions: int, horizon: int,
               parallel: str, screen: str, markdown: str | None) -> None:
    """Compare policy WEIGHTS files (or run folders: their best.pt) with random search on
    fresh GP-prior samples: log10 simple regret at the horizon, median and mean."""
    from bbopt.meta.trainer import evaluate, load_policy

    policies: dict[str, Any] = {"random": None}
    for w in weights:
        path = Path(w) / "best.pt" if Path(w).is_dir() else Path(w)
        try:
            policies[w] = load_policy(path)[0]
        except (OSError, ValueError) as e:
            raise click.ClickException(f"{path}: {e}") from None
    ds = _ints(dims)
    header = "| policy | parallel | screen | " + " | ".join(f"d={d}" for d in ds) + " |"
    lines = [header, "|" + "---|" * (len(ds) + 3)]
    qs, ks = _ints(parallel), _ints(screen)
    if not qs or min(qs) < 1:
        raise click.BadParameter("expected comma-separated integers >= 1",
                                 param_hint="--parallel")
    if not ks or min(ks) < 0:
        raise click.BadParameter("expected comma-separated integers >= 0",
                                 param_hint="--screen")
    for i, (k, q) in enumerate((k, q) for k in ks for q in qs):
        # random search does not depend on the round size or the screen: evaluated once
        run = policies if i == 0 else {w: p for w, p in policies.items() if p is not None}
        for label, r in evaluate(run, ds, functions, horizon, parallel=q, screen=k).items():
            cells = [f"{r[f'd{d} median']:.2f} ({r[f'd{d} mean']:.2f})" for d in ds]
            where = "- | -" if label == "random" else f"{q} | {k}"
            lines.append(f"| {label} | {where} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    click.echo(table)
    if markdown:
        command = "bbopt train eval " + " ".join(shlex.quote(a) for a in sys.argv[3:])
        with open(markdown, "a") as f:
            f.write(f"\n### `{command}`\n\n{time.strftime('%Y-%m-%d')}, {functions} fresh "
                    f"GP-prior functions per dimension, horizon {horizon}. log10 simple regret "
                    "in prior standard deviations, median (mean) over functions; lower is "
                    f"better.\n\n{table}\n")


if __name__ == "__main__":
    main()
