"""Run one fit as a child process: its output into a log file, its exit status, wall time and peak memory."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# ru_maxrss is in KiB on Linux, in bytes on macOS.
MAXRSS_PER_MIB = 1024 * 1024 if sys.platform == "darwin" else 1024
# How long an interrupted fit gets to stop on SIGTERM before what is left of it is killed.
STOP_GRACE_S = 10.0


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised in the main thread like Ctrl-C's ``KeyboardInterrupt`` (so that the running fit is
    stopped with it, see :func:`run_logged`); ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def raise_interrupted(signum: int, frame: object) -> None:
    """A signal handler for SIGINT and SIGTERM that raises :class:`Interrupted`."""
    raise Interrupted(signum)


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
