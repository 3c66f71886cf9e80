"""The old home of ``LastCheckpoint``, kept for what already names it here.

Run folders' ``config.yaml`` written before the callbacks moved to :mod:`resnest_pl.callbacks` (from the ImageNet
recipes, or ``--trainer.callbacks+=resnest_pl.checkpointing.LastCheckpoint``) say
``resnest_pl.checkpointing.LastCheckpoint``; this keeps them loading. New configs name ``resnest_pl.callbacks``.
"""

from .callbacks.checkpointing import LastCheckpoint

__all__ = ["LastCheckpoint"]
