"""Batch augmentation on the device, in the training step: random erasing, then Mixup / CutMix.

Each draws from a NumPy generator seeded by the step's position (run seed, rank, epoch, batch index), so a resumed
run erases and mixes exactly as the uninterrupted one, on every rank.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .erasing import RandomErasing
from .mixing import BatchMixer

# Tells random erasing's generator apart from mixing's, both seeded by the training step's position.
ERASING = 1


def augment_batch(
    images: torch.Tensor,
    targets: torch.Tensor,
    eraser: RandomErasing,
    mixer: BatchMixer,
    mixing: bool,
    position: Sequence[int],
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The normalised ``images`` erased, then mixed when ``mixing``, with the soft targets of a mixed batch
    (``None`` when unmixed). Erasing comes before mixing, as in torchvision's reference and timm without its
    prefetcher (whose loader mixes before it erases)."""
    if eraser.enabled:
        images = eraser(images, np.random.default_rng([*position, ERASING]))
    if not mixing:
        return images, None
    return mixer(images, targets, np.random.default_rng(list(position)))
