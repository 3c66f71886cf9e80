"""wandb that never stops a run: offline without an API key, CSV when it cannot start at all."""

from __future__ import annotations

import netrc
import os
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.loggers import CSVLogger, Logger, WandbLogger
from pytorch_lightning.utilities.rank_zero import rank_zero_info, rank_zero_warn

WANDB_HOST = "api.wandb.ai"


def wandb_api_key_available() -> bool:
    """Whether wandb could log in without asking: ``WANDB_API_KEY`` or a ``~/.netrc`` entry (``wandb login``)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(WANDB_HOST) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


class ResilientWandbLogger(WandbLogger):
    """Lightning's ``WandbLogger`` that runs offline by itself when no API key is set.

    The arguments are spelled out (rather than ``**kwargs``) so that LightningCLI can check a
    YAML's keys against them.

    Args:
        project: wandb project.
        name: run name; ``None`` lets wandb choose.
        group: runs of one experiment (an ablation grid, say) shown together.
        tags: labels of the run.
        entity: wandb team or user; ``None`` = the default of the API key.
        notes: a longer description of the run.
        save_dir: where the run's local files go (``<save_dir>/wandb``).
        log_model: upload checkpoints as artifacts (``True``: at the end, ``"all"``: every checkpoint).
        offline: ``None`` decides from the environment: offline when no API key is found (or
            ``WANDB_MODE=offline``); ``True`` / ``False`` force it.
        id: resume the wandb run with this id.
    """

    def __init__(
        self,
        project: str = "resnest_pl",
        name: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        entity: str | None = None,
        notes: str | None = None,
        save_dir: str = ".",
        log_model: bool | str = False,
        offline: bool | None = None,
        id: str | None = None,
    ) -> None:
        if offline is None:
            offline = os.environ.get("WANDB_MODE") == "offline" or not wandb_api_key_available()
            if offline:
                rank_zero_info("wandb: no API key found, logging offline (set WANDB_API_KEY or run `wandb login`)")
        init_kwargs = {k: v for k, v in dict(group=group, tags=tags, entity=entity, notes=notes).items() if v}
        super().__init__(
            name=name, save_dir=save_dir, offline=offline, id=id, project=project, log_model=log_model, **init_kwargs
        )


def start_loggers(trainer: pl.Trainer) -> None:
    """Start every logger now; one that cannot start (wandb without network, say) is replaced by a
    ``CSVLogger`` with a warning, so the run goes on instead of failing hours in."""
    if trainer.global_rank != 0:
        return
    loggers: list[Logger] = []
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            try:
                run = logger.experiment
            except Exception as err:  # wandb raises many types (CommError, UsageError, timeouts, ...)
                fallback = CSVLogger(trainer.default_root_dir, name="csv_logs")
                rank_zero_warn(
                    f"wandb could not start ({type(err).__name__}: {err}); training goes on with CSV logs in "
                    f"{fallback.log_dir}. Check the network or WANDB_API_KEY, or use configs/logger/csv.yaml"
                )
                loggers.append(fallback)
                continue
            if getattr(run.settings, "mode", None) == "offline" or getattr(run.settings, "_offline", False):
                folder = Path(run.dir).parent
                rank_zero_info(f"wandb: offline run in {folder}; upload it later with `wandb sync {folder}`")
        loggers.append(logger)
    trainer.loggers = loggers


def finish_loggers(trainer: pl.Trainer) -> None:
    """End wandb runs when a subcommand ends: their files (config, summary) are complete on disk and a
    next run in the same process (a notebook, an ablation) starts a run of its own."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger.experiment.finish()
