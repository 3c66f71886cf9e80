"""Finding images on disk: class-folder trees (``root/<class>/**/*.jpg``) and loose files to predict on.

Not torchvision's ``find_classes`` / ``make_dataset``: they report a flat folder as "Couldn't find any class
folder" and a missing root as a bare ``os.scandir`` error, while here every layout problem names the folder and
its fix (the ImageNet module adds how to sort the raw val download).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .errors import DataLayoutError, DatasetNotFoundError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

_CLASS_LAYOUT = "one sub-folder per class holding that class's images, e.g. <root>/cat/001.jpg, <root>/dog/002.jpg"


def is_image_file(name: str) -> bool:
    """Whether ``name`` has an image extension that the decoder reads (case-insensitive)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _images_under(folder: str) -> list[str]:
    files = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if _visible(d))
        files.extend(os.path.join(dirpath, f) for f in sorted(filenames) if _visible(f) and is_image_file(f))
    return files


def count_loose_images(folder: str | Path) -> int:
    """Images directly inside ``folder`` (not in a sub-folder)."""
    with os.scandir(folder) as entries:
        return sum(1 for e in entries if e.is_file() and _visible(e.name) and is_image_file(e.name))


def list_classes(root: str | Path, flat_hint: str = "move them into one sub-folder per class") -> list[str]:
    """Sorted class folder names under ``root``.

    Args:
        root: folder expected to hold one sub-folder per class.
        flat_hint: how to fix a folder that holds its images directly, added to that error.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(f"image folder {root} does not exist; expected {_CLASS_LAYOUT}")
    with os.scandir(root) as entries:
        classes = sorted(e.name for e in entries if e.is_dir() and _visible(e.name))
    if not classes:
        loose = count_loose_images(root)
        if loose:
            raise DataLayoutError(f"{root} holds {loose} images directly instead of {_CLASS_LAYOUT}; {flat_hint}")
        raise DataLayoutError(f"{root} has no class folders and no images; expected {_CLASS_LAYOUT}")
    return classes


def scan_class_folders(
    root: str | Path,
    classes: Sequence[str] | None = None,
    flat_hint: str = "move them into one sub-folder per class",
) -> tuple[list[str], list[int]]:
    """Image files under ``root/<class>/`` (recursively, sorted) and their class indices.

    Args:
        root: folder with one sub-folder per class.
        classes: the class list that defines the indices (e.g. the training classes when scanning a
            validation folder); every class folder found must be in it. Default: the folders under ``root``.
        flat_hint: how to fix a folder that holds its images directly.

    Raises:
        DatasetNotFoundError: ``root`` does not exist.
        DataLayoutError: no class folders, a class folder without images, or a class not in ``classes``.
    """
    found = list_classes(root, flat_hint)
    classes = list(classes) if classes is not None else found
    index = {name: i for i, name in enumerate(classes)}
    unknown = [name for name in found if name not in index]
    if unknown:
        raise DataLayoutError(
            f"{root} has class folders that the training classes lack: {', '.join(unknown[:5])}"
            f"{' ...' if len(unknown) > 5 else ''}; give both splits the same class folders"
        )
    files: list[str] = []
    targets: list[int] = []
    for name in found:
        class_files = _images_under(os.path.join(root, name))
        if not class_files:
            raise DataLayoutError(
                f"class folder {Path(root) / name} has no images ({', '.join(IMAGE_EXTENSIONS)}); "
                "add images or remove the folder"
            )
        files.extend(class_files)
        targets.extend([index[name]] * len(class_files))
    return files, targets


def find_images(paths: str | Path | Sequence[str | Path]) -> list[str]:
    """Image files to predict on: a folder (searched recursively, sorted), a file, or a list of those.

    Files named explicitly are kept whatever their extension; folders contribute their image files.
    """
    entries = [paths] if isinstance(paths, str | Path) else list(paths)
    files: list[str] = []
    for entry in entries:
        path = Path(entry)
        if path.is_dir():
            files.extend(_images_under(str(path)))
        elif path.is_file():
            files.append(str(path))
        else:
            raise DatasetNotFoundError(f"predict path {path} does not exist; pass an image file, a folder or a list")
    if not files:
        raise DataLayoutError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {', '.join(map(str, entries)) or 'an empty list'}"
        )
    return files
