"""The run-folder guard: a fit does not replace another run's last.ckpt (resnest_pl/runs.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from resnest_pl.models.weights import RUN_RECORD_KEY
from resnest_pl.runs import RunFolderError, check_run_folder

HPARAMS = {"model_name": "resnest14d", "model_overrides": {}, "num_classes": 3}


class ShardedDataModule:
    """Stands in for a data module of this name (the guard reads its class, root and class names)."""

    root = None
    class_names = ("a", "b", "c")


class DigitsDataModule(ShardedDataModule):
    pass


def write_last(folder: Path, data_class_path: str) -> Path:
    record = {"class_names": ["a", "b", "c"], "data": {"class_path": data_class_path}}
    last = folder / "last.ckpt"
    torch.save({"hyper_parameters": HPARAMS, RUN_RECORD_KEY: record}, last)
    return last


def test_a_data_module_moved_to_another_file_is_the_same_run(tmp_path: Path) -> None:
    """Checkpoints written before the shard module moved (``resnest_pl.data.sharded``) still count as its runs."""
    last = write_last(tmp_path, "resnest_pl.data.sharded.ShardedDataModule")
    check_run_folder(last, HPARAMS, ShardedDataModule())
    with pytest.raises(RunFolderError, match="belongs to another run"):
        check_run_folder(last, HPARAMS, DigitsDataModule())
