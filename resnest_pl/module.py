"""The old home of the optimizer, kept for what already names it here.

Run folders' ``config.yaml`` (``model.optimizer.class_path``) and checkpoints' hyper-parameters (``optimizer``'s
``class_path``) written before the module moved to :mod:`resnest_pl.training` say
``resnest_pl.module.NesterovSGD``; this keeps them loading. New code imports from ``resnest_pl.training``.
"""

from .training.optim import NesterovSGD

__all__ = ["NesterovSGD"]
