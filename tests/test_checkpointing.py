"""LastCheckpoint's timed saves: the clock, not the step count, decides, and DDP ranks agree without a collective
per step."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from resnest_pl import checkpointing
from resnest_pl.checkpointing import CLOCK_EVERY_N_STEPS, LastCheckpoint

SECONDS_PER_STEP = 7.0


def _timed_run(monkeypatch: pytest.MonkeyPatch, world_size: int, steps: int) -> tuple[list[int], list[int]]:
    """Steps 1..``steps`` of ``SECONDS_PER_STEP`` each on a fake clock, with ``every_n_minutes=1``: the steps
    that saved and the steps that broadcast rank 0's decision."""
    now = [0.0]
    monkeypatch.setattr(checkpointing.time, "monotonic", lambda: now[0])
    callback = LastCheckpoint(every_n_minutes=1)
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
