"""Callbacks that interrupt a CLI run in a subprocess at an exact optimizer step, as a cluster would.

Used by the resume tests through ``--trainer.callbacks+=tests.interrupt.SignalAtStep``.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback


class SignalAtStep(Callback):
    """Send ``signal_name`` (e.g. ``SIGKILL``, ``SIGTERM``, ``SIGUSR1``) to this process after optimizer step
    ``step``, once."""

    def __init__(self, step: int, signal_name: str = "SIGKILL") -> None:
        self.step = step
        self.signum = signal.Signals[signal_name]
        self.sent = False

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)
