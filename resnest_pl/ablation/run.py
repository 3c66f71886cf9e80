"""``python -m resnest_pl.ablation --config configs/ablation/<grid>.yaml``: an ablation grid, run as ordinary fits.

Every cell x seed is ``python -m resnest_pl.cli fit`` (the base configs, the grid's fixed overrides, the cell's
model overrides, ``--seed_everything``) in a child process whose ``default_root_dir`` is
``<output>/<cell>/seed<N>``. A finished run leaves ``result.json`` there and never runs again: rerunning after an
interruption finishes only the rest, rerunning a finished grid only re-aggregates. A failed run leaves
``error.json`` next to its ``fit.log``; the others go on, the summary lists it and the exit status is 1.

Before the runs, the runner counts each cell's parameters and MACs (meta device, the data's training crop) and
times its train and inference images/s here (``timing:`` in the grid file). At the end it measures each run's
split-attention entropy (its ``last.ckpt`` on the first validation images) and writes ``results.csv``,
``runs.csv``, ``results.md``, ``accuracy_vs_radix.png`` and ``accuracy_vs_gmacs.png`` into the output folder.

    python -m resnest_pl.ablation --config configs/ablation/digits.yaml            # run or finish the grid
    python -m resnest_pl.ablation --config configs/ablation/digits.yaml --dry-run  # the plan; nothing runs
    python -m resnest_pl.ablation --config configs/ablation/cifar10_rskxwd.yaml --emit-sweep --emit-slurm  # files only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from pytorch_lightning.cli import instantiate_class

from .. import launch
from ..errors import interrupted, report
from ..launch import USER_ERRORS, FitCommandError, cli_value, last_line, resolve
from .commands import EXTERNAL_DONE, LOG_NAME, command_line, fit_args, grid_args, run_dir
from .emit import sweep_run_args, write_slurm, write_sweep
from .grid import Cell, GridError, GridFile, compact, expand_cells, load_grid
from .measure import complexity, throughput
from .report import ACC, ENTROPY, aggregate, attention_entropies, read_val_acc1, write_report

RESULT = "result.json"
FAILURE = "error.json"
MEASURE = "measure.json"
LOG = "fit.log"
STATUS_MARKERS = ((RESULT, "done"), (EXTERNAL_DONE, "run by SLURM"), (FAILURE, "failed"))


@dataclass(frozen=True)
class Plan:
    """A validated grid: its cells and the base fit config as the CLI resolves it."""

    grid: GridFile
    base: dict[str, Any]
    cells: list[Cell]

    @property
    def output(self) -> Path:
        return Path(str(self.grid.output))

    @property
    def runs(self) -> list[tuple[Cell, int]]:
        return [(cell, seed) for cell in self.cells for seed in self.grid.seeds]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m resnest_pl.ablation", description=__doc__.split("\n\n")[0].strip("`")
    )
    parser.add_argument("--config", required=True, help="the grid file (configs/ablation/*.yaml)")
    parser.add_argument("--output", help="output folder (default: the grid's `output`, else runs/ablation/<name>)")
    parser.add_argument("--dry-run", action="store_true", help="print every run's command and status; run nothing")
    parser.add_argument("--emit-sweep", action="store_true", help="write <output>/sweep.yaml (wandb, method grid)")
    parser.add_argument("--emit-slurm", action="store_true", help="write <output>/slurm/ (a SLURM job array)")
    return parser.parse_args(argv)


def make_plan(grid: GridFile) -> Plan:
    """Resolve the base fit config with the CLI and expand and validate every cell; nothing runs."""
    base = resolve(["fit", *grid_args(grid)])
    model = base["model"]
    cells = expand_cells(grid, model["model_name"], model.get("model_overrides") or {})
    return Plan(grid, base, cells)


def read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def write_json(path: Path, record: dict[str, Any]) -> None:
    """Write through a temporary file, so an interrupted runner never leaves a partial record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(record, indent=2))
    os.replace(partial, path)


def check_outputs(plan: Plan) -> None:
    """A finished run in the output folder must come from the same command line; otherwise stop before mixing
    results of two different grids."""
    for cell, seed in plan.runs:
        if made_by_another_command(plan, cell, seed):
            raise GridError(
                f"{run_dir(plan.grid, cell, seed)} holds a run made with another command line (the grid changed); "
                "use another --output, or delete that folder to rerun it"
            )


def made_by_another_command(plan: Plan, cell: Cell, seed: int) -> bool:
    """Whether the run recorded in the cell-seed's folder (by this runner, or by a SLURM task's ``fit.done``)
    was made with another command line than the grid's."""
    folder = run_dir(plan.grid, cell, seed)
    done = read_json(folder / RESULT)
    if done is not None:
        return done["args"] != fit_args(plan.grid, cell, seed)
    marker = folder / EXTERNAL_DONE
    return marker.is_file() and marker.read_text().strip() != command_line(plan.grid, cell, seed)


def print_plan(plan: Plan) -> None:
    done = sum((run_dir(plan.grid, cell, seed) / RESULT).is_file() for cell, seed in plan.runs)
    print(
        f"grid {plan.grid.name}: {len(plan.cells)} cells x {len(plan.grid.seeds)} seeds = {len(plan.runs)} runs "
        f"into {plan.output} ({done} done)"
    )
    for cell, seed in plan.runs:
        folder = run_dir(plan.grid, cell, seed)
        status = next((name for marker, name in STATUS_MARKERS if (folder / marker).is_file()), "to run")
        print(f"  {cell.name} seed {seed} [{status}]: {command_line(plan.grid, cell, seed)}")


def emit(plan: Plan, sweep: bool, slurm: bool) -> None:
    """Write the sweep and/or SLURM files after checking the sweep's command line with the CLI for every cell."""
    if sweep:
        for cell in plan.cells:
            resolve(sweep_run_args(plan.grid, cell, plan.grid.seeds[0]))
        print(f"wrote {write_sweep(plan.grid, plan.cells, plan.output / 'sweep.yaml')}")
    if slurm:
        script, listing = write_slurm(plan.grid, plan.cells, plan.output / "slurm")
        print(f"wrote {script} and {listing}")


def data_facts(base: dict[str, Any]) -> tuple[int, int]:
    """Classes and training crop of the base config's data module (instantiating it also checks the data)."""
    try:
        data = instantiate_class((), base["data"])
    except USER_ERRORS as err:
        raise GridError(f"the base config's data: {err}") from None
    return data.num_classes, data.crop_size


def measure_key(plan: Plan, cell: Cell) -> dict[str, Any]:
    """Everything a cell's measurement depends on, as JSON would give it back."""
    key = {
        "model_name": plan.base["model"]["model_name"],
        "model_overrides": cell.model_overrides,
        "data": plan.base["data"],
        "precision": plan.base["trainer"].get("precision"),
        "timing": dataclasses.asdict(plan.grid.timing),
    }
    return json.loads(json.dumps(key))


def measure_cell(plan: Plan, cell: Cell, num_classes: int, crop: int) -> dict[str, Any]:
    """Params and GMACs at the data's crop, and throughput at the grid's timing settings. A cell that cannot be
    timed (out of memory at that batch, say) gets NaN rates and is timed again next time."""
    model_name, timing = plan.base["model"]["model_name"], plan.grid.timing
    params, macs = complexity(model_name, num_classes, cell.model_overrides, crop)
    size = timing.image_size or crop
    record = {"key": measure_key(plan, cell), "params": params, "gmacs": macs / 1e9, "macs_image_size": crop}
    try:
        speed = throughput(
            model_name,
            num_classes,
            cell.model_overrides,
            timing.batch_size,
            size,
            timing.reps,
            timing.warmup,
            plan.base["trainer"].get("precision"),
        )
    except RuntimeError as err:
        print(f"warning: could not time {cell.name}: {err}", file=sys.stderr)
        return {**record, "train_img_s": math.nan, "infer_img_s": math.nan, "cuda_peak_mib": math.nan}
    record |= dataclasses.asdict(speed)
    record["timing"] = f"{timing_device()}, batch {timing.batch_size}, {size} px"
    write_json(plan.output / cell.name / MEASURE, record)
    print(f"measured {cell.name}: {params / 1e6:.2f}M params, {macs / 1e9:.3g} GMACs, {speed.train_img_s:.0f} img/s")
    return record


def measure_cells(plan: Plan) -> dict[str, dict[str, Any]]:
    """Every cell's measurement, reusing ``measure.json`` when what it depends on is unchanged."""
    measures = {}
    for cell in plan.cells:
        cached = read_json(plan.output / cell.name / MEASURE)
        if cached is not None and cached["key"] == measure_key(plan, cell):
            measures[cell.name] = cached
    if len(measures) < len(plan.cells):
        num_classes, crop = data_facts(plan.base)
        for cell in plan.cells:
            if cell.name not in measures:
                measures[cell.name] = measure_cell(plan, cell, num_classes, crop)
    return measures


def timing_device() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU, torch threads {torch.get_num_threads()}"


def run_one(plan: Plan, cell: Cell, seed: int) -> tuple[dict[str, Any] | None, str]:
    """Run one cell-seed unless it finished before, here or as a task of the emitted SLURM array; returns its
    record (None when it failed) and a status."""
    folder = run_dir(plan.grid, cell, seed)
    done = read_json(folder / RESULT)
    if done is not None:
        return done, "done before"
    args = fit_args(plan.grid, cell, seed)
    record: dict[str, Any] = {"cell": cell.name, "seed": seed, "args": args}
    if (folder / EXTERNAL_DONE).is_file():
        # A SLURM task ran it: no wall time or peak memory of its own reached this process.
        external = {"returncode": 0, "wall_s": math.nan, "peak_rss_mib": math.nan}
        return record_metrics(folder, {**record, **external}, "(run by the SLURM array)")
    shutil.rmtree(folder, ignore_errors=True)  # what an interrupted or failed attempt left
    ran = launch.run_logged([sys.executable, "-m", "resnest_pl.cli", *args], folder / LOG)
    record |= {"returncode": ran.returncode, "wall_s": ran.wall_s, "peak_rss_mib": ran.peak_rss_mib}
    if ran.returncode != 0:
        return failed(folder, record, last_line(folder / LOG))
    return record_metrics(folder, record, f"in {ran.wall_s:.0f} s")


def record_metrics(folder: Path, record: dict[str, Any], how: str) -> tuple[dict[str, Any] | None, str]:
    """Add a finished fit's ``val/acc1`` to its record and save it as ``result.json``; ``how`` ends the status."""
    try:
        best, final, epochs = read_val_acc1(folder / LOG_NAME)
    except ValueError as err:
        return failed(folder, record, str(err))
    record |= {ACC: best, "final_val_acc1": final, "epochs": epochs}
    write_json(folder / RESULT, record)
    return record, f"{100 * best:.2f}% best val/acc1 {how}"


def failed(folder: Path, record: dict[str, Any], error: str) -> tuple[None, str]:
    write_json(folder / FAILURE, {**record, "error": error})
    return None, f"FAILED: {error} (log: {folder / LOG})"


def cell_rows(plan: Plan, measures: dict[str, dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for cell in plan.cells:
        measure = {k: v for k, v in measures[cell.name].items() if k != "key"}
        config = cell.config
        rows.append(
            {
                "cell": cell.name,
                "setting": cell.setting,
                "extra": cell.extra,
                "radix": config.radix,
                "cardinality": config.cardinality,
                "bottleneck_width": config.bottleneck_width,
                "model_overrides": compact(cell.model_overrides),
                **measure,
            }
        )
    return pd.DataFrame(rows)


def notes(plan: Plan, measures: dict[str, dict[str, Any]]) -> list[str]:
    grid, base = plan.grid, plan.base
    fixed = ", ".join(f"{key}={cli_value(value)}" for key, value in grid.fixed.items()) or "none"
    overrides = compact({**(base["model"].get("model_overrides") or {}), **grid.model_overrides})
    first = next(iter(measures.values()))
    load = max(m.get("load_average", math.nan) for m in measures.values())
    return [
        f"Base {', '.join(grid.base)} (model {base['model']['model_name']}, data {base['data']['class_path']}); "
        f"fixed overrides: {fixed}; model overrides {overrides}; "
        f"seeds {', '.join(map(str, grid.seeds))}.",
        "",
        "- setting `RsKxWd`: radix R (0 = no split attention, i.e. ResNet-D / ResNeXt-D), cardinality K, "
        "bottleneck width d.",
        "- top-1: best and final `val/acc1` of each run, mean ± sample std over seeds.",
        f"- GMACs: multiply-accumulates per image at {first['macs_image_size']} px (the paper's GFLOPs count these).",
        f"- img/s: this machine ({first.get('timing', 'not timed')}; load average up to {load:.1f} on "
        f"{os.cpu_count()} cores), median of {grid.timing.reps} timed calls, by the runner between runs.",
        "- peak mem: the train step's CUDA peak when timed on a GPU, else the runs' peak RSS.",
    ]


def run_grid(plan: Plan) -> list[str]:
    """Measure the cells, run what is left, aggregate; returns the failures."""
    start = time.perf_counter()
    measures = measure_cells(plan)
    records, folders, failures = [], [], []
    for index, (cell, seed) in enumerate(plan.runs, start=1):
        print(f"[{index}/{len(plan.runs)}] {cell.name} seed {seed}: ", end="", flush=True)
        record, status = run_one(plan, cell, seed)
        print(status, flush=True)
        if record is None:
            failures.append(f"{cell.name} seed {seed}: {status}")
        else:
            records.append(record)
            folders.append(run_dir(plan.grid, cell, seed))
    runs = pd.DataFrame(records)
    if records:
        runs[ENTROPY] = attention_entropies(folders, plan.base["data"])
    results = aggregate(cell_rows(plan, measures), runs)
    paths = write_report(results, runs, plan.output, f"Ablation {plan.grid.name}", notes(plan, measures))
    print((plan.output / "results.md").read_text())
    print(f"wrote {', '.join(map(str, paths))} ({time.perf_counter() - start:.0f} s)")
    return failures


def main(argv: list[str] | None = None) -> int:
    """Run (or plan, or emit) a grid; returns the exit status: 0, 1 when runs failed, 2 for a bad grid (one
    ``error:`` line; ``RESNEST_PL_DEBUG=1`` raises instead), 128 + the signal when interrupted (130 for Ctrl-C,
    143 for SIGTERM). The fit that was running is stopped first (see :func:`launch.run_logged`); its folder,
    without ``result.json``, is run again next time."""
    args = parse_args(argv)
    try:
        grid = load_grid(args.config)
        if args.output:
            grid.output = args.output
        plan = make_plan(grid)
        if args.dry_run or args.emit_sweep or args.emit_slurm:
            if args.dry_run:
                print_plan(plan)
            emit(plan, args.emit_sweep, args.emit_slurm)
            return 0
        check_outputs(plan)
        failures = run_grid(plan)
    except (GridError, FitCommandError) as err:
        return report(err)
    except KeyboardInterrupt as interrupt:
        return interrupted(interrupt, "run the same command again to finish the remaining runs")
    if failures:
        print(f"{len(failures)} of {len(plan.runs)} runs failed:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0
