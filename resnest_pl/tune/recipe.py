"""The fit command lines of a study (the recipe's, each trial's, the best config's) and the check, with the CLI
itself and before any trial, that every search key is a setting of the recipe."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.distributions import BaseDistribution

from ..launch import FitCommandError, cli_value, resolve
from ..models.config import ResNeStConfig
from . import TuneError
from .space import extremes

# Architecture options: a free dict for the parser, checked here against the fields create_model accepts.
OVERRIDES = "model.model_overrides"


@dataclass(frozen=True)
class Recipe:
    """The fit arguments every trial shares (``--config`` files, then fixed overrides) and the config they
    resolve to."""

    args: list[str]
    resolved: dict[str, Any]

    def describe(self) -> str:
        return " ".join(self.args)


def parse(args: list[str], what: str) -> dict[str, Any]:
    """The config the CLI resolves ``args`` to (``--print_config``, in this process, instantiating nothing)."""
    try:
        return resolve(args)
    except FitCommandError as err:
        raise TuneError(f"{what}: {err}") from None


def load_recipe(configs: list[str], overrides: list[str]) -> Recipe:
    args = [arg for config in configs for arg in ("--config", config)] + overrides
    return Recipe(args, parse(["fit", *args], "the recipe"))


def value_args(values: dict[str, Any]) -> list[str]:
    return [arg for key, value in values.items() for arg in (f"--{key}", cli_value(value))]


def fit_args(recipe: Recipe, values: dict[str, Any], folder: Path, callback: dict[str, Any] | None = None) -> list[str]:
    """``fit`` with the recipe, the trial's values, ``folder`` as the run's root (and its logger's ``save_dir``
    when the recipe has one logger that takes it), and ``callback`` appended to the trainer's callbacks."""
    args = ["fit", *recipe.args, *value_args(values), "--trainer.default_root_dir", str(folder)]
    logger = recipe.resolved["trainer"].get("logger")
    if isinstance(logger, dict) and "save_dir" in (logger.get("init_args") or {}):
        args += ["--trainer.logger.init_args.save_dir", str(folder)]
    if callback is not None:
        args.append(f"--trainer.callbacks+={json.dumps(callback)}")
    return args


def dotted_keys(config: Any, prefix: str = "") -> set[str]:
    """Every key path of a nested config, inner nodes included (``model``, ``model.optimizer``, ...)."""
    if not isinstance(config, dict):
        return set()
    keys = set()
    for name, value in config.items():
        key = f"{prefix}{name}"
        keys |= {key, *dotted_keys(value, f"{key}.")}
    return keys


def unknown_key(key: str, known: set[str], recipe: Recipe, reason: str) -> TuneError:
    close = difflib.get_close_matches(key, sorted(known), n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    configs = " ".join(arg for arg in recipe.args if arg != "--config")
    return TuneError(
        f"search key {key!r} is not a setting of this recipe ({reason}); {hint}the settings are listed by "
        f"`python -m resnest_pl.cli fit --config {configs} --print_config`"
    )


def check_keys(recipe: Recipe, space: dict[str, BaseDistribution], folder: Path) -> None:
    """Refuse a search key the CLI does not know, naming it, and a space whose values the CLI does not take.

    A key in the resolved recipe is a setting; any other is tried alone with the CLI, which rejects unknown ones.
    Keys under ``model.model_overrides`` (a dict the parser takes whole) must be ResNeSt options."""
    known = dotted_keys(recipe.resolved)
    options = ResNeStConfig.field_names()
    for key, distribution in space.items():
        if key.startswith(f"{OVERRIDES}."):
            if key.removeprefix(f"{OVERRIDES}.") not in options:
                known |= {f"{OVERRIDES}.{name}" for name in options}
                raise unknown_key(key, known, recipe, f"{OVERRIDES} takes ResNeSt options")
        elif key not in known:
            try:
                resolve(["fit", *recipe.args, *value_args({key: extremes(distribution)[0]})])
            except FitCommandError as err:
                reason = str(err).removeprefix("the fit command does not parse: ")
                raise unknown_key(key, known, recipe, reason) from None
    for pick in (0, 1):
        values = {key: extremes(distribution)[pick] for key, distribution in space.items()}
        parse(fit_args(recipe, values, folder), f"the search space's {('lowest', 'highest')[pick]} values")
