"""The model side of the training toolbox: stochastic depth, gradient-clipping presets, the AdamW recipe and the
learning-rate line, per-class metrics with the confusion-matrix figure, and horizontal-flip test-time augmentation."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from PIL import Image
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from resnest_pl.callbacks import PredictionCSVWriter
from resnest_pl.data import DigitsDataModule, normalize
from resnest_pl.data.decode import read_image
from resnest_pl.models import create_model, same_architecture
from resnest_pl.training import class_metrics
from resnest_pl.training.module import ResNeStClassifier

from ..helpers import CONFIGS, TINY, make_trainer, parsed_config, quickstart_command, run_cli, tiny_model

CLIP = 1.0  # configs/trainer/clip-norm.yaml

TWO_VAL_BATCHES = ["--trainer.limit_val_batches", "2"]


def grad_norm(module: nn.Module) -> float:
    return float(
        torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in module.parameters() if p.grad is not None]))
    )


# ---- stochastic depth --------------------------------------------------------------------------------------------


def test_drop_path_rate_rises_linearly_with_depth_and_adds_no_weights() -> None:
    model = tiny_model("resnest26d", drop_path_rate=0.1)  # 8 blocks
    blocks = [block for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for block in stage]
    rates = [getattr(block.drop_path, "p", 0.0) for block in blocks]
    assert rates == pytest.approx([0.1 * i / 7 for i in range(8)])  # timm's resnet.py rule
    assert isinstance(blocks[0].drop_path, nn.Identity) and blocks[-1].drop_path.mode == "row"
    plain = tiny_model("resnest26d")
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    assert same_architecture("resnest26d", {"drop_path_rate": 0.1}, "resnest26d", {})


def test_drop_path_drops_the_branch_never_the_shortcut_and_is_off_in_eval() -> None:
    # zero_gamma off: its zero-initialised last BN would silence the branch by itself. resnest14d's last block
    # has the full rate.
    model = tiny_model(drop_path_rate=1.0, zero_gamma=False).train()
    block = model.layer4[0]
    x = torch.randn(4, block.conv1.in_channels, 4, 4)
    out = block(x)
    torch.testing.assert_close(out, block.act3(block.downsample(x)))  # the shortcut alone
    out.sum().backward()
    assert block.conv1.weight.grad.abs().sum() == 0 and block.conv3.weight.grad.abs().sum() == 0
    assert block.downsample[1].weight.grad.abs().sum() > 0

    # Each sample keeps its branch, scaled by 1 / (1 - p), or drops it, independently: torchvision's "row" mode.
    block.drop_path.p = 0.5
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    block.drop_path.register_forward_hook(lambda _, inputs, output: seen.append((inputs[0], output.clone())))
    block(torch.randn(32, block.conv1.in_channels, 4, 4))
    ((branch, out),) = seen
    kept = [torch.equal(o, 2 * b) for b, o in zip(branch, out, strict=True)]
    dropped = [not o.any() for o in out]
    assert all(k != d for k, d in zip(kept, dropped, strict=True)) and 0 < sum(kept) < len(kept)

    plain = tiny_model(zero_gamma=False)
    plain.load_state_dict(model.state_dict())
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(images), plain.eval()(images))


# ---- AdamW, clipping, the learning-rate line and stochastic depth through the CLI --------------------------------


class RecordOptimization(Callback):
    """Writes to ``path`` (JSON) the optimizer's class and groups, the drop-path rates and, per step, the gradient
    norm before Lightning clips it (``on_before_optimizer_step`` runs just before) and after (the gradients stay
    until the next step's ``zero_grad``)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.before: list[float] = []
        self.after: list[float] = []

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        self.before.append(float(grad_norm(pl_module)))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *_: Any) -> None:
        self.after.append(float(grad_norm(pl_module)))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimizer = trainer.optimizers[0]
        groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        rates = [getattr(m, "p", None) for m in pl_module.model.modules() if type(m).__name__ == "StochasticDepth"]
        record = {
            "optimizer": f"{type(optimizer).__module__}.{type(optimizer).__name__}",
            "groups": [{k: v for k, v in g.items() if isinstance(v, (int, float, list, tuple))} for g in groups],
            "rates": rates,
            "clip": [trainer.gradient_clip_val, trainer.gradient_clip_algorithm],
            "before": self.before,
            "after": self.after,
        }
        self.path.write_text(json.dumps(record))


def test_adamw_recipe_clip_norm_preset_and_drop_path_through_the_cli(
    tmp_path: Path, capsys, caplog, monkeypatch
) -> None:
    monkeypatch.setattr(logging.getLogger("pytorch_lightning"), "propagate", True)  # caplog listens at the root
    probe = {
        "class_path": "tests.training.test_toolbox_model.RecordOptimization",
        "init_args": {"path": str(tmp_path / "o")},
    }
    args = quickstart_command(
        tmp_path,
        "fit",
        *TWO_VAL_BATCHES,
        "--config",
        str(CONFIGS / "optim/adamw.yaml"),
        "--config",
        str(CONFIGS / "trainer/clip-norm.yaml"),
        "--model.model_overrides.drop_path_rate",
        "0.1",
        "--trainer.limit_train_batches",
        "4",
        "--trainer.limit_val_batches",
        "0",
        f"--trainer.callbacks+={json.dumps(probe)}",
    )
    with caplog.at_level(logging.INFO):
        code, err = run_cli(args, capsys)
    assert code == 0, err
    record = json.loads((tmp_path / "o").read_text())

    assert record["optimizer"] == "torch.optim.adamw.AdamW"
    decay, no_decay = record["groups"]
    assert decay["initial_lr"] == pytest.approx(2.5e-4 * 64 / 256)  # per 256 images, scaled to the batch of 64
    assert decay["betas"] == [0.9, 0.999] and decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    line = "learning rate: 0.00025 per 256 images x global batch 64 / 256 = 6.25e-05 (scale_lr: true; set "
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("learning rate:")] == [
        line + "--model.scale_lr false to use lr as given)"
    ]

    assert record["clip"] == [CLIP, "norm"]
    before, after = record["before"], record["after"]
    assert len(before) == len(after) == 4 and max(before) > CLIP  # clipping had work to do
    assert after == pytest.approx([min(b, CLIP) for b in before], rel=1e-4)

    assert record["rates"] == pytest.approx([0.1 * i / 3 for i in range(1, 4)])  # resnest14d: 4 blocks, first 0


def test_adamw_replaces_an_imagenet_recipes_sgd() -> None:
    config = parsed_config(
        "--config", str(CONFIGS / "imagenet/resnest50.yaml"), "--config", str(CONFIGS / "optim/adamw.yaml")
    )
    optimizer = config.model.optimizer
    assert optimizer.class_path == "torch.optim.AdamW"
    assert optimizer.init_args.lr == 2.5e-4 and list(optimizer.init_args.betas) == [0.9, 0.999]
    assert optimizer.init_args.weight_decay == 0.05 and "momentum" not in optimizer.init_args

    # On the command line instead: what AdamW shares with the recipe's SGD (weight decay) carries over.
    config = parsed_config(
        "--config",
        str(CONFIGS / "imagenet/resnest50.yaml"),
        "--model.optimizer",
        "torch.optim.AdamW",
        "--model.optimizer.lr",
        "1e-3",
    )
    optimizer = config.model.optimizer
    assert optimizer.class_path == "torch.optim.AdamW"
    assert optimizer.init_args.lr == 1e-3 and optimizer.init_args.weight_decay == 1e-4


def test_learning_rate_line_without_scaling(caplog, monkeypatch) -> None:
    monkeypatch.setattr(logging.getLogger("pytorch_lightning"), "propagate", True)
    model = ResNeStClassifier("resnest14d", num_classes=4, model_overrides=TINY, scale_lr=False, warmup_epochs=0)
    data = TensorDataset(torch.randn(8, 3, 16, 16), torch.arange(8) % 4)
    with caplog.at_level(logging.INFO):
        make_trainer(max_epochs=1, limit_train_batches=2).fit(model, DataLoader(data, batch_size=4))
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("learning rate:")] == [
        "learning rate: 0.1 as given (scale_lr: false)"
    ]


# ---- per-class metrics and the confusion matrix --------------------------------------------------------------


class RecordPredictions(Callback):
    """Saves to ``path`` the targets of every validation batch and the classes predicted by the mean softmax of the
    model's own forward pass of the images and of their mirror images (the flip TTA), and the module's switch."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.pairs: list[torch.Tensor] = []

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, *_: Any) -> None:
        images = batch[0]
        probs = pl_module(images).softmax(1) + pl_module(images.flip(-1)).softmax(1)
        self.pairs.append(torch.stack([probs.argmax(1), batch[1]]))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        torch.save({"pairs": torch.cat(self.pairs, dim=1), "tta": pl_module.hparams.tta_hflip}, self.path)


@pytest.mark.slow
def test_validate_writes_per_class_accuracy_and_the_confusion_matrix_figure(tmp_path: Path, capsys) -> None:
    probe = {
        "class_path": "tests.training.test_toolbox_model.RecordPredictions",
        "init_args": {"path": str(tmp_path / "p")},
    }
    loggers = [
        {"class_path": "CSVLogger", "init_args": {"save_dir": str(tmp_path / "run"), "name": "csv"}},
        {"class_path": "TensorBoardLogger", "init_args": {"save_dir": str(tmp_path / "run"), "name": "tb"}},
    ]
    # A model trained for 6 steps: its predictions differ from class to class, unlike an untrained one's.
    code, err = run_cli(
        quickstart_command(
            tmp_path, "fit", *TWO_VAL_BATCHES, "--trainer.limit_train_batches", "8", "--model.warmup_epochs", "0"
        ),
        capsys,
    )
    assert code == 0, err
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    args = quickstart_command(
        tmp_path,
        "validate",
        *TWO_VAL_BATCHES,
        "--ckpt_path",
        str(checkpoint),
        f"--trainer.callbacks+={json.dumps(probe)}",
    )
    # An evaluation switch given with a checkpoint applies (the checkpoint does not record one to override it).
    code, err = run_cli([*args, "--trainer.logger", json.dumps(loggers), "--model.tta_hflip", "true"], capsys)
    assert code == 0, err

    recorded = torch.load(tmp_path / "p")
    assert recorded["tta"] is True
    predicted, targets = recorded["pairs"]
    folder = tmp_path / "run" / "csv" / "version_0"
    with (folder / "val_class_accuracy.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["class"] for r in rows] == [str(d) for d in range(10)]  # the data module's class names
    expected = MulticlassAccuracy(10, average=None)(predicted, targets)
    assert [float(r["accuracy"]) for r in rows] == pytest.approx(expected.tolist(), abs=1e-6)
    assert len(set(expected.tolist())) > 2  # a test that a constant answer would not pass
    assert [int(r["support"]) for r in rows] == torch.bincount(targets, minlength=10).tolist()
    confusion = MulticlassConfusionMatrix(10)(predicted, targets).fill_diagonal_(0)
    assert [int(r["confused_count"]) for r in rows] == confusion.max(dim=1).values.tolist()
    assert (folder / "metrics.csv").is_file()
    assert (folder / "val_confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    events = EventAccumulator(str(tmp_path / "run" / "tb" / "version_0"), size_guidance={"images": 0}).Reload()
    assert "val/confusion_matrix" in events.Tags()["images"]
    (image,) = events.Images("val/confusion_matrix")
    assert image.width > 300 and image.height > 300


def test_class_metrics_switch_and_automatic_limit() -> None:
    assert ResNeStClassifier("resnest14d", num_classes=10, model_overrides=TINY).per_class is not None
    assert ResNeStClassifier("resnest14d", num_classes=10, model_overrides=TINY, class_metrics=False).per_class is None
    many = ResNeStClassifier("resnest14d", num_classes=101, model_overrides=TINY)
    assert many.per_class is None
    forced = ResNeStClassifier("resnest14d", num_classes=101, model_overrides=TINY, class_metrics=True)
    assert forced.per_class is not None
    assert forced.state_dict().keys() == many.state_dict().keys()  # metric states are not saved in checkpoints


def test_no_class_metric_files_without_a_logger(tmp_path: Path) -> None:
    model = ResNeStClassifier("resnest14d", num_classes=4, model_overrides=TINY)
    data = TensorDataset(torch.randn(8, 3, 16, 16), torch.arange(8) % 4)
    make_trainer(default_root_dir=tmp_path).validate(model, DataLoader(data, batch_size=4), verbose=False)
    assert list(tmp_path.iterdir()) == []
    logger = CSVLogger(tmp_path, name="csv")
    trainer = make_trainer(logger=logger)
    trainer.validate(model, DataLoader(data, batch_size=4), verbose=False)
    trainer.test(model, DataLoader(data, batch_size=4), verbose=False)
    written = sorted(path.name for path in Path(logger.log_dir).iterdir())
    assert "provenance.json" in written  # beside them, as in every logged run (code.diff only on a dirty tree)
    assert [name for name in written if name not in ("provenance.json", "code.diff")] == [
        "hparams.yaml",
        "metrics.csv",
        "test_class_accuracy.csv",
        "test_confusion_matrix.png",
        "val_class_accuracy.csv",
        "val_confusion_matrix.png",
    ]


def test_a_csv_logged_fit_draws_the_confusion_matrix_at_its_last_validation_only(tmp_path: Path, monkeypatch) -> None:
    drawn: list[str] = []
    draw = class_metrics.confusion_figure
    monkeypatch.setattr(class_metrics, "confusion_figure", lambda *args: drawn.append(args[2]) or draw(*args))
    model = ResNeStClassifier("resnest14d", num_classes=4, model_overrides=TINY, warmup_epochs=0)
    data = DataLoader(TensorDataset(torch.randn(8, 3, 16, 16), torch.arange(8) % 4), batch_size=4)
    logger = CSVLogger(tmp_path, name="csv")
    make_trainer(logger=logger, max_epochs=3, num_sanity_val_steps=0).fit(model, data, data)
    assert [title.split(",")[1].strip() for title in drawn] == ["epoch 2"]
    rows = list(csv.DictReader((Path(logger.log_dir) / "val_class_accuracy.csv").open()))
    assert len(rows) == 4  # the CSV is still written at every validation (the latest one kept)
    drawn.clear()
    make_trainer(logger=TensorBoardLogger(tmp_path), max_epochs=2, num_sanity_val_steps=0).fit(model, data, data)
    assert len(drawn) == 2  # a logger that keeps images gets every epoch's figure


# ---- horizontal-flip test-time augmentation ----------------------------------------------------------------------


class CountingLinear(nn.Module):
    """Logits a test can compute by hand (a linear map of the pixels), counting its calls."""

    def __init__(self, side: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * side * side, num_classes)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.fc(x.flatten(1))


def flip_averaged(network: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return (network(images).softmax(1) + network(images.flip(-1)).softmax(1)) / 2


def test_hflip_tta_averages_the_softmax_of_the_image_and_its_mirror(tmp_path: Path) -> None:
    data = DigitsDataModule(image_size=16, batch_size=8)
    network = CountingLinear(16, 10)
    model = ResNeStClassifier("resnest14d", num_classes=10, model_overrides=TINY, tta_hflip=True, warmup_epochs=0)
    model.model = network
    data.setup("validate")
    images, targets, _ = next(iter(data.val_dataloader()))
    images = normalize(images, data.mean, data.std)
    expected = flip_averaged(network, images)
    assert not torch.allclose(expected, network(images).softmax(1), atol=1e-3)  # the flip changes the answer

    network.calls = 0
    trainer = make_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0)
    trainer.fit(model, data)
    assert network.calls == 2 + 2 * 1  # one forward per training batch, two per evaluated batch

    expected = flip_averaged(network, images)
    validated = trainer.validate(model, data, verbose=False)[0]
    assert validated["val/loss"] == pytest.approx(F.nll_loss(expected.log(), targets).item(), rel=1e-5)

    files = [str(tmp_path / f"{i}.png") for i in range(3)]
    for index, path in enumerate(files):
        Image.fromarray(data.images[data.val_indices[index]]).save(path)
    data = DigitsDataModule(image_size=16, batch_size=8, predict_paths=files)
    out = tmp_path / "predictions.csv"
    make_trainer(callbacks=[PredictionCSVWriter(str(out))]).predict(model, data, return_predictions=False)
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    transform = data.eval_transform()
    pixels = torch.stack([transform(read_image(path)) for path in files])
    expected = flip_averaged(network, normalize(pixels, data.mean, data.std))
    written = torch.tensor([float(r["top1_prob"]) for r in rows])
    torch.testing.assert_close(written, expected.max(1).values, atol=1e-5, rtol=0)
    assert [r["top1_class"] for r in rows] == [str(c) for c in expected.argmax(1).tolist()]


# ---- errors ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--model.model_overrides.drop_path_rate", "1.5", "drop_path_rate must lie in [0, 1]"),
        ("--trainer.gradient_clip_algorithm", "l2", "`gradient_clip_algorithm` l2 is invalid. Allowed"),
    ],
)
def test_impossible_settings_end_in_one_error_line(option: str, value: str, message: str, tmp_path, capsys) -> None:
    code, err = run_cli(quickstart_command(tmp_path, "fit", *TWO_VAL_BATCHES, option, value), capsys)
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err, err
    assert lines[-1].startswith(f"error: {message}"), err
    assert sum(line.startswith("error:") for line in lines) == 1, err


def test_drop_path_rate_rejects_values_outside_0_1() -> None:
    with pytest.raises(ValueError, match=r"drop_path_rate must lie in \[0, 1\]"):
        create_model("resnest14d", drop_path_rate=-0.1)
