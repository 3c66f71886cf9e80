"""Fixtures in the real on-disk formats, written by the tests into temp dirs: CIFAR pickle batches and JPEG trees."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from resnest_pl.data.cifar import CIFAR10_CLASSES, CIFAR100_CLASSES

PER_BATCH = 10  # CIFAR-10 has 5 training batches; one image of each class per batch


def dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)


def write_cifar10(root: Path) -> np.ndarray:
    """The five training batches, the test batch and the meta file; returns the test images (N, 3072)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        dump(folder / f"data_batch_{i}", {"data": images(PER_BATCH, i), "labels": [j % 10 for j in range(PER_BATCH)]})
    test = images(12, 0)
    dump(folder / "test_batch", {"data": test, "labels": [j % 10 for j in range(12)]})
    dump(folder / "batches.meta", {"label_names": CIFAR10_CLASSES})
    return test


def write_cifar100(root: Path) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    dump(folder / "train", {"data": images(200, 1), "fine_labels": [j % 100 for j in range(200)]})
    dump(folder / "test", {"data": images(20, 2), "fine_labels": list(range(20))})
    dump(folder / "meta", {"fine_label_names": CIFAR100_CLASSES})


WNIDS = ["n01440764", "n01443537", "n01484850"]


def write_images(folder: Path, count: int, seed: int = 0, size: tuple[int, int] = (40, 30)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        pixels = rng.integers(0, 256, (size[1] // 5, size[0] // 5, 3), dtype=np.uint8)
        path = folder / f"{folder.name}_{i}.JPEG"
        Image.fromarray(pixels).resize(size).save(path, quality=90)
        paths.append(path)
    return paths


def write_jpeg_tree(root: Path, splits: dict[str, int], classes=WNIDS) -> Path:
    for split, count in splits.items():
        for k, name in enumerate(classes):
            write_images(root / split / name, count, seed=k)
    return root


def write_broken_images(folder: Path, count: int) -> list[Path]:
    """``count`` unreadable files named to sort after ``write_images``'s: alternately a real JPEG cut off after 200
    bytes (its header parses, its pixels do not) and bytes that are no image at all."""
    folder.mkdir(parents=True, exist_ok=True)
    whole = folder / "whole.jpg"
    Image.fromarray(np.full((30, 40, 3), 128, dtype=np.uint8)).save(whole, quality=90)
    data = whole.read_bytes()
    whole.unlink()
    paths = []
    for i in range(count):
        path = folder / f"{folder.name}_broken_{i}.JPEG"
        path.write_bytes(data[:200] if i % 2 == 0 else b"not an image " * 20)
        paths.append(path)
    return paths


SQUARE_COLOURS = {"blue": (30, 60, 220), "green": (40, 200, 60), "red": (220, 40, 40)}


def write_colour_squares(root: Path, per_class: int = 40, size: int = 32, seed: int = 0) -> Path:
    """A class folder of ``size``-pixel images, one class per colour (``SQUARE_COLOURS``): a square of that colour,
    half the image wide, at a random place on grey noise; PNG and JPEG files alternate. An easy signal at ``size``."""
    rng = np.random.default_rng(seed)
    side = size // 2
    for name, colour in SQUARE_COLOURS.items():
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(90, 166, (size, size, 3), dtype=np.uint8)
            top, left = rng.integers(0, size - side + 1, 2)
            pixels[top : top + side, left : left + side] = colour
            Image.fromarray(pixels).save(folder / f"{name}_{i}.{'png' if i % 2 else 'jpg'}")
    return root
