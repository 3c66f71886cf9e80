"""scikit-learn's handwritten digits as a tiny offline image dataset: the default for quick runs and tests."""

from __future__ import annotations

import cv2
import numpy as np
from sklearn.datasets import load_digits
from torch.utils.data import Dataset

from . import transforms
from .datamodule import ImageDataModule, Split
from .datasets import ArrayDataset
from .split import stratified_split
from .transforms import ImageTransform


def digits_images(image_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as ``uint8`` ``(N, image_size, image_size, 3)`` white-on-black images, and their labels."""
    digits = load_digits()
    scale = 255.0 / 16.0  # the 8x8 images count ink in 0..16
    images = np.stack(
        [cv2.resize(img * scale, (image_size, image_size), interpolation=cv2.INTER_CUBIC) for img in digits.images]
    )
    images = np.clip(np.rint(images), 0, 255).astype(np.uint8)
    return np.repeat(images[..., None], 3, axis=-1), digits.target.astype(np.int64)


class DigitsDataModule(ImageDataModule):
    """Handwritten digits 0-9 from scikit-learn (1,797 images, 10 classes), upscaled to ``image_size`` RGB.

    The data ships inside scikit-learn, so this needs no download and no disk. Images stay in memory as
    arrays; training only shifts them by up to ``max_shift`` pixels (zero padding, random crop), without
    flips since digits are not mirror-symmetric. Val and test are the same seeded, stratified hold-out.
    Normalisation statistics come from the training part.

    The other loader arguments (``batch_size``, ``pin_memory``, ``persistent_workers``, ``drop_last``,
    ``predict_paths``) and ``aug_repeats`` are ImageDataModule's and documented there.

    Args:
        image_size: side of the square images (the 8x8 originals are upscaled bicubically).
        val_fraction: share of each digit held out for val and test.
        seed: seed of that split.
        max_shift: largest random shift, in pixels of ``image_size``, during training.
        num_workers: DataLoader worker processes; 0 (the default) loads in the main process, fastest here.
    """

    def __init__(
        self,
        image_size: int = 32,
        val_fraction: float = 0.2,
        seed: int = 0,
        max_shift: int = 2,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        drop_last: bool = True,
        predict_paths: list[str] | str | None = None,
        aug_repeats: int = 1,
    ) -> None:
        super().__init__(batch_size, num_workers, pin_memory, persistent_workers, drop_last, predict_paths, aug_repeats)
        if image_size < 8:
            raise ValueError(f"image_size must be at least 8 (the digits are 8x8), got {image_size}")
        if max_shift < 0:
            raise ValueError(f"max_shift must be 0 or more pixels, got {max_shift}")
        self.image_size = image_size
        self.val_fraction = val_fraction
        self.seed = seed
        self.max_shift = max_shift
        self.class_names = [str(d) for d in range(10)]
        self.num_classes = 10
        self.crop_size = self.eval_crop_size = image_size
        self.crop_pct, self.interpolation = 1.0, "bilinear"  # the images are already at the model's size
        self.images, self.targets = digits_images(image_size)
        self.train_indices, self.val_indices = stratified_split(self.targets, val_fraction, seed)
        pixels = self.images[self.train_indices, ..., 0] / 255.0
        mean, std = float(pixels.mean()), float(pixels.std())
        self.mean, self.std = (mean, mean, mean), (std, std, std)

    def train_transform(self) -> ImageTransform:
        return transforms.pad_crop_train_transform(self.image_size, padding=self.max_shift, flip=False)

    def eval_transform(self) -> ImageTransform:
        return transforms.eval_transform(self.image_size, crop_pct=self.crop_pct, interpolation=self.interpolation)

    def build_dataset(self, split: Split) -> Dataset:
        indices = self.train_indices if split == "train" else self.val_indices
        transform = self.train_transform() if split == "train" else self.eval_transform()
        return ArrayDataset(self.images[indices], self.targets[indices], transform)
