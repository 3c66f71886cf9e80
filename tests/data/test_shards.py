"""Streaming shards: the converter, ShardedDataModule against the file-based module, DDP coverage and resuming."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from litdata.streaming import StreamingDataset
from PIL import Image
from pytorch_lightning.callbacks import Callback

from resnest_pl.data import DatasetNotFoundError, ImageFolderDataModule, ShardedDataModule, convert_to_shards
from resnest_pl.data.resumable import sample_seed
from resnest_pl.data.shards import write as shard_writer
from resnest_pl.data.shards.__main__ import main as shard_command

from ..fixtures import WNIDS, write_broken_images, write_jpeg_tree
from ..helpers import CONFIGS, QUICK, ROOT, parsed_config, run_killable

PER_CLASS = 8  # 3 classes: 24 training images, 6 batches of 4 per process, 3 per rank under DDP
STEP = 10  # grey-level step between the solid-colour images

# What the data modules read of a trainer to decide on pinned memory.
CPU_STRATEGY = SimpleNamespace(root_device=torch.device("cpu"))


def fit_trainer(**attributes: object) -> SimpleNamespace:
    """A stand-in for a CPU trainer in fit, with no LightningModule (the data module's own settings apply)."""
    return SimpleNamespace(lightning_module=None, state=SimpleNamespace(fn="fit"), strategy=CPU_STRATEGY, **attributes)


def write_solid_tree(root: Path) -> Path:
    """``train/<wnid>/`` with 8 solid-colour JPEGs per class and ``val/<wnid>/`` with 2: the red level of an image
    names it (``STEP *`` its position in its split), whatever crop or flip the training pipeline draws."""
    for split, count in (("train", PER_CLASS), ("val", 2)):
        position = 0
        for name in WNIDS:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                colour = (STEP * position, 40, 200)
                Image.fromarray(np.full((30, 40, 3), colour, np.uint8)).save(folder / f"{i}.JPEG", quality=95)
                position += 1
    return root


def identities(images: torch.Tensor, mean: float = 0.485, std: float = 0.229) -> list[int]:
    """The training index of each solid-colour image of a batch (normalised float or ``uint8``)."""
    red = images[:, 0].float().mean(dim=(1, 2))
    if images.dtype != torch.uint8:
        red = (red * std + mean) * 255
    return [round(value / STEP) for value in red.tolist()]


@pytest.fixture(scope="module")
def solid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A converted solid-colour set: its shards are ``<returned>/shards``, its images ``<returned>/images``."""
    root = tmp_path_factory.mktemp("solid")
    convert_to_shards(write_solid_tree(root / "images"), root / "shards")
    return root


def test_converter_keeps_the_bytes_order_and_classes_of_the_folder_module(tmp_path: Path) -> None:
    images = write_jpeg_tree(tmp_path / "images", {"train": 4, "val": 2})
    write_broken_images(images / "train" / WNIDS[1], 1)  # stored as they are: the reader decides
    convert_to_shards(images, tmp_path / "shards", chunk_bytes="2kb")
    folder = ImageFolderDataModule(str(images))
    module = ShardedDataModule(str(tmp_path / "shards"))
    assert module.class_names == folder.class_names == WNIDS and module.num_classes == 3
    for split in ("train", "val"):
        files, targets = folder.files(split)
        stored = StreamingDataset(str(tmp_path / "shards" / split))
        assert len(stored) == len(files) == module.num_samples[split]
        assert len(list((tmp_path / "shards" / split).glob("chunk-*.bin"))) > 1  # several chunks
        for i, (path, target) in enumerate(zip(files, targets, strict=True)):
            item = stored[i]
            assert (item["index"], item["target"], item["path"]) == (i, target, os.path.relpath(path, images))
            assert item["image"] == Path(path).read_bytes()  # the original file, not re-encoded


def test_batches_equal_the_folder_modules(solid: Path) -> None:
    """Val batches are ImageFolderDataModule's to the bit; a training epoch holds every image once, shuffled, in
    full batches with the folder module's samples and targets."""
    # Without colour noise, so that the red level still names each image; crop and flip are drawn.
    options = dict(crop_size=32, eval_crop_size=24, batch_size=4, num_workers=0, color_jitter=0.0, lighting=0.0)
    sharded = ShardedDataModule(str(solid / "shards"), **options)
    folder = ImageFolderDataModule(str(solid / "images"), **options)
    sharded.setup("fit")
    folder.setup("fit")
    for ours, theirs in zip(sharded.val_dataloader(), folder.val_dataloader(), strict=True):
        for a, b in zip(ours, theirs, strict=True):
            assert torch.equal(a, b)
    batches = list(sharded.train_dataloader())
    assert len(batches) == 6 and all(b[0].shape == (4, 3, 32, 32) and int(b[2]) == 0 for b in batches)
    order = [i for images, _, _ in batches for i in identities(images)]
    assert sorted(order) == list(range(24)) and order != list(range(24))  # each once, shuffled
    reference = folder.dataset("train")
    for images, targets, _ in batches[:2]:
        for image, target, index in zip(images, targets, identities(images), strict=True):
            reference.transform.reseed(sample_seed(0, 0, index))  # as the folder module's resumable sampler does
            expected, expected_target = reference[index]
            assert torch.equal(image, expected) and int(target) == expected_target


def test_each_training_image_gets_the_folder_modules_augmentations(tmp_path: Path) -> None:
    """Full augmentations (RandAugment, crop, flip, colour jitter, lighting) on real-looking images: for a run seed
    and an epoch, sample i of the shards is sample i of the folder module, seeded the same way."""
    images = write_jpeg_tree(tmp_path / "images", {"train": 3, "val": 1})
    convert_to_shards(images, tmp_path / "shards")
    options = dict(crop_size=24, auto_augment="randaugment", num_workers=0)
    sharded = ShardedDataModule(str(tmp_path / "shards"), **options)
    sharded._shuffle_seed = 7  # the run seed, as train_dataloader takes it from seed_everything or a checkpoint
    shards = sharded.build_dataset("train")
    reference = ImageFolderDataModule(str(images), **options).dataset("train")
    drawn = {}
    for epoch in (0, 2):
        shards.set_epoch(epoch + 1)  # litdata counts epochs from 1
        for index in range(9):
            drawn[epoch, index], target = shards[index]
            reference.transform.reseed(sample_seed(7, epoch, index))
            expected, expected_target = reference[index]
            (image, shift), (expected_image, expected_shift) = drawn[epoch, index], expected  # lighting: a shift
            assert torch.equal(image, expected_image) and torch.equal(
                torch.as_tensor(shift), torch.as_tensor(expected_shift)
            )
            assert target == expected_target, (epoch, index)
    assert not torch.equal(drawn[0, 0][0], drawn[2, 0][0])  # a new draw each epoch


def test_unreadable_training_images_are_replaced_and_counted(tmp_path: Path) -> None:
    images = write_jpeg_tree(tmp_path / "images", {"train": 2, "val": 1}, classes=["a", "b"])
    write_broken_images(images / "train" / "a", 2)
    convert_to_shards(images, tmp_path / "shards")
    module = ShardedDataModule(str(tmp_path / "shards"), crop_size=16, batch_size=3, num_workers=0, drop_last=False)
    module.setup("fit")
    batches = list(module.train_dataloader())
    assert sum(len(b[0]) for b in batches) == 6 and sum(int(b[2]) for b in batches) == 2


def test_converter_user_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "x.jpg")
    write_jpeg_tree(tmp_path / "ok", {"train": 1, "val": 1})
    (tmp_path / "taken").mkdir()
    cases = {
        str(tmp_path / "missing"): "does not exist",
        str(tmp_path / "flat"): "holds 1 images directly",
    }
    for root, message in [*cases.items(), (str(tmp_path / "ok"), "exists already")]:
        out = tmp_path / ("taken" if message == "exists already" else "new")
        with pytest.raises(SystemExit) as exit_:
            shard_command(["--root", root, "--out", str(out)])
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: ") and message in err[-1] and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "new").exists() and not (tmp_path / "new.partial").exists()


def test_an_interrupted_conversion_never_loads_as_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = write_jpeg_tree(tmp_path / "images", {"train": 4, "val": 2})
    out = tmp_path / "shards"
    read = shard_writer.read_bytes
    calls = []

    def killed_mid_val(path: str) -> bytes:  # the whole train split written, then the process dies
        calls.append(path)
        if len(calls) == 14:
            raise KeyboardInterrupt
        return read(path)

    monkeypatch.setattr(shard_writer, "read_bytes", killed_mid_val)
    with pytest.raises(KeyboardInterrupt):
        convert_to_shards(images, out, threads=1)
    assert not out.exists() and (tmp_path / "shards.partial" / "train" / "index.json").is_file()
    with pytest.raises(DatasetNotFoundError, match=r"shards\.partial is an interrupted conversion"):
        ShardedDataModule(str(out))
    monkeypatch.setattr(shard_writer, "read_bytes", read)
    convert_to_shards(images, out)  # starts again, over the partial folder
    assert not (tmp_path / "shards.partial").exists()
    assert ShardedDataModule(str(out)).num_samples == {"train": 12, "val": 6}


def test_the_shards_config_swaps_the_data_module_and_keeps_the_recipe() -> None:
    recipe = ["--config", str(CONFIGS / "imagenet/resnest101.yaml")]
    config = parsed_config(*recipe, "--config", str(CONFIGS / "data/shards.yaml"))
    files = parsed_config(*recipe).data.init_args
    assert config.data.class_path == "resnest_pl.data.ShardedDataModule"
    args = config.data.init_args
    assert args.root == "data/imagenet-shards"
    for key in ("crop_size", "auto_augment", "color_jitter", "lighting", "batch_size", "num_workers"):
        assert args[key] == files[key], key
    assert (args.eval_crop_size, args.crop_pct, args.interpolation) == (256, 256 / 288, "bicubic")  # the model's


# ---- two processes -------------------------------------------------------------------------------------------


def _rank_orders(rank: int, shards: str, init_file: str, num_workers: int, queue: mp.Queue) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    options = dict(crop_size=16, batch_size=4, num_workers=num_workers, color_jitter=0.0, lighting=0.0)

    def loader(state: dict | None = None, epoch: int = 0) -> object:
        module = ShardedDataModule(shards, **options)
        module.trainer = fit_trainer(world_size=2, global_rank=rank, current_epoch=epoch)  # type: ignore[assignment]
        if state:
            module.load_state_dict(state)
        module.setup("fit")
        return module.train_dataloader()

    full = loader()
    epochs = [[identities(b[0]) for b in full] for _ in range(2)]
    resumed = [identities(b[0]) for b in loader({"shuffle_seed": 0, "epoch": 1, "batches_done": 1})]
    at_epoch_start = [identities(b[0]) for b in loader(epoch=1)]
    module = ShardedDataModule(shards, **options)
    module.trainer = fit_trainer(world_size=2, global_rank=rank)  # type: ignore[assignment]
    module.setup("validate")
    val = [i for b in module.val_dataloader() for i in identities(b[0])]
    queue.put((rank, epochs, resumed, at_epoch_start, val))
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_ranks_share_each_epoch_and_resume_mid_epoch(solid: Path, tmp_path: Path) -> None:
    """Two gloo processes: every training image exactly once per epoch across the ranks, a new order each epoch;
    a loader restored after one batch of epoch 1 yields the rest of that epoch; val is split in halves."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    args = (str(solid / "shards"), str(tmp_path / "init"), 0, queue)
    processes = [context.Process(target=_rank_orders, args=(rank, *args)) for rank in range(2)]
    for process in processes:
        process.start()
    results = sorted(queue.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(timeout=30)
    assert all(p.exitcode == 0 for p in processes)
    (_, epochs0, resumed0, start0, val0), (_, epochs1, resumed1, start1, val1) = results
    for epoch in range(2):
        assert len(epochs0[epoch]) == len(epochs1[epoch]) == 3  # the same number of batches on each rank
        seen = [i for batch in epochs0[epoch] + epochs1[epoch] for i in batch]
        assert sorted(seen) == list(range(24))
    assert epochs0[0] != epochs0[1]
    assert (resumed0, resumed1) == (epochs0[1][1:], epochs1[1][1:])
    assert (start0, start1) == (epochs0[1], epochs1[1])
    assert (val0, val1) == ([0, 1, 2], [3, 4, 5])  # in order, one half each


# ---- the CLI ----------------------------------------------------------------------------------------------------


def cli_fit(shards: Path, root: Path, *extra: str) -> subprocess.CompletedProcess:
    args = ["fit", "--config", str(CONFIGS / "quickstart.yaml"), *QUICK, "--trainer.logger", "false"]
    args += ["--trainer.default_root_dir", str(root), "--trainer.max_epochs", "2", "--model.mixup_alpha", "0.2"]
    args += ["--data", "resnest_pl.data.ShardedDataModule", "--data.root", str(shards), "--data.crop_size", "32"]
    args += ["--data.eval_crop_size", "32", "--data.batch_size", "4", "--data.num_workers", "0"]
    result = run_killable([sys.executable, "-m", "resnest_pl.cli", *args, *extra], 240, cwd=ROOT)
    return result


@pytest.mark.slow
def test_cli_killed_mid_epoch_resumes_to_the_uninterrupted_weights(solid: Path, tmp_path: Path) -> None:
    """Shuffled, augmented, mixed; SIGKILLed in epoch 1 and resumed from its step-8 checkpoint (2 batches into the
    epoch): the final weights are the uninterrupted run's to the bit, so no batch was repeated or skipped."""
    shards = solid / "shards"
    full = cli_fit(shards, tmp_path / "full")
    assert full.returncode == 0, full.stderr[-3000:]
    save = ["--trainer.callbacks+=resnest_pl.callbacks.LastCheckpoint", "--trainer.callbacks.every_n_train_steps"]
    kill = ["--trainer.callbacks+=tests.interrupt.SignalAtStep", "--trainer.callbacks.step", "9"]
    killed = cli_fit(shards, tmp_path / "killed", *save, "2", *kill)
    assert killed.returncode == -9, killed.stderr[-3000:]
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 8
    resumed = cli_fit(shards, tmp_path / "killed", *save, "2", "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming epoch 1 after its first 2 batches" in resumed.stderr + resumed.stdout
    final = torch.load(last, weights_only=True)
    expected = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["global_step"] == expected["global_step"] == 12
    for key, value in expected["state_dict"].items():
        torch.testing.assert_close(final["state_dict"][key], value, rtol=0, atol=0, msg=key)


def test_resume_with_workers_from_shards_moved_elsewhere(solid: Path, tmp_path: Path) -> None:
    """Two loader workers (whose batches interleave), three batches done, and the shards copied to another folder
    in between (litdata's own saved state names the old path and would refuse it)."""
    options = dict(crop_size=16, batch_size=4, num_workers=2, color_jitter=0.0, lighting=0.0)

    def epoch_one(root: Path, state: dict | None = None) -> list[list[int]]:
        module = ShardedDataModule(str(root), **options)
        module.trainer = fit_trainer(world_size=1, global_rank=0, current_epoch=1)  # type: ignore[assignment]
        if state:
            module.load_state_dict(state)
        module.setup("fit")
        return [identities(b[0]) for b in module.train_dataloader()]

    full = epoch_one(solid / "shards")
    moved = tmp_path / "elsewhere"
    shutil.copytree(solid / "shards", moved)
    assert epoch_one(moved, {"shuffle_seed": 0, "epoch": 1, "batches_done": 3}) == full[3:]
    assert sorted(i for batch in full for i in batch) == list(range(24))


class RecordIdentities(Callback):
    """Appends ``[epoch, global step, identities]`` of every training batch to ``<folder>/rank<N>.jsonl``, line by
    line, so that a process killed mid-epoch leaves what it trained on."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: object, *_: object
    ) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        line = [trainer.current_epoch, trainer.global_step, identities(batch[0])]  # type: ignore[index]
        with open(self.folder / f"rank{trainer.global_rank}.jsonl", "a") as handle:
            handle.write(json.dumps(line) + "\n")


class KillJobAtStep(Callback):
    """Rank 0 SIGKILLs its whole process group (both ranks and their loader workers) after optimizer step ``step``,
    as a scheduler ends a job; a rank killed alone would leave the other failing in its next collective instead."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *_: object) -> None:
        if trainer.global_step == self.step and trainer.global_rank == 0:
            os.killpg(os.getpgrp(), signal.SIGKILL)


def recorded(folder: Path, rank: int) -> list[tuple[int, int, list[int]]]:
    return [tuple(json.loads(line)) for line in (folder / f"rank{rank}.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_ddp_cli_killed_mid_epoch_resumes_without_repeating_or_skipping(solid: Path, tmp_path: Path) -> None:
    """Two CPU processes through the CLI, killed after step 5 (epoch 1, 3 steps per epoch) and resumed from the
    step-4 checkpoint: over both runs and both ranks, each epoch trains on every image exactly once."""

    def ddp(run: str) -> list[str]:
        probe = {"class_path": "tests.data.test_shards.RecordIdentities", "init_args": {"folder": str(tmp_path / run)}}
        args = ["--config", str(CONFIGS / "trainer/cpu-ddp.yaml"), f"--trainer.callbacks+={json.dumps(probe)}"]
        return [*args, "--data.color_jitter", "0", "--data.lighting", "0"]  # the red level names each image

    save = ["--trainer.callbacks+=resnest_pl.callbacks.LastCheckpoint", "--trainer.callbacks.every_n_train_steps"]
    kill = ["--trainer.callbacks+=tests.data.test_shards.KillJobAtStep", "--trainer.callbacks.step", "5"]
    killed = cli_fit(solid / "shards", tmp_path / "run", *ddp("killed"), *save, "2", *kill)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    resumed = cli_fit(solid / "shards", tmp_path / "run", *ddp("resumed"), *save, "2", "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for epoch in range(2):
        trained = []
        for rank in range(2):
            # Batches the killed run trained on after its last checkpoint (step 4) are redone by the resumed run.
            kept = [ids for e, step, ids in recorded(tmp_path / "killed", rank) if e == epoch and step < 4]
            kept += [ids for e, _, ids in recorded(tmp_path / "resumed", rank) if e == epoch]
            assert len(kept) == 3, (rank, epoch, kept)
            trained += [i for ids in kept for i in ids]
        assert sorted(trained) == list(range(24)), epoch
