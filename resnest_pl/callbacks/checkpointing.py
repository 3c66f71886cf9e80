"""The ``last`` checkpoint and resuming from it.

Lightning's ``ModelCheckpoint(save_last=True)`` rewrites ``last.ckpt`` only in a step where it also saves a
top-k checkpoint, so beside a best-``val/acc1`` callback "last" is a copy of the best epoch. Here ``last.ckpt``
has a callback of its own, :class:`LastCheckpoint`, that writes the newest training state at every epoch end,
at the end of training, every N optimizer steps or M minutes, when the run is interrupted (SIGTERM, SIGINT,
or any exception once training has progressed) and at the step after SLURM's requeue signal. It writes
``last.ckpt.partial`` and renames it into place, so a process killed mid-save leaves the previous ``last.ckpt``
intact.
"""

from __future__ import annotations

import os
import pickle
import signal
import time
from pathlib import Path
from types import FrameType
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.cloud_io import _is_local_file_protocol
from pytorch_lightning.callbacks import ModelCheckpoint

from ..models import IncompatibleCheckpointError

LAST_NAME = "last"
PARTIAL_SUFFIX = ".partial"
HPC_PATTERN = "hpc_ckpt_*.ckpt"  # Lightning's SLURM requeue checkpoints, in trainer.default_root_dir
# Under DDP the ranks agree on a timed save through a broadcast of rank 0's clock, which waits for every rank (a
# host sync on a GPU): it happens only at optimizer steps that are multiples of this, which every rank knows.
CLOCK_EVERY_N_STEPS = 16


class LastCheckpoint(ModelCheckpoint):
    """Keep ``<dirpath>/last.ckpt`` holding the newest training state.

    One file per run root: every run in the same ``default_root_dir`` overwrites it, so
    ``--ckpt_path .../last.ckpt`` (or ``--ckpt_path last``) always means the newest state.

    Args:
        dirpath: folder of ``last.ckpt``; the CLI sets ``<default_root_dir>/checkpoints``.
        every_n_train_steps: also save every this many optimizer steps (None: only at epoch ends).
        every_n_minutes: also save when this many minutes have passed since the last save (None: off). For long
            epochs, e.g. 30 on ImageNet. One process reads its clock after every step; under DDP rank 0's clock
            decides, read every ``CLOCK_EVERY_N_STEPS`` steps.
    """

    def __init__(
        self,
        dirpath: str | None = None,
        every_n_train_steps: int | None = None,
        every_n_minutes: float | None = None,
    ) -> None:
        if every_n_train_steps is not None and every_n_train_steps < 1:
            raise ValueError(f"every_n_train_steps must be >= 1 (or null to turn it off); got {every_n_train_steps}")
        if every_n_minutes is not None and every_n_minutes <= 0:
            raise ValueError(f"every_n_minutes must be > 0 (or null to turn it off); got {every_n_minutes}")
        super().__init__(
            dirpath=dirpath,
            filename=LAST_NAME,
            monitor=None,
            save_top_k=1,
            save_last=False,
            every_n_epochs=1,
            save_on_train_epoch_end=True,
            enable_version_counter=False,
            save_on_exception=True,
        )
        self.interval_steps = every_n_train_steps
        self.interval_seconds = None if every_n_minutes is None else every_n_minutes * 60.0
        self._last_save_time = time.monotonic()
        self._start_step: int | None = None
        self._requeue_requested = False
        self._previous_requeue_handler: Any = None

    @property
    def state_key(self) -> str:
        return f"{type(self).__name__}[{LAST_NAME}]"

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        """Write ``<file>.partial``, then rename it over ``last.ckpt``: a process killed while it writes leaves
        the previous ``last.ckpt`` whole. (Lightning's own save goes through a temporary file that fsspec puts in
        the system temp folder and then *copies* to a checkpoint folder on another file system, a cluster's
        usual case, so it is not atomic there.)"""
        if not _is_local_file_protocol(filepath):
            super()._save_checkpoint(trainer, filepath)
        else:
            partial = f"{filepath}{PARTIAL_SUFFIX}"
            super()._save_checkpoint(trainer, partial)  # ends with a barrier: rank 0 has written it
            if trainer.is_global_zero:
                os.replace(partial, filepath)
            trainer.strategy.barrier("LastCheckpoint.replace")
            self._last_checkpoint_saved = filepath
        self._last_save_time = time.monotonic()

    def save_now(self, trainer: pl.Trainer) -> None:
        """Write ``last.ckpt`` unless it already holds this step."""
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))

    # ---- when -------------------------------------------------------------------------------------------

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._start_step = trainer.global_step
        self._last_save_time = time.monotonic()
        self._chain_requeue_signal(trainer)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        due = self._requeue_requested
        if self.interval_steps and trainer.global_step % self.interval_steps == 0:
            due = True
        if self.interval_seconds is not None:
            if trainer.world_size == 1:
                due = due or time.monotonic() - self._last_save_time >= self.interval_seconds
            elif trainer.global_step % CLOCK_EVERY_N_STEPS == 0:
                elapsed = time.monotonic() - self._last_save_time >= self.interval_seconds
                due = trainer.strategy.broadcast(elapsed or due)  # rank 0's clock decides, so every rank saves
        if due:
            self._requeue_requested = False
            self.save_now(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save_now(trainer)  # e.g. max_steps reached in the middle of an epoch
        self._restore_requeue_signal()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # Only once training has moved past where it started: an error in setup must not replace the
        # last.ckpt of an earlier run with untrained weights.
        if self._start_step is not None and trainer.global_step > self._start_step:
            super().on_exception(trainer, pl_module, exception)
        self._restore_requeue_signal()

    # ---- SLURM ------------------------------------------------------------------------------------------

    def _chain_requeue_signal(self, trainer: pl.Trainer) -> None:
        """Under SLURM auto-requeue Lightning handles the requeue signal (it writes ``hpc_ckpt_N.ckpt`` and
        calls ``scontrol requeue``); add "save last.ckpt after this step" in front of its handler."""
        environment = trainer._accelerator_connector.cluster_environment
        requeue_signal = getattr(environment, "requeue_signal", None)
        if not getattr(environment, "auto_requeue", False) or requeue_signal is None:
            return
        previous = signal.getsignal(requeue_signal)

        def request_save(signum: int, frame: FrameType | None) -> None:
            self._requeue_requested = True
            if callable(previous):
                previous(signum, frame)

        try:
            signal.signal(requeue_signal, request_save)
        except ValueError:  # not the main thread: leave Lightning's handler alone
            return
        self._previous_requeue_handler = (requeue_signal, previous)

    def _restore_requeue_signal(self) -> None:
        if self._previous_requeue_handler is not None:
            signum, handler = self._previous_requeue_handler
            self._previous_requeue_handler = None
            signal.signal(signum, handler)

    # ---- where ------------------------------------------------------------------------------------------

    def _find_last_checkpoints(self, trainer: pl.Trainer) -> set[str]:
        """``--ckpt_path last`` candidates (the newest wins): ``last.ckpt`` and SLURM's requeue checkpoints."""
        found = super()._find_last_checkpoints(trainer)
        found.update(str(p) for p in Path(trainer.default_root_dir).glob(HPC_PATTERN))
        return found


def check_checkpoint_file(path: str | Path) -> None:
    """Fail with one clear line, before Lightning tries, when ``path`` is not a readable training checkpoint.

    Reads with ``weights_only=True`` and memory-mapped tensors: no code from the file runs, nothing large is
    read. Raises :class:`FileNotFoundError` or :class:`IncompatibleCheckpointError`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass an existing .ckpt file or --ckpt_path last")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError) as err:
        raise IncompatibleCheckpointError(
            f"{path} is not a readable Lightning checkpoint (truncated, corrupt, or not written by torch.save); "
            "resume from another file, e.g. the best checkpoint in the same folder"
        ) from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise IncompatibleCheckpointError(
            f"{path} holds no Lightning training state (no 'state_dict'); to start from plain weights use "
            f"--model.pretrained {path} instead of --ckpt_path"
        )
