"""Horizontal-flip test-time augmentation."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def hflip_logits(forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """Logits whose softmax is the mean of the softmax of ``images`` and of their mirror images: the log of that
    mean. Probabilities are averaged, not raw logits, so neither view dominates through its logit scale; as
    logits, the result serves the loss (the cross-entropy of the averaged prediction), the accuracy and
    ``predict``'s softmax unchanged. Two forward passes rather than one of twice the batch: no extra memory peak.
    """
    views = [forward(images).float(), forward(images.flip(-1)).float()]
    return torch.logsumexp(torch.stack([v.log_softmax(dim=-1) for v in views]), dim=0) - math.log(len(views))
