"""The offline digits data module, and the data modules inside Lightning and jsonargparse."""

import albumentations as A
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from jsonargparse import ArgumentParser
from PIL import Image
from torch import nn

from resnest_pl.data import DigitsDataModule, ImageNetDataModule, normalize
from resnest_pl.data.digits import digits_images


def test_digits_attributes_shapes_and_dtypes():
    dm = DigitsDataModule(batch_size=16)
    assert dm.num_classes == 10 and dm.class_names == [str(d) for d in range(10)]
    assert dm.crop_size == dm.eval_crop_size == 32
    assert dm.mean[0] == dm.mean[1] == dm.mean[2] and 0 < dm.mean[0] < 0.5 and 0.2 < dm.std[0] < 0.6
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        images, targets, skipped = next(iter(loader))
        assert images.shape == (16, 3, 32, 32) and images.dtype == torch.uint8
        assert targets.dtype == torch.int64 and skipped.item() == 0
    assert torch.equal(images[:, 0], images[:, 2])  # grey in three channels


def test_digits_images_are_upscaled_white_on_black():
    images, labels = digits_images(48)
    assert images.shape == (1797, 48, 48, 3) and images.dtype == np.uint8
    assert labels.shape == (1797,) and set(labels.tolist()) == set(range(10))
    assert images[:, 0, 0].max() < 30 and images.max() == 255  # dark corners, bright ink


def test_digits_split_is_stratified_and_seeded():
    dm = DigitsDataModule(val_fraction=0.2, seed=0)
    train, val = dm.train_indices, dm.val_indices
    assert len(train) + len(val) == 1797 and len(np.intersect1d(train, val)) == 0
    val_share = np.bincount(dm.targets[val], minlength=10) / np.bincount(dm.targets, minlength=10)
    assert np.all(np.abs(val_share - 0.2) < 0.02)
    assert np.array_equal(DigitsDataModule(seed=0).val_indices, val)
    assert not np.array_equal(DigitsDataModule(seed=1).val_indices, val)
    assert len(dm.dataset("val")) == len(dm.dataset("test")) == len(val)


def test_digits_training_shifts_but_never_flips():
    transforms = DigitsDataModule(max_shift=3).train_transform().pipeline.transforms
    assert not any(isinstance(t, A.HorizontalFlip | A.VerticalFlip) for t in transforms)
    (pad,) = [t for t in transforms if isinstance(t, A.Pad)]
    assert pad.padding == 3


def test_digits_batches_carry_learnable_labels():
    """A linear classifier trained for a few epochs through the loaders must beat 85 %: images match labels."""
    torch.manual_seed(0)
    dm = DigitsDataModule(batch_size=64)
    model = nn.Sequential(nn.AdaptiveAvgPool2d(8), nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        for images, targets, _ in dm.train_dataloader():
            loss = nn.functional.cross_entropy(model(normalize(images, dm.mean, dm.std)), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        correct = sum(
            int((model(normalize(x, dm.mean, dm.std)).argmax(1) == y).sum()) for x, y, _ in dm.val_dataloader()
        )
    assert correct / len(dm.val_indices) > 0.85


class TinyClassifier(pl.LightningModule):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, num_classes))
        self.seen: dict[str, int] = {}

    def _step(self, batch, stage):
        images, targets = batch[0], batch[1]
        assert len(batch) == 3 and batch[2].dtype == torch.int64
        self.seen[stage] = self.seen.get(stage, 0) + len(targets)
        assert images.dtype == torch.float32  # normalised on the device by the data module's batch hook
        return nn.functional.cross_entropy(self.net(images), targets)

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def predict_step(self, batch, batch_idx):
        images, indices = batch
        assert images.dtype == torch.float32
        return indices, self.net(images).argmax(1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_runs_every_stage(tmp_path):
    for i in range(3):
        Image.new("L", (8, 8), 40 * i).save(tmp_path / f"digit{i}.png")
    dm = DigitsDataModule(batch_size=32, predict_paths=str(tmp_path))
    model = TinyClassifier(dm.num_classes)
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=2,
        limit_test_batches=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    trainer.validate(model, datamodule=dm, verbose=False)
    trainer.test(model, datamodule=dm, verbose=False)
    assert model.seen["train"] == 96 and model.seen["test"] == 64
    ((indices, predictions),) = trainer.predict(model, datamodule=dm)
    assert indices.tolist() == [0, 1, 2] and predictions.shape == (3,)
    assert len(dm.predict_files) == 3


def test_constructor_arguments_parse_with_jsonargparse(tmp_path):
    parser = ArgumentParser()
    parser.add_class_arguments(DigitsDataModule, "data")
    parser.add_class_arguments(ImageNetDataModule, "imagenet")
    (tmp_path / "train" / "n0").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "train" / "n0" / "a.jpg")
    args = [
        "--data.batch_size=8",
        "--data.predict_paths=[a.png, b.png]",
        f"--imagenet.root={tmp_path}",
        "--imagenet.auto_augment=randaugment",
        "--imagenet.eval_crop_size=256",
    ]
    config = parser.parse_args(args)
    digits, imagenet = DigitsDataModule(**config.data), ImageNetDataModule(**config.imagenet)
    assert digits.batch_size == 8 and digits.predict_paths == ["a.png", "b.png"]
    assert imagenet.auto_augment == "randaugment" and imagenet.eval_crop_size == 256
    assert "images per batch on each device" in parser.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args([*args[:-2], "--imagenet.auto_augment=mixup"])
