"""Runs a researcher can trust: class names travel with checkpoints, ``predict`` under DDP writes one CSV, and
bad weights or checkpoints end in one ``error:`` line."""

from __future__ import annotations

import csv
import sys
import urllib.error
from pathlib import Path

import pytest
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from resnest_pl.callbacks import PredictionCSVWriter
from resnest_pl.data import DigitsDataModule, ImageFolderDataModule, normalize
from resnest_pl.models import IncompatibleCheckpointError, get_variant
from resnest_pl.training.module import ResNeStClassifier

from .. import helpers
from ..fixtures import write_images, write_jpeg_tree
from ..helpers import (
    CONFIGS,
    ROOT,
    TINY,
    make_trainer,
    quickstart_command,
    rank_probe,
    rank_states,
    run_cli,
    run_killable,
)

ANIMALS = ["cat", "dog", "fox"]

ONE_BATCH = ["--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1"]


def assert_one_error_line(code: int, err: str, starts: str) -> None:
    helpers.assert_one_error_line(code, err, starts)
    assert "weights_only" not in err


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``last.ckpt`` of one step of the quick-start model (tiny resnest14d) on the digits."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("digits")
    model = ResNeStClassifier("resnest14d", num_classes=10, model_overrides=TINY, warmup_epochs=0)
    trainer = make_trainer(
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        enable_checkpointing=True,
        callbacks=[ModelCheckpoint(dirpath=folder, save_last=True)],
    )
    trainer.fit(model, DigitsDataModule(batch_size=16))
    return folder / "last.ckpt"


# ---- class names -----------------------------------------------------------------------------------------------


class UnnamedFolderDataModule(ImageFolderDataModule):
    """A data module that knows how many classes there are but not their names."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.class_names = []


def test_predict_names_classes_from_the_checkpoint(tmp_path: Path) -> None:
    root = write_jpeg_tree(tmp_path / "animals", {"train": 2, "val": 1}, classes=ANIMALS)
    options = dict(crop_size=32, batch_size=3, num_workers=0)
    model = ResNeStClassifier("resnest14d", num_classes=3, model_overrides=TINY, warmup_epochs=0)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = make_trainer(max_epochs=1, limit_train_batches=1, enable_checkpointing=True, callbacks=[checkpoints])
    trainer.fit(model, ImageFolderDataModule(str(root), **options))
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert saved["resnest_pl"]["class_names"] == ANIMALS

    images = write_images(tmp_path / "loose", 4)
    unnamed = UnnamedFolderDataModule(str(root), predict_paths=str(images[0].parent), **options)
    out = tmp_path / "predictions.csv"
    fresh = ResNeStClassifier("resnest14d", num_classes=3, model_overrides=TINY)
    make_trainer(callbacks=[PredictionCSVWriter(str(out))]).predict(
        fresh, unnamed, ckpt_path=tmp_path / "ckpt" / "last.ckpt", return_predictions=False
    )
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["path"] for r in rows] == [str(p) for p in images]
    assert all(sorted(r[f"top{k}_class"] for k in (1, 2, 3)) == ANIMALS for r in rows)


def test_one_row_per_image_when_a_sampler_repeats_some(tmp_path: Path) -> None:
    """The rows of a distributed sampler's padding (the same index twice) are written once."""
    files = [f"img{i}.png" for i in range(3)]

    class Data:
        predict_files = files
        class_names = ["a", "b"]

    class Trainer:
        world_size = 1
        datamodule = Data()
        default_root_dir = str(tmp_path)

    class Module:
        hparams = type("H", (), {"num_classes": 2})()
        class_names = None

    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.9, 0.1]])
    batches = [{"indices": torch.tensor([0, 2]), "probs": probs[[0, 2]]}, {"indices": torch.tensor([1, 0])}]
    batches[1]["probs"] = probs[[1, 3]]
    PredictionCSVWriter(str(tmp_path / "p.csv")).write_on_epoch_end(Trainer(), Module(), [batches], None)
    with (tmp_path / "p.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["path"], r["top1_class"], r["top1_prob"]) for r in rows] == [
        ("img0.png", "a", "0.900000"),
        ("img1.png", "b", "0.800000"),
        ("img2.png", "a", "0.600000"),
    ]


@pytest.mark.slow
def test_ddp_predict_writes_one_csv_with_every_file_once(digits_checkpoint: Path, tmp_path: Path) -> None:
    images = write_images(tmp_path / "loose", 7, size=(32, 32))  # odd: the two ranks get unequal shares
    out = tmp_path / "predictions.csv"
    args = [sys.executable, "-m", "resnest_pl.cli", *quickstart_command(tmp_path, "predict", *ONE_BATCH)]
    args += ["--config", str(CONFIGS / "trainer/cpu-ddp.yaml"), "--ckpt_path", str(digits_checkpoint)]
    args += ["--data.predict_paths", str(images[0].parent), "--data.batch_size", "2", "--predictions", str(out)]
    args += rank_probe(tmp_path / "ranks")
    # Run from ROOT, so that `tests.helpers` imports in every rank.
    result = run_killable(args, 300, cwd=ROOT)  # a rank waiting forever for the other fails the test
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = rank_states(tmp_path / "ranks")  # two processes, of a world of two
    assert first["predicted"] and second["predicted"]  # each predicted a share (padded to equal lengths)
    assert set(first["predicted"]) | set(second["predicted"]) == set(range(len(images)))
    assert sorted(p.name for p in tmp_path.glob("predictions*.csv")) == ["predictions.csv"]
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in images)

    model = ResNeStClassifier.load_from_checkpoint(digits_checkpoint).eval()
    data = DigitsDataModule(predict_paths=str(images[0].parent))
    dataset = data.dataset("predict")
    for index, path in enumerate(data.predict_files):
        row = next(r for r in rows if r["path"] == path)
        with torch.no_grad():
            probs = model(normalize(dataset[index][0][None], data.mean, data.std)).softmax(dim=-1)[0]
        top, classes = probs.topk(5)
        assert [row[f"top{k}_class"] for k in range(1, 6)] == [str(c) for c in classes.tolist()]
        assert [float(row[f"top{k}_prob"]) for k in range(1, 6)] == pytest.approx(top.tolist(), abs=2e-6)


# ---- bad weights and checkpoints --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["garbage", "truncated", "text"])
def test_unreadable_pretrained_file_is_one_line(kind: str, digits_checkpoint: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / f"{kind}.pth"
    contents = {
        "garbage": bytes(range(256)) * 4,
        "truncated": digits_checkpoint.read_bytes()[:20000],
        "text": b"model_name: resnest14d\n",
    }[kind]
    bad.write_bytes(contents)
    code, err = run_cli(quickstart_command(tmp_path, "fit", *ONE_BATCH, "--model.pretrained", str(bad)), capsys)
    assert_one_error_line(code, err, f"{bad} is not a PyTorch or safetensors checkpoint (truncated or corrupt?)")
    assert bad.read_bytes() == contents
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_pretrained_true_without_network_says_what_to_fetch(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def offline(url: str, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    code, err = run_cli(quickstart_command(tmp_path, "fit", *ONE_BATCH, "--model.pretrained", "true"), capsys)
    url = get_variant("resnest14d").weights_url
    name = url.rsplit("/", 1)[1]
    assert_one_error_line(code, err, f"could not download {name} from {url}")
    assert f"--model.pretrained /path/to/{name}" in err and str(tmp_path / "torch_home") in err


def test_pretrained_checkpoint_of_another_variant_names_both(digits_checkpoint: Path, tmp_path: Path, capsys) -> None:
    before = digits_checkpoint.read_bytes()
    args = quickstart_command(tmp_path, "fit", *ONE_BATCH, "--model.pretrained", str(digits_checkpoint))
    code, err = run_cli([*args, "--model.model_name", "resnest26d"], capsys)
    assert_one_error_line(
        code,
        err,
        f"{digits_checkpoint} holds resnest14d {{width_multiplier: 0.25, stem_width: 8, min_attn_channels: 8}} "
        "weights but the model is resnest26d {width_multiplier: 0.25, stem_width: 8, min_attn_channels: 8}",
    )
    assert digits_checkpoint.read_bytes() == before


def test_resuming_a_checkpoint_of_another_width_names_both(digits_checkpoint: Path) -> None:
    model = ResNeStClassifier("resnest14d", num_classes=10, model_overrides={**TINY, "width_multiplier": 0.5})
    with pytest.raises(IncompatibleCheckpointError) as error:
        make_trainer(limit_val_batches=1).validate(model, DigitsDataModule(batch_size=16), ckpt_path=digits_checkpoint)
    assert str(error.value).startswith(
        "the checkpoint is resnest14d {width_multiplier: 0.25, stem_width: 8, min_attn_channels: 8} but the model "
        "is resnest14d {width_multiplier: 0.5, stem_width: 8, min_attn_channels: 8}; use the checkpoint's model "
        "settings"
    )


@pytest.mark.parametrize("subcommand", ["fit", "validate"])
def test_ckpt_path_whose_weights_do_not_fit_is_one_line(
    subcommand: str, digits_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    """LightningCLI rebuilds the model from a checkpoint's hyper-parameters; one without them (saved by other
    code) whose weights are another variant's is named before Lightning's strict load fails."""
    checkpoint = torch.load(digits_checkpoint, weights_only=True)
    del checkpoint["hyper_parameters"]
    stripped = tmp_path / "stripped.ckpt"
    torch.save(checkpoint, stripped)
    before = stripped.read_bytes()
    args = quickstart_command(
        tmp_path, subcommand, *ONE_BATCH, "--model.model_name", "resnest26d", "--ckpt_path", str(stripped)
    )
    code, err = run_cli(args, capsys)
    assert_one_error_line(
        code, err, "the checkpoint's weights do not fit the model resnest26d {width_multiplier: 0.25, stem_width: 8"
    )
    assert "unexpected" in err or "missing" in err
    assert stripped.read_bytes() == before
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


@pytest.mark.slow
def test_resuming_last_keeps_the_checkpoints_architecture(tmp_path: Path, capsys) -> None:
    """``--ckpt_path last`` resolves to the file, and LightningCLI then takes the model's settings from the
    checkpoint's hyper-parameters: another width on the command line cannot break a resume."""
    code, err = run_cli(quickstart_command(tmp_path, "fit", *ONE_BATCH), capsys)
    assert code == 0, err
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    first_steps = torch.load(last, weights_only=True)["global_step"]
    wider = "{width_multiplier: 0.5, stem_width: 8, min_attn_channels: 8}"
    args = quickstart_command(tmp_path, "fit", *ONE_BATCH, "--ckpt_path", "last", "--trainer.max_epochs", "2")
    code, err = run_cli([*args, "--model.model_overrides", wider], capsys)
    assert code == 0, err
    resumed = torch.load(last, weights_only=True)
    assert resumed["global_step"] == 2 * first_steps  # the second epoch continued the first
    assert resumed["hyper_parameters"]["model_overrides"] == TINY
