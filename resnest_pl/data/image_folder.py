"""Any image-classification folder: ``train/`` + ``val/`` (+ ``test/``) class trees, or one tree split by seed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from torch.utils.data import Dataset

from . import transforms
from .datamodule import ImageDataModule, Split
from .datasets import ImageFileDataset
from .device_decode import check_decode_device
from .encoded import EncodedFileDataset, SeededCrop, collate_encoded
from .errors import DataLayoutError, DatasetNotFoundError
from .recipe import ImageNetRecipe
from .scan import list_classes, scan_class_folders
from .split import stratified_split
from .transforms import IMAGENET_MEAN, IMAGENET_STD, AutoAugmentName, Interpolation

_LAYOUTS = "<root>/train/<class>/*.jpg with <root>/val/<class>/*.jpg (and optionally test/), or <root>/<class>/*.jpg"


class ImageFolderDataModule(ImageNetRecipe, ImageDataModule):
    """Images sorted into one folder per class, with the ImageNet training recipe.

    Layouts: ``root/train/<class>/`` and ``root/val/<class>/`` (optionally ``root/test/<class>/``, else test
    is val); ``root/train/`` alone or ``root/<class>/`` alone, split into train and val by a seeded, stratified
    ``val_fraction``. Class folders may nest sub-folders; class indices follow the sorted training folder names.

    The loader arguments (``batch_size``, ``num_workers``, ``pin_memory``, ``persistent_workers``,
    ``drop_last``, ``predict_paths``) and ``aug_repeats`` are ImageDataModule's and documented there.

    Args:
        root: the dataset folder.
        val_fraction: share of each class held out for val when there is no ``val/`` folder.
        seed: seed of that split.
        crop_size: training crop.
        eval_crop_size: val / test / predict crop. Evaluating larger than training is common (ResNeSt-101:
            224 / 256).
        crop_pct: evaluation keeps the centre ``crop_pct`` of the shorter side: it resizes that side to
            ``eval_crop_size / crop_pct`` and centre-crops ``eval_crop_size``.
        interpolation: "bicubic" or "bilinear", for the evaluation resize.
        auto_augment: "autoaugment" (ImageNet policy), "randaugment", "trivialaugment" (TrivialAugmentWide) or
            "none", applied before the random crop. Training resizes as the recipe does (bicubic from 320 pixels,
            else bilinear).
        randaugment_ops: RandAugment's operations per image (with ``auto_augment: randaugment`` only).
        randaugment_magnitude: RandAugment's strength, 0-30 on torchvision's scale (timm's ``rand-m9-n2`` counts
            0-10: about ``randaugment_magnitude: 27, randaugment_ops: 2``).
        color_jitter: brightness, contrast and saturation jitter; 0 disables.
        lighting: standard deviation of the PCA lighting noise; 0 disables.
        mean: per-channel normalisation mean (RGB, 0-1 scale), applied on the device by the module.
        std: per-channel normalisation std.
        train_crop_schedule: progressive resizing, ``{first epoch: training crop}``, e.g. ``{0: 160, 90: 192,
            180: 224}``: smaller, cheaper images early, as FFCV's and timm's fast recipes do. Epochs before the
            first key train at ``crop_size``; evaluation stays at ``eval_crop_size``. A resumed run picks the
            crop of its epoch.
        decode_on_device: training on a CUDA GPU only: the loader workers just read the files, and the GPU
            decodes the JPEGs (nvJPEG, batched) and does the random-resized crop, flip, colour jitter and PCA
            lighting, each drawn from the image's own seed as on the CPU (:mod:`resnest_pl.data.device_decode`).
            For loaders that cannot keep up with the GPU; refused on the CPU and with ``auto_augment`` (which
            runs on the CPU, before the crop). Val, test and predict decode on the CPU as usual.

    The three evaluation settings default to None: the model's published rule at ``crop_size``
    (:mod:`resnest_pl.models.eval_config`: the published ratio of eval to train crop, crop_pct rule and interpolation;
    at the published training crop, how its top-1 was measured). The CLI fills them from ``model.model_name``;
    built in Python, they are filled at setup from the trainer's model, and mean ``crop_size``, 0.875 and bicubic
    until then.
    """

    def __init__(
        self,
        root: str,
        val_fraction: float = 0.2,
        seed: int = 0,
        crop_size: int = 224,
        eval_crop_size: int | None = None,
        crop_pct: float | None = None,
        interpolation: Interpolation | None = None,
        auto_augment: AutoAugmentName = "none",
        color_jitter: float = 0.4,
        lighting: float = 0.1,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        train_crop_schedule: dict[int, int] | None = None,
        randaugment_ops: int = transforms.RANDAUGMENT_OPS,
        randaugment_magnitude: int = transforms.RANDAUGMENT_MAGNITUDE,
        aug_repeats: int = 1,
        decode_on_device: bool = False,
        batch_size: int = 64,
        num_workers: int = 4,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        drop_last: bool = True,
        predict_paths: list[str] | str | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers, pin_memory, persistent_workers, drop_last, predict_paths, aug_repeats)
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.set_recipe(
            crop_size=crop_size,
            eval_crop_size=eval_crop_size,
            crop_pct=crop_pct,
            interpolation=interpolation,
            auto_augment=auto_augment,
            color_jitter=color_jitter,
            lighting=lighting,
            mean=mean,
            std=std,
            train_crop_schedule=train_crop_schedule,
            randaugment_ops=randaugment_ops,
            randaugment_magnitude=randaugment_magnitude,
            decode_on_device=decode_on_device,
        )
        self.root = Path(root)
        self.val_fraction = val_fraction
        self.seed = seed
        self.train_dir, self.val_dir, self.test_dir = self.locate(self.root)
        class_dir = self.train_dir or self.val_dir
        assert class_dir is not None  # locate() guarantees one of them
        self.class_names = list_classes(class_dir, self.flat_hint(class_dir))
        self.num_classes = len(self.class_names)
        if self.val_dir is not None and self.val_dir != class_dir:
            list_classes(self.val_dir, self.flat_hint(self.val_dir))  # a flat val/ fails now, not after an epoch
        self._split: dict[str, tuple[list[str], list[int]]] = {}

    def locate(self, root: Path) -> tuple[Path | None, Path | None, Path | None]:
        """``(train_dir, val_dir, test_dir)`` of this layout; at least one of the first two is set."""
        if not root.is_dir():
            raise DatasetNotFoundError(f"data root {root} does not exist; expected {_LAYOUTS}")
        train, val, test = (root / name for name in ("train", "val", "test"))
        if val.is_dir() and not train.is_dir():
            raise DataLayoutError(f"{root} has val/ but no train/ folder; expected {_LAYOUTS}")
        if not train.is_dir():
            return root, None, None
        return train, val if val.is_dir() else None, test if test.is_dir() else None

    def flat_hint(self, folder: Path) -> str:
        """How to fix ``folder`` when it holds images directly instead of class folders."""
        return "move them into one sub-folder per class"

    def files(self, split: Split) -> tuple[list[str], list[int]]:
        """Image paths and class indices of ``split``."""
        if split == "test" and self.test_dir is not None:
            return scan_class_folders(self.test_dir, self.class_names, self.flat_hint(self.test_dir))
        if split == "test":
            split = "val"
        if self.val_dir is not None:
            folder = self.train_dir if split == "train" else self.val_dir
            assert folder is not None
            return scan_class_folders(folder, self.class_names, self.flat_hint(folder))
        return self._held_out(split)

    def _held_out(self, split: Split) -> tuple[list[str], list[int]]:
        assert self.train_dir is not None  # without val/, locate() always gives a training folder
        if self.val_fraction == 0:
            if split == "train":
                return scan_class_folders(self.train_dir, self.class_names, self.flat_hint(self.train_dir))
            raise DatasetNotFoundError(
                f"no val folder in {self.root} and val_fraction is 0; add {self.root}/val/<class>/ folders "
                "or set val_fraction (e.g. 0.2) to hold out part of the training images"
            )
        if not self._split:
            files, targets = scan_class_folders(self.train_dir, self.class_names, self.flat_hint(self.train_dir))
            train_idx, val_idx = stratified_split(targets, self.val_fraction, self.seed)
            for name, idx in (("train", train_idx), ("val", val_idx)):
                self._split[name] = ([files[i] for i in idx], [targets[i] for i in idx])
        return self._split[split]

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.decode_on_device and self.trainer is not None:
            check_decode_device(self.trainer.strategy.root_device)
        super().setup(stage)

    def collate_for(self, split: Split | Literal["predict"], crop: int) -> Callable[[list[Any]], Any]:
        if split == "train" and self.decode_on_device:
            return collate_encoded
        return super().collate_for(split, crop)

    def build_dataset(self, split: Split) -> Dataset:
        files, targets = self.files(split)
        transform = self.train_transform() if split == "train" else self.eval_transform()
        if isinstance(transform, SeededCrop):  # decode_on_device: the workers read the files, the device decodes
            return EncodedFileDataset(files, targets, transform)
        # Training batches keep their size (an empty one would stall DDP); evaluation sees each readable image once.
        return ImageFileDataset(files, targets, transform, replace_unreadable=split == "train")
