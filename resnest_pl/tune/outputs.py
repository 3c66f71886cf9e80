"""What a study leaves in its folder, written again by every run from the whole study: ``best.yaml`` (a config
``python -m resnest_pl.cli fit --config`` takes), ``trials.csv``, ``history.png`` and ``importances.png``."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import optuna
import yaml
from optuna.trial import TrialState
from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances

from .recipe import Recipe, fit_args, parse

BEST = "best.yaml"
CSV = "trials.csv"
HISTORY = "history.png"
IMPORTANCES = "importances.png"
TOP = 5


def write_best(study: optuna.Study, recipe: Recipe, out: Path) -> Path | None:
    """The recipe with the best complete trial's values, as the CLI resolves it, its runs under ``<out>/best``."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    best = study.best_trial
    config = parse(fit_args(recipe, best.params, out / "best"), "the best trial's config")
    header = (
        f"# Best trial {best.number} of study {study.study_name!r} (val/acc1 {best.value:.4f}), written by "
        f"python -m resnest_pl.tune\n# from: {recipe.describe()}\n# python -m resnest_pl.cli fit --config "
        f"{out / BEST}\n"
    )
    path = out / BEST
    path.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return path


def save(axes: plt.Axes, path: Path) -> Path:
    axes.figure.set_size_inches(7, 4)
    axes.figure.tight_layout()
    axes.figure.savefig(path, dpi=120)
    plt.close(axes.figure)
    return path


def write_plots(study: optuna.Study, out: Path) -> tuple[list[Path], list[str]]:
    """The optimisation history, and the parameter importances once complete trials differ in a parameter and in
    ``val/acc1`` (importances of equal results are meaningless); returns the files and notes on what was skipped."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    paths, notes = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if complete:
            paths.append(save(plot_optimization_history(study, target_name="val/acc1"), out / HISTORY))
        else:
            notes.append(f"{HISTORY}: skipped, no complete trial")
        keys = {key for trial in complete for key in trial.params}
        varying = any(len({repr(trial.params.get(key)) for trial in complete}) > 1 for key in keys)
        if varying and len({trial.value for trial in complete}) > 1:
            paths.append(save(plot_param_importances(study, target_name="val/acc1"), out / IMPORTANCES))
        else:
            notes.append(f"{IMPORTANCES}: skipped, needs complete trials that differ in a parameter and in val/acc1")
    return paths, notes


def top_table(study: optuna.Study, count: int = TOP) -> str:
    """The best complete trials as a Markdown table, and how many trials ended in each state."""
    complete = sorted(
        study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.value, reverse=True
    )
    keys = list(complete[0].params) if complete else []
    lines = [
        "| trial | val/acc1 (%) | " + " | ".join(keys) + " |",
        "|---:|---:|" + "---:|" * len(keys),
    ]
    for trial in complete[:count]:
        values = " | ".join(shown(trial.params[key]) for key in keys)
        lines.append(f"| {trial.number} | {100 * trial.value:.2f} | {values} |")
    states = [trial.state.name for trial in study.get_trials(deepcopy=False)]
    counts = ", ".join(f"{states.count(name)} {name.lower()}" for name in sorted(set(states)))
    return "\n".join(lines) + f"\n\n{len(states)} trials: {counts}"


def shown(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_outputs(study: optuna.Study, recipe: Recipe, out: Path) -> list[str]:
    """Every output file; returns lines that say what was written or skipped."""
    out.mkdir(parents=True, exist_ok=True)
    study.trials_dataframe().to_csv(out / CSV, index=False)
    lines = [f"wrote {out / CSV}"]
    best = write_best(study, recipe, out)
    lines.append(f"wrote {best}" if best else f"{BEST}: skipped, no complete trial")
    paths, notes = write_plots(study, out)
    lines += [f"wrote {path}" for path in paths] + notes
    return lines
