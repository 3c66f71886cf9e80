"""decode_on_device: workers read JPEG bytes; decoding, crop, flip and lighting happen in the module's batch hook.

No GPU here: the device side runs with ``device="cpu"`` (``decode_jpeg`` decodes a list on the CPU too), and the
refusal on a CPU trainer is checked through the CLI.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as TF
from lightning_fabric.utilities.apply_func import move_data_to_device
from PIL import Image
from pytorch_lightning.callbacks import Callback
from torchvision.io import decode_jpeg
from torchvision.transforms.v2 import functional as F

from resnest_pl.data import ImageFolderDataModule, device_decode, normalize
from resnest_pl.data import image_folder as image_folder_module
from resnest_pl.data.decode import read_image
from resnest_pl.data.device_decode import (
    CropDraw,
    check_decode_device,
    color_jitter,
    crop_image,
    decode_batch,
    decode_images,
    draw_crop,
)
from resnest_pl.data.encoded import EXIF_ORIENTATION, DeviceCrop, EncodedImage, EncodedImages, read_encoded
from resnest_pl.data.transforms import IMAGENET_PCA_EIGVAL, IMAGENET_PCA_EIGVEC
from resnest_pl.training.module import ResNeStClassifier

from ..fixtures import write_broken_images, write_images
from ..helpers import CONFIGS, QUICK, TINY, make_trainer, run_cli

SIZES = [(60, 45), (45, 60), (80, 30)]  # width x height of each class's JPEGs
CROP = 24
BATCH = 4


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/<class>/ with 4 JPEGs per class, a differently sized set per class; val/<class>/ with one."""
    root = tmp_path_factory.mktemp("jpegs")
    for k, size in enumerate(SIZES):
        write_images(root / "train" / f"c{k}", 4, seed=k, size=size)
        write_images(root / "val" / f"c{k}", 1, seed=10 + k, size=size)
    return root


def device_data(root: Path, **kwargs: Any) -> ImageFolderDataModule:
    options: dict[str, Any] = dict(
        crop_size=CROP, decode_on_device=True, batch_size=BATCH, num_workers=0, drop_last=False
    )
    options.update(kwargs)
    return ImageFolderDataModule(str(root), **options)


def resized_box(image: torch.Tensor, draw: CropDraw, size: int, mode: str) -> torch.Tensor:
    """The drawn box of a ``uint8`` image resized with antialiasing in float, rounded to ``uint8``, not flipped."""
    box = image[:, draw.top : draw.top + draw.height, draw.left : draw.left + draw.width].float()
    resized = TF.interpolate(box[None], size=(size, size), mode=mode, antialias=True, align_corners=False)[0]
    return resized.round().clamp(0, 255).to(torch.uint8)


def reference_crop(path: str, draw: CropDraw, size: int, mode: str = "bilinear") -> torch.Tensor:
    """The drawn box of the decoded file, resized and flipped, done here by hand."""
    out = resized_box(decode_jpeg(torch.from_numpy(np.fromfile(path, dtype=np.uint8))), draw, size, mode)
    return out.flip(-1) if draw.flip else out


def max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def test_crop_draws_follow_the_seed_and_the_recipe_ranges() -> None:
    crop = DeviceCrop.recipe(CROP, color_jitter=0.4, lighting=0.1)
    assert crop.scale == (0.08, 1.0) and DeviceCrop.recipe(320, 0.0, 0.0).scale == (0.1, 1.0)  # the CPU recipe's
    draws = [draw_crop(seed, 300, 400, crop) for seed in range(300)]
    assert draws == [draw_crop(seed, 300, 400, crop) for seed in range(300)]  # a function of the seed alone
    assert len(set(draws)) == 300
    for draw in draws:
        assert 0 <= draw.top <= 300 - draw.height and 0 <= draw.left <= 400 - draw.width
        # Rounding the box's sides to pixels moves its area and ratio a little off the drawn ones.
        assert 0.08 * 0.9 <= draw.height * draw.width / (300 * 400) <= 1.0
        assert 3 / 4 * 0.9 <= draw.width / draw.height <= 4 / 3 * 1.1
    assert 120 < sum(draw.flip for draw in draws) < 180
    alphas = np.array([draw.alpha for draw in draws])
    assert 0.08 < alphas.std() < 0.12 and abs(alphas.mean()) < 0.02
    factors = np.array([draw.jitter for draw in draws])
    assert 0.6 <= factors.min() < 0.62 and 1.38 < factors.max() <= 1.4
    assert {draw.jitter_order for draw in draws} == set(itertools.permutations(range(3)))
    # The flip, the jitter and the lighting do not depend on the image's size, only the box does.
    other = draw_crop(7, 50, 70, crop)
    assert other[4:] == draws[7][4:] and other[:4] != draws[7][:4]
    # No box of the drawn shape fits a 1000 x 10 strip: the fallback is the centre at the widest allowed ratio.
    assert draw_crop(3, 1000, 10, crop)[:4] == ((1000 - 13) // 2, 0, 13, 10)  # 13 = round(10 / (3 / 4))


def test_crop_image_resizes_the_box_and_flips_it() -> None:
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 50, 70), dtype=np.uint8))
    draw = CropDraw(top=5, left=10, height=30, width=40, flip=False, alpha=(0.0, 0.0, 0.0))
    out = crop_image(image, draw, 16)
    assert out.shape == (3, 16, 16) and out.dtype == torch.uint8
    flipped = crop_image(image, draw._replace(flip=True), 16)
    assert torch.equal(flipped, out.flip(-1)) and not torch.equal(flipped, out)
    box = image[:, 5:35, 10:50].float()[None]
    expected = TF.interpolate(box, size=(16, 16), mode="bilinear", antialias=True, align_corners=False)[0]
    assert (out.float() - expected).abs().max() <= 1.0  # uint8 and float resizing round differently


@pytest.mark.parametrize(
    ("box", "size", "mode"),
    [((350, 420), 320, "bicubic"), ((200, 240), 320, "bicubic"), ((350, 420), 319, "bilinear")],
)
def test_crops_of_320_pixels_and_more_are_resized_bicubic(box: tuple[int, int], size: int, mode: str) -> None:
    """The recipe resizes bicubic from 320 pixels, bilinear below; shrinking or enlarging. Grey levels 64-191 keep
    bicubic's overshoot inside 0-255, which a ``uint8`` resize would clip between its two passes."""
    image = torch.from_numpy(np.random.default_rng(2).integers(64, 192, (3, 400, 500), dtype=np.uint8))
    draw = CropDraw(top=20, left=30, height=box[0], width=box[1], flip=False)
    out = crop_image(image, draw, size)
    assert out.shape == (3, size, size) and out.dtype == torch.uint8
    assert max_difference(out, resized_box(image, draw, size, mode)) <= 1.0  # uint8 and float round differently
    other = "bilinear" if mode == "bicubic" else "bicubic"
    assert max_difference(out, resized_box(image, draw, size, other)) > 8


def test_color_jitter_applies_each_images_factors_in_its_order() -> None:
    images = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (6, 3, 8, 8), dtype=np.uint8))
    crop = DeviceCrop.recipe(8, color_jitter=0.4, lighting=0.0)
    draws = [draw_crop(seed, 8, 8, crop) for seed in range(6)]
    out = color_jitter(images, draws)
    adjust = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation)
    for image, draw, result in zip(images, draws, out, strict=True):
        expected = image.float() / 255  # torchvision's own adjustments, one image and one factor at a time
        for kind in draw.jitter_order:
            expected = adjust[kind](expected, draw.jitter[kind])
        assert (result.float() - expected * 255).abs().max() <= 0.51
    assert not torch.equal(out, images)
    unjittered = [draw._replace(jitter=(1.0, 1.0, 1.0)) for draw in draws]
    assert torch.equal(color_jitter(images, unjittered), images)


@pytest.mark.parametrize(("size", "mode"), [(CROP, "bilinear"), (320, "bicubic")])
def test_batches_match_a_reference_crop_of_each_decoded_file(folder: Path, size: int, mode: str) -> None:
    data = device_data(folder, crop_size=size, color_jitter=0.0, lighting=0.1)
    data.setup("fit")  # no trainer: nothing to refuse
    loader = data.train_dataloader()
    keys = list(loader.sampler)[:BATCH]
    batch = next(iter(loader))
    assert isinstance(batch[0], EncodedImages) and len(batch) == 3
    images, targets, skipped, shift = decode_batch(batch, "cpu")
    assert images.shape == (BATCH, 3, size, size) and images.dtype == torch.uint8
    dataset = data.dataset("train")
    assert targets.tolist() == [dataset.targets[index] for index, _, _ in keys] and int(skipped) == 0
    crop = DeviceCrop.recipe(size, 0.0, 0.1)
    for i, (index, seed, _) in enumerate(keys):
        path = dataset.files[index]
        width, height = Image.open(path).size
        draw = draw_crop(seed, height, width, crop)
        # uint8 and float resizing round differently; a uint8 bicubic resize also rounds between its two passes.
        assert max_difference(images[i], reference_crop(path, draw, size, mode)) <= (1 if mode == "bilinear" else 2)
        expected_shift = IMAGENET_PCA_EIGVEC @ (np.array(draw.alpha) * IMAGENET_PCA_EIGVAL)
        assert torch.allclose(shift[i], torch.tensor(expected_shift, dtype=torch.float32))
    # The same keys give the same pixels: a resumed run decodes and crops exactly as before.
    assert torch.equal(decode_batch(next(iter(data.train_dataloader())), "cpu")[0], images)


def test_the_crop_follows_the_progressive_resizing_schedule(folder: Path) -> None:
    data = device_data(folder, lighting=0.0, train_crop_schedule={1: 16})
    loader = data.train_dataloader()
    sides = []
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        batches = [decode_batch(batch, "cpu") for batch in loader]
        assert all(len(batch) == 3 for batch in batches)  # no lighting, no pixel_shift
        sides.append({batch[0].shape[-1] for batch in batches})
    assert sides == [{CROP}, {16}]


def test_unreadable_files_are_replaced_and_counted_and_other_formats_decoded_by_workers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_images(tmp_path / "a", 5, seed=0, size=(40, 30))
    broken = write_broken_images(tmp_path / "a", 2)  # a truncated JPEG (found on the device) and no image at all
    png = tmp_path / "b" / "flat.png"
    png.parent.mkdir()
    Image.fromarray(np.full((30, 40, 3), (10, 200, 30), dtype=np.uint8)).save(png)
    data = device_data(
        tmp_path,
        val_fraction=0.0,
        color_jitter=0.0,
        lighting=0.0,
        batch_size=3,
        num_workers=1,
        persistent_workers=False,
    )
    loader = data.train_dataloader()
    keys = [index for index, _, _ in loader.sampler]
    with caplog.at_level(logging.WARNING):
        batches = [decode_batch(batch, "cpu") for batch in loader]
    assert [len(images) for images, *_ in batches] == [3, 3, 2]  # every batch full (but the last of 8 files)
    assert sum(int(skipped) for _, _, skipped in batches) == 2  # each unreadable file counted once
    # The truncated JPEG is found on the device side; the other by the worker, whose log caplog does not see.
    assert f"skipping unreadable or corrupt image {broken[0]}" in caplog.text
    position = keys.index(data.dataset("train").files.index(str(png)))
    images, targets, _ = batches[position // 3]
    assert targets[position % 3] == 1  # class b
    assert images[position % 3].float().mean(dim=(1, 2)).tolist() == [10.0, 200.0, 30.0]


def test_a_batch_without_jpegs_is_decoded_by_the_workers(tmp_path: Path) -> None:
    for k, colour in enumerate([(0, 0, 255), (255, 0, 0)]):
        (tmp_path / f"c{k}").mkdir()
        Image.fromarray(np.full((30, 40, 3), colour, dtype=np.uint8)).save(tmp_path / f"c{k}" / "only.png")
    data = device_data(tmp_path, val_fraction=0.0, color_jitter=0.0, lighting=0.0, batch_size=2)
    images, targets, skipped = decode_batch(next(iter(data.train_dataloader())), "cpu")
    for image, target in zip(images, targets.tolist(), strict=True):
        assert image.float().mean(dim=(1, 2)).tolist() == [255.0 * target, 0.0, 255.0 * (1 - target)]
    assert int(skipped) == 0


def test_encoded_images_stay_on_the_host_when_lightning_moves_the_batch(folder: Path) -> None:
    batch = next(iter(device_data(folder).train_dataloader()))
    moved = move_data_to_device(batch, torch.device("meta"))
    assert moved[0] is batch[0] and batch[0].jpeg_bytes.device.type == "cpu"  # decode_jpeg wants host bytes
    assert moved[1].device.type == "meta" and moved[2].device.type == "meta"


class FirstBatch(Callback):
    def __init__(self) -> None:
        self.images: torch.Tensor | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, *_: Any) -> None:
        if self.images is None:
            self.images = batch[0].detach().clone()


def test_the_data_module_decodes_and_normalises_before_the_steps(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fit through the data module's batch hook, on the CPU (the GPU check stood aside for the test)."""
    monkeypatch.setattr(image_folder_module, "check_decode_device", lambda device: None)
    pl.seed_everything(0)
    data = device_data(folder, lighting=0.1, drop_last=True)
    model = ResNeStClassifier("resnest14d", num_classes=3, model_overrides=TINY, warmup_epochs=0)
    before = [p.detach().clone() for p in model.parameters()]
    first = FirstBatch()
    make_trainer(max_steps=2, limit_val_batches=0, callbacks=[first]).fit(model, datamodule=data)
    assert first.images is not None and first.images.dtype == torch.float32
    images, _, _, shift = decode_batch(next(iter(data.train_dataloader())), "cpu")
    assert torch.equal(first.images, normalize(images, data.mean, data.std, pixel_shift=shift))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    # The hook alone, on the device of the batch's targets: the same images, the pixel shift consumed.
    hooked = data.on_after_batch_transfer(next(iter(data.train_dataloader())), 0)
    assert len(hooked) == 3 and torch.equal(hooked[0], first.images)


def jpeg_folder_fit_args(root: Path, tmp_path: Path, *configs: str) -> list[str]:
    """A one-step CPU fit of a tiny model with decode_on_device, on the folder module or the ``configs``' module."""
    data = [] if configs else ["--data", "resnest_pl.data.ImageFolderDataModule"]
    return [
        *("fit", *configs, *data, "--data.init_args.root", str(root), "--data.init_args.crop_size", str(CROP)),
        *("--data.init_args.decode_on_device", "true", "--data.init_args.num_workers", "0"),
        *("--model.model_name", "resnest14d", "--model.model_overrides", json.dumps(TINY)),
        *("--trainer.accelerator", "cpu", "--trainer.max_steps", "1", "--trainer.logger", "false"),
        *("--trainer.default_root_dir", str(tmp_path), *QUICK),
    ]


def one_error_line(code: int, err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_cpu_trainer_is_refused_through_the_cli(folder: Path, tmp_path: Path, capsys) -> None:
    """With the preset after the ImageNet recipe, whose AutoAugment it turns off (or that would be the error)."""
    configs = [CONFIGS / "imagenet" / "resnest50.yaml", CONFIGS / "data" / "decode-on-device.yaml"]
    code, err = run_cli(jpeg_folder_fit_args(folder, tmp_path, *(f"--config={config}" for config in configs)), capsys)
    line = one_error_line(code, err)
    assert line.startswith("error: decode_on_device needs a CUDA GPU, but ")
    assert line.endswith("drop it (the default CPU decoding is used)")
    assert not (tmp_path / "checkpoints").exists()


def test_a_cpu_trainer_on_a_gpu_machine_is_told_to_train_on_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    check_decode_device(torch.device("cuda", 1))  # accepted
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ValueError) as refused:
        check_decode_device(torch.device("cpu"))
    assert str(refused.value) == (
        "decode_on_device needs a CUDA GPU, but the trainer runs on the cpu; train on the GPU (e.g. --config "
        "configs/trainer/gpu.yaml) or drop it (the default CPU decoding is used)"
    )


def test_the_sharded_module_refuses_the_switch(tmp_path: Path, capsys) -> None:
    configs = [CONFIGS / "imagenet" / "resnest50.yaml", CONFIGS / "data" / "shards.yaml"]
    args = jpeg_folder_fit_args(tmp_path / "no-shards", tmp_path, *(f"--config={config}" for config in configs))
    code, err = run_cli([*args, f"--config={CONFIGS / 'data' / 'decode-on-device.yaml'}"], capsys)
    assert one_error_line(code, err).startswith("error: decode_on_device is not available with ShardedDataModule")


def test_auto_augment_is_refused(folder: Path, tmp_path: Path, capsys) -> None:
    code, err = run_cli(
        [*jpeg_folder_fit_args(folder, tmp_path), "--data.init_args.auto_augment", "autoaugment"], capsys
    )
    assert one_error_line(code, err) == (
        "error: decode_on_device cannot apply auto_augment='autoaugment' (it runs on the CPU, before the crop); "
        "set auto_augment: none or drop decode_on_device"
    )
    with pytest.raises(ValueError, match="decode_on_device cannot apply auto_augment='randaugment'"):
        device_data(folder, auto_augment="randaugment")


def test_the_default_keeps_the_cpu_pipeline(folder: Path) -> None:
    data = ImageFolderDataModule(str(folder), crop_size=CROP, batch_size=BATCH, num_workers=0)
    images, *_ = next(iter(data.train_dataloader()))
    assert isinstance(images, torch.Tensor) and images.shape == (BATCH, 3, CROP, CROP)
    assert math.isclose(data.color_jitter, 0.4) and not data.decode_on_device


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_a_jpeg_with_an_exif_orientation_gives_the_cpu_pipelines_image(tmp_path: Path, orientation: int) -> None:
    """nvJPEG (and ``decode_jpeg`` on the CPU) ignore the EXIF orientation tag, which OpenCV, the CPU pipeline's
    decoder, applies: a photo taken with the phone turned must reach the model the same way on both paths."""
    (path,) = write_images(tmp_path, 1, seed=3, size=(48, 32))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    with Image.open(path) as image:
        image.save(path, exif=exif, quality=90)
    data = read_encoded(str(path))
    assert data is not None and (data.ndim == 1) == (orientation == 1)  # only upright JPEGs go to the device
    crop = DeviceCrop.recipe(CROP, 0.0, 0.0)
    (decoded,) = decode_images(EncodedImages([EncodedImage(data, 0, crop, str(path))]), "cpu")
    cpu_pipeline = torch.from_numpy(read_image(str(path))).permute(2, 0, 1)
    assert decoded is not None and decoded.shape == cpu_pipeline.shape
    assert (decoded.float() - cpu_pipeline.float()).abs().mean() < 2.0  # libjpeg's and OpenCV's IDCTs may differ


def test_pixels_decoded_by_the_workers_reach_the_device_through_pinned_copies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PNG (decoded by a worker) goes to the device by the same pinned, non-blocking copy as the small tensors;
    on the CPU that copy is a plain ``to``, so the test watches which path the pixels take."""
    png = tmp_path / "flat.png"
    Image.fromarray(np.full((30, 40, 3), (10, 200, 30), dtype=np.uint8)).save(png)
    copied: list[tuple[int, ...]] = []
    real = device_decode._to_device

    def watch(values: torch.Tensor, device: torch.device) -> torch.Tensor:
        copied.append(tuple(values.shape))
        return real(values, device)

    monkeypatch.setattr(device_decode, "_to_device", watch)
    pixels = read_encoded(str(png))
    assert pixels is not None and pixels.ndim == 3
    crop = DeviceCrop.recipe(CROP, 0.0, 0.0)
    (decoded,) = decode_images(EncodedImages([EncodedImage(pixels, 0, crop, str(png))]), "cpu")
    assert copied == [(3, 30, 40)] and decoded is not None and torch.equal(decoded, pixels)
