"""The callback inside each trial's fit: ``val/acc1`` to the study after every validation, and an early stop when
the study's pruner says so.

Optuna's ``optuna_integration.PyTorchLightningPruningCallback`` cannot be used: it subclasses
``lightning.pytorch``'s ``Callback``, which this project's ``pytorch_lightning`` Trainer does not accept, and it
needs the ``optuna.Trial`` object, which cannot cross into a trial run as a child process. This one is built from
the CLI (``--trainer.callbacks+=``) with the storage URL, the study name and the trial's id, and connects to the
study itself, so the same fit runs in a child process or in the tune process.
"""

from __future__ import annotations

import optuna
import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from .study import open_storage

MONITOR = "val/acc1"
# User attribute of a trial its fit stopped because the pruner said so; the tune process then tells the study
# the trial was pruned (an exception raised inside the fit would not get out of a child process).
PRUNED_AT = "pruned_at_epoch"


class ReportToStudy(Callback):
    """Report ``val/acc1`` at each validation (step = epoch) to trial ``trial_id`` of the study, and stop the fit
    at the end of that epoch once ``pruner`` prunes the trial (never at the last epoch).

    Under DDP only global rank 0 connects to the study; its decision is broadcast so that every rank stops."""

    def __init__(
        self, storage: str, study_name: str, trial_id: int, pruner: optuna.pruners.BasePruner | None = None
    ) -> None:
        self.storage = storage
        self.study_name = study_name
        self.trial_id = trial_id
        self.pruner = pruner or optuna.pruners.NopPruner()
        self.trial: optuna.Trial | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.is_global_zero and self.trial is None:
            study = optuna.load_study(
                study_name=self.study_name, storage=open_storage(self.storage), pruner=self.pruner
            )
            self.trial = optuna.Trial(study, self.trial_id)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        prune = False
        if self.trial is not None:
            value = trainer.callback_metrics.get(MONITOR)
            if value is None:
                raise ValueError(f"tune: the fit logged no {MONITOR} to report to the study")
            self.trial.report(float(value), step=trainer.current_epoch)
            # Not at the last epoch: stopping there saves nothing, and would hide a finished fit as pruned.
            last = trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs > 0
            prune = not last and self.trial.should_prune()
            if prune:
                self.trial.set_user_attr(PRUNED_AT, trainer.current_epoch)
        if trainer.strategy.broadcast(prune):
            trainer.should_stop = True
