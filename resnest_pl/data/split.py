"""Seeded stratified train/val split."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def stratified_split(targets: Sequence[int], val_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and val indices, with ``val_fraction`` of each class (rounded) in val.

    The same targets, fraction and seed always give the same split. Every class with two or more samples gets
    at least one in each part; a class with a single sample stays in train. Written here rather than with
    scikit-learn's ``StratifiedShuffleSplit``, which refuses classes of one sample and val sets smaller than
    the number of classes, both common in small image folders.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    targets = np.asarray(targets)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(targets):
        members = rng.permutation(np.flatnonzero(targets == label))
        n_val = min(max(round(len(members) * val_fraction), 1), len(members) - 1)
        val.append(members[:n_val])
        train.append(members[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))
