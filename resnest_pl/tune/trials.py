"""One trial: its values, its fit (a child process, or this process) and what the study records of it.

A child process (the default) is ``python -m resnest_pl.cli fit ...`` as a user would type it: a crash, a leak or
an exhausted GPU ends only that trial, and a multi-GPU trial can launch its DDP ranks (Lightning starts them by
running the command line of the process again, which in this process would be the tune command). Running in this
process saves the few seconds of imports each child costs, for small single-device studies."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution

from .. import launch
from ..launch import fit_in_process, last_line
from .pruning import MONITOR, PRUNED_AT
from .recipe import Recipe, fit_args
from .space import suggest
from .study import retry

CALLBACK = "resnest_pl.tune.pruning.ReportToStudy"
LOG = "fit.log"


class FitFailed(Exception):
    """The trial's fit ended with an error (recorded as a FAIL; the study goes on)."""


def trial_folder(out: Path, number: int) -> Path:
    return out / f"trial_{number}"


def fit_in_child(args: list[str], folder: Path) -> tuple[str | None, float]:
    """Run the fit as ``python -m resnest_pl.cli``; its error (None when it succeeded) and wall time."""
    ran = launch.run_logged([sys.executable, "-m", "resnest_pl.cli", *args], folder / LOG)
    return (None if ran.returncode == 0 else last_line(folder / LOG)), ran.wall_s


@dataclass(frozen=True)
class Objective:
    """What ``study.optimize`` calls: one trial's fit, whose best ``val/acc1`` is the trial's value."""

    recipe: Recipe
    space: dict[str, BaseDistribution]
    out: Path
    storage: str
    study_name: str
    pruner: dict[str, Any] | None
    in_process: bool

    def callback(self, trial: optuna.Trial) -> dict[str, Any]:
        # The storage's trial id (Optuna's own integrations pass trial._trial_id the same way).
        init_args = {"storage": self.storage, "study_name": self.study_name, "trial_id": trial._trial_id}
        return {"class_path": CALLBACK, "init_args": {**init_args, "pruner": self.pruner}}

    def __call__(self, trial: optuna.Trial) -> float:
        values = {key: suggest(trial, key, distribution) for key, distribution in self.space.items()}
        folder = trial_folder(self.out, trial.number)
        args = fit_args(self.recipe, values, folder, self.callback(trial))
        shown = ", ".join(f"{key}={value}" for key, value in values.items())
        print(f"trial {trial.number}: {shown} -> {folder}", flush=True)
        try:
            error, wall_s = fit_in_process(args) if self.in_process else fit_in_child(args, folder)
        except KeyboardInterrupt:
            retry(trial.study, self.frozen(trial))
            raise
        trial.set_user_attr("wall_s", round(wall_s, 1))
        frozen = self.frozen(trial)
        if PRUNED_AT in frozen.user_attrs:
            raise optuna.TrialPruned(f"pruned after epoch {frozen.user_attrs[PRUNED_AT]}")
        if error is None and not frozen.intermediate_values:
            error = f"the fit reported no {MONITOR} (is validation switched off?)"
        if error is not None:
            trial.set_user_attr("error", error)
            raise FitFailed(error)
        return max(frozen.intermediate_values.values())

    @staticmethod
    def frozen(trial: optuna.Trial) -> optuna.trial.FrozenTrial:
        """The trial as the storage holds it, with what its fit (maybe another process) reported."""
        running = trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        for frozen in running:
            if frozen.number == trial.number:
                return frozen
        raise RuntimeError(f"trial {trial.number} is no longer running in the study")
