"""Reading a YAML file the user names (an ablation grid, a search space) with errors that say what is wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def read_yaml_file(path: Path, error: type[Exception], missing: str, what: str) -> Any:
    """The document in ``path``; ``error(missing)`` when there is no such file, ``error`` naming ``what`` and the
    parser's message (on one line) when it is not valid YAML."""
    if not path.is_file():
        raise error(missing)
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise error(f"{what} is not valid YAML: {' '.join(str(err).split())}") from None
