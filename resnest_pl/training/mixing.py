"""Batch Mixup / CutMix on the device, returning soft targets with label smoothing folded in.

Written here rather than using ``torchvision.transforms.v2.MixUp`` / ``CutMix``: the paper mixes each batch
with its own reversed order (torchvision rolls it by one), and the recipe also needs label smoothing inside
the soft targets, a probability of mixing at all and a Mixup/CutMix switch probability, which v2 lacks.
All randomness comes from the ``numpy.random.Generator`` passed in, so a training step can seed it from its
position in training and a resumed run mixes exactly as an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def smooth_one_hot(targets: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """One-hot rows ``(1 - smoothing) * onehot + smoothing / num_classes`` (what ``F.cross_entropy`` uses)."""
    one_hot = F.one_hot(targets, num_classes).float()
    return one_hot * (1.0 - smoothing) + smoothing / num_classes


def mixup(images: torch.Tensor, lam: float) -> torch.Tensor:
    """``lam * images + (1 - lam) * images in reversed batch order``."""
    return torch.lerp(images, images.flip(0), 1.0 - lam)


def cutmix(images: torch.Tensor, lam: float, rng: np.random.Generator) -> tuple[torch.Tensor, float]:
    """Paste a box covering about ``1 - lam`` of each image from its reversed-order partner.

    The box is clipped at the border, so the returned ``lam`` is recomputed from the area actually kept.
    """
    height, width = images.shape[-2:]
    side = math.sqrt(1.0 - lam)
    cut_h, cut_w = round(height * side), round(width * side)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    top, bottom = max(cy - cut_h // 2, 0), min(cy - cut_h // 2 + cut_h, height)
    left, right = max(cx - cut_w // 2, 0), min(cx - cut_w // 2 + cut_w, width)
    mixed = images.clone()
    mixed[..., top:bottom, left:right] = images.flip(0)[..., top:bottom, left:right]
    kept = 1.0 - (bottom - top) * (right - left) / (height * width)
    return mixed, kept


@dataclass(frozen=True)
class BatchMixer:
    """Mixup (``lam ~ Beta(mixup_alpha, mixup_alpha)``) and/or CutMix of a batch with its reversed order.

    Attributes:
        num_classes: width of the soft targets.
        mixup_alpha: Beta parameter of Mixup; 0 disables it (the paper uses 0.2).
        cutmix_alpha: Beta parameter of CutMix; 0 disables it.
        prob: probability that a batch is mixed at all.
        switch_prob: with both enabled, probability of CutMix instead of Mixup.
        label_smoothing: folded into the soft targets, mixed or not.
    """

    num_classes: int
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            raise ValueError(
                f"mixup_alpha and cutmix_alpha must be >= 0 (0 = off); got {self.mixup_alpha}, {self.cutmix_alpha}"
            )
        for name in ("prob", "switch_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1]; got {getattr(self, name)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1); got {self.label_smoothing}")

    @property
    def enabled(self) -> bool:
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.prob > 0

    def __call__(
        self, images: torch.Tensor, targets: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixed images and soft targets (rows sum to 1) for class-index ``targets``."""
        soft = smooth_one_hot(targets, self.num_classes, self.label_smoothing)
        if not self.enabled or rng.random() >= self.prob:
            return images, soft
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or rng.random() < self.switch_prob)
        if use_cutmix:
            images, lam = cutmix(images, float(rng.beta(self.cutmix_alpha, self.cutmix_alpha)), rng)
        else:
            lam = float(rng.beta(self.mixup_alpha, self.mixup_alpha))
            images = mixup(images, lam)
        return images, torch.lerp(soft, soft.flip(0), 1.0 - lam)
