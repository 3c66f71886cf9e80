"""Training and evaluation from the streaming shards written by ``python -m resnest_pl.data.shards``."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from litdata.streaming import StreamingDataLoader, StreamingDataset
from litdata.streaming.sampler import ChunkedIndex
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..datamodule import ImageDataModule, Split
from ..datasets import Replacement, Sample
from ..decode import decode_image
from ..recipe import ImageNetRecipe
from ..resumable import sample_seed, scheduled_transform
from ..transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RANDAUGMENT_MAGNITUDE,
    RANDAUGMENT_OPS,
    AutoAugmentName,
    ImageTransform,
    Interpolation,
)
from .format import read_meta

logger = logging.getLogger(__name__)


class ShardDataset(StreamingDataset):
    """One split of the shards, yielding what :class:`~resnest_pl.data.ImageFileDataset` yields.

    An unreadable image gives None, or with ``replace_unreadable`` the next readable sample of the split (by
    index, wrapping around) marked ``(image, target, 1)``. With ``seed_augmentations`` every sample's transform is
    seeded by ``(seed, epoch, index)`` as :class:`~resnest_pl.data.resumable.ResumableSampler` seeds the file-based
    modules': the same image gets the same augmentations from files or shards, and after a resume.

    Args:
        input_dir: the split's folder or URL.
        image_transform: maps an RGB ``uint8`` array to a tensor (``transform`` is litdata's own hook).
        num_samples: the samples of the split (``meta.json``).
        replace_unreadable: draw the next readable sample in place of an unreadable one.
        seed_augmentations: reseed ``image_transform`` per sample (training).
        schedule: ``(first epoch, transform)`` pairs of a progressive-resizing schedule (training).
        kwargs: StreamingDataset's (``shuffle``, ``seed``, ``cache_dir``).
    """

    def __init__(
        self,
        input_dir: str,
        image_transform: ImageTransform,
        num_samples: int,
        replace_unreadable: bool = False,
        seed_augmentations: bool = False,
        schedule: Sequence[tuple[int, ImageTransform]] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(input_dir, **kwargs)
        self.default_transform = self.image_transform = image_transform
        self.schedule = list(schedule)
        self.num_samples = num_samples
        self.replace_unreadable = replace_unreadable
        self.seed_augmentations = seed_augmentations
        self.min_source_side: int | None = getattr(image_transform, "min_source_side", None)

    def _decode(self, item: dict[str, Any]) -> np.ndarray | None:
        return decode_image(np.frombuffer(item["image"], dtype=np.uint8), self.min_source_side)

    def __getitem__(self, index: Any) -> Sample | Replacement | None:
        """The sample at a ``ChunkedIndex`` (streaming) or an int (:class:`EvalSamples`); the stored dict for anything
        else (slices, keys)."""
        if not isinstance(index, ChunkedIndex | int):
            return super().__getitem__(index)
        item = super().__getitem__(index)
        position = index.index if isinstance(index, ChunkedIndex) else index
        if self.seed_augmentations:
            # litdata counts epochs from 1 (its loader increments before each one); Lightning from 0.
            epoch = self.current_epoch - 1
            transform = scheduled_transform(self.schedule, epoch, self.default_transform)
            if transform is not self.image_transform:
                self.image_transform, self.min_source_side = transform, transform.min_source_side
            self.image_transform.reseed(sample_seed(self.seed, epoch, position))
        image = self._decode(item)
        if image is not None:
            return self.image_transform(image), int(item["target"])
        logger.warning("skipping unreadable or corrupt image %s (in %s)", item["path"], self.input_dir.path)
        if not self.replace_unreadable:
            return None
        total = self.num_samples
        for step in range(1, total):
            other = super().__getitem__((position + step) % total)
            image = self._decode(other)
            if image is not None:
                return self.image_transform(image), int(other["target"]), 1
        raise ValueError(f"none of the {total} images of {self.input_dir.path} can be read, e.g. {item['path']}")


class EvalSamples(Dataset):
    """A split of the shards read by index (map-style), for evaluation: litdata's own split over ranks gives the
    last rank the remainder, and DDP needs the same number of batches on every rank (evaluation broadcasts
    buffers at each step)."""

    def __init__(self, shards: ShardDataset) -> None:
        self.shards = shards

    def __len__(self) -> int:
        return self.shards.num_samples

    def __getitem__(self, index: int) -> Sample | None:
        return self.shards[int(index)]  # type: ignore[return-value]


class ContiguousSampler(DistributedSampler):
    """Each rank one contiguous block of ``ceil(N / ranks)`` indices, in order, so that a rank reads whole chunks
    (each chunk is read, or downloaded, by one rank only). As torch's ``DistributedSampler`` (of which this is a
    subclass, so Lightning leaves it in place), the blocks are padded with the split's first indices to the same
    length: with ``N`` not a multiple of the ranks, fewer than ``ranks`` samples are evaluated twice."""

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)

    def __iter__(self) -> Iterator[int]:
        total = len(self.dataset)  # type: ignore[arg-type]
        start = self.rank * self.num_samples
        return iter([index % total for index in range(start, start + self.num_samples)])


class TrainLoader(StreamingDataLoader):
    """litdata's loader, with its position restored by :class:`ShardedDataModule` rather than by Lightning.

    Lightning saves a stateful loader's ``state_dict`` in the checkpoint and loads it back on resume. For this
    loader that would be exact (it has a length, so Lightning's fit loop does not prefetch a batch ahead of the
    one it trains on), but litdata's state names the shards' absolute path and cache folder and refuses to resume
    from any other: shards moved, mounted elsewhere on another cluster or copied to object storage. The data
    module records the epoch and the batches the fit loop has processed instead, as every data module here does,
    and rebuilds litdata's position from them (:meth:`start_at`); Lightning's copy is left empty.
    """

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing: see the class docstring."""

    def start_at(self, epoch: int, batches_done: int) -> None:
        """Make the next iteration Lightning's ``epoch`` (counted from 0), after its first ``batches_done`` batches."""
        if not batches_done:
            self.current_epoch = epoch  # litdata adds one when it starts an epoch
            return
        samples = batches_done * self.batch_size
        self.dataset.set_epoch(epoch + 1)
        super().load_state_dict(
            {
                "dataset": self.dataset.state_dict(samples, self.num_workers, self.batch_size),
                "current_epoch": epoch + 1,
                "num_samples_yielded": samples,
                "latest_worker_idx": (batches_done - 1) % max(self.num_workers, 1),
            }
        )


class ShardedDataModule(ImageNetRecipe, ImageDataModule):
    """Training and evaluation from streaming shards (``python -m resnest_pl.data.shards``), local or remote.

    The same transforms, batches, class names and evaluation settings as :class:`~resnest_pl.data.ImageNetDataModule`
    and :class:`~resnest_pl.data.ImageFolderDataModule`; the shards are read by ``litdata`` (why: see
    ``resnest_pl/data/shards/format.py``). Training is shuffled by chunk, then by sample within chunks, from the run's
    seed and the epoch; every sample's augmentations are seeded by ``(seed, epoch, index)``, the same as the file
    modules' for the same image.

    Under DDP each rank gets the same whole number of batches from one shuffled order: every sample is drawn at
    most once per epoch, and exactly once but for fewer than ``world_size x batch_size`` samples at the end of
    that order, different ones each epoch (with ``drop_last`` false and one process, every sample, the last batch
    smaller). Val and test give each rank one contiguous block of the split, in order (:class:`ContiguousSampler`):
    every sample is evaluated once, but for fewer than ``world_size`` samples evaluated twice to pad the blocks to
    the same length, as torch's ``DistributedSampler`` pads the file modules' splits. A fit resumed from a
    mid-epoch checkpoint continues with the very next batch, as long as ``batch_size``, ``num_workers`` and the
    number of processes are those of the interrupted run (the order depends on them).

    The crop, augmentation and loader arguments are ImageFolderDataModule's and documented there.

    Args:
        root: the converter's ``--out``: a folder, or a URL (``s3://bucket/imagenet-shards``, ``gs://...``) whose
            chunks are cached locally while they are read.
        cache_dir: where remote chunks are cached (litdata's default cache folder when None).
        aug_repeats: must be 1: repeated augmentation needs the folder modules' sampler (litdata orders the
            shards itself).
        decode_on_device: not available here (refused with a clear error): decoding on the GPU reads image
            files, see :class:`~resnest_pl.data.ImageFolderDataModule`.
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
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        train_crop_schedule: dict[int, int] | None = None,
        randaugment_ops: int = RANDAUGMENT_OPS,
        randaugment_magnitude: int = RANDAUGMENT_MAGNITUDE,
        aug_repeats: int = 1,
        cache_dir: str | None = None,
        decode_on_device: bool = False,
        batch_size: int = 64,
        num_workers: int = 8,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        drop_last: bool = True,
        predict_paths: list[str] | str | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers, pin_memory, persistent_workers, drop_last, predict_paths, aug_repeats)
        if aug_repeats != 1:
            raise ValueError(
                f"aug_repeats={aug_repeats}: repeated augmentation needs a sampler over the images, and litdata "
                "orders the shards itself; set aug_repeats 1, or train from the image folder "
                "(resnest_pl.data.ImageFolderDataModule / ImageNetDataModule)"
            )
        if decode_on_device:
            raise ValueError(
                "decode_on_device is not available with ShardedDataModule (its workers decode the images they read "
                "from the chunks); drop it, or train from the image folders (ImageNetDataModule) to decode on the GPU"
            )
        self.set_recipe(
            crop_size=crop_size,
            eval_crop_size=eval_crop_size,
            crop_pct=crop_pct,
            interpolation=interpolation,
            auto_augment=auto_augment,
            color_jitter=color_jitter,
            lighting=lighting,
            mean=mean,
            std=std,
            train_crop_schedule=train_crop_schedule,
            randaugment_ops=randaugment_ops,
            randaugment_magnitude=randaugment_magnitude,
        )
        self.root = root.rstrip("/")
        self.cache_dir = cache_dir
        meta = read_meta(self.root)
        self.class_names = list(meta["class_names"])
        self.num_classes = len(self.class_names)
        self.num_samples: dict[str, int] = dict(meta["num_samples"])

    def build_dataset(self, split: Split) -> ShardDataset:
        stored: str = "val" if split == "test" and "test" not in self.num_samples else split
        if stored not in self.num_samples:
            raise ValueError(f"the shards at {self.root} have no {stored} split (only {', '.join(self.num_samples)})")
        train = split == "train"
        return ShardDataset(
            f"{self.root}/{stored}",
            self.train_transform() if train else self.eval_transform(),
            self.num_samples[stored],
            replace_unreadable=train,  # as ImageFileDataset: an empty training batch would stall DDP
            seed_augmentations=train,
            schedule=self.train_transform_schedule() if train else (),
            shuffle=train,
            seed=self._shuffle_seed or 0,
            cache_dir=self.cache_dir,
        )

    def train_dataloader(self) -> TrainLoader:  # type: ignore[override]
        trainer = self.trainer
        self._order_seed()
        # Built here rather than at setup: the order's seed may come from a checkpoint, loaded after setup.
        dataset = self._datasets["train"] = self.build_dataset("train")
        # Under DDP every rank needs as many batches as the others, or one would wait for them forever. The
        # option is also litdata's split over ranks: with True, every rank the same whole number of batches;
        # with False, the last rank takes the remainder (one process only: DDP would stall).
        drop_last = self.drop_last or self._ranks()[0] > 1
        collate = self.collate_for("train", self.crop_size)
        loader = TrainLoader(dataset, **self._loader_options(collate, drop_last, own_generator=True))
        epoch, done = self._resume_at or ((trainer.current_epoch if trainer else 0), 0)
        loader.start_at(epoch, done)
        self._resume_at = None
        return loader

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def _eval_loader(self, split: Split) -> DataLoader:
        samples = EvalSamples(self.dataset(split))  # type: ignore[arg-type]
        world_size, rank = self._ranks()
        sampler = ContiguousSampler(samples, num_replicas=world_size, rank=rank)
        collate = self.collate_for(split, self.eval_crop_size)
        return DataLoader(samples, sampler=sampler, **self._loader_options(collate, False, own_generator=True))
