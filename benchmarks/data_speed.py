"""Images per second of one loader worker: our ImageNet training pipeline vs torchvision's PIL equivalent.

Both decode the same JPEGs and apply random-resized crop, horizontal flip, colour jitter 0.4 and conversion to a
``uint8`` tensor (the loaders ship raw pixels; normalisation happens on the device, after the copy) in a
DataLoader with ``num_workers=0`` and one thread (a worker's setting), interleaved over repetitions; the table
gives medians. Without ``--images`` it writes ImageNet-sized JPEGs (~500x375) to a
temporary folder first.

    python benchmarks/data_speed.py [--images DIR] [--count 64] [--repeats 7] [--crop 224]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as tv

from resnest_pl.data import ImageFileDataset, find_images, imagenet_train_transform


class PILDataset(Dataset):
    """torchvision's usual way: PIL decode, then a torchvision transform."""

    def __init__(self, files: list[str], transform: Callable) -> None:
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.files[index]) as image:
            return self.transform(image.convert("RGB")), 0


def write_jpegs(folder: Path, count: int, seed: int = 0) -> list[str]:
    """Photo-like JPEGs at ImageNet's typical sizes: smooth colour fields plus grain, quality 90."""
    rng = np.random.default_rng(seed)
    sizes = [(500, 375), (500, 333), (375, 500), (500, 400)]
    files = []
    for i in range(count):
        width, height = sizes[i % len(sizes)]
        coarse = rng.integers(0, 256, (height // 25, width // 25, 3), dtype=np.uint8)
        smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.int16)
        grain = rng.normal(0, 12, smooth.shape).astype(np.int16)
        path = folder / f"img_{i:03d}.JPEG"
        Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8)).save(path, quality=90)
        files.append(str(path))
    return files


def images_per_second(dataset: Dataset, batch_size: int) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=0)
    start = time.perf_counter()
    count = sum(len(targets) for _, targets in loader)  # images may be (pixels, lighting shifts) pairs
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, help="folder of JPEGs to use instead of generated ones")
    parser.add_argument("--count", type=int, default=64, help="images to generate")
    parser.add_argument("--repeats", type=int, default=7, help="timed passes per pipeline (>= 6)")
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    torch.set_num_threads(1)  # what a DataLoader worker runs with
    cv2.setNumThreads(1)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        files = find_images(args.images) if args.images else write_jpegs(Path(tmp), args.count)
        reference = tv.Compose(
            [
                tv.RandomResizedCrop(args.crop),
                tv.RandomHorizontalFlip(),
                tv.ColorJitter(0.4, 0.4, 0.4),
                tv.PILToTensor(),
            ]
        )
        pipelines = {
            "torchvision (PIL decode + transforms)": PILDataset(files, reference),
            "ours (OpenCV decode + albumentations)": ImageFileDataset(
                files, [0] * len(files), imagenet_train_transform(args.crop, lighting=0.0)
            ),
            "ours + PCA lighting (full recipe)": ImageFileDataset(
                files, [0] * len(files), imagenet_train_transform(args.crop)
            ),
        }
        timings: dict[str, list[float]] = {name: [] for name in pipelines}
        for dataset in pipelines.values():  # warm-up: page cache, lazy initialisation
            images_per_second(dataset, args.batch_size)
        for _ in range(args.repeats):
            for name, dataset in pipelines.items():
                timings[name].append(images_per_second(dataset, args.batch_size))

    baseline = statistics.median(timings["torchvision (PIL decode + transforms)"])
    print(f"{len(files)} JPEGs, crop {args.crop}, {args.repeats} interleaved passes, one process and thread\n")
    print("| pipeline | images/s (median) | min - max | vs torchvision |")
    print("|---|---|---|---|")
    for name, values in timings.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.0f} | {min(values):.0f} - {max(values):.0f} | {median / baseline:.2f}x |")


if __name__ == "__main__":
    main()
