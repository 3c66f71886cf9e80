"""ImageNet and ImageFolder data modules on small JPEG trees written with PIL."""

import logging
from pathlib import Path

import albumentations as A
import cv2
import pytest
import torch

from resnest_pl.data import DataLayoutError, DatasetNotFoundError, ImageFolderDataModule, ImageNetDataModule

from ..fixtures import WNIDS, write_broken_images, write_images, write_jpeg_tree


def first_batch(loader):
    return next(iter(loader))


@pytest.fixture
def imagenet(tmp_path) -> Path:
    return write_jpeg_tree(tmp_path / "imagenet", {"train": 4, "val": 2})


def test_imagenet_attributes_after_init(imagenet):
    dm = ImageNetDataModule(str(imagenet), crop_size=64, eval_crop_size=72)
    assert dm.num_classes == 3 and dm.class_names == WNIDS
    assert (dm.crop_size, dm.eval_crop_size) == (64, 72)
    assert dm.mean == (0.485, 0.456, 0.406)
    default = ImageNetDataModule(str(imagenet))  # built directly: the CLI passes the model's published settings
    assert (default.eval_crop_size, default.crop_pct, default.interpolation) == (224, 0.875, "bicubic")


def test_imagenet_stages_and_batch_format(imagenet, tmp_path):
    predict_dir = write_images(tmp_path / "to_predict", 3, size=(90, 60))[0].parent
    dm = ImageNetDataModule(
        str(imagenet), crop_size=64, eval_crop_size=72, batch_size=4, num_workers=0, predict_paths=str(predict_dir)
    )
    dm.setup("fit")
    images, targets, skipped, pixel_shift = first_batch(dm.train_dataloader())
    assert images.shape == (4, 3, 64, 64) and images.dtype == torch.uint8
    assert pixel_shift.shape == (4, 3) and pixel_shift.dtype == torch.float32  # PCA lighting, added on the device
    assert targets.dtype == torch.int64 and set(targets.tolist()) <= {0, 1, 2}
    assert skipped.shape == () and skipped.item() == 0
    assert len(dm.train_dataloader()) == 3  # 12 images, drop_last
    dm.setup("validate")
    images, targets, _ = first_batch(dm.val_dataloader())
    assert images.shape == (4, 3, 72, 72) and images.dtype == torch.uint8
    assert targets.tolist() == [0, 0, 1, 1]  # sorted, not shuffled
    dm.setup("test")
    assert len(dm.test_dataloader().dataset) == 6  # test is val
    dm.setup("predict")
    images, indices = first_batch(dm.predict_dataloader())
    assert images.shape == (3, 3, 72, 72) and images.dtype == torch.uint8 and indices.tolist() == [0, 1, 2]
    assert [Path(p).name for p in dm.predict_files] == [f"to_predict_{i}.JPEG" for i in range(3)]


def test_imagenet_default_crops_and_bicubic_from_320(imagenet):
    dm = ImageNetDataModule(str(imagenet), batch_size=2, num_workers=0)
    assert first_batch(dm.train_dataloader())[0].shape == (2, 3, 224, 224)
    large = ImageNetDataModule(str(imagenet), crop_size=320, eval_crop_size=416)
    (crop,) = [t for t in large.train_transform().pipeline.transforms if isinstance(t, A.RandomResizedCrop)]
    assert crop.interpolation == cv2.INTER_CUBIC


def test_imagenet_flat_val_is_explained(tmp_path):
    root = write_jpeg_tree(tmp_path / "imagenet", {"train": 1})
    write_images(root / "val", 3)  # the raw ILSVRC2012 val download: JPEGs directly in val/
    with pytest.raises(DataLayoutError) as info:
        ImageNetDataModule(str(root))
    message = str(info.value)
    assert str(root / "val") in message and "holds 3 images directly" in message
    assert "raw ILSVRC2012 val" in message and "valprep.sh" in message


def test_imagenet_missing_root(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="does not exist") as info:
        ImageNetDataModule(str(tmp_path / "missing"))
    assert str(tmp_path / "missing") in str(info.value) and "train/<wnid>" in str(info.value)
    with pytest.raises(DatasetNotFoundError, match="neither train/ nor val/"):
        ImageNetDataModule(str(tmp_path))


def test_imagenet_with_val_only_evaluates(tmp_path):
    root = write_jpeg_tree(tmp_path / "imagenet", {"val": 2})
    dm = ImageNetDataModule(str(root), batch_size=2, num_workers=0)
    assert dm.class_names == WNIDS
    dm.setup("validate")
    assert len(dm.val_dataloader().dataset) == 6
    with pytest.raises(DatasetNotFoundError, match="train folder"):
        dm.setup("fit")


def test_imagenet_empty_class_folder_is_named(imagenet):
    (imagenet / "train" / "n09999999").mkdir()
    dm = ImageNetDataModule(str(imagenet), num_workers=0)
    with pytest.raises(DataLayoutError, match="has no images") as info:
        dm.setup("fit")
    assert "n09999999" in str(info.value)


def test_imagenet_val_class_unknown_to_train(imagenet):
    write_images(imagenet / "val" / "n07777777", 1)
    with pytest.raises(DataLayoutError, match="n07777777"):
        ImageNetDataModule(str(imagenet), num_workers=0).setup("validate")


def test_corrupt_image_is_skipped_counted_and_logged(imagenet, caplog):
    bad = imagenet / "val" / WNIDS[0] / "broken.JPEG"
    bad.write_bytes(b"\xff\xd8 this is not really a jpeg" * 10)
    dm = ImageNetDataModule(str(imagenet), crop_size=32, batch_size=8, num_workers=0)
    dm.setup("validate")
    with caplog.at_level(logging.WARNING, logger="resnest_pl.data"):
        batches = list(dm.val_dataloader())
    ((images, targets, skipped),) = batches  # 7 files in one batch of 8
    assert skipped.item() == 1 and images.shape == (6, 3, 32, 32) and len(targets) == 6
    assert str(bad) in caplog.text


def test_corrupt_training_images_are_replaced_in_worker_processes(imagenet):
    for i in range(2):
        (imagenet / "train" / WNIDS[1] / f"broken{i}.JPEG").write_bytes(b"garbage")
    dm = ImageNetDataModule(str(imagenet), crop_size=32, batch_size=14, num_workers=1, drop_last=False)
    dm.setup("fit")
    ((images, targets, skipped, _),) = list(dm.train_dataloader())
    assert skipped.item() == 2 and images.shape == (14, 3, 32, 32) and len(targets) == 14


def test_unreadable_training_image_is_replaced_by_the_next_readable_one(tmp_path, caplog):
    """``a/a_0, a/a_broken_0, a/a_broken_1, b/b_0``: the broken files are replaced by ``b_0``, the broken-only
    batch included, the last file wraps around to the first, and each broken file is counted once when drawn."""
    root = tmp_path / "data"
    write_images(root / "a", 1)
    broken = write_broken_images(root / "a", 2)
    write_images(root / "b", 1, seed=1)
    dm = ImageFolderDataModule(str(root), val_fraction=0, crop_size=16, batch_size=2, num_workers=0)
    dataset = dm.dataset("train")
    assert [Path(f).name for f in dataset.files] == ["a_0.JPEG", "a_broken_0.JPEG", "a_broken_1.JPEG", "b_0.JPEG"]
    with caplog.at_level(logging.WARNING, logger="resnest_pl.data"):
        samples = [dataset[i] for i in range(4)]
    assert [len(s) for s in samples] == [2, 3, 3, 2]
    assert [s[1] for s in samples] == [0, 1, 1, 1] and samples[1][2] == samples[2][2] == 1
    assert [r.args[0] for r in caplog.records] == [str(p) for p in broken]
    collate = dm.train_dataloader().collate_fn
    images, targets, skipped, _ = collate([samples[1], samples[2]])  # a batch of only unreadable files
    assert images.shape == (2, 3, 16, 16) and targets.tolist() == [1, 1] and skipped.item() == 2
    assert collate([samples[0], samples[3]])[2].item() == 0

    dataset.transform = lambda image: torch.from_numpy(image.copy())  # no random augmentation: compare pixels
    assert torch.equal(dataset[1][0], dataset[3][0]) and torch.equal(dataset[2][0], dataset[3][0])

    (root / "b" / "b_0.JPEG").write_bytes(b"garbage")  # the last file: its replacement wraps around to a_0
    assert dataset[3][1:] == (0, 1)


def test_split_without_a_readable_image_is_named(tmp_path):
    write_broken_images(tmp_path / "data" / "a", 2)
    dm = ImageFolderDataModule(str(tmp_path / "data"), val_fraction=0, crop_size=16, num_workers=0)
    with pytest.raises(ValueError, match="none of the 2 images of this split can be read"):
        dm.dataset("train")[0]


def test_evaluation_drops_unreadable_images_even_a_whole_batch(tmp_path):
    root = write_jpeg_tree(tmp_path / "data", {"train": 1, "val": 1}, classes=["a", "b"])
    (root / "val" / "b" / "b_0.JPEG").write_bytes(b"garbage")
    dm = ImageFolderDataModule(str(root), crop_size=16, batch_size=1, num_workers=0)
    dm.setup("validate")
    batches = list(dm.val_dataloader())
    assert [int(b[2]) for b in batches] == [0, 1]
    assert batches[1][0].shape == (0, 3, 16, 16) and batches[1][1].shape == (0,)
    assert batches[1][0].dtype == batches[0][0].dtype == torch.uint8


def test_image_folder_train_val_test_layout(tmp_path):
    root = write_jpeg_tree(tmp_path / "pets", {"train": 3, "val": 2, "test": 1}, classes=["cat", "dog"])
    dm = ImageFolderDataModule(
        str(root), crop_size=48, eval_crop_size=56, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), num_workers=0
    )
    assert dm.class_names == ["cat", "dog"] and dm.num_classes == 2
    for stage in ("fit", "validate", "test"):
        dm.setup(stage)
    assert [len(dm.dataset(s)) for s in ("train", "val", "test")] == [6, 4, 2]
    images, targets, _ = first_batch(dm.test_dataloader())
    assert images.shape == (2, 3, 56, 56) and targets.tolist() == [0, 1]
    assert dm.mean == (0.5, 0.5, 0.5) and dm.std == (0.25, 0.25, 0.25)  # normalised on the device


@pytest.mark.parametrize("inside_train", [False, True])
def test_image_folder_seeded_stratified_split(tmp_path, inside_train):
    base = tmp_path / "flowers"
    for k, name in enumerate(["daisy", "rose", "tulip"]):
        write_images((base / "train" if inside_train else base) / name, 5, seed=k)

    def split(seed):
        dm = ImageFolderDataModule(str(base), val_fraction=0.2, seed=seed, num_workers=0)
        dm.setup("fit")
        return dm.dataset("train"), dm.dataset("val")

    train, val = split(0)
    assert len(train) == 12 and len(val) == 3
    assert sorted(val.targets) == [0, 1, 2]  # one image of each class
    assert set(train.files).isdisjoint(val.files)
    assert split(0)[1].files == val.files
    assert any(split(seed)[1].files != val.files for seed in (1, 2, 3))


def test_image_folder_without_split_or_val(tmp_path):
    write_images(tmp_path / "data" / "a", 2)
    write_images(tmp_path / "data" / "b", 2)
    dm = ImageFolderDataModule(str(tmp_path / "data"), val_fraction=0, num_workers=0)
    assert len(dm.dataset("train")) == 4
    with pytest.raises(DatasetNotFoundError, match="val_fraction"):
        dm.setup("validate")


def test_image_folder_layout_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        ImageFolderDataModule(str(tmp_path / "missing"))
    write_images(tmp_path / "only_val" / "val" / "a", 1)
    with pytest.raises(DataLayoutError, match="no train/"):
        ImageFolderDataModule(str(tmp_path / "only_val"))
    write_images(tmp_path / "flat", 2)
    with pytest.raises(DataLayoutError, match="directly"):
        ImageFolderDataModule(str(tmp_path / "flat"))
    with pytest.raises(ValueError, match="auto_augment"):
        ImageFolderDataModule(str(tmp_path / "flat" / ".."), auto_augment="autoaugmnet")


def test_predict_errors_are_clear(imagenet):
    dm = ImageNetDataModule(str(imagenet), num_workers=0)
    with pytest.raises(ValueError, match="predict_paths"):
        dm.setup("predict")
    dm = ImageNetDataModule(str(imagenet), num_workers=0, predict_paths=[str(imagenet / "nope.jpg")])
    with pytest.raises(DatasetNotFoundError, match=r"nope\.jpg"):
        dm.setup("predict")
