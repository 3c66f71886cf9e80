"""The benchmark scripts run end to end and print their tables (a smoke test: no timing is asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def benchmark(*args: str, script: str = "model_speed.py") -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "benchmarks" / script), *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)


def run_benchmark(*args: str, script: str = "model_speed.py") -> str:
    done = benchmark(*args, script=script)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_model_benchmark_compares_ours_with_timm_in_every_requested_config() -> None:
    out = run_benchmark(
        *("--model", "resnest14d", "--image-size", "32", "--batch-train", "2", "--batch-infer", "2"),
        *("--reps", "2", "--warmup", "0", "--rep-seconds", "0", "--threads", "1"),
        *("--configs", "fp32,bf16-cl", "--peak-tflops", "1", "--keep-host-memory"),
    )
    assert "note: the reference package has no resnest14d; skipping it" in out
    assert "host memory kept for reuse" in out
    for config in ("fp32", "bf16-cl"):
        for mode in ("train", "infer"):
            assert f"| {config} | {mode} | ours resnest14d |" in out
            assert f"| {config} | {mode} | timm resnest14d |" in out
            assert f"| {config} | {mode} | ours / timm |" in out
    assert "MFU" in out


def test_unknown_config_is_refused() -> None:
    done = benchmark("--configs", "fp64")
    assert done.returncode != 0
    assert "unknown --configs fp64" in done.stderr


def test_host_memory_benchmark_compares_plain_and_kept_children() -> None:
    out = run_benchmark(
        *("--model", "resnest14d", "--batch", "2", "--image-size", "32", "--steps", "1", "--warmup", "0"),
        *("--rounds", "1"),
        script="host_memory.py",
    )
    assert "| plain |" in out and "| kept |" in out
    assert "kept / plain images/s:" in out
