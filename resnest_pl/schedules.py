"""The paper's learning-rate rules: linear scaling with the batch, linear warmup from 0, then cosine decay."""

from __future__ import annotations

import functools
import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

REFERENCE_BATCH = 256


def linear_scaled_lr(lr_per_reference: float, global_batch: int, reference_batch: int = REFERENCE_BATCH) -> float:
    """Goyal et al.'s rule used by the paper: ``lr = lr_per_reference * global_batch / reference_batch``."""
    if global_batch < 1:
        raise ValueError(f"global_batch must be >= 1; got {global_batch}")
    return lr_per_reference * global_batch / reference_batch


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, final_ratio: float = 0.0) -> float:
    """Fraction of the peak learning rate at optimizer step ``step`` (0-based).

    ``step / warmup_steps`` during warmup (0 at step 0), then
    ``final_ratio + (1 - final_ratio) * (1 + cos(pi * t)) / 2`` with ``t`` going from 0 at the end of
    warmup to 1 at ``total_steps``, and ``final_ratio`` after that.
    """
    if step < warmup_steps:
        return step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_scheduler(
    optimizer: Optimizer, warmup_steps: int, total_steps: int, final_ratio: float = 0.0
) -> LambdaLR:
    """A per-step scheduler following :func:`warmup_cosine` for every parameter group.

    A ``LambdaLR`` over the closed form rather than ``SequentialLR(LinearLR, CosineAnnealingLR)``:
    ``LinearLR`` cannot start from exactly 0 (it needs ``start_factor > 0``), ``CosineAnnealingLR``
    updates recursively (rounding accumulates over many steps), while a closed form is exact at every
    step and resumes from the step counter alone.
    """
    if total_steps < 1 or warmup_steps < 0:
        raise ValueError(f"need total_steps >= 1 and warmup_steps >= 0; got {total_steps}, {warmup_steps}")
    if not 0.0 <= final_ratio <= 1.0:
        raise ValueError(f"the final learning rate must lie between 0 and the peak; got ratio {final_ratio}")
    schedule = functools.partial(
        warmup_cosine, warmup_steps=min(warmup_steps, total_steps), total_steps=total_steps, final_ratio=final_ratio
    )
    return LambdaLR(optimizer, schedule)
