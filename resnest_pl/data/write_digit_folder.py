"""``python -m resnest_pl.data.write_digit_folder OUT [--task parity]``: the digits as a class-folder image set.

A small, offline data set in the layout :class:`ImageFolderDataModule` reads (``OUT/train/<class>/*.png``,
``OUT/val/<class>/*.png``), for trying fine-tuning on the CPU: a quick-start checkpoint trained on the ten digits
fine-tunes on a new labelling of them. The split is :class:`DigitsDataModule`'s (same seed and fraction), so
``val/`` holds only images the quick start held out too.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2

from ..errors import user_errors
from .digits import digits_images
from .split import stratified_split

# The class name of each digit, per task.
TASKS: dict[str, Callable[[int], str]] = {
    "parity": lambda digit: ("even", "odd")[digit % 2],
    "digits": str,
}


def write_digit_folder(
    out: str | Path, task: str = "parity", image_size: int = 32, val_fraction: float = 0.2, seed: int = 0
) -> dict[str, int]:
    """Write the digits as PNG files under ``out/{train,val}/<class>/``; returns the number of images per split."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not empty; choose a new folder")
    images, targets = digits_images(image_size)
    train, val = stratified_split(targets, val_fraction, seed)
    counts = {}
    for split, indices in (("train", train), ("val", val)):
        for index in indices:
            folder = out / split / TASKS[task](int(targets[index]))
            folder.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / f"{index:04d}.png"), images[index])  # grey: the channel order does not matter
        counts[split] = len(indices)
    return counts


def main(argv: Sequence[str] | None = None) -> None:
    """Command line; a bad input ends as :mod:`resnest_pl.errors` says (one ``error:`` line, exit status 2)."""
    parser = argparse.ArgumentParser(
        prog="python -m resnest_pl.data.write_digit_folder", description=__doc__.split("\n")[0]
    )
    parser.add_argument("out", help="folder to create (must be new or empty)")
    parser.add_argument("--task", choices=tuple(TASKS), default="parity", help="classes: even/odd, or the digits")
    parser.add_argument("--image-size", type=int, default=32, help="side of the square images (default 32)")
    args = parser.parse_args(argv)
    with user_errors(ValueError, OSError):
        counts = write_digit_folder(args.out, args.task, args.image_size)
    print(f"wrote {counts['train']} training and {counts['val']} validation images to {args.out}")


if __name__ == "__main__":
    main()
