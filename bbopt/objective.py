"""Objectives named on the command line: a Python function or a shell command.

``path/to/file.py:function`` or ``package.module:function`` names a function that
returns a float, called with the params dict or, if its signature takes the parameters
by name (``def f(x, n)``), with them as keywords (``params_call``). Anything else is a
shell command in which ``{name}`` is replaced by the (shell-quoted) value of parameter
``name``; the last number it prints on stdout is the value. The params are also in the environment as
JSON (``BBOPT_PARAMS``), with the trial id (``BBOPT_TRIAL_ID``).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bbopt.errors import BBOptError

_FUNC = re.compile(r"^(?P<target>[^\s:]+):(?P<name>[A-Za-z_]\w*)$")
_NUMBER = re.compile(r"[-+]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|inf(?:inity)?|nan)", re.I)


class ObjectiveError(BBOptError):
    """The objective could not be evaluated at these params (the trial is failed)."""


def load_function(spec: str) -> Callable[[dict[str, Any]], float] | None:
    """The function that ``file.py:name`` or ``module:name`` names, or None if ``spec``
    is not of that form (then it is a shell command)."""
    m = _FUNC.match(spec.strip())
    if not m:
        return None
    target, name = m["target"], m["name"]
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise BBOptError(f"objective file {target!r} does not exist")
        mod_name = f"bbopt_objective_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(mod_name, path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[mod_name] = module  # lets pickling / dataclasses find the module
        sys.path.insert(0, str(path.resolve().parent))  # its sibling imports work
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError:
            return None  # e.g. "echo a:b" -- not a module, so a shell command
    fn = getattr(module, name, None)
    if not callable(fn):
        raise BBOptError(f"{target!r} has no function {name!r}")
    return fn


def params_call(fn: Callable[..., Any], names: list[str]) -> Callable[[dict[str, Any]], Any]:
    """``fn`` as a function of the params dict: itself if it takes one argument, else a
    call with the params as keywords if its signature takes those names; BBOptError if
    it takes neither (before any trial is spent on it)."""
    import inspect

    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: call as documented
        return fn
    try:
        sig.bind({})
        return fn
    except TypeError:
        pass
    try:
        sig.bind(**dict.fromkeys(names))
    except TypeError:
        raise BBOptError(f"the objective {getattr(fn, '__name__', fn)}{sig} takes neither "
                         f"the params dict nor the parameters {', '.join(names)} by "
                         "name") from None
    return lambda params: fn(**params)


def parse_value(stdout: str) -> float:
    """The last number printed, or ObjectiveError if there is none."""
    found = _NUMBER.findall(stdout)
    if not found:
        tail = stdout.strip()[-200:]
        raise ObjectiveError(f"the command printed no number (stdout ended: {tail!r})")
    return float(found[-1])


class ShellObjective:
    """Runs a command template per trial. ``stop()`` kills the commands still running."""

    def __init__(self, template: str, names: list[str]) -> None:
        self.template = template
        self._names = set(names)
        self._running: set[subprocess.Popen] = set()
        self._lock = threading.Lock()

    def command(self, params: dict[str, Any]) -> str:
        def sub(m: re.Match) -> str:
            key = m.group(1)
            return shlex.quote(str(params[key])) if key in self._names else m.group(0)

        return re.sub(r"\{(\w+)\}", sub, self.template)

    def __call__(self, params: dict[str, Any], trial_id: int = -1) -> float:
        env = {**os.environ, "BBOPT_PARAMS": json.dumps(params), "BBOPT_TRIAL_ID": str(trial_id)}
        proc = subprocess.Popen(
            self.command(params), shell=True, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )
        with self._lock:
            self._running.add(proc)
        try:
            out, err = proc.communicate()
        finally:
            with self._lock:
                self._running.discard(proc)
        if proc.returncode != 0:
            raise ObjectiveError(
                f"command exited with status {proc.returncode}: {err.strip()[-300:]}"
            )
        return parse_value(out)

    def stop(self) -> None:
        import signal

        with self._lock:
            for proc in self._running:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass


def evaluate(fn: Callable[..., Any], params: dict[str, Any], trial_id: int) -> float:
    """Call the objective; ObjectiveError for an exception or a non-finite result."""
    try:
        value = fn(params, trial_id) if isinstance(fn, ShellObjective) else fn(params)
    except ObjectiveError:
        raise
    except Exception as e:  # noqa: BLE001 - any error of the user's code fails the trial
        raise ObjectiveError(f"{type(e).__name__}: {e}") from e
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ObjectiveError(f"objective returned {value!r}, not a number") from None
    if not math.isfinite(value):
        raise ObjectiveError(f"objective returned {value}")
    return value
