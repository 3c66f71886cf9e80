"""Map-style datasets yielding ``(image tensor, int)`` pairs, or None for an image that cannot be read."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .decode import read_image

logger = logging.getLogger(__name__)

Sample = tuple[torch.Tensor, int]


class ArrayDataset(Dataset):
    """Images held in memory as one ``uint8`` ``(N, H, W, 3)`` array (CIFAR, digits).

    Args:
        images: the images, RGB, channels last.
        targets: class index of each image.
        transform: maps one image array to a tensor.
    """

    def __init__(
        self, images: np.ndarray, targets: Sequence[int], transform: Callable[[np.ndarray], torch.Tensor]
    ) -> None:
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
    """Image files decoded with OpenCV; a file that cannot be read or decoded is logged by path and yields None.

    Args:
        files: image paths.
        targets: an integer per file: its class index, or its position for prediction.
        transform: maps an RGB ``uint8`` array to a tensor; its ``min_source_side`` attribute, when set, lets
            the decoder shrink large JPEGs (see :func:`resnest_pl.data.decode.decode_image`).
    """

    def __init__(
        self, files: Sequence[str], targets: Sequence[int], transform: Callable[[np.ndarray], torch.Tensor]
    ) -> None:
        if len(files) != len(targets):
            raise ValueError(f"{len(files)} files but {len(targets)} targets")
        self.files = list(files)
        self.targets = [int(t) for t in targets]
        self.transform = transform
        self.min_source_side: int | None = getattr(transform, "min_source_side", None)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Sample | None:
        path = self.files[index]
        image = read_image(path, self.min_source_side)
        if image is None:
            logger.warning("skipping unreadable or corrupt image %s", path)
            return None
        return self.transform(image), self.targets[index]
