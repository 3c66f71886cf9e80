"""Batch collation that counts the images a dataset could not read: dropped (None) or replaced."""

from __future__ import annotations

import torch
from torch.utils.data import default_collate

from .datasets import Replacement, Sample


class SkipUnreadable:
    """Collate ``(image, int)`` samples into ``(images, targets, num_skipped)``, dropping None samples.

    ``images`` is ``uint8`` ``(N, 3, H, W)``. ``num_skipped`` is an ``int64`` scalar tensor: the None samples plus
    the ``(image, int, 1)`` replacements of unreadable images (see
    :class:`~resnest_pl.data.datasets.ImageFileDataset`). When every sample of a batch is dropped the images are an
    empty ``(0, *sample_shape)`` tensor. Samples whose image is ``(image, pixel_shift)`` (a training pipeline with
    PCA lighting) give a fourth element, the float32 ``(N, 3)`` shifts. Stacking goes through ``default_collate``,
    which writes a worker's batch straight into shared memory.

    Args:
        sample_shape: ``(C, H, W)`` of one image, for the empty batch.
        count_skipped: append ``num_skipped``; False gives ``(images, ints)`` (prediction batches).
    """

    def __init__(self, sample_shape: tuple[int, int, int], count_skipped: bool = True) -> None:
        self.sample_shape = tuple(sample_shape)
        self.count_skipped = count_skipped

    def __call__(self, samples: list[Sample | Replacement | None]) -> tuple[torch.Tensor, ...]:
        kept = [s[:2] for s in samples if s is not None]
        replaced = sum(len(s) == 3 for s in samples if s is not None)
        shifts: list[torch.Tensor] = []
        if kept:
            images, targets = default_collate(kept)
            if isinstance(images, list):  # (image, pixel_shift) pairs
                images, *shifts = images
        else:
            images = torch.empty((0, *self.sample_shape), dtype=torch.uint8)
            targets = torch.empty(0, dtype=torch.int64)
        if not self.count_skipped:
            return images, targets
        return images, targets, torch.tensor(len(samples) - len(kept) + replaced, dtype=torch.int64), *shifts

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sample_shape={self.sample_shape}, count_skipped={self.count_skipped})"
