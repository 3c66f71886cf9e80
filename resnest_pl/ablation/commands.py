"""The ordinary ``python -m resnest_pl.cli fit`` command line of each cell-seed."""

from __future__ import annotations

import shlex
from pathlib import Path

from ..launch import cli_value
from .grid import Cell, GridFile, compact

CLI = ["python", "-m", "resnest_pl.cli"]
LOG_NAME = "csv_logs"
# Written into a run's folder by the emitted SLURM script once the run's fit command exited with 0; holds that
# command line, so that the runner adopts the run instead of starting it again.
EXTERNAL_DONE = "fit.done"


def grid_args(grid: GridFile, presets: tuple[str, ...] = ()) -> list[str]:
    """``--config`` for each base file and then each preset (a logger, say), then the grid's fixed overrides."""
    args = [arg for config in (*grid.base, *presets) for arg in ("--config", config)]
    for key, value in grid.fixed.items():
        args += [f"--{key}", cli_value(value)]
    return args


def run_dir(grid: GridFile, cell: Cell, seed: int) -> Path:
    """The ``trainer.default_root_dir`` of one cell-seed."""
    return Path(str(grid.output)) / cell.name / f"seed{seed}"


def fit_args(grid: GridFile, cell: Cell, seed: int) -> list[str]:
    """The CLI arguments (after ``python -m resnest_pl.cli``) of one cell-seed: the base configs and fixed
    overrides, the cell's whole ``model_overrides`` dict, the seed, and a CSVLogger writing into the run's
    own folder, where the runner reads ``val/acc1`` back."""
    folder = str(run_dir(grid, cell, seed))
    return [
        "fit",
        *grid_args(grid),
        "--model.model_overrides",
        compact(cell.model_overrides),
        "--seed_everything",
        str(seed),
        "--trainer.default_root_dir",
        folder,
        "--trainer.logger",
        "pytorch_lightning.loggers.CSVLogger",
        "--trainer.logger.init_args.save_dir",
        folder,
        "--trainer.logger.init_args.name",
        LOG_NAME,
    ]


def command_line(grid: GridFile, cell: Cell, seed: int) -> str:
    """The shell line of one cell-seed's fit, as the SLURM listing holds it."""
    return shlex.join([*CLI, *fit_args(grid, cell, seed)])
