"""``torch.compile`` and SyncBatchNorm do not mix: the guard the module runs before compiling."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:
    import pytorch_lightning as pl


def uses_sync_batchnorm(trainer: pl.Trainer, module: nn.Module) -> bool:
    """Whether the trainer converts BatchNorm to SyncBatchNorm (``sync_batchnorm=True``; done after the module's
    ``setup``) or the module already has one."""
    return getattr(trainer.strategy, "_layer_sync", None) is not None or any(
        isinstance(m, nn.SyncBatchNorm) for m in module.modules()
    )


def check_compile_with_sync_batchnorm(compile: bool, sync_batchnorm: bool) -> None:
    """Refuse ``torch.compile`` with SyncBatchNorm: dynamo breaks the graph at every SyncBatchNorm (or fails,
    pytorch/pytorch#107372), so the compiled network would be dozens of small graphs, slower than eager."""
    if compile and sync_batchnorm:
        raise ValueError(
            "model.compile=true with SyncBatchNorm (trainer.sync_batchnorm=true): torch.compile breaks the graph at "
            "every SyncBatchNorm or fails (pytorch issue 107372); set trainer.sync_batchnorm=false (per-device batch "
            "statistics) or model.compile=false"
        )
