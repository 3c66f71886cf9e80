"""The paper's learning-rate rules: linear scaling with the batch, linear warmup from 0, then cosine decay."""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

if TYPE_CHECKING:
    import pytorch_lightning as pl

REFERENCE_BATCH = 256


def linear_scaled_lr(lr_per_reference: float, global_batch: int, reference_batch: int = REFERENCE_BATCH) -> float:
    """Goyal et al.'s rule used by the paper: ``lr = lr_per_reference * global_batch / reference_batch``."""
    if global_batch < 1:
        raise ValueError(f"global_batch must be >= 1; got {global_batch}")
    return lr_per_reference * global_batch / reference_batch


def global_batch_size(trainer: pl.Trainer) -> int:
    """Images per optimizer step: per-device batch x devices x nodes x gradient accumulation."""
    loader = trainer.train_dataloader
    per_device = getattr(loader, "batch_size", None) or getattr(
        getattr(loader, "batch_sampler", None), "batch_size", None
    )
    if not per_device:
        raise ValueError(
            "cannot read the batch size of the training DataLoader to scale the learning rate; give the "
            "total learning rate in the optimizer and set model.scale_lr=false"
        )
    return int(per_device) * trainer.world_size * trainer.accumulate_grad_batches


def scale_to_global_batch(optimizer: Optimizer, trainer: pl.Trainer, lr: float, scale: bool) -> str:
    """With ``scale``, multiply every group's learning rate by global batch / ``REFERENCE_BATCH``; the line that
    says which rate the run uses (``lr``: the optimizer's own, per ``REFERENCE_BATCH`` images when scaled)."""
    if not scale:
        return f"learning rate: {lr:g} as given (scale_lr: false)"
    batch = global_batch_size(trainer)
    for group in optimizer.param_groups:
        group["lr"] = linear_scaled_lr(group["lr"], batch)
    return (
        f"learning rate: {lr:g} per {REFERENCE_BATCH} images x global batch {batch} / {REFERENCE_BATCH} = "
        f"{optimizer.param_groups[0]['lr']:g} (scale_lr: true; set --model.scale_lr false to use lr as given)"
    )


def total_steps(trainer: pl.Trainer) -> int:
    """Optimizer steps of the whole fit: the schedule's length."""
    steps = trainer.estimated_stepping_batches
    if not math.isfinite(steps):
        raise ValueError("the learning-rate schedule needs a finite length; set trainer.max_epochs or max_steps")
    return int(steps)


def warmup_steps(trainer: pl.Trainer, warmup_epochs: float) -> int:
    """Optimizer steps of ``warmup_epochs`` (may be fractional) epochs of the training DataLoader."""
    if not warmup_epochs:
        return 0
    batches = trainer.num_training_batches
    if not math.isfinite(batches):
        raise ValueError("warmup_epochs needs a training DataLoader with a length; set warmup_epochs=0")
    steps_per_epoch = math.ceil(batches / trainer.accumulate_grad_batches)
    return round(warmup_epochs * steps_per_epoch)


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
