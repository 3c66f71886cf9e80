"""Repeated augmentation: each drawn image shown several times in one epoch, each copy augmented differently.

Hoffer et al. 2020 ("Augment your batch") and DeiT (Touvron et al. 2021), which trains with 3 repeats; timm's
``--aug-repeats`` and torchvision's reference ``--ra-sampler --ra-reps``. Written here rather than taken from
timm (``RepeatAugSampler``) or torchvision's references (``RASampler``, not part of the installed package): the
copies must carry their repeat number into the per-sample augmentation seed, and the sampler must resume
mid-epoch as :class:`~resnest_pl.data.resumable.ResumableSampler` does.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset

from .resumable import ResumableSampler

# timm's and torchvision's samplers round the images an epoch draws down to a multiple of this.
SELECTED_ROUND = 256


class RepeatedAugmentationSampler(ResumableSampler):
    """:class:`ResumableSampler` keys with each image repeated ``repeats`` times in a row, dealt out to the ranks.

    The order of timm's ``RepeatAugSampler`` and torchvision's ``RASampler``: shuffle the ``N`` indices from
    ``seed + epoch`` (the permutation ``DistributedSampler`` draws), repeat each ``repeats`` times in place
    (``a a a b b b ...``), wrap around to a multiple of the ranks, and give rank ``r`` the positions
    ``r, r + R, r + 2R, ...`` of that list, keeping the first ``floor((N // 256 * 256) / R)`` of them (``ceil(N / R)``
    when ``N < 256``, as timm does; torchvision's formula gives 0 there). So an epoch has as many steps as without
    repetition (``N`` rounded down to a multiple of 256) but draws about ``N / repeats`` distinct images, each
    ``repeats`` times (the last one drawn possibly fewer), a different share each epoch. With ``repeats <= R`` the
    copies of an image go to different processes; with one process they sit side by side, mostly in one batch.

    Every copy's key carries its own augmentation seed, ``sample_seed(seed, epoch, index, repeat)``, so the copies
    get different crops, flips and policies; ``resume_at`` and the ``(index, seed, epoch)`` keys are
    ``ResumableSampler``'s, so a run resumed mid-epoch continues exactly.

    Args:
        dataset: the training dataset.
        num_replicas: processes training together (``trainer.world_size``).
        rank: this process's rank among them.
        seed: seed of the shuffle and of the per-sample augmentation seeds.
        repeats: copies of each drawn image, 2 or more.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0, repeats: int = 3) -> None:
        if repeats < 2:
            raise ValueError(f"repeated augmentation needs repeats >= 2, got {repeats}")
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, seed=seed)
        self.repeats = repeats
        size = len(dataset)  # type: ignore[arg-type]
        per_rank = math.ceil(size * repeats / num_replicas)
        self.total_size = per_rank * num_replicas
        if size >= SELECTED_ROUND:
            selected = size // SELECTED_ROUND * SELECTED_ROUND // num_replicas
        else:
            selected = math.ceil(size / num_replicas)
        self.num_samples = min(selected, per_rank)  # DistributedSampler's __len__

    def order(self) -> list[tuple[int, int]]:
        """This rank's ``(index, repeat)`` pairs of the current epoch, in order."""
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        indices = torch.randperm(len(self.dataset), generator=generator).tolist()  # type: ignore[arg-type]
        copies = [(index, repeat) for index in indices for repeat in range(self.repeats)]
        positions = range(self.rank, self.total_size, self.num_replicas)[: self.num_samples]
        return [copies[position % len(copies)] for position in positions]
