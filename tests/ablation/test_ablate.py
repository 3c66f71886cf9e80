"""``python -m resnest_pl.ablation``: grids expand and validate before anything runs, runs resume and fail one by one,
reports come out right, and the sweep and SLURM files hold commands the CLI accepts."""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import yaml

from resnest_pl import launch
from resnest_pl.ablation.grid import GridError, GridFile, expand_cells
from resnest_pl.ablation.report import attention_entropies, attention_entropy, validation_sample
from resnest_pl.ablation.run import main as ablation_main
from resnest_pl.cli import main as cli_main
from resnest_pl.launch import Launch

from ..helpers import write_run_checkpoint

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
TINY_FIT = {
    "trainer.max_epochs": 1,
    "trainer.limit_train_batches": 2,
    "trainer.limit_val_batches": 2,
    "trainer.enable_progress_bar": False,
    "trainer.enable_model_summary": False,
}
RESULT_COLUMNS = {"cell", "setting", "radix", "cardinality", "params", "gmacs", "train_img_s", "infer_img_s"}
RESULT_COLUMNS |= {"seeds", "best_val_acc1_mean", "best_val_acc1_std", "final_val_acc1_mean", "peak_rss_mib"}


def write_grid(tmp_path: Path, **fields: Any) -> Path:
    """A grid file on the quick start with two cells (radix 0 and 2), one seed, a one-step timing."""
    grid = {
        "name": "tiny",
        "base": [QUICKSTART],
        "fixed": TINY_FIT,
        "grid": {"radix": [0, 2]},
        "seeds": [0],
        "output": str(tmp_path / "out"),
        "timing": {"batch_size": 4, "reps": 1, "warmup": 0},
        **fields,
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in grid.items() if v is not None}, sort_keys=False))
    return path


def run(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = ablation_main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


class FakeLauncher:
    """Stands in for the child process: writes the metrics.csv a fit would, or fails like one."""

    def __init__(self, fail: tuple[str, ...] = (), interrupt_on: str | None = None, checkpoints: bool = False) -> None:
        self.fail = fail
        self.interrupt_on = interrupt_on
        self.checkpoints = checkpoints  # also write a last.ckpt of the cell's radix (random weights)
        self.cells: list[str] = []

    def __call__(self, command: list[str], log_path: Path) -> Launch:
        args = command[3:]
        root = Path(args[args.index("--trainer.default_root_dir") + 1])
        cell, seed = root.parent.name, int(args[args.index("--seed_everything") + 1])
        if cell == self.interrupt_on:
            raise KeyboardInterrupt
        self.cells.append(cell)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        if cell in self.fail:
            log_path.write_text("Traceback (most recent call last):\nRuntimeError: boom\n")
            return Launch(1, 0.1, 50.0)
        metrics = root / "csv_logs" / "version_0" / "metrics.csv"
        metrics.parent.mkdir(parents=True)
        pd.DataFrame({"epoch": [0, 1], "val/acc1": [0.9, 0.8 + 0.01 * seed]}).to_csv(metrics, index=False)
        if self.checkpoints:
            radix = json.loads(args[args.index("--model.model_overrides") + 1])["radix"]
            digits = tuple(str(d) for d in range(10))
            settings = {"mean": [0.2] * 3, "std": [0.3] * 3}
            write_run_checkpoint(root / "checkpoints" / "last.ckpt", radix, digits, settings, seed)
        log_path.write_text("done\n")
        return Launch(0, 0.1, 100.0 + seed)


@pytest.fixture
def no_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        pytest.fail("a run was launched")

    monkeypatch.setattr(launch, "run_logged", refuse)


# ---- grid expansion and validation ---------------------------------------------------------------------------


def test_cells_are_the_product_crossed_with_explicit_cells() -> None:
    grid = GridFile(base=[QUICKSTART], grid={"radix": [0, 1, 2], "cardinality": [1, 2]})
    cells = expand_cells(grid, "resnest50_fast_2s1x64d", {"small_input": True})
    assert [c.name for c in cells] == ["0s1x64d", "0s2x64d", "1s1x64d", "1s2x64d", "2s1x64d", "2s2x64d"]
    assert cells[3].model_overrides == {"small_input": True, "radix": 1, "cardinality": 2}

    family = GridFile(
        base=[QUICKSTART],
        cells=[
            {"radix": 1, "cardinality": 2, "bottleneck_width": 40},
            {"radix": 1, "cardinality": 4, "bottleneck_width": 24},
        ],
        grid={"dropblock_prob": [0.0, 0.1]},
    )
    names = [c.name for c in expand_cells(family, "resnest50_fast_2s1x64d", {})]
    assert names == [
        "1s2x40d-dropblock_prob=0.0",
        "1s2x40d-dropblock_prob=0.1",
        "1s4x24d-dropblock_prob=0.0",
        "1s4x24d-dropblock_prob=0.1",
    ]


def test_duplicate_cells_are_rejected() -> None:
    grid = GridFile(base=[QUICKSTART], cells=[{"radix": 2}, {"radix": 2, "cardinality": 1}])
    with pytest.raises(GridError, match="same network"):
        expand_cells(grid, "resnest50", {})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"grid": {"radixx": [0, 2]}}, r'cell \{"radixx":0\}: unknown ResNeSt option .radixx.\. Did you mean radix'),
        (
            {"grid": None, "cells": [{"radix": 1, "cardinality": 3, "bottleneck_width": 24}]},
            r'cell \{"radix":1,"cardinality":3,"bottleneck_width":24\}: the attention width .* 3 does not divide',
        ),
        ({"grid": {"bottleneck_width": [1]}}, r'cell \{"bottleneck_width":1\}: .* no channels per group'),
        ({"grid": None}, "the grid is empty"),
        ({"grid": {"radix": []}}, "grid key 'radix' lists no values"),
        ({"base": [str(ROOT / "configs" / "nope.yaml")]}, "base config .*nope.yaml not found"),
        ({"gird": {"radix": [1]}}, "unknown key 'gird' \\(did you mean 'grid'\\?\\)"),
        ({"seeds": []}, "`seeds` must list distinct seeds"),
        ({"fixed": {"seed_everything": 3}}, "`fixed` sets seed_everything, which the runner sets"),
        (
            {"fixed": {"trainer.max_epochz": 3}},
            "does not parse: unknown key 'trainer.max_epochz' .*did you mean --trainer.max_epochs\\?",
        ),
        ({"timing": {"batch_size": "big"}}, 'Parser key "timing.batch_size"'),
    ],
)
def test_bad_grids_are_rejected_before_any_run(
    fields: dict[str, Any], message: str, tmp_path: Path, capsys: pytest.CaptureFixture, no_launch: None
) -> None:
    code, _, err = run(["--config", str(write_grid(tmp_path, **fields))], capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()


def test_missing_grid_file(tmp_path: Path, capsys: pytest.CaptureFixture, no_launch: None) -> None:
    code, _, err = run(["--config", str(tmp_path / "none.yaml")], capsys)
    assert code == 2 and "grid file" in err and "not found" in err


def test_dry_run_prints_every_command_and_runs_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture, no_launch: None
) -> None:
    code, out, _ = run(["--config", str(write_grid(tmp_path)), "--dry-run"], capsys)
    assert code == 0
    assert "2 cells x 1 seeds = 2 runs" in out
    assert out.count("python -m resnest_pl.cli fit") == 2
    assert not (tmp_path / "out").exists()


# ---- running, resuming, failing (fake child processes) -------------------------------------------------------


def test_failed_run_is_reported_and_rerun_finishes_only_it(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    grid = write_grid(tmp_path, seeds=[0, 1])
    out = tmp_path / "out"
    failing = FakeLauncher(fail=("2s1x64d",))
    monkeypatch.setattr(launch, "run_logged", failing)
    code, _, err = run(["--config", str(grid)], capsys)
    assert code == 1
    assert failing.cells == ["0s1x64d", "0s1x64d", "2s1x64d", "2s1x64d"]
    assert "2 of 4 runs failed" in err and "2s1x64d seed 0: FAILED: RuntimeError: boom" in err
    assert (out / "2s1x64d" / "seed1" / "error.json").is_file()
    results = pd.read_csv(out / "results.csv").set_index("cell")
    assert results.loc["0s1x64d", "seeds"] == 2 and results.loc["2s1x64d", "seeds"] == 0
    assert results.loc["0s1x64d", "best_val_acc1_mean"] == pytest.approx(0.9)
    assert results.loc["0s1x64d", "final_val_acc1_mean"] == pytest.approx(0.805)
    assert results.loc["0s1x64d", "final_val_acc1_std"] == pytest.approx(0.01 / math.sqrt(2))
    assert math.isnan(results.loc["2s1x64d", "best_val_acc1_mean"])

    fixed = FakeLauncher()
    monkeypatch.setattr(launch, "run_logged", fixed)
    assert run(["--config", str(grid)], capsys)[0] == 0
    assert fixed.cells == ["2s1x64d", "2s1x64d"]
    assert not (out / "2s1x64d" / "seed1" / "error.json").exists()

    again = FakeLauncher()
    monkeypatch.setattr(launch, "run_logged", again)
    assert run(["--config", str(grid)], capsys)[0] == 0
    assert again.cells == []
    assert pd.read_csv(out / "results.csv")["seeds"].tolist() == [2, 2]


def test_interrupted_grid_resumes_with_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    grid = write_grid(tmp_path)
    monkeypatch.setattr(launch, "run_logged", FakeLauncher(interrupt_on="2s1x64d"))
    code, _, err = run(["--config", str(grid)], capsys)
    assert code == 130 and "run the same command again" in err
    resumed = FakeLauncher()
    monkeypatch.setattr(launch, "run_logged", resumed)
    assert run(["--config", str(grid)], capsys)[0] == 0
    assert resumed.cells == ["2s1x64d"]


def test_output_of_another_grid_is_not_mixed_in(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(launch, "run_logged", FakeLauncher())
    assert run(["--config", str(write_grid(tmp_path))], capsys)[0] == 0
    changed = write_grid(tmp_path, fixed={**TINY_FIT, "trainer.max_epochs": 2})
    code, _, err = run(["--config", str(changed)], capsys)
    assert code == 2 and "another command line" in err


def test_report_files(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launch, "run_logged", FakeLauncher())
    grid = write_grid(tmp_path, grid={"radix": [0, 1, 2], "cardinality": [1, 2]}, seeds=[0, 1])
    code, out, _ = run(["--config", str(grid)], capsys)
    assert code == 0
    folder = tmp_path / "out"
    results = pd.read_csv(folder / "results.csv")
    assert set(results.columns) >= RESULT_COLUMNS and len(results) == 6
    assert len(pd.read_csv(folder / "runs.csv")) == 12
    table = [line for line in (folder / "results.md").read_text().splitlines() if line.startswith("| ")]
    assert table[0].startswith("| setting | params | GMACs | top-1 best (%)") and len(table) == 7
    assert "| 1s2x64d | 0.86M |" in (folder / "results.md").read_text()
    assert "90.00 ± 0.00" in table[1]
    for png in ("accuracy_vs_radix.png", "accuracy_vs_gmacs.png"):
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| 0s1x64d |" in out  # the table is printed too


def test_attention_entropy_column(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(launch, "run_logged", FakeLauncher(checkpoints=True))
    assert run(["--config", str(write_grid(tmp_path, grid={"radix": [0, 1, 2]}, seeds=[0, 1]))], capsys)[0] == 0
    results = pd.read_csv(tmp_path / "out" / "results.csv").set_index("cell")["attention_entropy_mean"]
    assert math.isnan(results["0s1x64d"]) and 0 < results["1s1x64d"] <= 1 and 0 < results["2s1x64d"] <= 1
    runs = pd.read_csv(tmp_path / "out" / "runs.csv").groupby("cell")["attention_entropy"]
    assert runs.nunique()["2s1x64d"] == 2  # the seeds' weights differ, so do their entropies
    assert runs.mean()["2s1x64d"] == pytest.approx(results["2s1x64d"])
    table = (tmp_path / "out" / "results.md").read_text().splitlines()
    assert any(line.startswith("| setting |") and line.endswith("| seeds | attn. entropy |") for line in table)
    assert next(line for line in table if line.startswith("| 0s1x64d |")).endswith("| 2 |  |")  # radix 0: blank
    assert next(line for line in table if line.startswith("| 2s1x64d |")).endswith(f"| 2 | {results['2s1x64d']:.3f} |")


def test_attention_entropy_is_nan_without_a_usable_checkpoint(tmp_path: Path) -> None:
    digits = {"class_path": "resnest_pl.data.DigitsDataModule", "init_args": {"image_size": 32}}
    sample = validation_sample(digits, count=4)
    assert sample is not None and sample.shape == (4, 3, 32, 32) and sample.dtype == torch.uint8
    damaged = tmp_path / "damaged" / "checkpoints" / "last.ckpt"
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"\x00" * 64)
    assert all(math.isnan(v) for v in attention_entropies([tmp_path / "none", damaged.parents[1]], digits))
    assert math.isnan(attention_entropy(write_run_checkpoint(tmp_path / "r2.ckpt"), None))
    assert validation_sample({"class_path": "resnest_pl.data.NoSuchModule", "init_args": {}}) is None


# ---- scale-out files --------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
def test_emitted_sweep_and_slurm_files(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, no_launch: None
) -> None:
    monkeypatch.chdir(ROOT)  # the wandb preset is configs/logger/wandb.yaml, relative to the repository
    grid = write_grid(tmp_path, seeds=[0, 1])
    code, _, _ = run(["--config", str(grid), "--emit-sweep", "--emit-slurm"], capsys)
    assert code == 0
    out = tmp_path / "out"

    sweep = yaml.safe_load((out / "sweep.yaml").read_text())
    assert sweep["method"] == "grid"
    command = sweep["command"]
    assert command[:5] == ["${env}", "python", "-m", "resnest_pl.cli", "fit"] and command[-1] == "${args}"
    assert command[7:9] == ["--config", "configs/logger/wandb.yaml"]
    assert command[command.index("--trainer.logger.init_args.group") + 1] == "tiny"
    overrides = sweep["parameters"]["model.model_overrides"]["values"]
    assert len(overrides) == 2 and all(isinstance(v, str) and '"radix":' in v for v in overrides)
    assert sweep["parameters"]["seed_everything"]["values"] == [0, 1]

    lines = (out / "slurm" / "commands.txt").read_text().splitlines()
    assert len(lines) == 4
    script = (out / "slurm" / "ablation.sbatch").read_text()
    assert "#SBATCH --array=0-3\n" in script and "srun" in script and "SLURM_ARRAY_TASK_ID" in script
    # Requeued before the time limit by Lightning's SLURM environment, and resumed from last.ckpt.
    assert "#SBATCH --signal=SIGUSR1@90\n#SBATCH --requeue\n" in script
    assert 'eval "srun $line --ckpt_path last"' in script
    subprocess.run(["bash", "-n", str(out / "slurm" / "ablation.sbatch")], check=True)
    for line in lines:
        argv = shlex.split(line)
        assert argv[:3] == ["python", "-m", "resnest_pl.cli"]
        with pytest.raises(SystemExit) as exit_:
            cli_main([*argv[3:], "--print_config"])
        assert exit_.value.code in (0, None)
    assert not list(out.glob("*/seed*"))


FAKE_SRUN = """#!{python}
import os, sys
from pathlib import Path
args = sys.argv[1:]
if os.environ.get("FAKE_SRUN_FAIL"):
    sys.exit(1)
root = Path(args[args.index("--trainer.default_root_dir") + 1])
metrics = root / "csv_logs" / "version_0" / "metrics.csv"
metrics.parent.mkdir(parents=True)
metrics.write_text("epoch,val/acc1\\n0,0.75\\n")
"""


def test_runs_finished_by_the_slurm_array_are_adopted_not_rerun(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    grid = write_grid(tmp_path, seeds=[0, 1])
    assert run(["--config", str(grid), "--emit-slurm"], capsys)[0] == 0
    out = tmp_path / "out"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    srun = bin_dir / "srun"
    srun.write_text(FAKE_SRUN.format(python=sys.executable))
    srun.chmod(0o755)
    # The array's four tasks, as SLURM would start them; the last one's srun fails.
    for task in range(4):
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_ARRAY_TASK_ID": str(task)}
        if task == 3:
            env["FAKE_SRUN_FAIL"] = "1"
        done = subprocess.run(["bash", str(out / "slurm" / "ablation.sbatch")], env=env, check=False)
        assert done.returncode == (1 if task == 3 else 0)
    assert len(list(out.glob("*/seed*/fit.done"))) == 3

    code, plan, _ = run(["--config", str(grid), "--dry-run"], capsys)
    assert code == 0 and plan.count("[run by SLURM]") == 3 and plan.count("[to run]") == 1

    local = FakeLauncher()
    monkeypatch.setattr(launch, "run_logged", local)
    code, printed, _ = run(["--config", str(grid)], capsys)
    assert code == 0
    assert local.cells == ["2s1x64d"]  # only the task whose srun failed runs here
    assert printed.count("75.00% best val/acc1 (run by the SLURM array)") == 3
    results = pd.read_csv(out / "results.csv").set_index("cell")
    assert results["seeds"].tolist() == [2, 2]
    assert results.loc["0s1x64d", "best_val_acc1_mean"] == pytest.approx(0.75)

    # A marker left by another grid's command line is not adopted.
    (out / "0s1x64d" / "seed0" / "result.json").unlink()
    (out / "0s1x64d" / "seed0" / "fit.done").write_text("python -m resnest_pl.cli fit --something-else\n")
    code, _, err = run(["--config", str(grid)], capsys)
    assert code == 2 and "another command line" in err


# ---- the real thing ---------------------------------------------------------------------------------------------


class CountingLauncher:
    """The real launcher, counting the cells it starts."""

    def __init__(self) -> None:
        self.cells: list[str] = []
        self.real = launch.run_logged

    def __call__(self, command: list[str], log_path: Path) -> Launch:
        self.cells.append(log_path.parent.parent.name)
        return self.real(command, log_path)


@pytest.mark.slow
def test_real_grid_end_to_end_and_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    grid = write_grid(tmp_path)
    folder = tmp_path / "out"
    assert run(["--config", str(grid)], capsys)[0] == 0
    results = pd.read_csv(folder / "results.csv")
    assert results["cell"].tolist() == ["0s1x64d", "2s1x64d"]
    assert results["best_val_acc1_mean"].between(0, 1).all() and (results["peak_rss_mib"] > 100).all()
    assert (results["train_img_s"] > 0).all() and (results["params"] > 0).all()
    entropy = results.set_index("cell")["attention_entropy_mean"]  # each run's last.ckpt on validation images
    assert math.isnan(entropy["0s1x64d"]) and 0 < entropy["2s1x64d"] <= 1
    rows = [line for line in (folder / "results.md").read_text().splitlines() if line.startswith("| ")]
    assert len(rows) == 3  # header and two cells
    assert (folder / "accuracy_vs_radix.png").stat().st_size > 0 and (folder / "accuracy_vs_gmacs.png").is_file()

    counting = CountingLauncher()
    monkeypatch.setattr(launch, "run_logged", counting)
    assert run(["--config", str(grid)], capsys)[0] == 0
    assert counting.cells == []

    (folder / "2s1x64d" / "seed0" / "result.json").unlink()  # as if killed during that run
    assert run(["--config", str(grid)], capsys)[0] == 0
    assert counting.cells == ["2s1x64d"]


@pytest.mark.slow
def test_real_failing_cell_does_not_stop_the_other(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # A valid architecture that fails at runtime: one input channel for RGB images.
    grid = write_grid(tmp_path, grid={"in_chans": [3, 1]})
    code, _, err = run(["--config", str(grid)], capsys)
    assert code == 1
    assert "1 of 2 runs failed" in err and "2s1x64d-in_chans=1 seed 0: FAILED" in err
    results = pd.read_csv(tmp_path / "out" / "results.csv").set_index("cell")
    assert results.loc["2s1x64d-in_chans=3", "seeds"] == 1
    assert results.loc["2s1x64d-in_chans=1", "seeds"] == 0


def children_of(pid: int) -> dict[int, str]:
    """The command line of each process whose parent is ``pid``, by process id (read from /proc)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if parent == pid:
            found[int(stat.parent.name)] = command
    return found


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped by its new parent, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` runs (zombies do not, as in :func:`alive`)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def stopped_within(seconds: float, *checks: Callable[[], bool]) -> bool:
    """Whether every ``check`` (a "still running?" question) turns False within ``seconds``: a SIGKILLed process
    takes a moment to exit."""
    deadline = time.monotonic() + seconds
    while any(check() for check in checks):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds the runner's child processes in /proc")
def test_sigterm_stops_the_running_fit_and_a_rerun_finishes_only_it(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A DataLoader worker per fit: the runner must stop what the fit started too, not only the fit.
    grid = write_grid(tmp_path, fixed={**TINY_FIT, "data.num_workers": 1})
    out = tmp_path / "out"
    runner = subprocess.Popen(
        [sys.executable, "-m", "resnest_pl.ablation", "--config", str(grid)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    fit, worker = None, None
    try:
        deadline = time.monotonic() + 120
        while worker is None:  # the first cell's fit done, the second's loading its data
            assert runner.poll() is None, runner.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the second fit did not start loading data within 120 s"
            fit = next((pid for pid, command in children_of(runner.pid).items() if "2s1x64d" in command), None)
            worker = next(iter(children_of(fit)), None) if fit is not None else None
            time.sleep(0.05)
        runner.send_signal(signal.SIGTERM)
        _, err = runner.communicate(timeout=30)  # a generous bound on "promptly": the fit is stopped, not awaited
        # The fit, its DataLoader worker and anything else the fit started are gone, not orphaned: checked before
        # the clean-up below kills whatever is left.
        stopped = stopped_within(5, lambda: alive(fit), lambda: alive(worker), lambda: group_alive(fit))
    finally:
        for group in (runner.pid, fit):
            if group is not None and group_alive(group):
                os.killpg(group, signal.SIGKILL)
        runner.wait()
    assert runner.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "run the same command again" in err
    assert stopped
    assert (out / "0s1x64d" / "seed0" / "result.json").is_file()
    assert not (out / "2s1x64d" / "seed0" / "result.json").exists()

    rerun = FakeLauncher()
    monkeypatch.setattr(launch, "run_logged", rerun)
    assert run(["--config", str(grid)], capsys)[0] == 0
    assert rerun.cells == ["2s1x64d"]
