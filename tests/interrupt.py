"""Callbacks that interrupt a CLI run in a subprocess at an exact optimizer step, as a cluster would.

Used by the resume tests through ``--trainer.callbacks+=tests.interrupt.SignalAtStep``.
"""

from __future__ import annotations

import io
import os
import signal
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback


class SignalAtStep(Callback):
    """Send ``signal_name`` (e.g. ``SIGKILL``, ``SIGTERM``, ``SIGUSR1``) to this process after optimizer step
    ``step``, once. With ``once_file``, only the first process to get there sends it (and creates that file): a
    rerun of the same command runs through."""

    def __init__(self, step: int, signal_name: str = "SIGKILL", once_file: str | None = None) -> None:
        self.step = step
        self.signum = signal.Signals[signal_name]
        self.once_file = None if once_file is None else Path(once_file)
        self.sent = False

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self.step and not self.sent:
            self.sent = True
            if self.once_file is not None:
                if self.once_file.exists():
                    return
                self.once_file.touch()
            os.kill(os.getpid(), self.signum)


class KillDuringSave(Callback):
    """SIGKILL this process half-way through writing the first checkpoint saved after optimizer step ``step``.

    The checkpoint's bytes go straight to the path the save was asked for, half of them, then the process dies:
    what any non-atomic writer leaves behind when a job is killed mid-save.
    """

    def __init__(self, step: int) -> None:
        self.step = step

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if trainer.global_step != self.step:
            return
        from lightning_fabric.plugins.io import torch_io

        def write_half_then_die(content: dict, filepath: str) -> None:
            buffer = io.BytesIO()
            torch.save(content, buffer)
            with open(filepath, "wb") as handle:
                handle.write(buffer.getvalue()[: buffer.tell() // 2])
                handle.flush()
                os.fsync(handle.fileno())
            os.kill(os.getpid(), signal.SIGKILL)

        torch_io._atomic_save = write_half_then_die  # the writer TorchCheckpointIO.save_checkpoint calls


class FailOnFirstAttempt(Callback):
    """Raise after optimizer step ``step`` in the first attempt of a torchrun job (``TORCHELASTIC_RESTART_COUNT``
    is 0), as a crashing worker would; restarted attempts run through."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self.step and os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0":
            raise RuntimeError(f"worker failure injected after step {self.step}")
