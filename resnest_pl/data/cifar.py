"""CIFAR-10 and CIFAR-100, read by torchvision from the official pickle batches and kept in memory."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
from torch.utils.data import Dataset, Subset
from torchvision.datasets import CIFAR10, CIFAR100

from . import transforms
from .datamodule import ImageDataModule, Split
from .datasets import ArrayDataset
from .errors import DatasetNotFoundError
from .split import stratified_split
from .transforms import ImageTransform

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100_CLASSES = [
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
]


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10 (50,000 train / 10,000 test images, 32x32, 10 classes).

    Train: zero-pad 4, random crop 32, horizontal flip, normalise. Val and test: the official test split,
    unless ``val_fraction`` holds out a seeded, stratified part of the training set for val.

    The loader arguments (``batch_size``, ``num_workers``, ``pin_memory``, ``persistent_workers``,
    ``drop_last``, ``predict_paths``) and ``aug_repeats`` are ImageDataModule's and documented there.

    Args:
        root: folder holding ``cifar-10-batches-py`` (``cifar-100-python`` for CIFAR-100).
        download: fetch the archive into ``root`` when it is missing (needs internet).
        val_fraction: share of the training set held out for val; 0 validates on the test split.
        seed: seed of that hold-out split.
    """

    dataset_class: ClassVar[type[CIFAR10]] = CIFAR10
    display_name: ClassVar[str] = "CIFAR-10"
    classes: ClassVar[list[str]] = CIFAR10_CLASSES
    # Per-channel mean and std over all pixels of the training set.
    stats: ClassVar[tuple[tuple[float, float, float], tuple[float, float, float]]] = (
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
    )

    def __init__(
        self,
        root: str = "data",
        download: bool = False,
        val_fraction: float = 0.0,
        seed: int = 0,
        batch_size: int = 128,
        num_workers: int = 4,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        drop_last: bool = True,
        predict_paths: list[str] | str | None = None,
        aug_repeats: int = 1,
    ) -> None:
        super().__init__(batch_size, num_workers, pin_memory, persistent_workers, drop_last, predict_paths, aug_repeats)
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}; 0 validates on the test split")
        self.root = root
        self.download = download
        self.val_fraction = val_fraction
        self.seed = seed
        self.class_names = list(self.classes)
        self.num_classes = len(self.class_names)
        self.crop_size = self.eval_crop_size = 32
        self.crop_pct, self.interpolation = 1.0, "bilinear"  # the images are already at the model's size
        self.mean, self.std = self.stats
        self._arrays: dict[bool, tuple[np.ndarray, list[int]]] = {}

    @property
    def folder(self) -> Path:
        """Where torchvision expects the extracted batches."""
        return Path(self.root) / self.dataset_class.base_folder

    def prepare_data(self) -> None:
        """Download the archive when asked to and it is missing (Lightning runs this once per node)."""
        if not self.download:
            return
        try:
            self.dataset_class(self.root, train=True, download=True)
        except (OSError, RuntimeError) as exc:
            raise DatasetNotFoundError(
                f"could not download {self.display_name} into {self.root} ({type(exc).__name__}: {exc}). "
                f"Without internet, copy the extracted {self.dataset_class.base_folder} folder into {self.root}"
            ) from None

    def _load(self, train: bool) -> tuple[np.ndarray, list[int]]:
        if train not in self._arrays:
            try:
                data = self.dataset_class(self.root, train=train, download=False)
            except RuntimeError:
                raise DatasetNotFoundError(
                    f"{self.display_name} not found in {self.folder} (or its files fail their checksums). Place the "
                    f"extracted {self.dataset_class.base_folder} folder in {self.root}, or set download=True "
                    "(data.download: true) on a machine with internet"
                ) from None
            self._arrays[train] = (data.data, data.targets)
        return self._arrays[train]

    def train_transform(self) -> ImageTransform:
        return transforms.pad_crop_train_transform(32, padding=4, flip=True)

    def eval_transform(self) -> ImageTransform:
        return transforms.eval_transform(32, crop_pct=self.crop_pct, interpolation=self.interpolation)

    def build_dataset(self, split: Split) -> Dataset:
        from_train = split == "train" or (split == "val" and self.val_fraction > 0)
        images, targets = self._load(train=from_train)
        transform = self.train_transform() if split == "train" else self.eval_transform()
        dataset = ArrayDataset(images, targets, transform)
        if not from_train or self.val_fraction == 0:
            return dataset
        train_idx, val_idx = stratified_split(targets, self.val_fraction, self.seed)
        return Subset(dataset, (train_idx if split == "train" else val_idx).tolist())


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100 (50,000 train / 10,000 test images, 32x32, 100 fine-grained classes); see CIFAR10DataModule.

    Its arguments are CIFAR10DataModule's; ``root`` holds ``cifar-100-python``.
    """

    dataset_class = CIFAR100
    display_name = "CIFAR-100"
    classes = CIFAR100_CLASSES
    stats = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
