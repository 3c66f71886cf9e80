"""Map-style datasets yielding ``(image tensor, int)`` pairs; for an image that cannot be read, None or a
readable replacement marked as one.

The image is what the transform returns: a ``uint8`` ``(3, H, W)`` tensor, or ``(image, pixel_shift)`` from a
training pipeline with PCA lighting (see :class:`~resnest_pl.data.transforms.ImageTransform`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .decode import read_image

logger = logging.getLogger(__name__)

# A transform's output: the uint8 image, or the image and its float32 (3,) PCA lighting shift.
Pixels = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
Sample = tuple[Pixels, int]
# A readable image drawn in place of an unreadable one; the trailing int counts the unreadable image (always 1).
Replacement = tuple[Pixels, int, int]


class ArrayDataset(Dataset):
    """Images held in memory as one ``uint8`` ``(N, H, W, 3)`` array (CIFAR, digits).

    Args:
        images: the images, RGB, channels last.
        targets: class index of each image.
        transform: maps one image array to a tensor.
    """

    def __init__(self, images: np.ndarray, targets: Sequence[int], transform: Callable[[np.ndarray], Pixels]) -> None:
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images = images
        self.targets = [int(t) for t in targets]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Sample:
        return self.transform(self.images[index]), self.targets[index]


class ImageFileDataset(Dataset):
    """Image files decoded with OpenCV; a file that cannot be read or decoded is logged by path as a warning.

    What an unreadable file yields depends on ``replace_unreadable``:

    - False (val / test / predict): None, which :class:`~resnest_pl.data.collate.SkipUnreadable` drops, so every
      readable image is evaluated exactly once and batches may be smaller (even empty).
    - True (training): ``(image, target, 1)`` of the next readable file in order (wrapping around), so training
      batches keep their size. Under DDP every rank must run every step: a rank with an empty batch would skip
      its step while the others wait for it in their gradient all-reduce. The trailing 1 counts the file drawn,
      not the unreadable files passed over to find a replacement (each of those is counted when it is drawn
      itself), so an epoch that draws every index once counts each unreadable file exactly once.

    Args:
        files: image paths.
        targets: an integer per file: its class index, or its position for prediction.
        transform: maps an RGB ``uint8`` array to a tensor; its ``min_source_side`` attribute, when set, lets
            the decoder shrink large JPEGs (see :func:`resnest_pl.data.decode.decode_image`).
        replace_unreadable: draw the next readable file in place of an unreadable one.
    """

    def __init__(
        self,
        files: Sequence[str],
        targets: Sequence[int],
        transform: Callable[[np.ndarray], Pixels],
        replace_unreadable: bool = False,
    ) -> None:
        if len(files) != len(targets):
            raise ValueError(f"{len(files)} files but {len(targets)} targets")
        self.files = list(files)
        self.targets = [int(t) for t in targets]
        self.transform = transform
        self.replace_unreadable = replace_unreadable
        self.min_source_side: int | None = getattr(transform, "min_source_side", None)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Sample | Replacement | None:
        image = self.read(index)
        if image is not None:
            return self.sample(image, index), self.targets[index]
        logger.warning("skipping unreadable or corrupt image %s", self.files[index])
        if not self.replace_unreadable:
            return None
        for step in range(1, len(self.files)):
            other = (index + step) % len(self.files)
            image = self.read(other)
            if image is not None:
                return self.sample(image, other), self.targets[other], 1
        raise ValueError(f"none of the {len(self.files)} images of this split can be read, e.g. {self.files[index]}")

    def read(self, index: int) -> Any:
        """File ``index`` as the dataset reads it (here: decoded RGB pixels), or None when it cannot be read."""
        return read_image(self.files[index], self.min_source_side)

    def sample(self, image: Any, index: int) -> Any:
        """What the dataset yields for file ``index`` read as ``image`` (here: the transformed pixels)."""
        return self.transform(image)
