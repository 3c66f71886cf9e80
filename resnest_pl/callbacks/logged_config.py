"""The CLI's config saver: the resolved config next to the logs, and to every logger."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.cli import SaveConfigCallback

from ..runs import plain


class LoggedConfigCallback(SaveConfigCallback):
    """Saves the resolved config next to the logs and sends it, whole, to every logger (wandb's run config)."""

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for logger in trainer.loggers:
            logger.log_hyperparams(plain(self.config.as_dict()))
