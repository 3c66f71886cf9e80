"""CIFAR data modules on small fixtures written in the official pickle format."""

import os
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar as tv_cifar
from PIL import Image

from resnest_pl.data import CIFAR10DataModule, CIFAR100DataModule, DatasetNotFoundError, normalize
from resnest_pl.data.cifar import CIFAR10_CLASSES

from ..fixtures import PER_BATCH, write_cifar10, write_cifar100


@pytest.fixture
def skip_md5(monkeypatch):
    """The fixtures are not the real files, so their md5s differ; accept any existing file."""
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


def test_cifar10_attributes_available_after_init(tmp_path):
    dm = CIFAR10DataModule(root=str(tmp_path))  # no data needed yet: the CLI reads these at instantiation
    assert dm.num_classes == 10 and dm.class_names == CIFAR10_CLASSES
    assert dm.crop_size == dm.eval_crop_size == 32
    assert len(dm.mean) == len(dm.std) == 3


@pytest.mark.parametrize("stage", ["fit", "validate", "test"])
def test_cifar10_setup_stages(tmp_path, skip_md5, stage):
    write_cifar10(tmp_path)
    dm = CIFAR10DataModule(root=str(tmp_path), batch_size=4, num_workers=0)
    dm.setup(stage)
    loader = {"fit": dm.train_dataloader, "validate": dm.val_dataloader, "test": dm.test_dataloader}[stage]()
    images, targets, skipped = next(iter(loader))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.uint8
    assert targets.dtype == torch.int64 and skipped.dtype == torch.int64 and skipped.item() == 0
    assert len(loader.dataset) == (5 * PER_BATCH if stage == "fit" else 12)


def test_cifar10_eval_batches_are_the_normalised_test_images(tmp_path, skip_md5):
    test = write_cifar10(tmp_path)
    dm = CIFAR10DataModule(root=str(tmp_path), batch_size=12, num_workers=0)
    dm.setup("test")
    images, targets, _ = next(iter(dm.test_dataloader()))
    assert torch.equal(images[0], torch.from_numpy(test[0].reshape(3, 32, 32)))
    expected = (test[0].reshape(3, 32, 32) / 255 - np.array(dm.mean)[:, None, None]) / np.array(dm.std)[:, None, None]
    normalised = normalize(images, dm.mean, dm.std)
    assert torch.allclose(normalised[0], torch.tensor(expected, dtype=torch.float32), atol=1e-5)
    assert targets.tolist() == [j % 10 for j in range(12)]


def test_cifar10_train_batches_are_augmented(tmp_path, skip_md5):
    write_cifar10(tmp_path)
    dm = CIFAR10DataModule(root=str(tmp_path), num_workers=0)
    dm.setup("fit")
    torch.manual_seed(0)
    train = torch.stack([dm.dataset("train")[0][0] for _ in range(4)])
    assert not all(torch.equal(train[0], t) for t in train[1:])  # random crop / flip


def test_cifar10_val_fraction_holds_out_part_of_train(tmp_path, skip_md5):
    write_cifar10(tmp_path)
    dm = CIFAR10DataModule(root=str(tmp_path), val_fraction=0.25, batch_size=2, num_workers=0)
    dm.setup("fit")
    dm.setup("test")
    train, val, test = dm.dataset("train"), dm.dataset("val"), dm.dataset("test")
    assert (len(train), len(val), len(test)) == (40, 10, 12)
    assert set(train.indices).isdisjoint(val.indices)
    assert sorted(val.dataset.targets[i] for i in val.indices) == list(range(10))  # stratified: one per class


def test_cifar100(tmp_path, skip_md5):
    write_cifar100(tmp_path)
    dm = CIFAR100DataModule(root=str(tmp_path), batch_size=5, num_workers=0)
    assert dm.num_classes == 100 and dm.class_names[:3] == ["apple", "aquarium_fish", "baby"]
    dm.setup("fit")
    images, targets, _ = next(iter(dm.train_dataloader()))
    assert images.shape == (5, 3, 32, 32) and int(targets.max()) < 100
    assert len(dm.dataset("train")) == 200 and len(dm.dataset("val")) == 20


def test_cifar_predict_on_files(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    for i, size in enumerate([(32, 32), (64, 48)]):
        Image.new("RGB", size, (i * 100, 20, 20)).save(folder / f"{i}.png")
    dm = CIFAR10DataModule(root=str(tmp_path / "absent"), predict_paths=str(folder), batch_size=4, num_workers=0)
    dm.setup("predict")
    images, indices = next(iter(dm.predict_dataloader()))
    assert images.shape == (2, 3, 32, 32) and indices.tolist() == [0, 1]
    assert [Path(p).name for p in dm.predict_files] == ["0.png", "1.png"]


def test_cifar_missing_without_download_explains_the_fix(tmp_path):
    dm = CIFAR10DataModule(root=str(tmp_path / "cifar"), num_workers=0)
    with pytest.raises(DatasetNotFoundError) as info:
        dm.setup("fit")
    message = str(info.value)
    assert str(tmp_path / "cifar") in message and "cifar-10-batches-py" in message and "download=True" in message


def test_cifar_keeps_the_checksum_check(tmp_path):
    write_cifar10(tmp_path)  # fixture files do not match the official md5s
    with pytest.raises(DatasetNotFoundError, match="checksums"):
        CIFAR10DataModule(root=str(tmp_path), num_workers=0).setup("test")


def test_cifar_download_without_internet_explains_the_fix(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)
    dm = CIFAR100DataModule(root=str(tmp_path), download=True)
    with pytest.raises(DatasetNotFoundError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert "could not download CIFAR-100" in message and "name resolution" in message
    assert "cifar-100-python" in message and "internet" in message
