"""Run one fit as a child process: its output into a log file, its exit status, wall time and peak memory."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# ru_maxrss is in KiB on Linux, in bytes on macOS.
MAXRSS_PER_MIB = 1024 * 1024 if sys.platform == "darwin" else 1024


@dataclass(frozen=True)
class Launch:
    """How a child process ended."""

    returncode: int
    wall_s: float
    peak_rss_mib: float


def run_logged(command: list[str], log_path: Path) -> Launch:
    """Run ``command`` with stdout and stderr into ``log_path``. ``os.wait4`` reaps it, so its own peak
    resident memory comes back with its status. If this process is interrupted, the child is killed too."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.kill()
            process.wait()
            raise
    process.returncode = os.waitstatus_to_exitcode(status)
    return Launch(process.returncode, time.perf_counter() - start, usage.ru_maxrss / MAXRSS_PER_MIB)
