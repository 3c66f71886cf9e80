"""A training order that a run resumed in the middle of an epoch continues exactly.

Lightning restores the loop counters of a mid-epoch checkpoint but, with a plain ``DataLoader``, starts the
epoch's data from its first batch again (and re-draws the shuffle and the augmentations from wherever the
random generators happen to be). Here the order and every sample's augmentations are functions of
``(seed, epoch, index)`` only:

- :class:`ResumableSampler` is torch's ``DistributedSampler`` (a permutation drawn from
  ``seed + epoch``, split over the ranks; Lightning leaves a sampler of that class in place under DDP) that can
  start an epoch part-way and pairs each index with a per-sample seed;
- :class:`SeededSamples` hands that seed to the dataset's transform before loading the sample.

torchdata's ``StatefulDataLoader`` restores a position too, but not the augmentation streams, and Lightning
records a loader's state after its one-batch prefetch, one batch too far.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Dataset, DistributedSampler, Subset

from .transforms import ImageTransform


def sample_seed(seed: int, epoch: int, index: int, repeat: int = 0) -> int:
    """The augmentation seed of sample ``index`` in ``epoch`` of a run seeded with ``seed``.

    ``repeat`` numbers the copies of an image shown several times in one epoch (repeated augmentation,
    :class:`~resnest_pl.data.repeated.RepeatedAugmentationSampler`), so that each copy is augmented differently;
    copy 0 has the seed the image has without repetition.
    """
    entropy = [seed, epoch, index] if repeat == 0 else [seed, epoch, index, repeat]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


class ResumableSampler(DistributedSampler):
    """Shuffled ``(index, sample seed, epoch)`` keys for one rank, in an order fixed by ``seed`` and the epoch.

    Args:
        dataset: the training dataset.
        num_replicas: processes training together (``trainer.world_size``).
        rank: this process's rank among them.
        seed: seed of the shuffle and of the per-sample augmentation seeds.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self._resume: tuple[int, int] | None = None

    def resume_at(self, epoch: int, samples_done: int) -> None:
        """Skip the first ``samples_done`` samples of this rank's share of ``epoch`` (once)."""
        self._resume = (epoch, samples_done)

    def order(self) -> list[tuple[int, int]]:
        """This rank's ``(index, repeat)`` pairs of the current epoch, in order; here each image once (repeat 0)."""
        return [(index, 0) for index in super().__iter__()]

    def __iter__(self) -> Iterator[tuple[int, int, int]]:  # type: ignore[override]
        order = self.order()
        start = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            start = self._resume[1]
            self._resume = None
        for index, repeat in order[start:]:
            yield index, sample_seed(self.seed, self.epoch, index, repeat), self.epoch


def scheduled_transform(
    schedule: Sequence[tuple[int, ImageTransform]], epoch: int, default: ImageTransform
) -> ImageTransform:
    """The transform of ``epoch``: the latest ``(first epoch, transform)`` entry that has started, else ``default``."""
    started = [transform for first, transform in schedule if first <= epoch]
    return started[-1] if started else default


class SeededSamples(Dataset):
    """``dataset[(index, seed, epoch)]``: the sample at ``index``, its transform seeded by ``seed``.

    A plain ``index`` (Lightning swaps in a ``SequentialSampler`` for ``trainer.overfit_batches``) takes epoch 0's
    transform with a seed of its own, the same every epoch: the overfit batches hold the same images, augmented
    the same way, at every step.

    The dataset (or the one a ``Subset`` selects from) keeps its transform in ``transform``, with a
    ``reseed(seed)`` method (:class:`resnest_pl.data.transforms.ImageTransform`).

    Args:
        dataset: the training dataset.
        schedule: ``(first epoch, transform)`` pairs, sorted: from each first epoch on, samples use that
            transform instead of the dataset's own (progressive resizing). The epoch comes with the key, so
            persistent workers and a resumed run follow the schedule without rebuilding the loader.
    """

    def __init__(self, dataset: Dataset, schedule: Sequence[tuple[int, ImageTransform]] = ()) -> None:
        self.dataset = dataset
        source = dataset
        while isinstance(source, Subset):
            source = source.dataset
        self.source = source
        self.default = source.transform  # type: ignore[attr-defined]
        self.schedule = list(schedule)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int, int] | int) -> object:
        index, seed, epoch = key if isinstance(key, tuple) else (key, sample_seed(0, 0, key), 0)
        transform = scheduled_transform(self.schedule, epoch, self.default)
        if transform is not self.source.transform:  # type: ignore[attr-defined]
            self.source.transform = transform  # type: ignore[attr-defined]
            if hasattr(self.source, "min_source_side"):  # how far the decoder may shrink a JPEG for this crop
                self.source.min_source_side = transform.min_source_side
        transform.reseed(seed)
        return self.dataset[index]
