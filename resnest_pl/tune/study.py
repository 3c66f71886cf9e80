"""The study's storage (SQLite in the run folder, or any SQLAlchemy URL), opening or joining the study, and how
many of its trials count as done."""

from __future__ import annotations

import time
import warnings
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from . import TuneError

# A running trial's process writes a heartbeat this often; a RUNNING trial without one for GRACE_S (its process
# was killed) is marked FAIL by the next trial that starts, and is run again with the same values.
HEARTBEAT_S = 60
GRACE_S = 180
# How long a process waits for another's write lock on an SQLite file (trials of several processes on one machine).
SQLITE_TIMEOUT_S = 60
RETRIES = 3
CREATE_ATTEMPTS = 3


def open_storage(url: str, heartbeat: bool = False) -> RDBStorage:
    """The study's database; ``heartbeat`` for the process that runs trials (not for the fits that report)."""
    engine = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if url.startswith("sqlite") else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        options: dict[str, Any] = {}
        if heartbeat:
            options = dict(
                heartbeat_interval=HEARTBEAT_S,
                grace_period=GRACE_S,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=RETRIES),
            )
        attempt = 1
        while True:
            try:
                return RDBStorage(url, engine_kwargs=engine, **options)
            except (IntegrityError, OperationalError) as err:
                # Processes started together on a new database race to create its tables; the loser finds them
                # made on its next attempt. (An unreachable server fails the same way, every time.)
                if attempt == CREATE_ATTEMPTS:
                    raise TuneError(f"--storage {url}: {' '.join(str(err).split())}") from None
                time.sleep(attempt)
                attempt += 1
            except (SQLAlchemyError, ImportError, ValueError) as err:
                raise TuneError(f"--storage {url}: {' '.join(str(err).split())}") from None


def open_study(storage: RDBStorage, name: str, command: dict[str, Any]) -> optuna.Study:
    """Create the study, or join it as it is (another machine's, or an interrupted run's). ``command`` (the
    recipe and the space) is stored with it: a study made with another one is refused rather than mixed."""
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize", load_if_exists=True)
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise TuneError(f"study {name!r} exists and minimises; give another --study-name")
    made_with = study.user_attrs.get("command")
    if made_with is None:
        study.set_user_attr("command", command)
    elif made_with != command:
        raise TuneError(
            f"study {name!r} was made with another recipe or search space (its user attribute 'command' holds "
            "them); give another --out or --study-name, or the same recipe and space to continue it"
        )
    return study


def retried(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of the trials that were interrupted and queued again with the same values."""
    return {number for trial in trials for number in RetryHeartbeatStaleTrialCallback.retry_history(trial)}


def done_count(study: optuna.Study) -> int:
    """Finished trials (complete, pruned, failed), not counting interrupted ones that were queued again."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        trials = study.get_trials(deepcopy=False)
        again = retried(trials)
    return sum(trial.state.is_finished() and trial.number not in again for trial in trials)


def retry(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue ``trial`` (interrupted) again with its values, as a stale trial is."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        RetryHeartbeatStaleTrialCallback(max_retry=RETRIES)(study, trial)
