"""Provenance: the run folder, every checkpoint and every export say which code, software, devices and data
made them; evaluating on other data than the checkpoint's is flagged."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch

from resnest_pl.data.datasets import ArrayDataset, ImageFileDataset
from resnest_pl.export import export
from resnest_pl.models.weights import RUN_RECORD_KEY
from resnest_pl.provenance import SOURCE_ROOT, data_differences, split_fingerprint

from .fixtures import write_images
from .helpers import quickstart_command, run_cli


def test_a_file_listing_fingerprint_follows_names_sizes_and_classes_not_the_root(tmp_path: Path) -> None:
    first = [str(p) for p in write_images(tmp_path / "a" / "cat", 3, seed=0)]
    second = [str(p) for p in write_images(tmp_path / "b" / "cat", 3, seed=0)]  # the same files elsewhere
    base = split_fingerprint(ImageFileDataset(first, [0, 0, 0], None))
    assert base == split_fingerprint(ImageFileDataset(second, [0, 0, 0], None))
    assert base == split_fingerprint(ImageFileDataset(first[::-1], [0, 0, 0], None))  # the order does not count
    assert base is not None and base["samples"] == 3
    assert split_fingerprint(ImageFileDataset(first, [0, 0, 1], None)) != base  # a relabelled file
    assert split_fingerprint(ImageFileDataset(first[:2], [0, 0], None)) != base  # a missing file
    with open(first[0], "ab") as handle:  # a file that changed (its size)
        handle.write(b"\0")
    assert split_fingerprint(ImageFileDataset(first, [0, 0, 0], None)) != base


def test_an_array_fingerprint_follows_every_pixel_and_label() -> None:
    images = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    base = split_fingerprint(ArrayDataset(images, [0, 1, 0, 1], None))
    changed = images.copy()
    changed[2, 3, 3, 1] = 1
    assert split_fingerprint(ArrayDataset(changed, [0, 1, 0, 1], None)) != base
    assert split_fingerprint(ArrayDataset(images, [0, 1, 1, 1], None)) != base
    subset = torch.utils.data.Subset(ArrayDataset(images, [0, 1, 0, 1], None), [0, 1])
    assert split_fingerprint(subset) == split_fingerprint(ArrayDataset(images[:2], [0, 1], None))


def test_data_differences_name_what_changed() -> None:
    recorded = {"class_names": ["a", "b"], "splits": {"train": {"samples": 3, "sha256": "x"}}}
    assert data_differences(recorded, recorded) == []
    other = {"class_names": ["a", "c"], "splits": {"train": {"samples": 4, "sha256": "y"}}}
    assert data_differences(recorded, other) == ["class names", "train files (3 samples then, 4 now)"]
    assert data_differences(None, other) == []


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(SOURCE_ROOT), *args], capture_output=True, text=True, check=True).stdout


@pytest.mark.slow
def test_run_folder_checkpoint_and_export_carry_the_provenance(tmp_path: Path, capsys) -> None:
    limits = ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]
    code, err = run_cli(quickstart_command(tmp_path, "fit", *limits), capsys)
    assert code == 0, err
    (folder,) = (tmp_path / "run" / "csv_logs").iterdir()
    assert (folder / "config.yaml").is_file()
    record = json.loads((folder / "provenance.json").read_text())
    assert record["code"]["commit"] == _git("rev-parse", "HEAD").strip()
    dirty = bool(_git("status", "--porcelain").strip())
    assert record["code"]["dirty"] == dirty and (folder / "code.diff").is_file() == bool(_git("diff", "HEAD"))
    assert record["environment"]["versions"]["torch"] == version("torch")
    assert record["environment"]["world_size"] == 1 and record["environment"]["python"]
    data = record["data"]
    assert data["class_names"] == [str(d) for d in range(10)]
    assert set(data["splits"]) == {"train", "val"} and all(len(s["sha256"]) == 64 for s in data["splits"].values())

    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert checkpoint[RUN_RECORD_KEY]["provenance"] == record
    assert checkpoint[RUN_RECORD_KEY]["class_names"] == data["class_names"]  # the run record is whole beside it

    export(tmp_path / "run" / "checkpoints" / "last.ckpt", tmp_path / "export")
    assert json.loads((tmp_path / "export" / "config.json").read_text())["provenance"] == record
    card = (tmp_path / "export" / "README.md").read_text()
    assert f"- code: commit {record['code']['commit']}" in card
    assert f"train: {data['splits']['train']['samples']} samples" in card

    # Validating on the same data says nothing; on other data (another held-out share), one warning line.
    last = str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    for val_fraction, flagged in (("0.2", False), ("0.3", True)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            args = quickstart_command(tmp_path, "validate", "--ckpt_path", last)
            code, err = run_cli([*args, "--data.init_args.val_fraction", val_fraction], capsys)
        assert code == 0, err
        messages = [str(w.message) for w in caught if "trained on other data" in str(w.message)]
        assert len(messages) == int(flagged), messages
        if flagged:
            assert "val files" in messages[0] and "\n" not in messages[0]


@pytest.mark.slow
def test_the_cost_benchmark_fingerprints_its_whole_listing() -> None:
    script = SOURCE_ROOT / "benchmarks" / "provenance_cost.py"
    args = [sys.executable, str(script), "--files", "60", "--classes", "3", "--repeats", "1"]
    done = subprocess.run(args, capture_output=True, text=True, check=False, cwd=SOURCE_ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].startswith("| 60 | ")  # its own check: every file was listed
