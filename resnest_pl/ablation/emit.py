"""Scale-out files for existing engines: a wandb sweep (method grid) and a SLURM job array. Nothing is submitted."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import yaml

from .commands import CLI, EXTERNAL_DONE, command_line, grid_args, run_dir
from .grid import Cell, GridFile, compact

WANDB_PRESET = "configs/logger/wandb.yaml"
OVERRIDES_PARAMETER = "model.model_overrides"
SEED_PARAMETER = "seed_everything"
REQUEUE_WARNING_SECONDS = 90  # SIGUSR1 this long before the time limit: time to save and requeue


def sweep_command(grid: GridFile) -> list[str]:
    """The sweep's ``command:``: the base configs with the wandb logger preset, the fixed overrides, every run
    grouped under the grid's name, and wandb's ``${args}`` (``--model.model_overrides=<json> --seed_everything=<n>``).

    All runs share ``<output>/sweep`` as ``default_root_dir`` (the CLI has no per-run placeholder), so their
    checkpoints share a folder; the results live in wandb.
    """
    return [
        "${env}",
        *CLI,
        "fit",
        *grid_args(grid, presets=(WANDB_PRESET,)),
        "--trainer.logger.init_args.group",
        str(grid.name),
        "--trainer.default_root_dir",
        f"{grid.output}/sweep",
        "${args}",
    ]


def sweep_run_args(grid: GridFile, cell: Cell, seed: int) -> list[str]:
    """The CLI arguments (after ``python -m resnest_pl.cli``) a sweep agent runs for one cell-seed."""
    command = sweep_command(grid)
    filled = [f"--{OVERRIDES_PARAMETER}={compact(cell.model_overrides)}", f"--{SEED_PARAMETER}={seed}"]
    return [*command[1 + len(CLI) : -1], *filled]


def sweep_config(grid: GridFile, cells: list[Cell]) -> dict[str, Any]:
    """A wandb sweep over every cell (one parameter whose values are the cells' override JSON) and seed."""
    return {
        "name": grid.name,
        "method": "grid",
        "metric": {"name": "val/acc1", "goal": "maximize"},
        "parameters": {
            OVERRIDES_PARAMETER: {"values": [compact(cell.model_overrides) for cell in cells]},
            SEED_PARAMETER: {"values": list(grid.seeds)},
        },
        "command": sweep_command(grid),
    }


def write_sweep(grid: GridFile, cells: list[Cell], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (
        f"# wandb sweep of the ablation grid {grid.name}: {len(cells)} cells x {len(grid.seeds)} seeds.\n"
        f"# From the directory the runner ran in: wandb sweep {path}, then wandb agent <sweep id> on each machine.\n"
    )
    path.write_text(header + yaml.safe_dump(sweep_config(grid, cells), sort_keys=False, width=1000))
    return path


def write_slurm(grid: GridFile, cells: list[Cell], folder: Path) -> tuple[Path, Path]:
    """``<folder>/commands.txt`` (the runner's own fit command of each cell-seed, a line each), ``run_dirs.txt``
    (their folders, in the same order) and ``<folder>/ablation.sbatch``, a job array whose task ``i`` runs line
    ``i`` with ``srun`` and, when it succeeds, writes the line into ``<run folder>/fit.done``: a later
    ``python -m resnest_pl.ablation`` adopts those runs instead of running them again. ``grid.slurm`` adds
    ``#SBATCH --key=value`` lines (gres, time, ...).

    Each task asks for SIGUSR1 90 s before its time limit and is requeueable: Lightning's SLURM environment then
    saves a checkpoint and calls ``scontrol requeue``, and the requeued task resumes with ``--ckpt_path last``
    (which starts from scratch the first time)."""
    folder.mkdir(parents=True, exist_ok=True)
    runs = [(cell, seed) for cell in cells for seed in grid.seeds]
    lines = [command_line(grid, cell, seed) for cell, seed in runs]
    listing, dirs = folder / "commands.txt", folder / "run_dirs.txt"
    listing.write_text("\n".join(lines) + "\n")
    dirs.write_text("".join(f"{run_dir(grid, cell, seed)}\n" for cell, seed in runs))
    options = "".join(f"#SBATCH --{key}={value}\n" for key, value in grid.slurm.items())
    script = folder / "ablation.sbatch"
    script.write_text(
        "#!/bin/bash\n"
        f"# Ablation grid {grid.name}: {len(lines)} runs ({len(cells)} cells x {len(grid.seeds)} seeds), one per\n"
        f"# array task. Submit from the directory the runner ran in, with the environment active: sbatch {script}\n"
        f"#SBATCH --job-name={grid.name}\n"
        f"#SBATCH --array=0-{len(lines) - 1}\n"
        f"#SBATCH --output={folder}/%x-%A_%a.out\n"
        f"#SBATCH --signal=SIGUSR1@{REQUEUE_WARNING_SECONDS}\n"
        "#SBATCH --requeue\n"
        f"{options}"
        "set -euo pipefail\n"
        'cd "${SLURM_SUBMIT_DIR:-.}"\n'
        f'line=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {shlex.quote(str(listing))})\n'
        f'run_dir=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {shlex.quote(str(dirs))})\n'
        'eval "srun $line --ckpt_path last"\n'
        f'printf "%s\\n" "$line" > "$run_dir/{EXTERNAL_DONE}"\n'
    )
    return script, listing
