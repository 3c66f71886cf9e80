"""``python -m resnest_pl.tune``: studies of tiny fits on the digits, run in this process (``--launch in-process``)
except for the pruning test, which checks the default child-process trials."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pandas as pd
import pytest
import torch
import yaml
from optuna.trial import TrialState

from resnest_pl.launch import resolve
from resnest_pl.tune import TuneError, trials
from resnest_pl.tune.command import main
from resnest_pl.tune.pruning import PRUNED_AT, ReportToStudy
from resnest_pl.tune.space import load_space
from resnest_pl.tune.study import GRACE_S, retried

from ..helpers import CONFIGS, QUICK, ROOT, run_killable

RECIPE = str(CONFIGS / "quickstart.yaml")
# Two epochs of four training batches, two validation batches: each fit takes a second or two.
SHORT = ["--trainer.max_epochs", "2", "--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", "2"]
LR = "model.optimizer.init_args.lr"
SMOOTHING = "model.label_smoothing"
RADIX = "model.model_overrides.radix"
SPACE = {
    LR: {"type": "float", "low": 0.1, "high": 1.0, "log": True},
    SMOOTHING: {"type": "float", "low": 0.0, "high": 0.2},
    RADIX: {"type": "categorical", "choices": [1, 2]},
}


def write_space(folder: Path, space: dict[str, Any]) -> Path:
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def tune_args(out: Path, space: Path, count: int, *extra: str, fit: tuple[str, ...] = ()) -> list[str]:
    """The tune command's arguments: in-process fits of ``SHORT``, seed 0, ``fit`` overrides last."""
    args = ["--config", RECIPE, "--search", str(space), "--trials", str(count), "--out", str(out)]
    return [*args, "--seed", "0", "--launch", "in-process", *extra, *SHORT, *QUICK, *fit]


def tune(out: Path, space: Path, count: int, *extra: str, fit: tuple[str, ...] = ()) -> int:
    """Run the tune command in this process; returns its exit status."""
    return main(tune_args(out, space, count, *extra, fit=fit))


def load(out: Path) -> optuna.Study:
    return optuna.load_study(study_name=out.as_posix(), storage=f"sqlite:///{out / 'study.db'}")


@pytest.mark.slow
def test_study_completes_writes_its_outputs_and_a_rerun_adds_no_trial(tmp_path: Path) -> None:
    out, space = tmp_path / "study", write_space(tmp_path, SPACE)
    assert tune(out, space, 3, "--pruner", "none") == 0

    study = load(out)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    for trial in study.trials:  # the value is the best val/acc1 the fit reported
        assert trial.value == max(trial.intermediate_values.values())
        assert sorted(trial.intermediate_values) == [0, 1]
        assert list((out / f"trial_{trial.number}" / "csv_logs").glob("version_*/metrics.csv"))  # logs moved along
    assert len({t.params[LR] for t in study.trials}) == 3

    table = pd.read_csv(out / "trials.csv")
    assert list(table["state"]) == ["COMPLETE"] * 3
    assert table["value"].tolist() == pytest.approx([t.value for t in study.trials])
    assert (out / "history.png").stat().st_size > 0 and (out / "importances.png").stat().st_size > 0

    # best.yaml is a config the CLI takes, holding the best trial's values and rooted in <out>/best.
    best = study.best_trial
    config = resolve(["fit", "--config", str(out / "best.yaml")])
    assert config["model"]["optimizer"]["init_args"]["lr"] == pytest.approx(best.params[LR])
    assert config["model"]["label_smoothing"] == pytest.approx(best.params[SMOOTHING])
    assert config["model"]["model_overrides"] == {**config["model"]["model_overrides"], "radix": best.params[RADIX]}
    assert config["trainer"]["max_epochs"] == 2  # the study's fit overrides are part of the recipe
    assert config["trainer"]["default_root_dir"] == str(out / "best")

    (out / "trials.csv").unlink()
    assert tune(out, space, 3, "--pruner", "none") == 0
    assert len(load(out).trials) == 3
    assert (out / "trials.csv").is_file()  # the outputs are written again


def test_a_study_made_with_another_space_is_not_continued(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "study"
    optuna.create_study(study_name=out.as_posix(), storage=f"sqlite:///{tmp_path / 'db.sqlite'}")  # minimises
    space = write_space(tmp_path, {LR: SPACE[LR]})
    storage = ["--storage", f"sqlite:///{tmp_path / 'db.sqlite'}"]
    assert tune(out, space, 1, *storage) == 2
    assert "exists and minimises" in capsys.readouterr().err

    study = optuna.create_study(study_name="other", storage=storage[1], direction="maximize")
    study.set_user_attr("command", {"recipe": [], "space": {}})
    assert tune(out, space, 1, *storage, "--study-name", "other") == 2
    assert "was made with another recipe or search space" in capsys.readouterr().err
    assert not study.trials


@pytest.mark.slow
def test_a_failing_trial_is_recorded_and_the_study_goes_on(tmp_path: Path) -> None:
    # Radix -1 makes the model refuse to build. With seed 0 the sampler draws -1 first, then 1.
    space = write_space(tmp_path, {LR: SPACE[LR], RADIX: {"type": "categorical", "choices": [-1, 1]}})
    assert tune(tmp_path / "study", space, 2, "--pruner", "none") == 0
    study = load(tmp_path / "study")
    assert [(t.params[RADIX], t.state) for t in study.trials] == [(-1, TrialState.FAIL), (1, TrialState.COMPLETE)]
    assert "radix must be an integer >= 0" in study.trials[0].user_attrs["error"]


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("model.foo", "search key 'model.foo' is not a setting of this recipe (unknown key 'model.foo'"),
        ("model.model_overrides.radixx", "did you mean model.model_overrides.radix"),
        ("model.label_smothing", "did you mean model.label_smoothing"),
    ],
)
def test_unknown_search_key_is_refused_before_any_trial(
    tmp_path: Path, capsys: pytest.CaptureFixture, key: str, message: str
) -> None:
    space = write_space(tmp_path, {LR: SPACE[LR], key: {"type": "float", "low": 0.0, "high": 0.1}})
    assert tune(tmp_path / "study", space, 3) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert message in err
    assert not (tmp_path / "study").exists()  # no database, no trial


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "float", "low": "1e-5", "high": 1.0}, "low must be a number (write 1.0e-5"),
        ({"type": "float", "low": 0.0, "high": 1.0, "log": True}, "search key 'k'"),
        ({"type": "int", "low": 1}, "missing ['high']"),
        ({"type": "uniform", "low": 1, "high": 2}, "give {type: float|int|categorical"),
        ({"type": "categorical", "choices": []}, "choices must be a non-empty list"),
        ({"type": "categorical", "choices": [1], "low": 0}, "unknown field(s) ['low']"),
    ],
)
def test_bad_search_space_entries_are_refused(tmp_path: Path, spec: dict[str, Any], message: str) -> None:
    with pytest.raises(TuneError) as error:
        load_space(write_space(tmp_path, {"k": spec}))
    assert message in str(error.value)


@pytest.mark.parametrize(
    ("count", "fit", "message"),
    [
        (1, ("--trainer.devices", "2"), "use --launch subprocess"),  # in-process trials need one device
        (0, (), "at least 1, not 0"),
        (1, ("max_epochs", "3"), "are --key value pairs; got 'max_epochs'"),
        (1, ("--trainer.nonsense", "3"), "the recipe: the fit command does not parse: unknown key 'trainer.nonsense'"),
    ],
)
def test_bad_commands_are_refused_before_any_trial(
    tmp_path: Path, capsys: pytest.CaptureFixture, count: int, fit: tuple[str, ...], message: str
) -> None:
    space = write_space(tmp_path, {LR: SPACE[LR]})
    args = ["--config", RECIPE, "--search", str(space), "--trials", str(count), "--out", str(tmp_path / "study")]
    assert main([*args, "--launch", "in-process", *fit]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err
    assert not (tmp_path / "study").exists()


@pytest.mark.slow
def test_an_interrupted_trial_is_run_again_with_its_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out, space = tmp_path / "study", write_space(tmp_path, {LR: SPACE[LR]})

    def interrupted(args: list[str]) -> tuple[str | None, float]:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(trials, "fit_in_process", interrupted)
        assert tune(out, space, 1) == 130
    first = load(out).trials
    assert [t.state for t in first] == [TrialState.FAIL, TrialState.WAITING]
    assert tune(out, space, 1) == 0
    study = load(out)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert study.trials[1].params == first[0].params


@pytest.mark.slow
def test_a_trial_killed_outright_is_failed_by_its_stale_heartbeat_and_run_again(tmp_path: Path) -> None:
    """``kill -9`` of the tune process in the middle of a trial leaves the trial RUNNING with its last heartbeat.
    Once that is older than the grace period (moved back here rather than waited for), the same command marks the
    trial FAIL and runs its values again."""
    out, space = tmp_path / "study", write_space(tmp_path, {LR: SPACE[LR]})
    kill = ["--trainer.callbacks+=tests.interrupt.SignalAtStep", "--trainer.callbacks.step", "2"]
    kill += ["--trainer.callbacks.once_file", str(tmp_path / "killed")]  # the rerun's fit runs through
    command = tune_args(out, space, 1, fit=tuple(kill))
    killed = run_killable([sys.executable, "-m", "resnest_pl.tune", *command], 300, cwd=ROOT)
    assert killed.returncode == -9, killed.stderr[-3000:]
    (interrupted,) = load(out).trials
    assert interrupted.state == TrialState.RUNNING
    with sqlite3.connect(out / "study.db") as db:
        moved = db.execute(
            "UPDATE trial_heartbeats SET heartbeat = datetime(heartbeat, ?)", (f"-{GRACE_S + 60} seconds",)
        )
        assert moved.rowcount == 1  # the killed trial's heartbeat

    assert main(command) == 0
    study = load(out)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert study.trials[1].params == interrupted.params
    assert retried(study.trials) == {0}


@pytest.mark.slow
def test_a_trial_below_the_median_is_pruned_and_its_fit_stops(tmp_path: Path) -> None:
    """With the default child-process trials: the fit reports to the study and stops itself."""
    out, storage = tmp_path / "study", f"sqlite:///{tmp_path / 'db.sqlite'}"
    # A finished trial at 100% after every epoch: the median pruner stops any trial of this tiny fit at epoch 0.
    study = optuna.create_study(study_name=out.as_posix(), storage=storage, direction="maximize")
    study.add_trial(optuna.create_trial(value=1.0, intermediate_values={0: 1.0, 1: 1.0, 2: 1.0}))
    space = write_space(tmp_path, {LR: SPACE[LR]})
    args = ["--config", RECIPE, "--search", str(space), "--trials", "2", "--out", str(out), "--storage", storage]
    pruning = ["--prune-startup-trials", "1", "--prune-warmup-epochs", "0"]
    assert main([*args, *pruning, *SHORT, *QUICK, "--trainer.max_epochs", "3", "--trainer.logger", "false"]) == 0
    pruned = study.trials[1]
    assert pruned.state == TrialState.PRUNED
    assert pruned.user_attrs[PRUNED_AT] == 0
    assert list(pruned.intermediate_values) == [0]  # the fit stopped after its first epoch (of three)
    assert "best checkpoint:" in (out / "trial_1" / "fit.log").read_text()  # and ended normally


def test_the_last_epoch_is_reported_but_never_pruned(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    study.add_trial(optuna.create_trial(value=1.0, intermediate_values={0: 1.0, 1: 1.0, 2: 1.0}))
    callback = ReportToStudy(storage, "s", study.ask()._trial_id, optuna.pruners.MedianPruner(n_startup_trials=1))
    for epoch, stops in [(1, True), (2, False)]:  # of max_epochs 3
        trainer = SimpleNamespace(
            is_global_zero=True,
            sanity_checking=False,
            callback_metrics={"val/acc1": torch.tensor(0.5)},
            current_epoch=epoch,
            max_epochs=3,
            strategy=SimpleNamespace(broadcast=lambda value: value),
            should_stop=False,
        )
        callback.setup(trainer, None, "fit")
        callback.on_validation_end(trainer, None)
        assert trainer.should_stop is stops
    assert study.trials[1].intermediate_values == {1: 0.5, 2: 0.5}
    assert study.trials[1].user_attrs[PRUNED_AT] == 1
