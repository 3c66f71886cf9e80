"""The search-space file: one entry per CLI key, the key as ``--key`` would spell it without the dashes.

.. code-block:: yaml

    model.optimizer.init_args.lr: {type: float, low: 0.05, high: 1.0, log: true}
    model.label_smoothing: {type: float, low: 0.0, high: 0.2, step: 0.05}
    data.init_args.batch_size: {type: int, low: 32, high: 128, step: 32}
    model.model_overrides.radix: {type: categorical, choices: [1, 2]}

``float`` and ``int`` take ``low``, ``high`` (both included), ``log`` (sample on a log scale, default false) and
``step`` (a grid, not with ``log``); ``categorical`` takes ``choices`` (numbers, strings, booleans or null).
Each entry becomes the Optuna distribution of that name, which also checks the bounds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from ..yaml_files import read_yaml_file
from . import TuneError

FIELDS = {
    "float": {"low", "high", "log", "step"},
    "int": {"low", "high", "log", "step"},
    "categorical": {"choices"},
}
REQUIRED = {"float": {"low", "high"}, "int": {"low", "high"}, "categorical": {"choices"}}


def load_space(path: str | Path) -> dict[str, BaseDistribution]:
    """The distributions of a search-space file, in its order; raises TuneError naming the entry at fault."""
    path = Path(path)
    missing = f"search space {path} does not exist; pass a YAML file like configs/tune/quickstart.yaml"
    entries = read_yaml_file(path, TuneError, missing, f"search space {path}")
    if not isinstance(entries, dict) or not entries:
        raise TuneError(f"search space {path} must map CLI keys to {{type: ..., ...}} entries; it holds none")
    return {str(key): dimension(str(key), spec) for key, spec in entries.items()}


def dimension(key: str, spec: Any) -> BaseDistribution:
    """One entry of the search space as an Optuna distribution."""
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind not in FIELDS:
        raise TuneError(f"search key {key!r}: give {{type: float|int|categorical, ...}}; got {spec!r}")
    fields = set(spec) - {"type"}
    unknown, missing = fields - FIELDS[kind], REQUIRED[kind] - fields
    if unknown or missing:
        problem = f"unknown field(s) {sorted(unknown)}" if unknown else f"missing {sorted(missing)}"
        raise TuneError(f"search key {key!r}: {problem}; a {kind} takes {sorted(FIELDS[kind])}")
    options = {name: value for name, value in spec.items() if name != "type"}
    try:
        if kind == "categorical":
            if not isinstance(options["choices"], list) or not options["choices"]:
                raise ValueError("choices must be a non-empty list")
            return CategoricalDistribution(options["choices"])
        for bound in ("low", "high"):
            if isinstance(options[bound], bool) or not isinstance(options[bound], int | float):
                # PyYAML reads 1e-5 (no dot) as text.
                raise ValueError(f"{bound} must be a number (write 1.0e-5, not 1e-5); got {options[bound]!r}")
        if kind == "float":
            return FloatDistribution(**options)
        return IntDistribution(**options)
    except (TypeError, ValueError) as err:
        raise TuneError(f"search key {key!r}: {' '.join(str(err).split())}") from None


def suggest(trial: optuna.Trial, key: str, distribution: BaseDistribution) -> Any:
    """The trial's value for ``key``: sampled, or the fixed one of an enqueued (retried) trial."""
    if isinstance(distribution, FloatDistribution | IntDistribution):
        suggest_number = trial.suggest_float if isinstance(distribution, FloatDistribution) else trial.suggest_int
        return suggest_number(key, distribution.low, distribution.high, step=distribution.step, log=distribution.log)
    return trial.suggest_categorical(key, distribution.choices)


def extremes(distribution: BaseDistribution) -> tuple[Any, Any]:
    """The lowest and highest value (first and last choice), to check that the CLI takes the dimension's values."""
    if isinstance(distribution, CategoricalDistribution):
        return distribution.choices[0], distribution.choices[-1]
    return distribution.low, distribution.high
