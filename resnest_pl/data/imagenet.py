"""ImageNet (ILSVRC-2012) from its class folders, with the ResNeSt training recipe."""

from __future__ import annotations

from pathlib import Path

from .datamodule import Split
from .errors import DatasetNotFoundError
from .image_folder import ImageFolderDataModule
from .scan import scan_class_folders
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RANDAUGMENT_MAGNITUDE,
    RANDAUGMENT_OPS,
    AutoAugmentName,
    Interpolation,
)

VALPREP_URL = "https://raw.githubusercontent.com/soumith/imagenetloader.torch/master/valprep.sh"
_LAYOUT = "<root>/train/<wnid>/*.JPEG and <root>/val/<wnid>/*.JPEG (e.g. train/n01440764/n01440764_10026.JPEG)"


class ImageNetDataModule(ImageFolderDataModule):
    """ImageNet-1k: ``root/train/<wnid>/*.JPEG`` and ``root/val/<wnid>/*.JPEG``; test is val (test labels are private).

    Classes are the sorted wnid folders of ``train/`` (of ``val/`` when only it is there, e.g. to evaluate
    published weights). Training follows the paper: random-resized crop (EfficientNet-style and bicubic from 320
    pixels), flip, colour jitter 0.4, PCA lighting 0.1, optional AutoAugment / RandAugment / TrivialAugment before
    the crop.
    Evaluation resizes the shorter side to ``eval_crop_size / crop_pct`` and centre-crops; the paper evaluates
    larger than it trains: ResNeSt-101 224 / 256, -200 256 / 320, -269 320 / 416, each with crop_pct
    ``crop / (crop + 32)`` and bicubic resizing (through the CLI these are the model's by default).

    The crop, augmentation and loader arguments are ImageFolderDataModule's and documented there; this
    module fixes the ImageNet mean, std and train/val split, and defaults to 8 loader workers.

    Args:
        root: folder holding ``train/`` and ``val/``.
    """

    def __init__(
        self,
        root: str,
        crop_size: int = 224,
        eval_crop_size: int | None = None,
        crop_pct: float | None = None,
        interpolation: Interpolation | None = None,
        auto_augment: AutoAugmentName = "none",
        color_jitter: float = 0.4,
        lighting: float = 0.1,
        train_crop_schedule: dict[int, int] | None = None,
        randaugment_ops: int = RANDAUGMENT_OPS,
        randaugment_magnitude: int = RANDAUGMENT_MAGNITUDE,
        aug_repeats: int = 1,
        decode_on_device: bool = False,
        batch_size: int = 64,
        num_workers: int = 8,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        drop_last: bool = True,
        predict_paths: list[str] | str | None = None,
    ) -> None:
        super().__init__(
            root,
            val_fraction=0.0,
            crop_size=crop_size,
            eval_crop_size=eval_crop_size,
            crop_pct=crop_pct,
            interpolation=interpolation,
            auto_augment=auto_augment,
            color_jitter=color_jitter,
            lighting=lighting,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            train_crop_schedule=train_crop_schedule,
            randaugment_ops=randaugment_ops,
            randaugment_magnitude=randaugment_magnitude,
            aug_repeats=aug_repeats,
            decode_on_device=decode_on_device,
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
            drop_last=drop_last,
            predict_paths=predict_paths,
        )

    def locate(self, root: Path) -> tuple[Path | None, Path | None, Path | None]:
        train, val = root / "train", root / "val"
        if not train.is_dir() and not val.is_dir():
            missing = "does not exist" if not root.is_dir() else "has neither train/ nor val/"
            raise DatasetNotFoundError(f"ImageNet not found: {root} {missing}; expected {_LAYOUT}")
        return (train if train.is_dir() else None), (val if val.is_dir() else None), None

    def flat_hint(self, folder: Path) -> str:
        if folder.name == "val":
            return (
                "that is the raw ILSVRC2012 val download. Sort it into one folder per class (wnid), e.g. by "
                f"running the well-known valprep.sh ({VALPREP_URL}) inside {folder}"
            )
        return f"extract each class archive of ILSVRC2012_img_train.tar into {folder}/<wnid>/"

    def files(self, split: Split) -> tuple[list[str], list[int]]:
        name = "train" if split == "train" else "val"
        folder = self.train_dir if split == "train" else self.val_dir
        if folder is None:
            raise DatasetNotFoundError(f"ImageNet {name} folder {self.root / name} does not exist; expected {_LAYOUT}")
        return scan_class_folders(folder, self.class_names, self.flat_hint(folder))
