"""The ImageNet training recipe (crops, augmentations, normalisation, evaluation settings) of the data modules that
read full-size photographs: image folders (and so ImageNet) and shards."""

from __future__ import annotations

from ..eval_settings import warn_if_far
from ..models.eval_config import resolve_eval_settings
from . import transforms
from .datamodule import as_triplet
from .device_decode import check_device_augmentations
from .encoded import DeviceCrop, SeededCrop
from .transforms import AutoAugmentName, ImageTransform, Interpolation


class ImageNetRecipe:
    """The ImageNet recipe's crops, augmentations, normalisation and evaluation settings, and the transforms built
    from them: shared by the data modules that read full-size photographs (folders and shards), whose constructors
    hand their arguments (documented on :class:`ImageFolderDataModule`) to :meth:`set_recipe`."""

    crop_size: int
    eval_crop_size: int
    crop_pct: float
    interpolation: Interpolation

    def set_recipe(
        self,
        *,
        crop_size: int,
        eval_crop_size: int | None,
        crop_pct: float | None,
        interpolation: Interpolation | None,
        auto_augment: AutoAugmentName,
        color_jitter: float,
        lighting: float,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        train_crop_schedule: dict[int, int] | None,
        randaugment_ops: int = transforms.RANDAUGMENT_OPS,
        randaugment_magnitude: int = transforms.RANDAUGMENT_MAGNITUDE,
        decode_on_device: bool = False,
    ) -> None:
        """Check the settings (now rather than at setup) and keep them."""
        transforms.check_auto_augment(auto_augment, randaugment_ops, randaugment_magnitude)
        if decode_on_device:
            check_device_augmentations(auto_augment)
        self.crop_pct = transforms.DEFAULT_CROP_PCT if crop_pct is None else crop_pct
        self.interpolation = "bicubic" if interpolation is None else interpolation
        transforms.eval_resize_size(crop_size, self.crop_pct)
        transforms.eval_interpolation(self.interpolation)
        self.crop_size = crop_size
        self.eval_crop_size = crop_size if eval_crop_size is None else eval_crop_size
        self._eval_requested = {"eval_crop_size": eval_crop_size, "crop_pct": crop_pct, "interpolation": interpolation}
        if eval_crop_size is not None:
            warn_if_far(crop_size, eval_crop_size)
        self.auto_augment = auto_augment
        self.randaugment_ops = randaugment_ops
        self.randaugment_magnitude = randaugment_magnitude
        self.color_jitter = color_jitter
        self.lighting = lighting
        self.mean = as_triplet(mean, "mean")
        self.std = as_triplet(std, "std")
        self.train_crop_schedule = crop_schedule(train_crop_schedule)
        self.decode_on_device = decode_on_device

    def train_transform(self, crop_size: int | None = None) -> ImageTransform | SeededCrop:
        """The training pipeline; with ``decode_on_device``, what the workers hand on instead: the crop the
        device does, and each sample's seed."""
        if self.decode_on_device:
            return SeededCrop(DeviceCrop.recipe(crop_size or self.crop_size, self.color_jitter, self.lighting))
        return transforms.imagenet_train_transform(
            crop_size or self.crop_size,
            self.auto_augment,
            self.color_jitter,
            self.lighting,
            self.randaugment_ops,
            self.randaugment_magnitude,
        )

    def train_transform_schedule(self) -> list[tuple[int, ImageTransform | SeededCrop]]:
        return [(epoch, self.train_transform(crop)) for epoch, crop in self.train_crop_schedule]

    def eval_transform(self) -> ImageTransform:
        return transforms.eval_transform(self.eval_crop_size, self.crop_pct, self.interpolation)

    def use_model_eval_settings(self, model_name: str) -> None:
        """Fill the evaluation settings left at None with ``model_name``'s published rule at ``crop_size``
        (:func:`resnest_pl.models.resolve_eval_config`, the CLI's rule); done at setup for the trainer's
        model, so that a data module built in Python evaluates as the CLI's would."""
        settings = resolve_eval_settings(model_name, self.crop_size, self._eval_requested)
        current = (self.eval_crop_size, self.crop_pct, self.interpolation)
        self.eval_crop_size, self.crop_pct, self.interpolation = (settings[key] for key in settings)
        if (self.eval_crop_size, self.crop_pct, self.interpolation) != current:
            for split in ("val", "test", "predict"):
                self._datasets.pop(split, None)  # built with the previous settings

    def setup(self, stage: str) -> None:
        model = self.trainer.lightning_module if self.trainer is not None else None
        model_name = getattr(model, "hparams", {}).get("model_name")
        if isinstance(model_name, str):
            self.use_model_eval_settings(model_name)
        super().setup(stage)


def crop_schedule(schedule: dict[int, int] | None) -> list[tuple[int, int]]:
    """``{first epoch: crop}`` as sorted pairs, checked."""
    pairs = sorted((int(epoch), int(crop)) for epoch, crop in (schedule or {}).items())
    for epoch, crop in pairs:
        if epoch < 0 or crop < 8:
            raise ValueError(
                f"train_crop_schedule maps a first epoch (>= 0) to a training crop (>= 8 pixels), e.g. "
                f"{{0: 160, 90: 224}}; got {{{epoch}: {crop}}}"
            )
    return pairs
