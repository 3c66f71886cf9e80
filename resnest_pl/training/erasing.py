"""Random erasing (Zhong et al. 2017) of a normalised batch on the device, one draw per image, with timm's settings.

timm's ``--reprob`` / ``--remode`` / ``--recount`` (``timm.data.RandomErasing``) and torchvision's reference
``--random-erase``. Written here rather than taken from a library: ``torchvision.transforms.v2.RandomErasing``
given a batch erases the same box in every image, and timm's loops over the images on the host and draws from
Python's ``random`` module, which a resumed run cannot replay. Here the boxes are drawn for the whole batch at
once from the ``numpy.random.Generator`` passed in and applied as masks in a few batched kernels, so a training
step can seed the draw from its position in training, as it does for Mixup and CutMix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

import numpy as np
import torch

EraseMode = Literal["const", "rand", "pixel"]
ERASE_MODES: tuple[str, ...] = get_args(EraseMode)


@dataclass(frozen=True)
class RandomErasing:
    """Erase random boxes of normalised images, independently per image, as timm's ``RandomErasing`` does.

    Each image is erased with probability ``prob``: it gets between 1 and ``max_count`` boxes (uniformly),
    together covering a share of its area drawn uniformly in ``[min_area, max_area]`` (split equally between the
    boxes), each with an aspect ratio drawn log-uniformly in ``[min_aspect, 1 / min_aspect]``; a box that does not
    fit is drawn again, up to 10 times, then skipped.

    Attributes:
        prob: probability that an image is erased; 0 turns erasing off.
        mode: the boxes' content, in normalised units: ``"const"`` zeros (the data mean), ``"rand"`` one normal
            colour per box, ``"pixel"`` normal noise per pixel.
        max_count: most boxes per erased image.
        min_area: smallest share of the image erased (timm's 0.02).
        max_area: largest share of the image erased (timm's 1/3).
        min_aspect: the smallest height / width ratio of a box (timm's 0.3); the largest is its inverse.
    """

    prob: float = 0.0
    mode: EraseMode = "pixel"
    max_count: int = 1
    min_area: float = 0.02
    max_area: float = 1 / 3
    min_aspect: float = 0.3
    attempts: ClassVar[int] = 10

    def __post_init__(self) -> None:
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"erase_prob must lie in [0, 1] (0 = off), got {self.prob}")
        if self.mode not in ERASE_MODES:
            raise ValueError(f"erase_mode must be one of {', '.join(map(repr, ERASE_MODES))}, got {self.mode!r}")
        if self.max_count < 1:
            raise ValueError(f"erase_count must be at least 1 (boxes per erased image), got {self.max_count}")
        if not 0.0 < self.min_area <= self.max_area <= 1.0 or not 0.0 < self.min_aspect <= 1.0:
            raise ValueError(
                "random erasing needs 0 < min_area <= max_area <= 1 and 0 < min_aspect <= 1; got "
                f"{self.min_area}, {self.max_area}, {self.min_aspect}"
            )

    @property
    def enabled(self) -> bool:
        return self.prob > 0

    def boxes(self, count: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
        """``(count, max_count, 4)`` int64 ``(top, left, box height, box width)`` of each image's boxes; a box of
        height 0 erases nothing (an image not erased, fewer boxes than ``max_count``, or none fitted)."""
        erased = rng.random(count) < self.prob
        boxes_per_image = rng.integers(1, self.max_count + 1, size=count)
        shape = (count, self.max_count, self.attempts)
        area = rng.uniform(self.min_area, self.max_area, shape) * (height * width) / boxes_per_image[:, None, None]
        aspect = np.exp(rng.uniform(math.log(self.min_aspect), -math.log(self.min_aspect), shape))
        box_h = np.rint(np.sqrt(area * aspect)).astype(np.int64)
        box_w = np.rint(np.sqrt(area / aspect)).astype(np.int64)
        fits = (box_h < height) & (box_w < width)
        first = fits.argmax(axis=-1)[..., None]  # the first attempt that fits, as timm's loop takes
        box_h = np.take_along_axis(box_h, first, axis=-1)[..., 0]
        box_w = np.take_along_axis(box_w, first, axis=-1)[..., 0]
        used = erased[:, None] & fits.any(axis=-1) & (np.arange(self.max_count) < boxes_per_image[:, None])
        box_h, box_w = np.where(used, box_h, 0), np.where(used, box_w, 0)
        top = rng.integers(0, height - box_h + 1)
        left = rng.integers(0, width - box_w + 1)
        return np.stack([top, left, box_h, box_w], axis=-1)

    def __call__(self, images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """``images`` (float ``(N, C, H, W)``, normalised) with their boxes erased; a new tensor, same dtype."""
        count, channels, height, width = images.shape
        device = images.device
        # From pageable memory without waiting for the device: CUDA stages the few bytes before returning.
        boxes = torch.from_numpy(self.boxes(count, height, width, rng)).to(device, non_blocking=True)
        top, left, box_h, box_w = (part[..., None] for part in boxes.unbind(-1))
        rows = torch.arange(height, device=device)
        cols = torch.arange(width, device=device)
        in_rows = (rows >= top) & (rows < top + box_h)  # (N, max_count, H)
        in_cols = (cols >= left) & (cols < left + box_w)  # (N, max_count, W)
        masks = in_rows[..., :, None] & in_cols[..., None, :]  # (N, max_count, H, W)
        generator = torch.Generator(device=device)
        generator.manual_seed(int(rng.integers(2**63)))
        if self.mode == "rand":
            erased = images
            for box in range(self.max_count):  # a later box covers an earlier one, as in timm's loop
                colour = torch.randn((count, channels, 1, 1), generator=generator, device=device, dtype=images.dtype)
                erased = torch.where(masks[:, box, None], colour, erased)
            return erased
        mask = masks.any(dim=1, keepdim=True)
        if self.mode == "const":
            return images.masked_fill(mask, 0.0)
        noise = torch.randn(images.shape, generator=generator, device=device, dtype=images.dtype)
        return torch.where(mask, noise, images)
