"""Learning-rate scaling and the warmup + cosine schedule, against their closed forms."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from resnest_pl.training.schedule import linear_scaled_lr, warmup_cosine, warmup_cosine_scheduler


def lrs_per_step(warmup: int, total: int, peak: float, final_ratio: float) -> list[float]:
    """The learning rate used by each optimizer step 0..total (the last one after training)."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    scheduler = warmup_cosine_scheduler(optimizer, warmup, total, final_ratio)
    lrs = []
    for _ in range(total + 1):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_paper_batch_scaling() -> None:
    assert linear_scaled_lr(0.1, 8192) == pytest.approx(3.2)  # ResNeSt-50
    assert linear_scaled_lr(0.1, 2048) == pytest.approx(0.8)  # ResNeSt-200/269
    assert linear_scaled_lr(0.1, 256) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="global_batch"):
        linear_scaled_lr(0.1, 0)


def test_warmup_then_cosine_values() -> None:
    peak, floor = 2.0, 0.2
    lrs = lrs_per_step(warmup=10, total=50, peak=peak, final_ratio=floor / peak)
    assert lrs[0] == 0.0
    assert lrs[5] == pytest.approx(peak * 5 / 10)
    assert lrs[10] == pytest.approx(peak)  # end of warmup
    assert lrs[20] == pytest.approx(floor + (peak - floor) * (1 + math.cos(math.pi / 4)) / 2)
    assert lrs[30] == pytest.approx((peak + floor) / 2)  # middle of the cosine
    assert lrs[50] == pytest.approx(floor)  # end
    assert all(a <= b for a, b in itertools.pairwise(lrs[:11]))  # rising during warmup
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))  # falling after


def test_no_warmup_starts_at_the_peak_and_decays_to_zero() -> None:
    lrs = lrs_per_step(warmup=0, total=8, peak=1.0, final_ratio=0.0)
    assert lrs[0] == 1.0
    assert lrs[4] == pytest.approx(0.5)
    assert lrs[8] == pytest.approx(0.0, abs=1e-12)


def test_closed_form_stays_at_the_floor_past_the_end() -> None:
    assert warmup_cosine(120, warmup_steps=10, total_steps=100, final_ratio=0.05) == pytest.approx(0.05)
    assert warmup_cosine(3, warmup_steps=10, total_steps=5) == pytest.approx(0.3)


def test_scheduler_resumes_from_its_state_dict() -> None:
    params = [torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD(params, lr=1.0)
    scheduler = warmup_cosine_scheduler(optimizer, 4, 20)
    for _ in range(7):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()

    fresh_optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    fresh_optimizer.load_state_dict(optimizer.state_dict())
    fresh = warmup_cosine_scheduler(fresh_optimizer, 4, 20)
    fresh.load_state_dict(state)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
        fresh_optimizer.step()
        fresh.step()
        assert fresh.get_last_lr() == scheduler.get_last_lr()
    assert scheduler.get_last_lr()[0] == pytest.approx(warmup_cosine(12, 4, 20))


def test_invalid_schedules_are_rejected() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="total_steps"):
        warmup_cosine_scheduler(optimizer, 0, 0)
    with pytest.raises(ValueError, match="final learning rate"):
        warmup_cosine_scheduler(optimizer, 0, 10, final_ratio=1.5)
