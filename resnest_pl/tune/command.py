"""``python -m resnest_pl.tune --config RECIPE --search SPACE --trials N [options] [--key value ...]``.

Every trial is an ordinary ``python -m resnest_pl.cli fit`` of the recipe with the trial's values (and the extra
``--key value`` fit overrides after the options), rooted at ``<out>/trial_<number>``; its value is its best
``val/acc1``, maximised. The study lives in a database: ``sqlite:///<out>/study.db`` by default, any SQLAlchemy
URL with ``--storage`` (PostgreSQL to share one study between machines running the same command). ``--trials N``
is the study's total: a rerun runs only what is missing, a finished study runs nothing, and both write the
outputs again (``best.yaml``, ``trials.csv``, ``history.png``, ``importances.png``).
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import optuna
from optuna.distributions import distribution_to_json
from sqlalchemy.engine import make_url

from ..errors import interrupted, report
from . import TuneError
from .outputs import top_table, write_outputs
from .recipe import Recipe, check_keys, load_recipe
from .space import load_space
from .study import done_count, open_storage, open_study
from .trials import FitFailed, Objective

PRUNERS = ("median", "none")


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m resnest_pl.tune",
        description="Hyper-parameter search with Optuna; every trial is an ordinary fit. Arguments after the "
        "options (--key value) are fit overrides every trial shares.",
        allow_abbrev=False,
    )
    parser.add_argument("--config", action="append", required=True, help="the recipe (repeat to compose, as the CLI)")
    parser.add_argument("--search", required=True, help="the search-space YAML (configs/tune/*.yaml)")
    parser.add_argument("--trials", type=int, required=True, help="finished trials the study should hold in total")
    parser.add_argument("--out", help="run folder (default: runs/tune/<search file name>)")
    parser.add_argument("--storage", help="SQLAlchemy URL of the study's database (default: sqlite:///<out>/study.db)")
    parser.add_argument("--study-name", help="(default: the --out folder as given)")
    parser.add_argument("--seed", type=int, help="seed of the TPE sampler (default: none; one per machine)")
    parser.add_argument("--pruner", choices=PRUNERS, default="median", help="median: Optuna's MedianPruner")
    parser.add_argument("--prune-warmup-epochs", type=int, default=2, help="no pruning before this epoch")
    parser.add_argument("--prune-startup-trials", type=int, default=3, help="no pruning before this many trials")
    parser.add_argument(
        "--launch",
        choices=("subprocess", "in-process"),
        default="subprocess",
        help="run each fit as a child process (isolated; any devices) or in this process (single device)",
    )
    return parser.parse_known_args(argv)


def pruner_spec(args: argparse.Namespace) -> dict | None:
    """The pruner as the CLI builds it inside each fit (see :class:`ReportToStudy`)."""
    if args.pruner == "none":
        return None
    init_args = {"n_startup_trials": args.prune_startup_trials, "n_warmup_steps": args.prune_warmup_epochs}
    return {"class_path": "optuna.pruners.MedianPruner", "init_args": init_args}


def check_single_process(recipe: Recipe) -> None:
    trainer = recipe.resolved["trainer"]
    if str(trainer.get("devices")) != "1" or int(trainer.get("num_nodes") or 1) != 1:
        raise TuneError(
            f"--launch in-process runs each fit in this one process, but the recipe's trainer has devices "
            f"{trainer.get('devices')!r} and num_nodes {trainer.get('num_nodes')!r}; add --trainer.devices 1 or "
            "use --launch subprocess"
        )


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    if args.trials < 1:
        raise TuneError(f"--trials is the number of trials the study should hold: at least 1, not {args.trials}")
    if overrides and not overrides[0].startswith("--"):
        raise TuneError(f"fit overrides after the options are --key value pairs; got {overrides[0]!r}")
    space = load_space(args.search)
    recipe = load_recipe(args.config, overrides)
    out = Path(args.out or Path("runs", "tune", Path(args.search).stem))
    check_keys(recipe, space, out)
    if args.launch == "in-process":
        check_single_process(recipe)
    out.mkdir(parents=True, exist_ok=True)
    url = args.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    name = args.study_name or out.as_posix()
    command = {"recipe": recipe.args, "space": {key: distribution_to_json(d) for key, d in space.items()}}
    study = open_study(open_storage(url, heartbeat=True), name, command)
    if args.seed is not None:
        # A stream of its own per number of trials already there, so that a resumed study does not draw its first
        # run's values again (nor do processes with different seeds share one).
        stream = np.random.SeedSequence(args.seed, spawn_key=(len(study.get_trials(deepcopy=False)),))
        study.sampler = optuna.samplers.TPESampler(seed=int(stream.generate_state(1)[0]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # a trial left RUNNING by a killed run: FAIL, queued again
    left = args.trials - done_count(study)
    shown = make_url(url).render_as_string(hide_password=True)
    print(f"study {name!r} in {shown}: {args.trials - left} of {args.trials} trials done", flush=True)
    if left > 0:
        objective = Objective(recipe, space, out, url, name, pruner_spec(args), args.launch == "in-process")

        def stop_when_done(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            if done_count(study) >= args.trials:  # other machines' trials count too
                study.stop()

        study.optimize(objective, n_trials=left, catch=(FitFailed,), callbacks=[stop_when_done])
    print("\n".join(write_outputs(study, recipe, out)))
    print(top_table(study))
    return 0 if study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)) else 1


def main(argv: list[str] | None = None) -> int:
    """The exit status: 0, 1 when no trial completed, 2 for a user error (one ``error:`` line;
    ``RESNEST_PL_DEBUG=1`` raises instead), 128 + the signal when interrupted (the running trial is queued again)."""
    args, overrides = parse_args(argv)
    try:
        return run(args, overrides)
    except TuneError as err:
        return report(err)
    except KeyboardInterrupt as interrupt:
        return interrupted(interrupt, "run the same command again to continue the study")
