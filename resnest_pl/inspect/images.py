"""The images to inspect a network on: a folder, its sub-folders read as classes (ImageFolder's layout), prepared
with the project's evaluation transform at the network's recorded settings."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch

from resnest_pl.data.decode import read_image
from resnest_pl.data.errors import DataLayoutError
from resnest_pl.data.scan import IMAGE_EXTENSIONS, find_images
from resnest_pl.data.transforms import eval_transform, normalize


@dataclass
class ImageSet:
    """Image files, their class indices (None when the images are not all in class sub-folders) and classes."""

    files: list[str]
    labels: list[int] | None
    classes: list[str] | None


def find_image_set(folder: str | PathLike, max_images: int | None = None) -> ImageSet:
    """The images under ``folder`` (recursively, sorted); with ``max_images``, that many spread evenly over them.
    Raises FileNotFoundError or ValueError with the fix in the message."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"image folder {root} does not exist; pass a folder of images (one sub-folder per class for per-class "
            "statistics)"
        )
    try:
        files = find_images(root)
    except DataLayoutError as err:
        raise ValueError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {root}; put some there, in one sub-folder per class for "
            "per-class statistics"
        ) from err
    if max_images is not None and max_images < len(files):
        picked = np.unique(np.linspace(0, len(files) - 1, max(1, max_images)).round().astype(int))
        files = [files[i] for i in picked]
    parts = [Path(f).relative_to(root).parts for f in files]
    if all(len(p) > 1 for p in parts):
        classes = sorted({p[0] for p in parts})
        index = {name: i for i, name in enumerate(classes)}
        return ImageSet(files, [index[p[0]] for p in parts], classes)
    return ImageSet(files, None, None)


def image_batches(
    images: ImageSet, settings: Mapping[str, Any], batch_size: int = 64
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Normalised float batches of ``images`` at the evaluation ``settings`` (``eval_crop``, ``crop_pct``,
    ``interpolation``, ``mean``, ``std``), with their class indices when known; read one batch at a time."""
    transform = eval_transform(int(settings["eval_crop"]), float(settings["crop_pct"]), settings["interpolation"])
    for start in range(0, len(images.files), batch_size):
        pixels = []
        for file in images.files[start : start + batch_size]:
            image = read_image(file, transform.min_source_side)
            if image is None:
                raise ValueError(f"cannot read image {file} (damaged, or not an image); replace or remove it")
            pixels.append(transform(image))
        batch = normalize(torch.stack(pixels), settings["mean"], settings["std"])
        labels = images.labels[start : start + batch_size] if images.labels is not None else None
        yield batch, None if labels is None else torch.tensor(labels)
