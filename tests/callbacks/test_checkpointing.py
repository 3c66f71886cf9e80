"""LastCheckpoint: its timed saves (the clock, not the step count, decides, and DDP ranks agree without a
collective per step), its save on an exception, and ``ckpt_path="last"`` among SLURM's requeue checkpoints."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.trainer.states import TrainerFn
from torch.utils.data import DataLoader, TensorDataset

from resnest_pl.callbacks import LastCheckpoint, checkpointing
from resnest_pl.callbacks.checkpointing import CLOCK_EVERY_N_STEPS

from ..helpers import make_trainer

SECONDS_PER_STEP = 7.0


def _timed_run(
    monkeypatch: pytest.MonkeyPatch, world_size: int, steps: int, minutes: float = 1
) -> tuple[list[int], list[int]]:
    """Steps 1..``steps`` of ``SECONDS_PER_STEP`` each on a fake clock, with ``every_n_minutes=minutes``: the
    steps that saved and the steps that broadcast rank 0's decision."""
    now = [0.0]
    monkeypatch.setattr(checkpointing.time, "monotonic", lambda: now[0])
    callback = LastCheckpoint(every_n_minutes=minutes)
    saved: list[int] = []
    broadcasts: list[int] = []
    trainer = SimpleNamespace(global_step=0, world_size=world_size)

    def broadcast(decision: bool) -> bool:
        broadcasts.append(trainer.global_step)
        return decision

    def save_now(_: object) -> None:
        saved.append(trainer.global_step)
        callback._last_save_time = now[0]

    trainer.strategy = SimpleNamespace(broadcast=broadcast)
    monkeypatch.setattr(callback, "save_now", save_now)
    callback._last_save_time = now[0]
    for step in range(1, steps + 1):
        now[0] += SECONDS_PER_STEP
        trainer.global_step = step
        callback.on_train_batch_end(trainer, None, None, None, step - 1)  # type: ignore[arg-type]
    return saved, broadcasts


def test_one_process_saves_when_the_minutes_have_passed(monkeypatch: pytest.MonkeyPatch) -> None:
    saved, broadcasts = _timed_run(monkeypatch, world_size=1, steps=40)
    assert saved == [9, 18, 27, 36]  # 63 s >= 60 s after each save
    assert broadcasts == []


def test_ddp_ranks_share_rank_zeros_clock_only_every_n_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    saved, broadcasts = _timed_run(monkeypatch, world_size=2, steps=5 * CLOCK_EVERY_N_STEPS)
    assert broadcasts == [CLOCK_EVERY_N_STEPS * k for k in range(1, 6)]
    # The minute has passed by every clock step (16 x 7 s = 112 s): each one saves.
    assert saved == broadcasts


def test_ddp_ranks_save_only_once_the_minutes_have_passed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three minutes: the first clock step (112 s) is too early, the second (224 s) saves, and so on."""
    saved, broadcasts = _timed_run(monkeypatch, world_size=2, steps=5 * CLOCK_EVERY_N_STEPS, minutes=3)
    assert broadcasts == [CLOCK_EVERY_N_STEPS * k for k in range(1, 6)]
    assert saved == [2 * CLOCK_EVERY_N_STEPS, 4 * CLOCK_EVERY_N_STEPS]


class Linear(pl.LightningModule):
    """The smallest trainable module: 8 batches of 2 samples per epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        return torch.nn.functional.mse_loss(self.layer(inputs), targets)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.randn(16, 4), torch.randn(16, 1)), batch_size=2)


class RaiseAtStep(Callback):
    """Raise when the batch after optimizer step ``step`` starts."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *_: Any) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"injected before step {self.step + 1}")


def _fit(root: Path, max_steps: int, *callbacks: Callback, ckpt_path: str | None = None) -> None:
    last = LastCheckpoint(dirpath=str(root / "checkpoints"))
    trainer = make_trainer(
        default_root_dir=root, max_steps=max_steps, enable_checkpointing=True, callbacks=[*callbacks, last]
    )
    trainer.fit(Linear(), ckpt_path=ckpt_path)


def test_an_exception_saves_only_once_training_has_moved(tmp_path: Path) -> None:
    """A run that fails before its first step (here a resume of an older checkpoint) leaves the root's newer
    last.ckpt as it was; one that fails after a step saves that step."""
    root = tmp_path / "run"
    last = root / "checkpoints" / "last.ckpt"
    _fit(root, 2)
    older = shutil.copy(last, tmp_path / "older.ckpt")
    _fit(root, 4, ckpt_path=str(older))
    assert torch.load(last, weights_only=True)["global_step"] == 4
    newest = last.read_bytes()

    with pytest.raises(RuntimeError, match="injected before step 3"):
        _fit(root, 8, RaiseAtStep(2), ckpt_path=str(older))  # resumed at step 2, fails before step 3
    assert last.read_bytes() == newest

    with pytest.raises(RuntimeError, match="injected before step 4"):
        _fit(root, 8, RaiseAtStep(3), ckpt_path=str(older))  # one step done
    assert torch.load(last, weights_only=True)["global_step"] == 3


def test_ckpt_path_last_takes_the_newest_of_last_and_the_requeue_checkpoints(tmp_path: Path) -> None:
    """``trainer.fit(ckpt_path="last")`` (the CLI resolves ``last`` itself): Lightning's SLURM requeue checkpoint
    ``hpc_ckpt_<n>.ckpt`` in the run's root, when newer than last.ckpt, is the one resumed."""
    callback = LastCheckpoint(dirpath=str(tmp_path / "checkpoints"))
    trainer = make_trainer(default_root_dir=tmp_path, enable_checkpointing=True, callbacks=[callback])
    (tmp_path / "checkpoints").mkdir()
    paths = [tmp_path / "checkpoints" / "last.ckpt", tmp_path / "hpc_ckpt_1.ckpt", tmp_path / "hpc_ckpt_2.ckpt"]
    for age, path in zip((10, 20, 30), paths, strict=True):
        path.touch()
        os.utime(path, (1e9 - age, 1e9 - age))  # hpc_ckpt_2 oldest, last.ckpt newest

    def resumed() -> str:
        return str(trainer._checkpoint_connector._parse_ckpt_path(TrainerFn.FITTING, "last", True, True))

    assert resumed() == str(paths[0])
    os.utime(paths[1], (1e9, 1e9))
    assert resumed() == str(paths[1])
