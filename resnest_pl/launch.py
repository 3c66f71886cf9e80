"""Launching fits for the runners above the CLI (ablation grids, tune studies): a fit command line, resolved by the
CLI itself; a fit as a child process (its output into a log file, its exit status, wall time and peak memory) or
in this process; and the error a failed fit ends with.

The one module besides the CLI's own that imports :mod:`resnest_pl.cli`: it drives it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import cli
from .errors import user_error_message

# The errors by which the CLI refuses a config or its data, for the runners that instantiate parts of one.
USER_ERRORS = cli.USER_ERRORS
# ru_maxrss is in KiB on Linux, in bytes on macOS.
MAXRSS_PER_MIB = 1024 * 1024 if sys.platform == "darwin" else 1024
# How long an interrupted fit gets to stop on SIGTERM before what is left of it is killed.
STOP_GRACE_S = 10.0


@dataclass(frozen=True)
class Launch:
    """How a child process ended."""

    returncode: int
    wall_s: float
    peak_rss_mib: float


def run_logged(command: list[str], log_path: Path) -> Launch:
    """Run ``command`` with stdout and stderr into ``log_path``. ``os.wait4`` reaps it, so its own peak
    resident memory comes back with its status.

    The child leads a process group of its own, so that everything it starts (DDP ranks, DataLoader workers)
    can be stopped with it: if this process is interrupted (Ctrl-C, ``kill``), the group gets SIGTERM, then
    SIGKILL after ``STOP_GRACE_S``, and the interruption goes on once it is gone. Being in its own group also
    keeps a terminal's Ctrl-C from reaching the fit directly, so the runner alone decides how it stops.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            stop_group(process)
            raise
    process.returncode = os.waitstatus_to_exitcode(status)
    return Launch(process.returncode, time.perf_counter() - start, usage.ru_maxrss / MAXRSS_PER_MIB)


def stop_group(process: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM the process group that ``process`` leads, wait up to ``grace_s`` for ``process`` to exit, then
    SIGKILL whatever is left of the group, and reap ``process``. A second Ctrl-C while waiting goes straight to
    the SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


class FitCommandError(ValueError):
    """A fit command line the CLI does not parse; the message is the CLI's."""


def cli_value(value: Any) -> str:
    """A YAML value as one command-line argument (jsonargparse reads JSON for lists, dicts, booleans, null)."""
    return value if isinstance(value, str) else json.dumps(value)


def resolve(args: list[str]) -> dict[str, Any]:
    """The fully resolved config of a CLI command line, from the CLI itself (``--print_config``, in this
    process, instantiating nothing); raises :class:`FitCommandError` with the CLI's message when it does not
    parse."""
    out, err = io.StringIO(), io.StringIO()
    code: int | str | None = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # in-process use is the point
        try:
            cli.main([*args, "--print_config"])
        except SystemExit as exit_:
            code = exit_.code
    if code not in (0, None):
        message = err.getvalue().rpartition("error: ")[2] or err.getvalue()
        raise FitCommandError(f"the fit command does not parse: {' '.join(message.split())}")
    return yaml.safe_load(out.getvalue())


def last_line(log: Path) -> str:
    """The last non-empty line of a fit's log: the CLI's ``error:`` line or the exception of a traceback."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "(empty log)"


def fit_in_process(args: list[str]) -> tuple[str | None, float]:
    """Run the fit with :func:`resnest_pl.cli.main`; its error (None when it succeeded) and wall time. Any error
    ends the fit only; an interruption (Lightning turns Ctrl-C into ``SystemExit(1)``, the CLI SIGTERM into 143)
    is raised as ``KeyboardInterrupt``."""
    start = time.perf_counter()
    error = None
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # in-process use is the point
            cli.main(args)
    except SystemExit as exit_:
        if isinstance(exit_.__context__, KeyboardInterrupt) or exit_.code == 128 + signal.SIGTERM:
            raise KeyboardInterrupt from exit_
        if exit_.code not in (0, None):
            cause = exit_.__cause__
            error = user_error_message(cause) if cause else f"the fit exited with {exit_.code}"
    except Exception as err:  # whatever a fit raises fails that fit only
        error = f"{type(err).__name__}: {err}"
    return error, time.perf_counter() - start
