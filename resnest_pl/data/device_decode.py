"""Decoding, random-resized crop, flip, colour jitter and PCA lighting of training JPEGs on the device
(``decode_on_device``).

The loader workers only read the files (:mod:`resnest_pl.data.encoded`); ``ImageDataModule``'s
``on_after_batch_transfer`` calls :func:`decode_batch`, which decodes the batch's JPEGs in one
``torchvision.io.decode_jpeg`` call (nvJPEG on a CUDA device), draws every image's crop, flip, jitter and lighting
from its own seed (``(run seed, epoch, index)``, so a resumed run augments exactly as before), and returns
the batch the CPU pipeline would: ``(uint8 (N, 3, S, S), targets, num_skipped[, pixel_shift])``. Everything
here also runs on the CPU (``device="cpu"``), which is how it is tested.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from .decode import decode_image
from .encoded import DeviceCrop, EncodedImages
from .transforms import BICUBIC_FROM, IMAGENET_PCA_EIGVAL, IMAGENET_PCA_EIGVEC

logger = logging.getLogger(__name__)

CROP_ATTEMPTS = 10  # tries at a box of the drawn area and ratio before the centre-crop fallback, as on the CPU


class CropDraw(NamedTuple):
    """One image's augmentations: the crop box, whether to flip it, its colour jitter (brightness, contrast and
    saturation factors, and the order to apply them in: indices into those three) and its PCA lighting weights."""

    top: int
    left: int
    height: int
    width: int
    flip: bool
    jitter: tuple[float, float, float] = (1.0, 1.0, 1.0)
    jitter_order: tuple[int, int, int] = (0, 1, 2)
    alpha: tuple[float, float, float] = (0.0, 0.0, 0.0)


def draw_crop(seed: int, height: int, width: int, crop: DeviceCrop) -> CropDraw:
    """The augmentations of an image of ``height`` x ``width`` pixels, from its seed alone.

    The flip, the jitter and the lighting weights are drawn first, so they do not depend on the image's size.
    Jitter factors are uniform in ``[max(0, 1 - j), 1 + j]`` for ``j = crop.color_jitter``, applied in a random
    order, as albumentations' and torchvision's ``ColorJitter`` draw them. The box is the Inception-style
    random-resized crop the CPU recipe draws (albumentations' and torchvision's): up to 10 tries at an area in
    ``crop.scale`` of the image and a log-uniform aspect ratio in ``crop.ratio``, else the whole image cut to
    the nearest allowed ratio, centred. Written here rather than taken from torchvision's ``RandomResizedCrop``,
    which draws from torch's global generator: each image needs its own, seeded one.
    """
    rng = random.Random(seed)
    flip = rng.random() < 0.5
    low, high = max(0.0, 1.0 - crop.color_jitter), 1.0 + crop.color_jitter
    jitter = (rng.uniform(low, high), rng.uniform(low, high), rng.uniform(low, high))
    order = [0, 1, 2]
    rng.shuffle(order)
    alpha = (rng.gauss(0.0, crop.lighting), rng.gauss(0.0, crop.lighting), rng.gauss(0.0, crop.lighting))
    drawn = {"flip": flip, "jitter": jitter, "jitter_order": tuple(order), "alpha": alpha}
    log_ratio = (math.log(crop.ratio[0]), math.log(crop.ratio[1]))
    for _ in range(CROP_ATTEMPTS):
        area = height * width * rng.uniform(*crop.scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        box_w, box_h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < box_w <= width and 0 < box_h <= height:
            return CropDraw(rng.randint(0, height - box_h), rng.randint(0, width - box_w), box_h, box_w, **drawn)
    aspect = width / height
    box_w, box_h = width, height
    if aspect < crop.ratio[0]:
        box_h = round(width / crop.ratio[0])
    elif aspect > crop.ratio[1]:
        box_w = round(height * crop.ratio[1])
    return CropDraw((height - box_h) // 2, (width - box_w) // 2, box_h, box_w, **drawn)


def interpolation_at(size: int) -> InterpolationMode:
    """The recipe's training interpolation: bicubic from 320 pixels, bilinear below (antialiased when shrinking,
    where the CPU pipeline averages areas)."""
    return InterpolationMode.BICUBIC if size >= BICUBIC_FROM else InterpolationMode.BILINEAR


def crop_image(image: torch.Tensor, draw: CropDraw, size: int) -> torch.Tensor:
    """``uint8`` ``(3, H, W)`` -> the drawn box resized to ``(3, size, size)``, flipped if drawn so, on its device."""
    out = F.resized_crop(
        image, draw.top, draw.left, draw.height, draw.width, [size, size], interpolation_at(size), antialias=True
    )
    return F.horizontal_flip(out) if draw.flip else out


def _brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return images * factor


def _contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = F.rgb_to_grayscale(images).mean(dim=(-3, -2, -1), keepdim=True)
    return images * factor + mean * (1 - factor)


def _saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return images * factor + F.rgb_to_grayscale(images) * (1 - factor)


JITTERS = (_brightness, _contrast, _saturation)  # in the order of CropDraw.jitter


def color_jitter(images: torch.Tensor, draws: Sequence[CropDraw]) -> torch.Tensor:
    """``uint8`` ``(N, 3, S, S)`` -> each image's brightness, contrast and saturation scaled by its drawn factors,
    in its drawn order, clipped to 0..255 after each step (as torchvision's ``adjust_*`` do).

    Batched by hand because torchvision's ``adjust_brightness`` and the like take one factor per call: three
    calls per image. Here each of the three steps applies all three adjustments to the whole batch, with factor 1
    (no change) for the images that apply another one at that step: nine batched operations per batch.
    """
    # factors[step, kind, i]: image i's factor of adjustment kind at that step, 1 where it applies another.
    factors = np.ones((3, 3, len(draws)), dtype=np.float32)
    for i, draw in enumerate(draws):
        for step, kind in enumerate(draw.jitter_order):
            factors[step, kind, i] = draw.jitter[kind]
    table = _to_device(torch.from_numpy(factors), images.device)
    out = images.float()
    for step in range(3):
        for kind, adjust in enumerate(JITTERS):
            out = adjust(out, table[step, kind].view(-1, 1, 1, 1)).clamp_(0, 255)
    return out.round_().to(torch.uint8)


def _to_device(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor on ``device``; from pinned memory to a GPU, since a copy from pageable memory waits
    for the device."""
    if device.type == "cuda":
        return values.pin_memory().to(device, non_blocking=True)
    return values.to(device)


@functools.cache
def _side_stream(device: torch.device) -> torch.cuda.Stream:
    return torch.cuda.Stream(device)


def _decode(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its decoders for TorchCodec's; they still work, and TorchCodec is not a
        # dependency here.
        warnings.filterwarnings("ignore", message="The image decoding and encoding", category=DeprecationWarning)
        if device.type != "cuda":
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        # torchvision's nvJPEG decoder allocates its outputs on the current stream but writes them from a stream
        # of its own without waiting for it (pytorch/vision pull request 9606): on the training stream it could
        # be handed memory that queued kernels still read. On a stream of our own its outputs come from blocks
        # only it frees, and record_stream keeps those from reuse until the training stream is done with them.
        main = torch.cuda.current_stream(device)
        side = _side_stream(device)
        with torch.cuda.stream(side):
            images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        main.wait_stream(side)
        for image in images:
            image.record_stream(main)
        return images


def decode_jpegs(data: Sequence[torch.Tensor], device: torch.device | str) -> list[torch.Tensor | None]:
    """JPEG bytes (on the host) -> ``uint8`` ``(3, H, W)`` RGB images on ``device``, None for each that cannot be
    decoded.

    One batched call first; if it fails (``decode_jpeg`` returns nothing when any image fails), each image
    alone, and any that the device's decoder rejects by OpenCV on the host, which also reads CMYK JPEGs.
    """
    device = torch.device(device)
    data = list(data)
    try:
        return list(_decode(data, device))
    except RuntimeError:
        pass
    images: list[torch.Tensor | None] = []
    for encoded in data:
        try:
            images.append(_decode([encoded], device)[0])
        except RuntimeError:
            pixels = decode_image(encoded.numpy())
            images.append(None if pixels is None else _to_device(torch.from_numpy(pixels).permute(2, 0, 1), device))
    return images


def decode_images(encoded: EncodedImages, device: torch.device | str) -> list[torch.Tensor | None]:
    """Every image of the batch on ``device``, in order: the JPEGs decoded there, the rest moved there."""
    images: list[torch.Tensor | None] = [None] * len(encoded)
    device = torch.device(device)
    for position, pixels in encoded.pixels.items():
        images[position] = _to_device(pixels, device)
    jpegs = encoded.jpegs()
    if jpegs:  # decode_jpeg refuses an empty list
        for position, image in zip(jpegs, decode_jpegs(list(jpegs.values()), device), strict=True):
            images[position] = image
    return images


def readable_sources(images: Sequence[torch.Tensor | None], paths: Sequence[str]) -> list[int]:
    """For each position, the image that fills it: itself, or for one that could not be decoded (logged by path)
    the next decoded image of the batch (wrapping around): a training batch keeps its size, or DDP would stall."""
    readable = [i for i, image in enumerate(images) if image is not None]
    if not readable:
        raise ValueError(
            f"none of the {len(images)} images of a training batch could be decoded, e.g. {paths[0]}; check the "
            "data, or drop decode_on_device (the CPU pipeline replaces them from the whole split)"
        )
    sources = []
    for i, image in enumerate(images):
        if image is None:
            logger.warning("skipping unreadable or corrupt image %s", paths[i])
            sources.append(next((j for j in readable if j > i), readable[0]))
        else:
            sources.append(i)
    return sources


def lighting_shift(draws: Sequence[CropDraw], device: torch.device) -> torch.Tensor:
    """float32 ``(N, 3)`` PCA lighting offsets in 0-1 pixel units, as :class:`~resnest_pl.data.transforms.PCALighting`
    gives them, for :func:`~resnest_pl.data.normalize` to add."""
    alphas = np.array([draw.alpha for draw in draws])
    shifts = torch.from_numpy(((alphas * IMAGENET_PCA_EIGVAL) @ IMAGENET_PCA_EIGVEC.T).astype(np.float32))
    return _to_device(shifts, device)


def decode_batch(batch: Sequence[torch.Tensor | EncodedImages], device: torch.device | str) -> tuple[torch.Tensor, ...]:
    """``(EncodedImages, targets, num_skipped)`` -> ``(images, targets, num_skipped[, pixel_shift])`` on ``device``:
    ``uint8`` ``(N, 3, S, S)`` images, as the CPU pipeline's training batches.

    An image that cannot be decoded is logged and counted in ``num_skipped``, and its place taken by the next
    decoded image of the batch (with that image's target), cropped with the seed of the place.
    """
    encoded, targets, skipped = batch[0], batch[1], batch[2]
    assert isinstance(encoded, EncodedImages) and isinstance(targets, torch.Tensor)
    device = torch.device(device)
    images = decode_images(encoded, device)
    sources = readable_sources(images, encoded.paths)
    size = encoded.crop.size
    draws = []
    crops = []
    for seed, source in zip(encoded.seeds, sources, strict=True):
        image = images[source]
        assert image is not None
        draws.append(draw_crop(seed, image.shape[-2], image.shape[-1], encoded.crop))
        crops.append(crop_image(image, draws[-1], size))
    replaced = sum(source != i for i, source in enumerate(sources))
    if replaced:
        targets = targets[torch.tensor(sources, device=targets.device)]
        skipped = skipped + replaced
    pixels = torch.stack(crops)
    if encoded.crop.color_jitter > 0:
        pixels = color_jitter(pixels, draws)
    out: tuple[torch.Tensor, ...] = (pixels, targets, skipped)  # type: ignore[assignment]
    if encoded.crop.lighting > 0:
        out += (lighting_shift(draws, device),)
    return out


def check_decode_device(device: torch.device) -> None:
    """Refuse ``decode_on_device`` for a trainer that does not run on a CUDA GPU."""
    if device.type == "cuda":
        return
    if not torch.cuda.is_available():
        problem, fix = "this machine has none", "drop it"
    else:
        problem = f"the trainer runs on the {device.type}"
        fix = "train on the GPU (e.g. --config configs/trainer/gpu.yaml) or drop it"
    raise ValueError(f"decode_on_device needs a CUDA GPU, but {problem}; {fix} (the default CPU decoding is used)")


def check_device_augmentations(auto_augment: str) -> None:
    """Refuse ``decode_on_device`` with the augmentations it does not do on the device."""
    if auto_augment != "none":
        raise ValueError(
            f"decode_on_device cannot apply auto_augment={auto_augment!r} (it runs on the CPU, before the crop); "
            "set auto_augment: none or drop decode_on_device"
        )
