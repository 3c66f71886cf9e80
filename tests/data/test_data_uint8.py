"""uint8 loaders normalised on the device: the module sees the float pipeline's pixels; loader options and workers;
each val image counted once under DDP."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import albumentations as A
import cv2
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torchvision.datasets.cifar as tv_cifar
from albumentations.pytorch import ToTensorV2
from lightning_fabric.utilities.seed import pl_worker_init_function
from pytorch_lightning.callbacks import Callback
from torch.utils.data import DataLoader, Dataset, TensorDataset

from resnest_pl.data import CIFAR10DataModule, DigitsDataModule, ImageDataModule, ImageNetDataModule, normalize
from resnest_pl.data.datamodule import init_worker
from resnest_pl.data.resumable import ResumableSampler
from resnest_pl.data.transforms import IMAGENET_PCA_EIGVAL, IMAGENET_PCA_EIGVEC, ImageTransform, PCALighting
from resnest_pl.training.module import ResNeStClassifier

from ..fixtures import write_cifar10, write_jpeg_tree
from ..helpers import TINY_SMALL_INPUT, make_trainer

BATCH = 4


class FloatLighting(A.ImageOnlyTransform):
    """The PCA lighting of the float pipeline before uint8 loaders: the shift in normalised units, on the loader."""

    def __init__(self, alpha_std: float, std: tuple[float, float, float]) -> None:
        super().__init__(p=1.0)
        self.alpha_std, self.std = alpha_std, np.asarray(std)

    def get_params(self) -> dict[str, Any]:
        return {"alpha": self.random_generator.normal(0.0, self.alpha_std, size=3)}

    def apply(self, img: np.ndarray, alpha: np.ndarray, **params: Any) -> np.ndarray:
        shift = IMAGENET_PCA_EIGVEC @ (alpha * IMAGENET_PCA_EIGVAL) / self.std
        return cv2.add(img, (*shift.tolist(), 0.0))


def float_pipeline(transform: ImageTransform, mean: tuple, std: tuple) -> ImageTransform:
    """The same augmentations ending as the loaders used to: normalise, then lighting, to a float32 tensor."""
    kept = [t for t in transform.pipeline.transforms if not isinstance(t, PCALighting | ToTensorV2)]
    lighting = [FloatLighting(t.alpha_std, std) for t in transform.pipeline.transforms if isinstance(t, PCALighting)]
    return ImageTransform(A.Compose([*kept, A.Normalize(mean=mean, std=std), *lighting, ToTensorV2()]))


def expected_batch(dm: ImageDataModule, split: str) -> torch.Tensor:
    """What the float pipeline gave for the first batch of ``split``, with the same per-sample seeds."""
    dataset = dm.dataset(split)
    transform = dm.train_transform() if split == "train" else dm.eval_transform()
    dataset.transform = float_pipeline(transform, dm.mean, dm.std)
    if split != "train":
        return torch.stack([dataset[i][0] for i in range(BATCH)])
    sampler = ResumableSampler(dataset, seed=int(os.environ["PL_GLOBAL_SEED"]))
    samples = []
    for (index, seed, _epoch), _ in zip(sampler, range(BATCH), strict=False):
        dataset.transform.reseed(seed)
        samples.append(dataset[index][0])
    return torch.stack(samples)


class FirstBatches(Callback):
    """The first train and val batch as the module's steps see them, after the data module's
    ``on_after_batch_transfer``."""

    def __init__(self) -> None:
        self.batches: dict[str, tuple] = {}

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, *_: Any) -> None:
        self.batches.setdefault("train", batch)

    def on_validation_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, *_: Any) -> None:
        self.batches.setdefault("val", batch)


def imagenet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ImageDataModule:
    root = write_jpeg_tree(tmp_path / "imagenet", {"train": 4, "val": 2})
    return ImageNetDataModule(str(root), crop_size=40, eval_crop_size=48, batch_size=BATCH, num_workers=0)


def cifar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ImageDataModule:
    write_cifar10(tmp_path)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    return CIFAR10DataModule(root=str(tmp_path), batch_size=BATCH, num_workers=0)


def digits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ImageDataModule:
    return DigitsDataModule(image_size=16, batch_size=BATCH)


@pytest.mark.parametrize("make_data", [imagenet, cifar, digits])
def test_the_module_sees_the_float_pipelines_pixels(make_data, tmp_path, monkeypatch) -> None:
    """Loaders yield uint8; after the transfer the module's steps get the float pipeline's normalised images,
    PCA lighting included (each image's own draw, from its per-sample seed)."""
    pl.seed_everything(3)
    dm = make_data(tmp_path, monkeypatch)
    dm.setup("fit")
    raw = next(iter(dm.train_dataloader()))
    assert raw[0].dtype == next(iter(dm.val_dataloader()))[0].dtype == torch.uint8
    assert len(raw) == (4 if isinstance(dm, ImageNetDataModule) else 3)  # the lighting shifts of the images
    model = ResNeStClassifier(
        "resnest14d", num_classes=dm.num_classes, model_overrides=TINY_SMALL_INPUT, warmup_epochs=0
    )
    seen = FirstBatches()
    trainer = make_trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1, callbacks=[seen])
    trainer.fit(model, datamodule=dm)
    for split in ("train", "val"):
        images, targets, skipped = seen.batches[split]
        assert images.dtype == torch.float32 and targets.dtype == torch.int64 and skipped.item() == 0
        torch.testing.assert_close(images, expected_batch(dm, split), rtol=0, atol=1e-5)


def test_the_data_modules_hook_normalises_uint8_once_and_leaves_floats_alone() -> None:
    dm = DigitsDataModule(image_size=8, batch_size=2)
    floats = (torch.randn(2, 3, 8, 8), torch.zeros(2, dtype=torch.long), torch.zeros((), dtype=torch.long))
    assert dm.on_after_batch_transfer(floats, 0) is floats  # already normalised: left alone
    pixels = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    shift = torch.randn(2, 3) / 50  # PCA lighting's per-image shift: consumed
    images, targets, skipped = dm.on_after_batch_transfer((pixels, *floats[1:], shift), 0)
    torch.testing.assert_close(images, normalize(pixels, dm.mean, dm.std, pixel_shift=shift))
    assert targets is floats[1] and skipped is floats[2]
    cached = dm._normalization
    images, indices = dm.on_after_batch_transfer((pixels, floats[1]), 0)  # a predict batch
    assert indices is floats[1]
    torch.testing.assert_close(images, normalize(pixels, dm.mean, dm.std))
    assert dm._normalization is cached  # made once, not per batch
    dm.on_after_batch_transfer((pixels.to("meta"), floats[1].to("meta")), 0)  # a module moved to another device
    assert {tensor.device.type for tensor in dm._normalization} == {"meta"}


def test_uint8_batches_without_a_data_module_are_refused() -> None:
    model = ResNeStClassifier("resnest14d", num_classes=4, model_overrides=TINY_SMALL_INPUT, warmup_epochs=0)
    pixels = torch.zeros(4, 3, 16, 16, dtype=torch.uint8)
    loader = DataLoader(TensorDataset(pixels, torch.zeros(4, dtype=torch.long)), batch_size=2)
    message = "uint8 pixels but there is no data module with mean and std"
    with pytest.raises(ValueError, match=message):
        make_trainer(max_steps=1).fit(model, loader)
    for step in (model.training_step, model.validation_step, model.predict_step):
        with pytest.raises(ValueError, match=message):
            step((pixels[:2], torch.zeros(2, dtype=torch.long)), 0)


def fake_trainer(device: str, world_size: int = 1, rank: int = 0) -> SimpleNamespace:
    strategy = SimpleNamespace(root_device=torch.device(device))
    return SimpleNamespace(strategy=strategy, world_size=world_size, global_rank=rank)


def test_memory_is_pinned_only_for_a_gpu_trainer(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine running on its CPU
    dm = DigitsDataModule(batch_size=8)
    assert not dm.val_dataloader().pin_memory  # no trainer: the device is unknown
    dm.trainer = fake_trainer("cpu")
    assert not dm.val_dataloader().pin_memory and not dm.train_dataloader().pin_memory
    dm.trainer = fake_trainer("cuda")
    assert dm.val_dataloader().pin_memory and dm.train_dataloader().pin_memory
    assert not DigitsDataModule(pin_memory=False).val_dataloader().pin_memory  # explicit settings win
    assert DigitsDataModule(pin_memory=True).val_dataloader().pin_memory


class OpenCVThreads(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.zeros(3, 16, 16, dtype=torch.uint8), cv2.getNumThreads()


def test_loader_workers_run_opencv_on_one_thread() -> None:
    dm = DigitsDataModule(image_size=16, batch_size=2, num_workers=1, persistent_workers=False)
    dm._datasets["val"] = OpenCVThreads()
    assert cv2.getNumThreads() > 1  # the main process keeps OpenCV's default
    _, threads, _ = next(iter(dm.val_dataloader()))
    assert threads.tolist() == [1, 1]
    assert DigitsDataModule(num_workers=0).val_dataloader().worker_init_fn is None


def test_worker_init_does_not_hang_after_the_parent_used_opencvs_threads() -> None:
    """``cv2.setNumThreads(1)`` in a worker forked after the main process ran OpenCV on its thread pool waits
    forever for the pool's threads, which the fork did not copy."""
    image = np.random.default_rng(0).integers(0, 256, (1500, 1500, 3), dtype=np.uint8)
    cv2.GaussianBlur(image, (21, 21), 5)  # starts the main process's OpenCV threads
    init = DigitsDataModule(num_workers=1).val_dataloader().worker_init_fn
    loader = DataLoader(OpenCVThreads(), batch_size=2, num_workers=1, worker_init_fn=init, timeout=30)
    _, threads = next(iter(loader))
    assert threads.tolist() == [1, 1]


def test_worker_init_keeps_lightnings_worker_seeding(monkeypatch) -> None:
    threads = cv2.getNumThreads()
    try:
        monkeypatch.setenv("PL_SEED_WORKERS", "1")  # seed_everything(..., workers=True)
        torch.manual_seed(123)
        pl_worker_init_function(1, rank=1)
        expected = torch.initial_seed(), np.random.get_state()[1][:4].tolist()
        torch.manual_seed(123)
        init_worker(1, rank=1)
        assert (torch.initial_seed(), np.random.get_state()[1][:4].tolist()) == expected
        assert cv2.getNumThreads() == 1
        monkeypatch.setenv("PL_SEED_WORKERS", "0")
        torch.manual_seed(123)
        init_worker(1, rank=1)
        assert torch.initial_seed() == 123  # without workers=True, torch's own per-worker seeds stay
    finally:
        cv2.setNumThreads(threads)


@pytest.mark.slow
def test_ddp_validation_counts_every_image_once() -> None:
    """359 val digits on 2 processes: 180 and 179 images, 2 and 1 batches; padding would count one twice."""
    dm = DigitsDataModule(image_size=16, batch_size=179)
    assert len(dm.val_indices) == 359
    pl.seed_everything(0)
    model = ResNeStClassifier("resnest14d", num_classes=10, model_overrides=TINY_SMALL_INPUT)
    (single,) = make_trainer().validate(model, datamodule=dm, verbose=False)
    assert 0.0 < single["val/acc1"] < 1.0  # so that a repeated image would change it
    (ddp,) = make_trainer(strategy="ddp_spawn", devices=2).validate(model, datamodule=dm, verbose=False)
    assert ddp["val/acc1"] == single["val/acc1"] and ddp["val/acc5"] == single["val/acc5"]
    assert ddp["val/loss"] == pytest.approx(single["val/loss"], rel=1e-5)
    assert ddp["val/skipped_images"] == single["val/skipped_images"] == 0
