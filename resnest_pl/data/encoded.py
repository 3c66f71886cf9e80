"""Training samples read as file bytes by the loader workers, for decoding and cropping on the device
(``decode_on_device``; the device side is :mod:`resnest_pl.data.device_decode`).

A worker reads each file and passes an upright JPEG on as its bytes; anything else (PNG, BMP, ..., and a JPEG
whose EXIF orientation tag asks for a rotation or a mirror, which nvJPEG would ignore) it decodes itself with
OpenCV, as the CPU pipeline does, and passes on as pixels, so the device only ever decodes upright JPEGs. A file
that cannot be read, or that is no image OpenCV can decode, is replaced by the next readable file as
:class:`ImageFileDataset` does.
A file that starts as a JPEG but does not decode is found on the device (see ``decode_batch``).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .datasets import ImageFileDataset
from .decode import decode_image
from .transforms import CROP_RATIO, crop_scale

logger = logging.getLogger(__name__)

JPEG_START = b"\xff\xd8\xff"  # start-of-image marker and the first segment's
EXIF_ORIENTATION = 0x0112  # the EXIF tag; 1 is upright, 2-8 a mirror and/or a rotation


@dataclass(frozen=True)
class DeviceCrop:
    """The training augmentations done on the device: the ImageNet recipe's random-resized crop to ``size``
    (area ``scale``, aspect ratio ``ratio``), a horizontal flip with probability 1/2, brightness, contrast and
    saturation jitter of strength ``color_jitter`` and PCA lighting noise of standard deviation ``lighting``
    (0: none)."""

    size: int
    scale: tuple[float, float]
    ratio: tuple[float, float]
    color_jitter: float
    lighting: float

    @classmethod
    def recipe(cls, size: int, color_jitter: float, lighting: float) -> DeviceCrop:
        """The recipe's augmentations at ``size`` pixels (the crop's area range grows from 320 pixels, as on the
        CPU)."""
        return cls(size, crop_scale(size), CROP_RATIO, color_jitter, lighting)


class SeededCrop:
    """The training "transform" of an :class:`EncodedFileDataset`: the crop of the current epoch and the seed of
    the next sample, set by :class:`~resnest_pl.data.resumable.SeededSamples` (``reseed``) as for a CPU
    transform; the sample carries both to the device, which draws the crop from the seed."""

    min_source_side = None  # nothing is decoded here at a reduced size

    def __init__(self, crop: DeviceCrop) -> None:
        self.crop = crop
        self.seed = 0

    def reseed(self, seed: int) -> None:
        self.seed = seed


class EncodedImage(NamedTuple):
    """One training image as a worker passes it on: ``data`` 1-D ``uint8`` JPEG bytes, or ``uint8`` ``(3, H, W)``
    pixels of a file the worker decoded; the seed of its augmentations, the crop, and its path (for logging)."""

    data: torch.Tensor
    seed: int
    crop: DeviceCrop
    path: str


class EncodedImages:
    """A training batch's images before decoding: the JPEGs' bytes end to end in one ``uint8`` tensor (one
    shared-memory block from a worker rather than one per image), the pixels of the other files by position,
    and every image's seed and path; all images of a batch share one crop (one epoch).

    Deliberately neither a tensor, a sequence nor anything with a ``to`` method: Lightning's transfer of the
    batch to the device (``move_data_to_device``) leaves such an object where it is, and ``decode_jpeg`` wants
    its input on the host whatever device it decodes on.
    """

    __slots__ = ("crop", "jpeg_bytes", "jpeg_lengths", "paths", "pixels", "seeds")

    def __init__(self, images: Sequence[EncodedImage]) -> None:
        if not images:
            raise ValueError("an empty training batch")
        self.crop = images[0].crop
        self.seeds = [image.seed for image in images]
        self.paths = [image.path for image in images]
        self.pixels = {i: image.data for i, image in enumerate(images) if image.data.ndim == 3}
        jpegs = [image.data for image in images if image.data.ndim == 1]
        self.jpeg_lengths = [len(data) for data in jpegs]
        self.jpeg_bytes = torch.cat(jpegs) if jpegs else torch.empty(0, dtype=torch.uint8)

    def __len__(self) -> int:
        return len(self.seeds)

    def jpegs(self) -> dict[int, torch.Tensor]:
        """Position in the batch -> that JPEG's bytes (views of the one tensor)."""
        positions = [i for i in range(len(self)) if i not in self.pixels]
        return dict(zip(positions, torch.split(self.jpeg_bytes, self.jpeg_lengths), strict=True))


def exif_orientation(jpeg: np.ndarray) -> int:
    """The EXIF orientation of JPEG bytes (1, upright, when there is no tag or it cannot be read). Pillow reads
    only the headers here, not the pixels."""
    try:
        with Image.open(io.BytesIO(jpeg.tobytes())) as image:
            return int(image.getexif().get(EXIF_ORIENTATION, 1))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, TypeError):
        return 1


def read_encoded(path: str) -> torch.Tensor | None:
    """The bytes of the upright JPEG at ``path`` (1-D ``uint8``); the pixels (``uint8`` ``(3, H, W)``) of any other
    image, decoded here, EXIF orientation applied; None when the file cannot be read or decoded."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return None
    if data[:3].tobytes() == JPEG_START and exif_orientation(data) == 1:
        return torch.from_numpy(data)
    pixels = decode_image(data)
    return None if pixels is None else torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


class EncodedFileDataset(ImageFileDataset):
    """Training image files read by :func:`read_encoded`, as ``(EncodedImage, class index)``; an unreadable file is
    logged and replaced by the next readable one, marked ``(EncodedImage, class index, 1)``, as
    :class:`~resnest_pl.data.ImageFileDataset` does for training (whose replacement loop this reuses).

    Args:
        files: image paths.
        targets: class index of each file.
        transform: the crop and the current sample's seed, which :class:`SeededSamples` sets.
    """

    def __init__(self, files: Sequence[str], targets: Sequence[int], transform: SeededCrop) -> None:
        super().__init__(files, targets, transform, replace_unreadable=True)  # type: ignore[arg-type]

    def read(self, index: int) -> torch.Tensor | None:
        return read_encoded(self.files[index])

    def sample(self, image: torch.Tensor, index: int) -> EncodedImage:
        return EncodedImage(image, self.transform.seed, self.transform.crop, self.files[index])


def collate_encoded(
    samples: Sequence[tuple[EncodedImage, int] | tuple[EncodedImage, int, int]],
) -> tuple[EncodedImages, torch.Tensor, torch.Tensor]:
    """``(EncodedImages, targets, num_skipped)``: the training batch before decoding, ``num_skipped`` counting the
    replaced files (an ``int64`` scalar, as :class:`~resnest_pl.data.SkipUnreadable` gives)."""
    images = EncodedImages([sample[0] for sample in samples])
    targets = torch.tensor([sample[1] for sample in samples], dtype=torch.int64)
    replaced = sum(len(sample) == 3 for sample in samples)
    return images, targets, torch.tensor(replaced, dtype=torch.int64)
