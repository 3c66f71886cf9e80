"""Every ``python -m resnest_pl.*`` command follows one error policy (:mod:`resnest_pl.errors`): a bad input
ends with one ``error:`` line and exit status 2, and ``RESNEST_PL_DEBUG=1`` shows the traceback instead."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from resnest_pl.errors import DEBUG_ENV, user_errors

from ..helpers import CONFIGS, ROOT, assert_one_error_line

COMMANDS = ["cli", "data.shards", "data.write_digit_folder", "export", "inspect", "ablation", "tune", "models"]


def bad_commands(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """Per command: arguments that fail cheaply (before any training or conversion), and the error's start."""
    missing = str(tmp / "missing")
    (tmp / "taken").mkdir()
    (tmp / "taken" / "file").touch()
    quickstart = str(CONFIGS / "quickstart.yaml")
    return {
        "cli": (
            ["validate", "--config", quickstart, "--ckpt_path", "last", "--run_dir", str(tmp / "run")],
            "--ckpt_path last: no checkpoint at",
        ),
        "data.shards": (["--root", missing, "--out", str(tmp / "shards")], f"data root {missing} does not exist"),
        "data.write_digit_folder": ([str(tmp / "taken")], f"{tmp / 'taken'} exists and is not empty"),
        "export": ([f"{missing}.ckpt", "--out", str(tmp / "out")], f"weights file {missing}.ckpt does not exist"),
        "inspect": ([f"{missing}.ckpt", "--images", str(tmp)], f"checkpoint {missing}.ckpt does not exist"),
        "ablation": (["--config", f"{missing}.yaml"], f"grid file {missing}.yaml not found"),
        "tune": (["--config", quickstart, "--search", f"{missing}.yaml", "--trials", "0"], "--trials is the number"),
        "models": (["resnest5O"], "unknown model 'resnest5O'"),
    }


def run_command(command: str, args: list[str], debug: bool) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != DEBUG_ENV}
    if debug:
        env[DEBUG_ENV] = "1"
    python = [sys.executable, "-m", f"resnest_pl.{command}", *args]
    return subprocess.run(python, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120, check=False)


@pytest.mark.slow  # a fresh interpreter per command imports torch (and most of them Lightning)
@pytest.mark.parametrize("command", COMMANDS)
def test_a_bad_input_is_one_error_line_or_with_debug_a_traceback(command: str, tmp_path: Path) -> None:
    args, starts = bad_commands(tmp_path)[command]
    plain = run_command(command, args, debug=False)
    assert_one_error_line(plain.returncode, plain.stderr, starts)
    debug = run_command(command, args, debug=True)
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr, debug.stderr
    assert not any(line.startswith("error:") for line in debug.stderr.splitlines()), debug.stderr


def test_user_errors_are_one_line_unless_debugging(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    with pytest.raises(SystemExit) as exit_, user_errors(ValueError, explain=lambda err: f"explained {err}"):
        raise ValueError("bad")
    assert exit_.value.code == 2 and isinstance(exit_.value.__cause__, ValueError)
    assert capsys.readouterr().err == "error: explained bad\n"
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(ValueError, match="bad"), user_errors(ValueError):
        raise ValueError("bad")
    with pytest.raises(KeyError), user_errors(ValueError):  # not a user error: raised as it is
        raise KeyError("bug")
    assert capsys.readouterr().err == ""
