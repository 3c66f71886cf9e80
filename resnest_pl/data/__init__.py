"""Data modules, datasets and transforms for image classification.

Every train / val / test batch is ``(images, targets, num_skipped)`` and every predict batch
``(images, indices)``, with ``uint8`` images that :func:`normalize` turns into the model's float input on the
device; see :class:`ImageDataModule`.
"""

from .cifar import CIFAR10DataModule, CIFAR100DataModule
from .collate import SkipUnreadable
from .datamodule import ImageDataModule
from .datasets import ArrayDataset, ImageFileDataset
from .decode import decode_image, read_image
from .digits import DigitsDataModule
from .errors import DataLayoutError, DatasetNotFoundError
from .image_folder import ImageFolderDataModule
from .imagenet import ImageNetDataModule
from .scan import IMAGE_EXTENSIONS, find_images, scan_class_folders
from .shards.datamodule import ShardedDataModule
from .shards.write import convert as convert_to_shards
from .split import stratified_split
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageTransform,
    eval_transform,
    imagenet_train_transform,
    normalize,
    pad_crop_train_transform,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "ArrayDataset",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "DataLayoutError",
    "DatasetNotFoundError",
    "DigitsDataModule",
    "ImageDataModule",
    "ImageFileDataset",
    "ImageFolderDataModule",
    "ImageNetDataModule",
    "ImageTransform",
    "ShardedDataModule",
    "SkipUnreadable",
    "convert_to_shards",
    "decode_image",
    "eval_transform",
    "find_images",
    "imagenet_train_transform",
    "normalize",
    "pad_crop_train_transform",
    "read_image",
    "scan_class_folders",
    "stratified_split",
]
