"""Which code, software, machine and data produced a run: ``provenance.json`` beside the run's ``config.yaml``
(with ``code.diff`` when the source tree had uncommitted changes), and the same record in every checkpoint's run
record, from where ``export`` copies it into ``config.json`` and the model card.

The data fingerprint names the classes, counts the samples of each split and hashes the sorted list of
``relative path, size`` lines (in-memory sets: the arrays' bytes), so two runs on "the same data" can be compared
without reading a single image.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

if TYPE_CHECKING:
    import pytorch_lightning as pl


FILE_NAME = "provenance.json"
DIFF_NAME = "code.diff"
PACKAGES = ("torch", "torchvision", "pytorch-lightning", "torchmetrics")
SOURCE_ROOT = Path(__file__).resolve().parents[1]  # the checkout holding this package (when not installed)


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", "-C", str(SOURCE_ROOT), *args], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def code_state() -> tuple[dict[str, Any], str]:
    """``({"commit", "dirty", "source"}, diff)``: the git commit of the package's checkout, whether tracked or new
    files differ from it, and ``git diff HEAD`` (empty when clean; commit None outside a git checkout)."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None, "source": str(SOURCE_ROOT)}, ""
    status = _git("status", "--porcelain", "--untracked-files=normal") or ""
    diff = _git("diff", "HEAD") or ""
    return {"commit": commit.strip(), "dirty": bool(status.strip()), "source": str(SOURCE_ROOT)}, diff


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def environment(trainer: pl.Trainer | None = None) -> dict[str, Any]:
    """Python and library versions, CUDA and cuDNN, the devices, and the run's world size."""
    cuda = torch.cuda.is_available()
    devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
    return {
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in PACKAGES},
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "platform": platform.platform(),
        "accelerator": str(trainer.strategy.root_device.type) if trainer is not None else None,
        "devices": devices or [platform.processor() or platform.machine()],
        "device_count": len(devices) if cuda else os.cpu_count(),
        "world_size": trainer.world_size if trainer is not None else 1,
        "num_nodes": trainer.num_nodes if trainer is not None else 1,
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
    }


def listing_hash(lines: Iterable[str]) -> str:
    """sha256 of the sorted lines, one per sample."""
    digest = hashlib.sha256()
    for line in sorted(lines):
        digest.update(line.encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _file_lines(files: list[str], targets: list[int]) -> list[str]:
    """``relative path, size, class`` per file, relative to the files' common folder (a string cut: ``relpath``
    per file would cost more than the ``stat``)."""
    common = os.path.commonprefix(files) if files else ""  # noqa: RUF071 (one pass; cut back to a folder next)
    cut = common.rfind(os.sep) + 1  # back to the last separator: the common folder
    return [f"{f[cut:]}\t{os.stat(f).st_size}\t{t}" for f, t in zip(files, targets, strict=True)]


def split_fingerprint(dataset: Dataset) -> dict[str, Any] | None:
    """``{"samples", "sha256"}`` of one split, or None for a dataset of a kind it cannot list."""
    # Here: the data package imports Lightning, which the exporter (data_differences' reader) does without.
    from .data.datasets import ArrayDataset, ImageFileDataset

    indices: list[int] | None = None
    while isinstance(dataset, Subset):
        indices = [int(i) for i in dataset.indices] if indices is None else [int(dataset.indices[i]) for i in indices]
        dataset = dataset.dataset
    if isinstance(dataset, ImageFileDataset):
        chosen = range(len(dataset.files)) if indices is None else indices
        lines = _file_lines([dataset.files[i] for i in chosen], [dataset.targets[i] for i in chosen])
        return {"samples": len(lines), "sha256": listing_hash(lines)}
    if isinstance(dataset, ArrayDataset):
        chosen = np.arange(len(dataset.targets)) if indices is None else np.array(indices, dtype=np.int64)
        images = np.ascontiguousarray(np.asarray(dataset.images)[chosen])
        targets = np.asarray(dataset.targets, dtype=np.int64)[chosen]
        digest = hashlib.sha256(images.tobytes())
        digest.update(targets.tobytes())
        return {"samples": len(chosen), "sha256": digest.hexdigest()}
    index = getattr(dataset, "input_dir", None)  # litdata shards: their index lists every chunk and its size
    path = Path(getattr(index, "path", None) or "", "index.json")
    if path.is_file():
        return {"samples": len(dataset), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}  # type: ignore[arg-type]
    return None


def data_fingerprint(data: Any) -> dict[str, Any] | None:
    """The data module's class, class names, and the fingerprint of each split it has built."""
    if data is None:
        return None
    splits = {}
    for split, dataset in sorted(getattr(data, "built_datasets", dict)().items()):
        if split != "predict":
            fingerprint = split_fingerprint(dataset)
            if fingerprint is not None:
                splits[split] = fingerprint
    names = getattr(data, "class_names", None)
    return {
        "class_path": f"{type(data).__module__}.{type(data).__qualname__}",
        "class_names": list(names) if names else None,
        "splits": splits,
    }


def data_differences(recorded: Mapping[str, Any] | None, current: Mapping[str, Any] | None) -> list[str]:
    """What differs between two data fingerprints, in the splits both have ([] when either is unknown)."""
    if not recorded or not current:
        return []
    differences = []
    if recorded.get("class_names") and current.get("class_names") and recorded["class_names"] != current["class_names"]:
        differences.append("class names")
    for split in sorted(set(recorded.get("splits", {})) & set(current.get("splits", {}))):
        if recorded["splits"][split] != current["splits"][split]:
            theirs, ours = recorded["splits"][split]["samples"], current["splits"][split]["samples"]
            differences.append(f"{split} files ({theirs} samples then, {ours} now)")
    return differences
