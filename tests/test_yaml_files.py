"""A user's YAML file (grid, search space) read with one-line errors (resnest_pl/yaml_files.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from resnest_pl.ablation.grid import GridError, load_grid
from resnest_pl.tune import TuneError
from resnest_pl.tune.space import load_space


@pytest.mark.parametrize(
    ("load", "error", "what"), [(load_grid, GridError, ""), (load_space, TuneError, "search space ")]
)
def test_missing_and_malformed_files_are_one_line_errors(load, error, what: str, tmp_path: Path) -> None:
    with pytest.raises(error, match=r"not found|does not exist"):
        load(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("grid: [radix\n  - 1\n")
    with pytest.raises(error) as raised:
        load(broken)
    message = str(raised.value)
    assert message.startswith(f"{what}{broken} is not valid YAML: ") and "\n" not in message
