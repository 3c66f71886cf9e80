"""The loader logic every data module shares: batch format, DataLoader options, splits built on demand, predict."""

from __future__ import annotations

import functools
import os
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, Literal

import cv2
import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.seed import pl_worker_init_function
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from pytorch_lightning.utilities.rank_zero import rank_zero_info
from pytorch_lightning.utilities.warnings import PossibleUserWarning
from torch.utils.data import DataLoader, Dataset, Sampler

from .collate import SkipUnreadable
from .datasets import ImageFileDataset
from .device_decode import decode_batch
from .encoded import EncodedImages
from .repeated import RepeatedAugmentationSampler
from .resumable import ResumableSampler, SeededSamples
from .scan import find_images
from .transforms import ImageTransform, normalize

Split = Literal["train", "val", "test"]
MID_EPOCH_WARNING = "You're resuming from a checkpoint that ended before the epoch ended"
_STAGE_SPLITS: dict[str, tuple[Split, ...]] = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}


class ImageDataModule(pl.LightningDataModule, ABC):
    """Base of the image classification data modules.

    Batches (the same for every data module):

    - train / val / test: ``(images, targets, num_skipped)``: ``images`` ``uint8`` ``(N, 3, H, W)`` RGB pixels,
      not normalised (see below); ``targets`` int64 ``(N,)`` class indices; ``num_skipped`` an int64 scalar
      tensor, the images drawn for this batch that could not be read (each logged by path through ``logging``).
      In training each is replaced by the next readable image of the split, so ``N == batch_size`` (but for a
      last batch kept with ``drop_last=False``): under DDP an empty batch would stall the other ranks. In val /
      test they are dropped, so ``N`` can be below ``batch_size`` (even 0, with images of shape ``(0, 3, H, W)``)
      and every readable image counts once in the metrics. Training batches of a pipeline with PCA lighting
      (ImageNet, image folders) carry a fourth element, ``pixel_shift``: float32 ``(N, 3)``, each image's lighting
      noise as an RGB offset in 0-1 pixel units. A module uses ``images, targets = batch[0], batch[1]``. With
      ``decode_on_device`` (image folders) the training loader yields ``(EncodedImages, targets, num_skipped)``
      instead, the files' bytes, which :func:`resnest_pl.data.device_decode.decode_batch` turns into the above.
    - predict: ``(images, indices)``: ``indices`` int64 positions in :attr:`predict_files` (unreadable files
      are dropped, so a writer maps outputs back to paths through them).

    ``H = W = crop_size`` for training batches and ``eval_crop_size`` for val / test / predict batches.

    Normalisation happens on the device, after the copy (a quarter of float32's bytes through pinned memory and
    PCIe): this data module's :meth:`on_after_batch_transfer`, which Lightning calls on every batch it moves,
    turns ``images`` into float32 ``(images / 255 + pixel_shift - mean) / std`` with its ``mean`` and ``std``
    and drops ``pixel_shift`` (decoding encoded batches first), so the module's steps see
    ``(images, targets, num_skipped)`` with float images. Code that iterates a loader itself does the same with
    :func:`resnest_pl.data.normalize`. A new data module follows this contract by
    setting ``mean`` / ``std`` and yielding ``uint8`` images.

    Set by each subclass's ``__init__`` (the CLI links ``data.num_classes`` to ``model.num_classes``):
    ``num_classes``, ``class_names``, ``crop_size``, ``eval_crop_size``, ``crop_pct``, ``interpolation``, ``mean``,
    ``std``.

    Training order: a :class:`~resnest_pl.data.resumable.ResumableSampler`, a ``DistributedSampler`` over the
    trainer's ranks whose shuffle and per-sample augmentation seeds depend only on the run's seed
    (``seed_everything``), the epoch and the index (and, with ``aug_repeats``, the copy). The data module's
    ``state_dict`` records the epoch and the batches done, so a fit resumed from a mid-epoch checkpoint continues
    with the very next batch. Val, test and test loaders are split over the ranks without padding (Lightning's
    ``UnrepeatedDistributedSampler``), so under DDP every image counts exactly once in the metrics, with ranks
    running one batch more or fewer; Lightning splits predict loaders the same way. ``batch_size`` is per device.

    Loader workers run OpenCV single-threaded (``cv2.setNumThreads(0)``: otherwise each worker starts a thread per
    core) and still get Lightning's seeding when ``seed_everything(..., workers=True)`` asked for it.

    Args:
        batch_size: images per batch on each device.
        num_workers: DataLoader worker processes; 0 loads in the main process.
        pin_memory: page-locked batches for faster, asynchronous host-to-GPU copies; None pins when the trainer
            runs on a GPU (not for CPU runs on a machine that has one).
        persistent_workers: keep workers alive between epochs (only used when ``num_workers > 0``).
        drop_last: drop the last incomplete training batch (a batch of one breaks BatchNorm in training).
        predict_paths: images for ``predict``: a folder (searched recursively), an image file, or a list.
        aug_repeats: repeated augmentation (timm's ``--aug-repeats``): each image drawn in an epoch is shown this
            many times, each copy augmented differently and under DDP on another process, the epoch keeping about
            its length (:class:`~resnest_pl.data.repeated.RepeatedAugmentationSampler`); 1 is off.
    """

    num_classes: int
    class_names: list[str]
    crop_size: int
    eval_crop_size: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 4,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        drop_last: bool = True,
        predict_paths: list[str] | str | None = None,
        aug_repeats: int = 1,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if aug_repeats < 1:
            raise ValueError(f"aug_repeats must be 1 (off) or more copies of each image per epoch, got {aug_repeats}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be 0 (main process) or more, got {num_workers}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.drop_last = drop_last
        self.predict_paths = predict_paths
        self.aug_repeats = aug_repeats
        self._datasets: dict[str, Dataset] = {}
        self._predict_files: list[str] | None = None
        self._shuffle_seed: int | None = None
        self._resume_at: tuple[int, int] | None = None  # (epoch, batches done) of a restored checkpoint
        self._normalization: tuple[torch.Tensor, torch.Tensor] | None = None  # (mean, std) on the batches' device

    @abstractmethod
    def build_dataset(self, split: Split) -> Dataset:
        """The dataset of ``split``, yielding ``(image tensor, class index)``; for an unreadable image, a replacement
        ``(image tensor, class index, 1)`` in ``"train"`` and None otherwise (see ``ImageFileDataset``)."""

    @abstractmethod
    def eval_transform(self) -> ImageTransform:
        """The evaluation transform, also used for prediction."""

    @property
    def predict_files(self) -> list[str]:
        """The image files ``predict`` runs on, in the order of the indices in its batches."""
        if self._predict_files is None:
            if self.predict_paths is None:
                raise ValueError(
                    "nothing to predict on: set predict_paths (data.predict_paths in a config) to an image file, "
                    "a folder of images or a list of them"
                )
            self._predict_files = find_images(self.predict_paths)
        return self._predict_files

    def setup(self, stage: str) -> None:
        """Build (and so check) the splits ``stage`` uses: fit, validate, test or predict."""
        self._normalization = None
        if stage == "predict":
            self.dataset("predict")
            return
        if stage not in _STAGE_SPLITS:
            raise ValueError(f"unknown stage {stage!r}; expected fit, validate, test or predict")
        for split in _STAGE_SPLITS[stage]:
            self.dataset(split)

    def dataset(self, split: Split | Literal["predict"]) -> Dataset:
        """The dataset of ``split``, built on first use."""
        if split not in self._datasets:
            if split == "predict":
                files = self.predict_files
                self._datasets[split] = ImageFileDataset(files, range(len(files)), self.eval_transform())
            else:
                self._datasets[split] = self.build_dataset(split)
        return self._datasets[split]

    def built_datasets(self) -> dict[str, Dataset]:
        """The datasets built so far, by split (what this run reads; see ``resnest_pl.provenance``)."""
        return dict(self._datasets)

    def train_dataloader(self) -> DataLoader:
        world_size, rank = self._ranks()
        seed = self._order_seed()
        dataset = self.dataset("train")
        if self.aug_repeats > 1:
            sampler: ResumableSampler = RepeatedAugmentationSampler(
                dataset, num_replicas=world_size, rank=rank, seed=seed, repeats=self.aug_repeats
            )
        else:
            sampler = ResumableSampler(dataset, num_replicas=world_size, rank=rank, seed=seed)
        if self._resume_at is not None:
            epoch, batches = self._resume_at
            sampler.resume_at(epoch, batches * self.batch_size)
            self._resume_at = None
        return self._loader("train", drop_last=self.drop_last, crop=self.crop_size, sampler=sampler)

    def train_transform_schedule(self) -> list[tuple[int, ImageTransform]]:
        """``(first epoch, training transform)`` pairs of a progressive-resizing schedule; none by default."""
        return []

    def state_dict(self) -> dict[str, Any]:
        """The training order's seed and, during fit, the epoch and the batches done in it (saved in checkpoints)."""
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit" or self._shuffle_seed is None:
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"shuffle_seed": self._shuffle_seed, "epoch": trainer.current_epoch, "batches_done": done}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "shuffle_seed" not in state_dict or (self.trainer is not None and self.trainer.state.fn != "fit"):
            return  # only a fit continues the training order; validate, test and predict have none to resume
        self._shuffle_seed = int(state_dict["shuffle_seed"])
        epoch, done = int(state_dict["epoch"]), int(state_dict["batches_done"])
        self._resume_at = (epoch, done)
        if done:
            rank_zero_info(f"resuming epoch {epoch} after its first {done} batches (same order and augmentations)")
            # Lightning warns that a plain DataLoader cannot resume mid-epoch; this one's sampler does.
            warnings.filterwarnings("ignore", message=MID_EPOCH_WARNING, category=PossibleUserWarning)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Normalise ``uint8`` images on the device: ``(images / 255 + pixel_shift - mean) / std``.

        The loaders ship raw pixels (a quarter of float32's bytes; Lightning copies pinned batches with
        ``non_blocking=True``), plus, in training with PCA lighting, a fourth element ``pixel_shift``, consumed
        here. Random erasing and mixing follow in the module's ``training_step``, on the normalised images. With
        ``decode_on_device`` the training batches hold JPEG bytes, decoded and cropped here first, on the device
        Lightning moved the targets to (:func:`resnest_pl.data.device_decode.decode_batch`). Float images pass
        through unchanged.
        """
        if isinstance(batch[0], EncodedImages):
            batch = decode_batch(batch, batch[1].device)
        images = batch[0]
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
            return batch
        mean, std = self._normalization_on(images.device)
        shift = batch[3] if len(batch) > 3 else None
        return (normalize(images, mean, std, pixel_shift=shift), *batch[1:3])

    def _normalization_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``mean`` and ``std`` as tensors on ``device``, made once: a copy per batch from pageable memory would
        wait for the GPU's stream."""
        if self._normalization is None or self._normalization[0].device != device:
            mean, std = (torch.tensor(v, dtype=torch.float32, device=device) for v in (self.mean, self.std))
            self._normalization = (mean, std)
        return self._normalization

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")

    def _loader(
        self,
        split: Split | Literal["predict"],
        drop_last: bool = False,
        crop: int | None = None,
        sampler: ResumableSampler | None = None,
    ) -> DataLoader:
        crop = crop or self.eval_crop_size
        dataset = self.dataset(split)
        world_size, rank = self._ranks()
        loader_sampler: Sampler | None = sampler
        if sampler is None and split in ("val", "test") and world_size > 1:
            # Lightning's default DistributedSampler pads the split to a multiple of the world size, so a few
            # images would count twice in the metrics. Metrics and skipped counts are logged per epoch only and
            # synced once at its end, so ranks may run different numbers of batches.
            loader_sampler = UnrepeatedDistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False)
        return DataLoader(
            SeededSamples(dataset, self.train_transform_schedule()) if sampler is not None else dataset,
            sampler=loader_sampler,
            **self._loader_options(self.collate_for(split, crop), drop_last, own_generator=sampler is not None),
        )

    def _ranks(self) -> tuple[int, int]:
        """``(world size, rank)`` of the trainer's processes; ``(1, 0)`` without a trainer."""
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer else (1, 0)

    def _order_seed(self) -> int:
        """The training order's seed: a restored checkpoint's, else the one Lightning's own distributed sampler
        uses (``seed_everything``'s, the same on every rank)."""
        if self._shuffle_seed is None:
            self._shuffle_seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        return self._shuffle_seed

    def _loader_options(
        self, collate: Callable[[list[Any]], Any], drop_last: bool, own_generator: bool
    ) -> dict[str, Any]:
        """The ``DataLoader`` options of every data module's loaders but the dataset and the sampler.

        ``own_generator``: the workers' base seed from a generator of their own (training): creating the iterator
        must not draw from torch's global generator, or a resumed run's dropout / DropBlock masks would shift.
        """
        return dict(
            batch_size=self.batch_size,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self._pin(),
            worker_init_fn=functools.partial(init_worker, rank=self._ranks()[1]) if self.num_workers > 0 else None,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            collate_fn=collate,
            generator=torch.Generator() if own_generator else None,
        )

    def collate_for(self, split: Split | Literal["predict"], crop: int) -> Callable[[list[Any]], Any]:
        """How the loader of ``split`` (images ``crop`` pixels square) makes its batches."""
        return SkipUnreadable((3, crop, crop), count_skipped=split != "predict")

    def _pin(self) -> bool:
        if self.pin_memory is not None:
            return self.pin_memory
        trainer = self.trainer
        return trainer is not None and trainer.strategy.root_device.type == "cuda"


def init_worker(worker_id: int, rank: int = 0) -> None:
    """A loader worker's start: OpenCV on one thread, then Lightning's worker seeding if it was asked for.

    ``setNumThreads(0)`` (run sequentially) rather than 1: OpenCV's pthreads pool stops and joins its threads
    on ``setNumThreads(1)``, and in a worker forked from a process whose pool had started, those threads do
    not exist, so the worker would wait for them forever. Lightning adds its own ``worker_init_fn`` only to
    loaders without one (with ``seed_everything(..., workers=True)``, which sets ``PL_SEED_WORKERS``), so this
    one calls it itself.
    """
    cv2.setNumThreads(0)
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        pl_worker_init_function(worker_id, rank=rank)


def as_triplet(values: Sequence[float], name: str) -> tuple[float, float, float]:
    """``values`` as an RGB triple, with a clear error otherwise."""
    if len(values) != 3:
        raise ValueError(f"{name} needs one value per RGB channel, got {list(values)}")
    return (float(values[0]), float(values[1]), float(values[2]))
