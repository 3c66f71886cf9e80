"""Albumentations pipelines: ImageNet-recipe training, resize + centre-crop evaluation, pad-and-crop for small images.

Every pipeline maps an RGB ``uint8`` ``(H, W, 3)`` array to a ``uint8`` ``(3, h, w)`` tensor: loaders ship raw
pixels, a quarter of float32's bytes through pinned memory and the host-to-device copy. The conversion to float
and the normalisation happen on the device, batched (:func:`normalize`, called by
``ImageDataModule.on_after_batch_transfer``); so does the PCA lighting noise, which a ``uint8`` image cannot
hold (it is a fraction of a grey level to a dozen, of either sign, and must not be clipped at 0 or 255): the
pipeline only draws it, and :class:`ImageTransform` returns it with the image as a per-image RGB offset.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, get_args

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from torchvision.transforms import v2

from ..models.eval_config import IMAGENET_MEAN as IMAGENET_MEAN  # re-exported: the normalisation's one home
from ..models.eval_config import IMAGENET_STD as IMAGENET_STD

AutoAugmentName = Literal["none", "autoaugment", "randaugment", "trivialaugment"]
AUTO_AUGMENT_NAMES: tuple[str, ...] = get_args(AutoAugmentName)
Interpolation = Literal["bilinear", "bicubic"]
EVAL_INTERPOLATIONS: dict[str, int] = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}
DEFAULT_CROP_PCT = 0.875

# Principal components of ImageNet's RGB pixels (AlexNet's lighting noise, as in the ResNeSt training scripts).
IMAGENET_PCA_EIGVAL = np.array([0.2175, 0.0188, 0.0045])
IMAGENET_PCA_EIGVEC = np.array(
    [
        [-0.5675, 0.7192, 0.4009],
        [-0.5808, -0.0045, -0.8140],
        [-0.5836, -0.6948, 0.4203],
    ]
)
CROP_RATIO = (3 / 4, 4 / 3)  # aspect-ratio range of the training crop
BICUBIC_FROM = 320  # the recipe switches to bicubic resizing (and an EfficientNet-style crop) from this crop size
RANDAUGMENT_OPS = 2
RANDAUGMENT_MAGNITUDE = 12  # of 30, as in the authors' later PyTorch recipe
RANDAUGMENT_MAX_MAGNITUDE = 30  # torchvision's scale: 31 magnitude bins, 0-30 (timm's 'rand-mM' counts 0-10)


def crop_scale(crop_size: int) -> tuple[float, float]:
    """Area range of the training crop: 10-100 % from 320 pixels (the EfficientNet-style crop), 8-100 % below."""
    return (0.1, 1.0) if crop_size >= BICUBIC_FROM else (0.08, 1.0)


def interpolation_for(crop_size: int) -> int:
    """OpenCV interpolation of the training crop: bicubic from 320 pixels, bilinear below (the recipe's)."""
    return cv2.INTER_CUBIC if crop_size >= BICUBIC_FROM else cv2.INTER_LINEAR


def eval_resize_size(crop_size: int, crop_pct: float) -> int:
    """Shorter side before the centre crop: ``crop_size / crop_pct`` rounded down (224 at 0.875 -> 256).

    Rounded to 6 decimals first, so that an exact ``crop / (crop + 32)`` gives back ``crop + 32``.
    """
    if not 0 < crop_pct <= 1:
        raise ValueError(
            f"crop_pct must be in (0, 1], got {crop_pct}; it is the share of the shorter side kept by the "
            "evaluation centre crop (0.875 is the usual ImageNet value)"
        )
    return math.floor(round(crop_size / crop_pct, 6))


def eval_interpolation(name: Interpolation) -> int:
    """OpenCV flag of an interpolation named as in timm (``"bilinear"``, ``"bicubic"``)."""
    if name not in EVAL_INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(map(repr, EVAL_INTERPOLATIONS))}, got {name!r}")
    return EVAL_INTERPOLATIONS[name]


def _process_seed() -> int:
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if distributed else 0
    return int(np.random.SeedSequence([torch.initial_seed(), rank]).generate_state(1)[0])


def normalize(
    images: torch.Tensor,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
    pixel_shift: torch.Tensor | None = None,
) -> torch.Tensor:
    """``uint8`` ``(N, 3, H, W)`` images as float32 ``(images / 255 + pixel_shift - mean) / std``, on their device.

    Args:
        images: RGB pixels in 0..255, as the data modules' loaders yield them.
        mean: per-channel mean, in 0-1 pixel units. Pass a tensor already on the images' device in a training
            loop: building one from a list copies it from pageable memory, which waits for the GPU's stream.
        std: per-channel standard deviation, in 0-1 pixel units (the same).
        pixel_shift: float ``(N, 3)`` per-image RGB offsets in 0-1 pixel units (the PCA lighting noise of a
            training batch, see :class:`PCALighting`), or None.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"normalize expects uint8 images (the loaders' pixels), got {images.dtype}")
    device = images.device
    std_t = torch.as_tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    offset = -torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    if pixel_shift is not None:
        offset = offset + pixel_shift.to(device=device, dtype=torch.float32).view(-1, 3, 1, 1)
    # One multiply-add over the pixels: x * (1 / (255 std)) + (shift - mean) / std.
    return torch.addcmul(offset / std_t, images.float(), 1.0 / (255.0 * std_t))


class ImageTransform:
    """An albumentations pipeline as a callable ``uint8 (H, W, 3) array -> uint8 (3, h, w) tensor``.

    With a :class:`PCALighting` step the call returns ``(image, pixel_shift)`` instead: the lighting noise it drew,
    a float32 ``(3,)`` RGB offset in 0-1 pixel units, for :func:`normalize` to add on the device.

    Albumentations draws from its own generator, not torch's. DataLoader workers inherit that generator in one
    state, so every worker (and, without persistent workers, every epoch) would replay the same augmentations.
    The pipeline is therefore reseeded from torch's seed (and the distributed rank) on its first call in each
    process: torch seeds every worker differently, each epoch, and ``seed_everything`` sets the main process's
    seed, so runs with ``num_workers=0`` reproduce their augmentations.

    Args:
        pipeline: the albumentations pipeline, ending in ``ToTensorV2``.
        min_source_side: the shortest image side the pipeline needs at full quality; the decoder may shrink
            larger JPEGs down to it (see :func:`resnest_pl.data.decode.decode_image`). None: never shrink.
    """

    def __init__(self, pipeline: A.Compose, min_source_side: int | None = None) -> None:
        self.pipeline = pipeline
        self.min_source_side = min_source_side
        self._lighting = next((t for t in pipeline.transforms if isinstance(t, PCALighting)), None)
        self._seeded_from: int | None = None
        self._next_seed: int | None = None

    def reseed(self, seed: int) -> None:
        """Draw the next call's augmentations from ``seed`` alone, whatever the process or its history.

        A resumable training loader seeds every sample from (run seed, epoch, index), so a run resumed
        mid-epoch, or one with another number of workers, augments each image exactly as before.
        """
        self._next_seed = seed
        self._seeded_from = torch.initial_seed()  # the per-process reseeding below must not override it
        self.pipeline.set_random_seed(seed)

    def __call__(self, image: np.ndarray) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self._next_seed is not None:
            seed, self._next_seed = self._next_seed, None
            # Torchvision's AutoAugment / RandAugment draw from torch's global generator: seed a fork of it,
            # so the caller's stream (dropout, DropBlock in a num_workers=0 run) is left untouched.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return self._run(image)
        torch_seed = torch.initial_seed()
        if torch_seed != self._seeded_from:
            self._seeded_from = torch_seed
            self.pipeline.set_random_seed(_process_seed())
        return self._run(image)

    def _run(self, image: np.ndarray) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        out = self.pipeline(image=image)["image"]
        if self._lighting is None:
            return out
        return out, self._lighting.pixel_shift()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.pipeline!r}, min_source_side={self.min_source_side})"


class TorchvisionAugment(A.ImageOnlyTransform):
    """Run a torchvision ``uint8`` tensor augmentation (AutoAugment, RandAugment, TrivialAugmentWide) inside an
    albumentations pipeline.

    Albumentations has no AutoAugment ImageNet policy; torchvision's implementation is reused on a CHW view of
    the array. It draws from torch's generator, which DataLoader seeds per worker.
    """

    def __init__(self, augment: Callable[[torch.Tensor], torch.Tensor], p: float = 1.0) -> None:
        super().__init__(p=p)
        self.augment = augment

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        out = self.augment(torch.from_numpy(img).permute(2, 0, 1))
        return out.permute(1, 2, 0).contiguous().numpy()


class PCALighting(A.ImageOnlyTransform):
    """AlexNet-style PCA lighting noise: one RGB shift along ImageNet's principal components, per image.

    Not albumentations' ``FancyPCA``: that one recomputes a PCA of each image and scales every pixel's deviation
    from the image mean (a different augmentation from the recipe's, and ~7 ms per 224-pixel image); this adds
    ``eigvec @ (alpha * eigval)``, ``alpha ~ N(0, alpha_std)``, in ``[0, 1]`` pixel units, as the recipe does.

    The step only draws ``alpha`` (from the pipeline's generator, so it is seeded per sample like every other
    augmentation) and leaves the ``uint8`` image as it is; :class:`ImageTransform` returns the shift with the
    image and :func:`normalize` adds it on the device, unrounded and unclipped, as the recipe's float pipeline did.

    Args:
        alpha_std: standard deviation of the per-component weights (0.1 in the recipe).
    """

    def __init__(self, alpha_std: float = 0.1, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.alpha_std = alpha_std

    def get_params(self) -> dict[str, Any]:
        return {"alpha": self.random_generator.normal(0.0, self.alpha_std, size=3)}

    def apply(self, img: np.ndarray, alpha: np.ndarray, **params: Any) -> np.ndarray:
        return img

    def pixel_shift(self) -> torch.Tensor:
        """The RGB offset of the image this step saw last (zero when it was not applied)."""
        alpha = self.params.get("alpha")
        if alpha is None:
            return torch.zeros(3, dtype=torch.float32)
        return torch.tensor(IMAGENET_PCA_EIGVEC @ (alpha * IMAGENET_PCA_EIGVAL), dtype=torch.float32)


def check_auto_augment(name: str, randaugment_ops: int, randaugment_magnitude: int) -> None:
    """Refuse an unknown policy or RandAugment settings torchvision's ``RandAugment`` cannot run."""
    if name not in AUTO_AUGMENT_NAMES:
        raise ValueError(f"auto_augment must be one of {', '.join(map(repr, AUTO_AUGMENT_NAMES))}, got {name!r}")
    if randaugment_ops < 1:
        raise ValueError(
            f"randaugment_ops must be at least 1 (ops per image), got {randaugment_ops}; "
            "to turn the policy off set auto_augment none"
        )
    if not 0 <= randaugment_magnitude <= RANDAUGMENT_MAX_MAGNITUDE:
        raise ValueError(
            f"randaugment_magnitude must lie in 0..{RANDAUGMENT_MAX_MAGNITUDE} (torchvision's scale; timm's "
            f"'rand-m9' is about 27), got {randaugment_magnitude}"
        )


def _auto_augment(
    name: AutoAugmentName,
    randaugment_ops: int = RANDAUGMENT_OPS,
    randaugment_magnitude: int = RANDAUGMENT_MAGNITUDE,
) -> list[A.BasicTransform]:
    check_auto_augment(name, randaugment_ops, randaugment_magnitude)
    # Bilinear rather than torchvision's default nearest for the geometric ops: closer to the bicubic the
    # reference policy uses (tensor affine warps offer nearest and bilinear only).
    bilinear = v2.InterpolationMode.BILINEAR
    if name == "autoaugment":
        augment: v2.Transform = v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, interpolation=bilinear)
    elif name == "randaugment":
        augment = v2.RandAugment(num_ops=randaugment_ops, magnitude=randaugment_magnitude, interpolation=bilinear)
    elif name == "trivialaugment":
        augment = v2.TrivialAugmentWide(interpolation=bilinear)
    else:
        return []
    return [TorchvisionAugment(augment)]


def imagenet_train_transform(
    crop_size: int = 224,
    auto_augment: AutoAugmentName = "none",
    color_jitter: float = 0.4,
    lighting: float = 0.1,
    randaugment_ops: int = RANDAUGMENT_OPS,
    randaugment_magnitude: int = RANDAUGMENT_MAGNITUDE,
) -> ImageTransform:
    """The ResNeSt ImageNet training pipeline.

    [AutoAugment | RandAugment (``randaugment_ops`` ops of ``randaugment_magnitude``, of 30) | TrivialAugmentWide,
    on the full image] -> random-resized crop -> horizontal flip -> colour jitter
    (brightness, contrast, saturation) -> ``uint8`` tensor [+ the PCA lighting shift, added on the device after
    normalisation by :func:`normalize`]. Below 320 pixels the crop covers
    8-100 % of the image area with bilinear resizing; from 320 it is the recipe's EfficientNet-style crop, 10-100 %
    of the area with bicubic resizing (approximated by the same random-resized crop: the TF sampler draws the
    height rather than the area, a difference of no consequence here). Downscaling always uses area averaging,
    which like PIL's filters does not alias.
    """
    scale, ratio = crop_scale(crop_size), CROP_RATIO
    steps: list[A.BasicTransform] = [
        *_auto_augment(auto_augment, randaugment_ops, randaugment_magnitude),
        A.RandomResizedCrop(
            size=(crop_size, crop_size),
            scale=scale,
            ratio=ratio,
            interpolation=interpolation_for(crop_size),
            area_for_downscale="image",
        ),
        A.HorizontalFlip(p=0.5),
    ]
    if color_jitter > 0:
        jitter = color_jitter
        steps.append(A.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=0.0, p=1.0))
    if lighting > 0:
        steps.append(PCALighting(alpha_std=lighting))
    steps.append(ToTensorV2())
    # The smallest crop window has a side of at least short_side * sqrt(scale_min * 3/4); it must keep crop_size
    # pixels after a reduced decode.
    min_source_side = math.ceil(crop_size / math.sqrt(scale[0] * ratio[0]))
    return ImageTransform(A.Compose(steps), min_source_side=min_source_side)


def eval_transform(
    crop_size: int = 224,
    crop_pct: float = DEFAULT_CROP_PCT,
    interpolation: Interpolation = "bicubic",
) -> ImageTransform:
    """Resize the shorter side to ``crop_size / crop_pct``, centre-crop ``crop_size`` (normalised on the device).

    The same field of view as the official ResNeSt evaluation, which crops the centre ``crop_pct`` of the
    shorter side first and resizes it to ``crop_size`` afterwards. ``interpolation`` applies when enlarging;
    shrinking averages areas, which like PIL's filters does not alias. ``crop_pct=1`` just resizes the shorter
    side to ``crop_size`` (for images already at the model's size it changes nothing).
    """
    resize = eval_resize_size(crop_size, crop_pct)
    steps = [
        A.SmallestMaxSize(max_size=resize, interpolation=eval_interpolation(interpolation), area_for_downscale="image"),
        A.CenterCrop(height=crop_size, width=crop_size),
        ToTensorV2(),
    ]
    return ImageTransform(A.Compose(steps), min_source_side=resize)


def pad_crop_train_transform(
    size: int = 32,
    padding: int = 4,
    flip: bool = True,
) -> ImageTransform:
    """Small-image training (CIFAR, digits) on images already ``size`` pixels square.

    Zero-pad by ``padding``, random crop ``size`` (a shift of up to ``padding`` pixels), optional flip (normalised on
    the device).
    """
    steps: list[A.BasicTransform] = [
        A.Pad(padding=padding, fill=0, border_mode=cv2.BORDER_CONSTANT),
        A.RandomCrop(height=size, width=size),
    ]
    if flip:
        steps.append(A.HorizontalFlip(p=0.5))
    steps.append(ToTensorV2())
    return ImageTransform(A.Compose(steps))
