"""Grid files: what an ablation runs, expanded into cells and checked before anything starts.

A grid file (YAML)::

    name: digits-radix-cardinality        # default: the file's name
    base: [configs/quickstart.yaml]       # fit configs composed like repeated --config (relative to the current dir)
    fixed:                                # more CLI overrides, as dotted keys
      trainer.max_epochs: 6
    model_overrides: {stem_width: 8}      # merged into the base config's model.model_overrides
    grid:                                 # cartesian product of model overrides
      radix: [0, 1, 2, 4]
      cardinality: [1, 2]
    cells:                                # and/or an explicit list, each crossed with the grid
      - {radix: 1, cardinality: 2, bottleneck_width: 40}
    seeds: [0, 1]
    output: runs/ablation/digits          # default: runs/ablation/<name>
    timing: {batch_size: 64, image_size: null, reps: 5, warmup: 2}
    slurm: {gres: "gpu:1", time: "24:00:00"}   # extra #SBATCH options for --emit-slurm
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentError as ParseError
from jsonargparse import ArgumentParser

from ..models import ResNeStConfig, get_variant
from ..yaml_files import read_yaml_file

RSKXWD = ("radix", "cardinality", "bottleneck_width")
# Set by the runner for every cell-seed, so a grid file may not fix them.
RUNNER_KEYS = ("model.model_overrides", "seed_everything", "trainer.default_root_dir", "trainer.logger")


class GridError(ValueError):
    """A grid that cannot run; raised before any run starts."""


@dataclass
class Timing:
    """The runner's own throughput measurement of each cell (not the training runs).

    Attributes:
        batch_size: images per timed train step and inference batch.
        image_size: side of the timed images; ``None`` uses the data's training crop.
        reps: timed calls of each of the train step and the inference batch; their median is reported.
        warmup: untimed calls before them.
    """

    batch_size: int = 32
    image_size: int | None = None
    reps: int = 5
    warmup: int = 2


@dataclass
class GridFile:
    """A grid file's content; see the module docstring."""

    base: list[str]
    name: str | None = None
    fixed: dict[str, Any] = field(default_factory=dict)
    model_overrides: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    cells: list[dict[str, Any]] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    output: str | None = None
    timing: Timing = field(default_factory=Timing)
    slurm: dict[str, str | int] = field(default_factory=dict)


@dataclass(frozen=True)
class Cell:
    """One network of the ablation.

    Attributes:
        name: the setting plus any other varied option, e.g. ``2s1x64d`` or ``2s1x64d-dropblock_prob=0.1``;
            also the cell's folder name.
        setting: the paper's ``RsKxWd`` (radix, cardinality, bottleneck width).
        overrides: the options the grid sets for this cell.
        model_overrides: the whole ``model.model_overrides`` dict of its runs (base config's, grid file's, cell's).
        config: the validated architecture.
    """

    name: str
    setting: str
    overrides: dict[str, Any]
    model_overrides: dict[str, Any]
    config: ResNeStConfig

    @property
    def extra(self) -> str:
        """The varied options other than ``RsKxWd`` (``""`` when there are none)."""
        return self.name[len(self.setting) :].lstrip("-")


def load_grid(path: str | Path) -> GridFile:
    """Read and type-check a grid file; raises :class:`GridError` naming the problem."""
    path = Path(path)
    doc = read_yaml_file(path, GridError, f"grid file {path} not found", str(path))
    if not isinstance(doc, dict):
        raise GridError(f"{path} must hold a mapping with at least `base:` and `grid:` or `cells:`")
    allowed = [f.name for f in dataclasses.fields(GridFile)]
    for key in doc:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise GridError(f"{path}: unknown key {key!r}{hint}; allowed: {', '.join(allowed)}")
    if isinstance(doc.get("base"), str):
        doc["base"] = [doc["base"]]
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(GridFile)
    try:
        parsed = parser.instantiate(parser.parse_object(doc))
    except ParseError as err:
        raise GridError(f"{path}: {' '.join(str(err).split())}") from None
    grid = GridFile(**{key: parsed[key] for key in allowed})
    grid.name = grid.name or path.stem
    grid.output = grid.output or f"runs/ablation/{grid.name}"
    check(grid, path)
    return grid


def check(grid: GridFile, path: Path) -> None:
    """The rules a type check cannot express."""
    if not grid.base:
        raise GridError(f"{path}: `base` names no fit config")
    for base in grid.base:
        if not Path(base).is_file():
            raise GridError(
                f"{path}: base config {base} not found (paths are relative to the current directory, like --config)"
            )
    if not grid.seeds or len(set(grid.seeds)) != len(grid.seeds):
        raise GridError(f"{path}: `seeds` must list distinct seeds; got {grid.seeds}")
    for key in grid.fixed:
        if key.startswith("-"):
            raise GridError(f"{path}: write fixed overrides as dotted keys without dashes, e.g. {key.lstrip('-')}")
        if any(key == k or key.startswith(f"{k}.") for k in RUNNER_KEYS):
            raise GridError(
                f"{path}: `fixed` sets {key}, which the runner sets for every run; architecture options go under "
                "`model_overrides`, seeds under `seeds`, the output folder under `output`"
            )
    for key, values in grid.grid.items():
        if not values:
            raise GridError(f"{path}: grid key {key!r} lists no values")
    if not grid.grid and not grid.cells:
        raise GridError(f"{path}: the grid is empty; give `grid:` values and/or a `cells:` list")
    timing = grid.timing
    if timing.batch_size < 1 or (timing.image_size is not None and timing.image_size < 8) or timing.reps < 1:
        raise GridError(f"{path}: timing needs batch_size >= 1, image_size >= 8 (or null) and reps >= 1")


def compact(overrides: dict[str, Any]) -> str:
    """``{"radix":2,"cardinality":1}``: how cells appear in messages and on command lines."""
    return json.dumps(overrides, separators=(",", ":"))


def expand_cells(grid: GridFile, model_name: str, base_overrides: dict[str, Any]) -> list[Cell]:
    """Every cell of ``grid`` (explicit cells crossed with the product of ``grid.grid``), each validated by
    building its :class:`ResNeStConfig`; raises :class:`GridError` naming the cell and the rule it breaks."""
    try:
        variant = get_variant(model_name)
    except ValueError as err:
        raise GridError(f"the base config's model: {err}") from None
    product = [dict(zip(grid.grid, values, strict=True)) for values in itertools.product(*grid.grid.values())]
    combos = []
    for explicit in grid.cells or [{}]:
        for varied in product:
            both = sorted(explicit.keys() & varied.keys())
            if both:
                raise GridError(f"cell {compact(explicit)} and the grid both set {', '.join(both)}; set each once")
            combos.append({**explicit, **varied})
    built = []
    for overrides in combos:
        merged = {**base_overrides, **grid.model_overrides, **overrides}
        try:
            config = variant.config.replace(**merged)
        except (TypeError, ValueError) as err:
            raise GridError(f"cell {compact(overrides)}: {err}") from None
        built.append((overrides, merged, config))
    keys = {key for overrides, _, _ in built for key in overrides if key not in RSKXWD}
    varied = sorted(key for key in keys if len({repr(getattr(config, key)) for *_, config in built}) > 1)
    cells: dict[str, Cell] = {}
    for overrides, merged, config in built:
        setting = f"{config.radix}s{config.cardinality}x{config.bottleneck_width}d"
        name = "-".join([setting, *(f"{key}={getattr(config, key)}" for key in varied)])
        name = re.sub(r"[^A-Za-z0-9._=-]", "_", name)
        if name in cells:
            raise GridError(
                f"cells {compact(cells[name].overrides)} and {compact(overrides)} build the same network ({name}); "
                "remove one"
            )
        cells[name] = Cell(name, setting, overrides, merged, config)
    return list(cells.values())
