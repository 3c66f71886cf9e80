"""Progressive resizing: the training crop follows ``train_crop_schedule`` epoch by epoch, in persistent
workers and across a resume, while evaluation stays at the eval crop."""

from __future__ import annotations

from pathlib import Path

import pytest

from resnest_pl.data import ImageFolderDataModule

from ..fixtures import write_jpeg_tree
from ..helpers import load_checkpoint, run_cli_process, signal_at

SCHEDULE = "{0: 16, 1: 24, 2: 32}"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jpeg_tree(tmp_path_factory.mktemp("images"), {"train": 8, "val": 2})  # 3 classes


@pytest.mark.parametrize("workers", [0, 1])
def test_each_epoch_trains_at_its_scheduled_crop(folder: Path, workers: int) -> None:
    data = ImageFolderDataModule(
        str(folder),
        crop_size=40,
        eval_crop_size=36,
        train_crop_schedule={1: 16, 3: 24},
        batch_size=4,
        num_workers=workers,
        persistent_workers=True,
    )
    data.setup("fit")
    loader = data.train_dataloader()  # built once: persistent workers must follow the epochs too
    sides = []
    for epoch in range(4):
        loader.sampler.set_epoch(epoch)
        sides.append({tuple(batch[0].shape[-2:]) for batch in loader})
    assert sides == [{(40, 40)}, {(16, 16)}, {(16, 16)}, {(24, 24)}]
    assert {tuple(batch[0].shape[-2:]) for batch in data.val_dataloader()} == {(36, 36)}


@pytest.mark.parametrize("schedule", [{-1: 160}, {0: 4}])
def test_a_bad_schedule_is_refused(folder: Path, schedule: dict[int, int]) -> None:
    with pytest.raises(ValueError, match="train_crop_schedule maps a first epoch"):
        ImageFolderDataModule(str(folder), train_crop_schedule=schedule)


def crop_schedule_fit_args(root: Path, folder: Path, sizes: Path, *extra: str) -> list[str]:
    model = "{width_multiplier: 0.25, stem_width: 8, min_attn_channels: 8, small_input: true}"
    return [
        "fit",
        "--config",
        "configs/quickstart.yaml",
        "--data",
        "resnest_pl.data.ImageFolderDataModule",
        "--data.root",
        str(folder),
        "--data.crop_size",
        "32",
        "--data.eval_crop_size",
        "32",
        "--data.train_crop_schedule",
        SCHEDULE,
        "--data.batch_size",
        "4",
        "--data.num_workers",
        "0",
        "--model.model_overrides",
        model,
        "--trainer.max_epochs",
        "3",
        "--trainer.default_root_dir",
        str(root),
        "--trainer.logger",
        "false",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.callbacks+=tests.helpers.RecordInputSizes",
        "--trainer.callbacks.path",
        str(sizes),
        *extra,
    ]


def read_sizes(path: Path) -> dict[int, int]:
    return {int(step): int(side) for step, side in (line.split() for line in path.read_text().splitlines())}


@pytest.mark.slow
def test_a_run_resumed_mid_schedule_trains_as_the_uninterrupted_one(folder: Path, tmp_path: Path) -> None:
    """24 images in batches of 4: 6 steps per epoch at 16, 24 and 32 pixels; killed in the second epoch."""
    full = run_cli_process(crop_schedule_fit_args(tmp_path / "full", folder, tmp_path / "full.txt"))
    assert full.returncode == 0, full.stderr[-3000:]
    assert read_sizes(tmp_path / "full.txt") == {step: (16, 24, 32)[step // 6] for step in range(18)}

    root, sizes = tmp_path / "killed", tmp_path / "killed.txt"
    save_every = ["--trainer.callbacks+=resnest_pl.callbacks.LastCheckpoint"]
    save_every += ["--trainer.callbacks.every_n_train_steps", "4"]
    killed = run_cli_process(crop_schedule_fit_args(root, folder, sizes, *save_every, *signal_at(10, "SIGKILL")))
    assert killed.returncode == -9
    resumed = run_cli_process(crop_schedule_fit_args(root, folder, sizes, *save_every, "--ckpt_path", "last"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert read_sizes(sizes) == read_sizes(tmp_path / "full.txt")  # steps 8-9 redone at 24 px, then on
    final, reference = (
        load_checkpoint(root / "checkpoints" / "last.ckpt"),
        load_checkpoint(tmp_path / "full" / "checkpoints" / "last.ckpt"),
    )
    assert final["global_step"] == reference["global_step"] == 18
    for key, value in reference["state_dict"].items():
        assert final["state_dict"][key].equal(value), key


def test_the_sharded_module_follows_the_schedule_too(folder: Path, tmp_path: Path) -> None:
    from resnest_pl.data import ShardedDataModule, convert_to_shards

    convert_to_shards(folder, tmp_path / "shards")
    data = ShardedDataModule(
        str(tmp_path / "shards"), crop_size=40, train_crop_schedule={1: 16, 3: 24}, batch_size=4, num_workers=0
    )
    data.setup("fit")
    loader = data.train_dataloader()
    sides = []
    for epoch in range(4):
        loader.start_at(epoch, 0)
        sides.append({tuple(batch[0].shape[-2:]) for batch in loader})
    assert sides == [{(40, 40)}, {(16, 16)}, {(16, 16)}, {(24, 24)}]
