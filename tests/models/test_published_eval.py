"""Evaluation as the published top-1 was measured: each ImageNet config's val batches against the official crop."""

from __future__ import annotations

import csv
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from resnest.transforms import ECenterCrop
from sklearn.datasets import load_sample_images
from torchvision.transforms.v2 import functional as TF

from resnest_pl.cli import main
from resnest_pl.data import IMAGENET_MEAN, IMAGENET_STD, ImageFolderDataModule, ImageNetDataModule, normalize
from resnest_pl.models import create_model, get_variant, resolve_eval_config
from resnest_pl.training.module import ResNeStClassifier

from ..fixtures import WNIDS, write_colour_squares
from ..helpers import QUICK, TINY, make_trainer, parsed_config

ROOT = Path(__file__).resolve().parents[2]
NAMES = ("resnest50", "resnest101", "resnest200", "resnest269")
CONFIGS = {name: ROOT / "configs" / "imagenet" / f"{name}.yaml" for name in NAMES}
POOLED = 16  # compare fields of view, not OpenCV's and PIL's resampling kernels
# Mean absolute difference of the pooled, normalised batches. The published settings give 0.008-0.011 on the
# two photographs; ResNeSt-101/200/269 evaluated at the old crop_pct 0.875 give 0.042 / 0.093 / 0.146.
TOLERANCE = 0.02


def official_eval(path: Path, crop: int) -> torch.Tensor:
    """The official evaluation (``ECenterCrop`` of the ResNeSt repository's ``scripts/torch/verify.py``): the
    centre square of ``crop / (crop + 32)`` of the shorter side, resized bicubic to ``crop``, normalised."""
    image = Image.open(path).convert("RGB")
    width, height = image.size
    side = crop / (crop + 32) * min(width, height)
    top, left = round((height - side) / 2), round((width - side) / 2)
    image = image.crop((left, top, left + side, top + side)).resize((crop, crop), Image.Resampling.BICUBIC)
    return TF.normalize(TF.to_dtype(TF.to_image(image), torch.float32, scale=True), IMAGENET_MEAN, IMAGENET_STD)


@pytest.fixture(scope="module")
def photo_val(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ImageNet-layout folder with only ``val/``: scikit-learn's two photographs (427 x 640) as JPEGs."""
    root = tmp_path_factory.mktemp("imagenet")
    samples = load_sample_images()
    for wnid, filename, pixels in zip(WNIDS, samples.filenames, samples.images, strict=False):
        folder = root / "val" / wnid
        folder.mkdir(parents=True)
        Image.fromarray(pixels).save(folder / f"{Path(filename).stem}.JPEG", quality=95)
    return root


def val_batch(root: Path, config: Path, *overrides: str) -> tuple[ImageNetDataModule, torch.Tensor]:
    """The first val batch of the data module the CLI builds from ``config`` (and command-line overrides)."""
    args = ["--config", str(config), "--data.init_args.root", str(root), *overrides]
    data = parsed_config(*args, "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "2").data
    assert data.class_path == "resnest_pl.data.ImageNetDataModule"
    module = ImageNetDataModule(**data.init_args.as_dict())
    module.setup("validate")
    images, _, skipped = next(iter(module.val_dataloader()))
    assert skipped.item() == 0
    return module, normalize(images, module.mean, module.std)


def distance_to_official(module: ImageNetDataModule, images: torch.Tensor) -> float:
    files, _ = module.files("val")
    official = torch.stack([official_eval(Path(f), module.eval_crop_size) for f in files])
    assert official.shape == images.shape
    return (F.adaptive_avg_pool2d(images, POOLED) - F.adaptive_avg_pool2d(official, POOLED)).abs().mean().item()


def test_the_official_crop_is_the_reference_packages(photo_val: Path) -> None:
    path = next(photo_val.glob("val/*/*.JPEG"))
    image = Image.open(path).convert("RGB")
    ours = official_eval(path, 416)
    theirs = TF.to_dtype(TF.to_image(ECenterCrop(416)(image)), torch.float32, scale=True)
    assert torch.equal(ours, TF.normalize(theirs, IMAGENET_MEAN, IMAGENET_STD))


@pytest.mark.parametrize("name", NAMES)
def test_each_imagenet_config_evaluates_as_published(name: str, photo_val: Path) -> None:
    module, images = val_batch(photo_val, CONFIGS[name])
    assert distance_to_official(module, images) < TOLERANCE
    variant = get_variant(name)
    assert (module.eval_crop_size, module.crop_pct, module.interpolation) == (
        variant.eval_crop,
        variant.eval_crop / (variant.eval_crop + 32),
        "bicubic",
    )


@pytest.mark.parametrize("name", ["resnest101", "resnest200", "resnest269"])
def test_the_old_crop_pct_is_caught(name: str, photo_val: Path) -> None:
    """What every config used before: 0.875 shows these networks a tighter field of view than published."""
    module, images = val_batch(photo_val, CONFIGS[name], "--data.init_args.crop_pct", "0.875")
    assert module.crop_pct == 0.875  # the command line overrides the model's setting
    assert distance_to_official(module, images) > TOLERANCE


def test_command_line_overrides_each_eval_setting(photo_val: Path) -> None:
    args = ["--config", str(CONFIGS["resnest269"]), "--data.init_args.root", str(photo_val)]
    overrides = ["--data.init_args.eval_crop_size", "320", "--data.init_args.interpolation", "bilinear"]
    data = parsed_config(*args, *overrides).data.init_args
    assert (data.eval_crop_size, data.crop_pct, data.interpolation) == (320, 416 / 448, "bilinear")
    other = parsed_config(*args, "--model.model_name", "resnest101").data.init_args
    # The model named, not the file's: ResNeSt-101's ratio (256 / 224) at the file's training crop, 320.
    assert (other.eval_crop_size, other.crop_pct) == (366, 366 / 398)


def test_small_image_data_modules_are_left_alone() -> None:
    data = parsed_config("--config", str(ROOT / "configs" / "quickstart.yaml")).data
    assert "crop_pct" not in data.init_args and "eval_crop_size" not in data.init_args


def test_bad_crop_pct_is_one_error_line(photo_val: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["validate", "--config", str(CONFIGS["resnest50"]), "--data.init_args.root", str(photo_val)]
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--data.init_args.crop_pct", "1.5", "--trainer.logger", "false"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: crop_pct must be in (0, 1], got 1.5; it is the share of the shorter side kept by the "
        "evaluation centre crop (0.875 is the usual ImageNet value)"
    )


def test_validate_published_weights_on_a_val_only_folder(photo_val: Path, tmp_path: Path, capsys) -> None:
    """The README's command, with a local weights file standing in for the download."""
    weights = tmp_path / "resnest14d.pth"
    torch.save(create_model("resnest14d").state_dict(), weights)
    args = ["validate", "--config", str(CONFIGS["resnest50"]), "--model.model_name", "resnest14d"]
    args += ["--model.pretrained", str(weights), "--data.init_args.root", str(photo_val)]
    args += ["--data.init_args.num_workers", "0", "--trainer.default_root_dir", str(tmp_path / "run")]
    args += ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
    main(args)
    out = capsys.readouterr().out
    assert "val/acc1" in out and "val/loss" in out
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"]["init_args"]
    assert (saved["eval_crop_size"], saved["crop_pct"], saved["interpolation"]) == (
        224,
        0.875,
        "bilinear",
    )  # resnest14d's


# ---- evaluation moves with the training crop ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "published"),
    [
        ("resnest50", (224, 224 / 256, "bicubic")),
        ("resnest101", (256, 256 / 288, "bicubic")),
        ("resnest200", (320, 320 / 352, "bicubic")),
        ("resnest269", (416, 416 / 448, "bicubic")),
        ("resnest14d", (224, 0.875, "bilinear")),
        ("resnest26d", (224, 0.875, "bilinear")),
    ],
)
def test_the_published_train_crop_gives_the_published_evaluation(name: str, published: tuple) -> None:
    variant = get_variant(name)
    assert variant.eval_settings(variant.train_crop) == pytest.approx(published)


@pytest.mark.parametrize(("name", "crop", "expected"), [("resnest50", 32, 32), ("resnest101", 112, 128)])
def test_the_eval_crop_keeps_the_published_ratio_to_the_training_crop(name: str, crop: int, expected: int) -> None:
    eval_crop, crop_pct, interpolation = get_variant(name).eval_settings(crop)
    assert (eval_crop, crop_pct, interpolation) == (expected, expected / (expected + 32), "bicubic")
    config = parsed_config("--config", str(CONFIGS[name]), "--data.init_args.crop_size", str(crop))
    assert config.data.init_args.eval_crop_size == expected


def test_a_python_data_module_evaluates_as_the_cli_builds_it(tmp_path: Path) -> None:
    """Built in Python, the data module takes its evaluation from the trainer's model at setup."""
    root = write_colour_squares(tmp_path / "squares", per_class=4)
    cli = parsed_config(
        "--config", str(ROOT / "configs" / "quickstart.yaml"), "--data", "resnest_pl.data.ImageFolderDataModule",
        "--data.root", str(root), "--data.crop_size", "32",
    ).data.init_args  # fmt: skip
    data = ImageFolderDataModule(str(root), crop_size=32, num_workers=0, batch_size=4)
    model = ResNeStClassifier("resnest14d", num_classes=3, model_overrides=TINY)
    make_trainer(limit_val_batches=1).validate(model, datamodule=data, verbose=False)
    python = (data.eval_crop_size, data.crop_pct, data.interpolation)
    assert python == (cli.eval_crop_size, cli.crop_pct, cli.interpolation) == (32, 0.875, "bilinear")


def test_an_eval_crop_far_from_the_training_crop_is_one_warning(tmp_path: Path, caplog) -> None:
    root = write_colour_squares(tmp_path / "squares", per_class=2)
    with caplog.at_level(logging.WARNING, logger="resnest_pl.eval_settings"):
        ImageFolderDataModule(str(root), crop_size=64, eval_crop_size=96)
        assert not caplog.records
        ImageFolderDataModule(str(root), crop_size=32, eval_crop_size=224)
    (record,) = caplog.records
    assert record.getMessage().startswith("warning: data.eval_crop_size 224 is far from the training crop 32")
    assert "\n" not in record.getMessage()


def test_a_folder_of_32_pixel_images_trains_and_evaluates_at_32(tmp_path: Path, capsys) -> None:
    """The issue's command: the quick start's model on a class folder of 32-px images, with only the crop set."""
    root = write_colour_squares(tmp_path / "squares", per_class=24)
    args = ["fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--data", "ImageFolderDataModule"]
    args += ["--data.root", str(root), "--data.crop_size", "32", "--data.batch_size", "16"]
    args += ["--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.logger.init_args.save_dir"]
    args += [str(tmp_path / "run"), "--trainer.max_epochs", "4", *QUICK]
    main(args)
    saved = yaml.safe_load(next((tmp_path / "run").rglob("config.yaml")).read_text())["data"]["init_args"]
    assert (saved["eval_crop_size"], saved["crop_pct"], saved["interpolation"]) == (32, 0.875, "bilinear")
    rows = list(csv.DictReader(next((tmp_path / "run").rglob("metrics.csv")).open()))
    acc = [float(row["val/acc1"]) for row in rows if row.get("val/acc1")]
    assert acc[-1] >= 0.9  # chance is 1/3


@pytest.mark.parametrize(
    ("name", "crop", "expected"),
    [
        ("resnest50", None, (224, 224 / 256, "bicubic")),
        ("resnest101", None, (256, 256 / 288, "bicubic")),
        ("resnest200", None, (320, 320 / 352, "bicubic")),
        ("resnest269", None, (416, 416 / 448, "bicubic")),
        ("resnest14d", None, (224, 0.875, "bilinear")),
        ("resnest26d", None, (224, 0.875, "bilinear")),
        ("resnest14d", 32, (32, 0.875, "bilinear")),
    ],
)
def test_resolve_eval_config_gives_the_published_evaluation(name: str, crop: int | None, expected: tuple) -> None:
    config = resolve_eval_config(name, crop)
    assert (config["eval_crop_size"], config["crop_pct"], config["interpolation"]) == pytest.approx(expected)
    assert config["input_size"] == (3, expected[0], expected[0])
    assert (config["mean"], config["std"]) == (IMAGENET_MEAN, IMAGENET_STD)


def test_resolve_eval_config_is_the_data_modules_source(tmp_path: Path) -> None:
    """The data module's settings at a model's setup are what the public function answers, explicit ones kept."""
    root = write_colour_squares(tmp_path / "squares", per_class=2)
    data = ImageFolderDataModule(str(root), crop_size=48, crop_pct=0.5)
    data.use_model_eval_settings("resnest101")
    expected = resolve_eval_config("resnest101", 48, crop_pct=0.5)
    assert (data.eval_crop_size, data.crop_pct, data.interpolation) == (55, 0.5, "bicubic")
    assert (expected["eval_crop_size"], expected["crop_pct"], expected["interpolation"]) == (55, 0.5, "bicubic")
    with pytest.raises(TypeError, match="unknown evaluation settings"):
        resolve_eval_config("resnest50", eval_crop=224)


def test_resolve_eval_config_needs_torch_alone() -> None:
    """Importable in a notebook or on a deployment box without Lightning, jsonargparse or albumentations."""
    code = (
        "import sys; from resnest_pl.models import resolve_eval_config; resolve_eval_config('resnest50'); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'pytorch_lightning', 'lightning', 'jsonargparse', "
        "'albumentations', 'torchmetrics'}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
