"""``python -m resnest_pl.cli``: every config fits, the subcommands chain, bad input ends in one clear line."""

from __future__ import annotations

import csv
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from pytorch_lightning.core.saving import load_hparams_from_yaml

from resnest_pl.cli import main
from resnest_pl.data import DigitsDataModule, normalize
from resnest_pl.data.decode import read_image
from resnest_pl.training.module import ResNeStClassifier

from ..fixtures import write_broken_images, write_cifar10, write_cifar100, write_images, write_jpeg_tree
from ..helpers import CONFIGS, QUICK, ROOT, rank_probe, rank_states, run_cli, run_killable


def short(tmp_path: Path, epochs: int = 1, train_batches: int = 3, val_batches: int = 2) -> list[str]:
    """Arguments that make any config a few-step run writing under ``tmp_path``."""
    return [
        "--trainer.max_epochs",
        str(epochs),
        "--trainer.limit_train_batches",
        str(train_batches),
        "--trainer.limit_val_batches",
        str(val_batches),
        "--trainer.default_root_dir",
        str(tmp_path / "run"),
        "--trainer.log_every_n_steps",
        "1",
        *QUICK,
    ]


def csv_logger(tmp_path: Path) -> list[str]:
    return ["--trainer.logger", "CSVLogger", "--trainer.logger.save_dir", str(tmp_path / "run")]


def short_quickstart(tmp_path: Path, *extra: str, subcommand: str = "fit") -> list[str]:
    return [
        subcommand,
        "--config",
        str(CONFIGS / "quickstart.yaml"),
        "--trainer.logger.init_args.save_dir",
        str(tmp_path / "run"),
        *short(tmp_path),
        *extra,
    ]


def metrics(tmp_path: Path) -> list[dict[str, str]]:
    files = sorted((tmp_path / "run").rglob("metrics.csv"))
    assert files, "no metrics.csv written"
    with files[-1].open() as handle:
        return list(csv.DictReader(handle))


def last_value(rows: list[dict[str, str]], key: str) -> float:
    values = [float(r[key]) for r in rows if r.get(key)]
    assert values, f"{key} never logged"
    return values[-1]


def write_digit_pngs(folder: Path, count: int = 6) -> list[Path]:
    """Real digits from scikit-learn saved as PNG files, for predict."""
    from sklearn.datasets import load_digits

    folder.mkdir(parents=True)
    digits = load_digits()
    paths = []
    for i in range(count):
        pixels = (digits.images[i] * 255 / 16).astype(np.uint8)
        path = folder / f"digit_{i}_label{digits.target[i]}.png"
        Image.fromarray(pixels).resize((32, 32)).convert("RGB").save(path)
        paths.append(path)
    return paths


# ---- the quick start and the subcommands -----------------------------------------------------------------


def test_print_config_resolves_the_composed_config(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "fit",
                "--config",
                str(CONFIGS / "quickstart.yaml"),
                "--config",
                str(CONFIGS / "trainer/cpu.yaml"),
                "--print_config",
            ]
        )
    assert exit_.value.code == 0
    printed = capsys.readouterr().out
    assert "resnest_pl.data.DigitsDataModule" in printed
    assert "precision: 32-true" in printed and "model_name: resnest14d" in printed


def test_fit_validate_test_predict_chain(tmp_path: Path, capsys) -> None:
    """validate, test and predict on the best checkpoint reproduce what the fit logged for it and what the model,
    loaded from it by hand, computes."""
    code, err = run_cli(short_quickstart(tmp_path), capsys)
    assert code == 0, err
    checkpoints = tmp_path / "run" / "checkpoints"
    (best,) = checkpoints.glob("epoch*-val_acc1_*.ckpt")
    (fit,) = [r for r in metrics(tmp_path) if r.get("val/acc1")]
    assert f"val_acc1_{float(fit['val/acc1']):.4f}.ckpt" in best.name
    # The same weights on the same (unshuffled, equally limited) val batches: the same accuracy and loss (the
    # loss tells apart weights that an accuracy near chance after 3 steps would not).
    code, err = run_cli(short_quickstart(tmp_path, "--ckpt_path", str(best), subcommand="validate"), capsys)
    assert code == 0, err
    validated = metrics(tmp_path)
    for key in ("val/acc1", "val/loss"):
        assert last_value(validated, key) == pytest.approx(float(fit[key]), abs=1e-6), key

    model = ResNeStClassifier.load_from_checkpoint(best, map_location="cpu").eval()
    data = DigitsDataModule(image_size=32, batch_size=64, num_workers=0)  # the quick start's data
    data.setup("test")
    with torch.no_grad():
        batches = [(model(normalize(x, data.mean, data.std)), y) for x, y, _ in data.test_dataloader()]
    logits, targets = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    code, err = run_cli(short_quickstart(tmp_path, "--ckpt_path", str(best), subcommand="test"), capsys)
    assert code == 0, err
    tested = metrics(tmp_path)
    assert last_value(tested, "test/acc1") == pytest.approx(
        (logits.argmax(1) == targets).float().mean().item(), abs=1e-6
    )
    assert last_value(tested, "test/loss") == pytest.approx(F.cross_entropy(logits, targets).item(), abs=1e-5)

    images = write_digit_pngs(tmp_path / "to_predict")
    out = tmp_path / "predictions.csv"
    args = short_quickstart(
        tmp_path, "--ckpt_path", str(best), "--data.predict_paths", str(images[0].parent), subcommand="predict"
    )
    code, err = run_cli([*args, "--predictions", str(out)], capsys)
    assert code == 0, err
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in images)
    assert list(rows[0]) == ["path"] + [f"top{k}_{kind}" for k in range(1, 6) for kind in ("class", "prob")]
    transform = data.eval_transform()
    for row in rows:
        with torch.no_grad():
            pixels = transform(read_image(row["path"]))[None]
            probs = model(normalize(pixels, data.mean, data.std)).softmax(dim=1)[0]
        top_probs, top_classes = probs.topk(5)
        assert [row[f"top{k}_class"] for k in range(1, 6)] == [data.class_names[c] for c in top_classes], row["path"]
        written = [float(row[f"top{k}_prob"]) for k in range(1, 6)]
        assert written == pytest.approx(top_probs.tolist(), abs=1e-5), row["path"]


def test_resume_from_last_continues_the_run(tmp_path: Path, capsys) -> None:
    code, err = run_cli(short_quickstart(tmp_path), capsys)
    assert code == 0, err
    first_steps = int(last_value(metrics(tmp_path), "step"))
    code, err = run_cli(short_quickstart(tmp_path, "--ckpt_path", "last", "--trainer.max_epochs", "2"), capsys)
    assert code == 0, err
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["global_step"] == 2 * 3  # two epochs of three steps: the second continued the first
    assert first_steps < state["global_step"]


@pytest.mark.slow
def test_quickstart_reaches_98_percent(tmp_path: Path, capsys) -> None:
    """The README's promise: the quick start reaches >= 98% val/acc1 on the CPU."""
    args = ["fit", "--config", str(CONFIGS / "quickstart.yaml"), "--trainer.default_root_dir", str(tmp_path / "run")]
    code, err = run_cli([*args, "--trainer.logger.init_args.save_dir", str(tmp_path / "run"), *QUICK], capsys)
    assert code == 0, err
    assert max(float(r["val/acc1"]) for r in metrics(tmp_path) if r.get("val/acc1")) >= 0.98


def test_bf16_mixed_precision_on_cpu(tmp_path: Path, capsys) -> None:
    code, err = run_cli(short_quickstart(tmp_path, "--trainer.precision", "bf16-mixed"), capsys)
    assert code == 0, err
    assert np.isfinite(last_value(metrics(tmp_path), "train/loss"))


# ---- every shipped config, pointed at fixtures ---------------------------------------------------------------


@pytest.fixture
def cifar_root(tmp_path: Path, monkeypatch) -> Path:
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    root = tmp_path / "cifar"
    write_cifar10(root)
    write_cifar100(root)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("config", ["cifar10.yaml", "cifar100.yaml"])
def test_cifar_configs_fit(config: str, cifar_root: Path, tmp_path: Path, capsys) -> None:
    args = ["fit", "--config", str(CONFIGS / config), *short(tmp_path, train_batches=2, val_batches=1)]
    args += ["--data.root", str(cifar_root), "--data.download", "false", "--data.batch_size", "4"]
    args += ["--data.num_workers", "0", *csv_logger(tmp_path)]
    code, err = run_cli(args, capsys)
    assert code == 0, err
    assert np.isfinite(last_value(metrics(tmp_path), "train/loss"))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnest50", "resnest101", "resnest200", "resnest269"])
def test_imagenet_configs_fit(name: str, tmp_path: Path, capsys) -> None:
    root = write_jpeg_tree(tmp_path / "imagenet", {"train": 2, "val": 1})
    args = [
        "fit",
        "--config",
        str(CONFIGS / "imagenet" / f"{name}.yaml"),
        *short(tmp_path, train_batches=1, val_batches=1),
    ]
    args += ["--data.root", str(root), "--data.crop_size", "64", "--data.eval_crop_size", "64"]
    args += ["--data.batch_size", "2", "--data.num_workers", "0", *csv_logger(tmp_path)]
    code, err = run_cli(args, capsys)
    assert code == 0, err
    assert np.isfinite(last_value(metrics(tmp_path), "train/loss"))


@pytest.mark.parametrize("preset", ["trainer/cpu.yaml", "logger/csv.yaml", "logger/tensorboard.yaml"])
def test_presets_compose_with_the_quickstart(preset: str, tmp_path: Path, capsys) -> None:
    args = ["fit", "--config", str(CONFIGS / "quickstart.yaml"), "--config", str(CONFIGS / preset)]
    args += ["--trainer.logger.init_args.save_dir", str(tmp_path / "run"), *short(tmp_path, train_batches=2)]
    code, err = run_cli(args, capsys)
    assert code == 0, err
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize(
    "preset", ["trainer/gpu.yaml", "trainer/gpu-fp16.yaml", "trainer/ddp.yaml", "trainer/multinode.yaml"]
)
def test_gpu_presets_parse(preset: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(CONFIGS / "quickstart.yaml"), "--config", str(CONFIGS / preset), "--print_config"])
    assert exit_.value.code == 0
    printed = capsys.readouterr().out
    assert "accelerator: gpu" in printed
    assert ("sync_batchnorm: true" in printed) == ("ddp" in preset or "multinode" in preset)


def fit_in_subprocess(args: list[str], timeout: float = 240) -> None:
    """``python -m resnest_pl.cli`` with ``args`` in its own process group, killed (the test failing) if it is still
    running after ``timeout`` s: a DDP rank waiting forever for the other must not block the test suite."""
    # Run from ROOT, so that `tests.helpers` imports in every rank.
    result = run_killable([sys.executable, "-m", "resnest_pl.cli", *args], timeout, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_ddp_with_two_cpu_processes(tmp_path: Path) -> None:
    fit_in_subprocess(
        [*short_quickstart(tmp_path), "--config", str(CONFIGS / "trainer/cpu-ddp.yaml"), *rank_probe(tmp_path)]
    )
    first, second = rank_states(tmp_path)
    assert not torch.equal(first["first_targets"], second["first_targets"])  # each rank reads its own share
    for name, weights in first["parameters"].items():  # averaged gradients: both ranks took the same steps
        assert torch.equal(weights, second["parameters"][name]), name
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["global_step"] == 3
    # The quick start's lr, 0.4 per 256 images, scaled by the global batch 2 x 64 = 128 to a peak of 0.2, warmed up
    # over the epoch's 3 steps from 0 (one process alone would log half of these).
    lrs = [float(r["lr-NesterovSGD/pg1"]) for r in metrics(tmp_path) if r.get("lr-NesterovSGD/pg1")]
    assert lrs == pytest.approx([0.0, 0.2 / 3, 0.4 / 3], rel=1e-6)  # logged as float32


@pytest.mark.slow
def test_ddp_repeated_augmentation_sends_the_copies_of_an_image_to_different_ranks(tmp_path: Path) -> None:
    """With ``aug_repeats`` equal to the number of processes, each image's two copies are dealt to the two ranks
    (timm's RepeatAugSampler order), so both ranks' first batches hold the same images, in the same order."""
    ddp = ["--config", str(CONFIGS / "trainer/cpu-ddp.yaml"), "--data.aug_repeats", "2"]
    fit_in_subprocess([*short_quickstart(tmp_path), *ddp, *rank_probe(tmp_path)])
    first, second = rank_states(tmp_path)
    assert len(first["first_targets"]) == 64
    assert torch.equal(first["first_targets"], second["first_targets"])


# ---- corrupt images --------------------------------------------------------------------------------------------

TRAIN_BROKEN, VAL_BROKEN = 7, 2


def folder_with_broken_images(root: Path) -> Path:
    """Two classes; train: 5 readable and 7 unreadable files, val: 6 and 2 (truncated JPEGs and garbage bytes).

    In batches of 2, the 12 training files make 6 batches and only 5 can hold a readable one, so at least one
    batch (one process's, under DDP) is made only of unreadable files, whatever the shuffle. Val is not shuffled
    and sorts ``a_0, a_1, a_broken_0, a_broken_1``: its second batch is unreadable as a whole in one process.
    """
    write_images(root / "train" / "a", 3)
    write_broken_images(root / "train" / "a", 3)
    write_images(root / "train" / "b", 2, seed=1)
    write_broken_images(root / "train" / "b", 4)
    write_images(root / "val" / "a", 2)
    write_broken_images(root / "val" / "a", VAL_BROKEN)
    write_images(root / "val" / "b", 4, seed=1)
    return root


def broken_folder_fit(tmp_path: Path) -> list[str]:
    root = folder_with_broken_images(tmp_path / "broken")
    args = ["fit", "--config", str(CONFIGS / "quickstart.yaml"), *short(tmp_path, train_batches=6, val_batches=4)]
    args += ["--data", "resnest_pl.data.ImageFolderDataModule", "--data.root", str(root), "--data.crop_size", "32"]
    return [*args, "--data.batch_size", "2", "--data.num_workers", "0", *csv_logger(tmp_path)]


def epoch_value(rows: list[dict[str, str]], key: str) -> float:
    (value,) = [float(r[key]) for r in rows if r.get(key)]  # one epoch: one value
    return value


def test_fit_over_corrupt_images_counts_each_once(tmp_path: Path, capsys, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="resnest_pl.data"):
        code, err = run_cli(broken_folder_fit(tmp_path), capsys)
    assert code == 0, err
    rows = metrics(tmp_path)
    # Every file is drawn once in the epoch; an unreadable one is counted when drawn (not when passed over to
    # find a replacement), so the counts are the numbers of unreadable files.
    assert epoch_value(rows, "data/skipped_images") == TRAIN_BROKEN
    assert epoch_value(rows, "val/skipped_images") == VAL_BROKEN
    assert len([r for r in rows if r.get("train/loss")]) == 6  # every batch trained, the unreadable one too
    logged = {r.args[0] for r in caplog.records if r.msg.startswith("skipping unreadable or corrupt image")}
    assert logged == {str(path) for path in (tmp_path / "broken").rglob("*_broken_*")}  # each by its path


@pytest.mark.slow
def test_ddp_fit_over_corrupt_images_neither_hangs_nor_miscounts(tmp_path: Path) -> None:
    """Before unreadable training images were replaced, a batch of only unreadable files made one rank skip its
    step while the other waited for it in the gradient all-reduce, forever."""
    args = [*broken_folder_fit(tmp_path), "--config", str(CONFIGS / "trainer/cpu-ddp.yaml"), *rank_probe(tmp_path)]
    fit_in_subprocess(args, timeout=180)
    first, second = rank_states(tmp_path)
    for name, weights in first["parameters"].items():
        assert torch.equal(weights, second["parameters"][name]), name
    rows = metrics(tmp_path)
    assert epoch_value(rows, "data/skipped_images") == TRAIN_BROKEN  # summed over both processes
    assert epoch_value(rows, "val/skipped_images") == VAL_BROKEN
    assert len([r for r in rows if r.get("train/loss")]) == 3  # 3 steps of 2 x 2 images


# ---- wandb ---------------------------------------------------------------------------------------------------


@pytest.fixture
def no_wandb_key(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.mark.slow
def test_wandb_without_key_runs_offline_and_writes_its_files(tmp_path: Path, no_wandb_key, capsys) -> None:
    args = ["fit", "--config", str(CONFIGS / "quickstart.yaml"), "--config", str(CONFIGS / "logger/wandb.yaml")]
    args += ["--trainer.logger.init_args.save_dir", str(tmp_path / "run"), *short(tmp_path, train_batches=2)]
    code, err = run_cli(args, capsys)
    assert code == 0, err
    runs = list((tmp_path / "run").rglob("offline-run-*"))
    assert runs, "no offline wandb run directory"
    record_log = next(runs[0].glob("run-*.wandb"))  # wandb's offline record log (protobuf, JSON values)
    # wandb's service process writes the log behind the run: `finish()` returns once the run is closed, and the
    # last records can still be on their way to the file.
    deadline = time.monotonic() + 60
    while b"val/acc1" not in record_log.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.2)
    log = record_log.read_bytes()
    assert b"DigitsDataModule" in log  # the whole resolved config, not only the model's arguments
    assert b"val/acc1" in log
    # The per-class metrics' confusion-matrix figure, as a wandb image of the run.
    assert list(runs[0].rglob("media/images/val/confusion_matrix_*.png")), sorted(runs[0].rglob("*"))


def test_wandb_that_cannot_start_falls_back_to_csv(tmp_path: Path, no_wandb_key, monkeypatch, capsys) -> None:
    import wandb

    def unreachable(*args: object, **kwargs: object) -> None:
        raise wandb.errors.CommError("Network error: could not reach api.wandb.ai")

    monkeypatch.setattr(wandb, "init", unreachable)
    args = ["fit", "--config", str(CONFIGS / "quickstart.yaml"), "--config", str(CONFIGS / "logger/wandb.yaml")]
    args += [
        "--trainer.logger.init_args.save_dir",
        str(tmp_path / "run"),
        "--trainer.logger.init_args.offline",
        "false",
    ]
    with pytest.warns(UserWarning, match="wandb could not start"):
        code, err = run_cli([*args, *short(tmp_path, train_batches=2)], capsys)
    assert code == 0, err
    assert last_value(metrics(tmp_path), "train/loss") > 0
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


# ---- bad input -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typo", "line"),
    [
        (["--model.lable_smoothing", "0.2"], "'model.lable_smoothing' (on the command line or in a config file); "
         "did you mean --model.label_smoothing?"),
        (["--model.radix", "4"], "'model.radix' (on the command line or in a config file); "
         "did you mean --model.model_overrides.radix?"),
        (["--data.init_args.image_sise", "4"], "'data.init_args.image_sise' (on the command line or in a config "
         "file); did you mean --data.init_args.image_size?"),
    ],
)  # fmt: skip
def test_typo_in_a_key_is_one_line_with_the_nearest_key(typo: list[str], line: str, tmp_path: Path, capsys) -> None:
    code, err = run_cli(short_quickstart(tmp_path, *typo), capsys)
    assert code == 2
    assert err.strip().splitlines() == [f"error: unknown key {line}"]  # no usage dump


def test_typo_in_a_yaml_file_is_one_line_with_the_nearest_key(tmp_path: Path, capsys) -> None:
    config = tmp_path / "typo.yaml"
    config.write_text(yaml.safe_dump({"model": {"lable_smoothing": 0.2}}))
    code, err = run_cli(short_quickstart(tmp_path, "--config", str(config)), capsys)
    assert code == 2
    assert err.strip().splitlines() == [
        "error: unknown key 'model.lable_smoothing' (on the command line or in a config file); "
        "did you mean --model.label_smoothing?"
    ]


def test_wrong_config_path_names_the_nearest_file(tmp_path: Path, capsys) -> None:
    code, err = run_cli(["fit", "--config", str(CONFIGS / "quickstrat.yaml")], capsys)
    assert code == 2
    assert err.strip().splitlines() == [
        f"error: config file {CONFIGS / 'quickstrat.yaml'} does not exist; did you mean {CONFIGS / 'quickstart.yaml'}?"
    ]


def test_help_still_prints_the_usage(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--help"])
    assert exit_.value.code == 0
    assert "--model.label_smoothing" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="the preset runs on a machine with a GPU")
def test_gpu_preset_without_a_gpu_names_the_cpu_preset(tmp_path: Path, capsys) -> None:
    code, err = run_cli(short_quickstart(tmp_path, "--config", str(CONFIGS / "trainer/gpu.yaml")), capsys)
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        "error: trainer.accelerator is gpu (a GPU preset such as configs/trainer/gpu.yaml) but this machine has no "
        "supported GPU; use --config configs/trainer/cpu.yaml instead"
    )


def test_unknown_model_name_suggests_close_ones(tmp_path: Path, capsys) -> None:
    code, err = run_cli(short_quickstart(tmp_path, "--model.model_name", "resnet14d"), capsys)
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("error: unknown model 'resnet14d'. Did you mean resnest14d")


def test_missing_data_root_is_named(tmp_path: Path, capsys) -> None:
    args = ["fit", "--config", str(CONFIGS / "imagenet/resnest50.yaml"), *short(tmp_path), *csv_logger(tmp_path)]
    code, err = run_cli([*args, "--data.root", str(tmp_path / "nowhere")], capsys)
    assert code == 2
    assert "error: ImageNet not found" in err and str(tmp_path / "nowhere") in err


def test_flat_imagenet_val_is_explained(tmp_path: Path, capsys) -> None:
    root = write_jpeg_tree(tmp_path / "imagenet", {"train": 2})
    flat = root / "val"
    flat.mkdir()
    Image.new("RGB", (8, 8)).save(flat / "ILSVRC2012_val_00000001.JPEG")
    args = ["fit", "--config", str(CONFIGS / "imagenet/resnest50.yaml"), *short(tmp_path), *csv_logger(tmp_path)]
    code, err = run_cli([*args, "--data.root", str(root), "--data.num_workers", "0"], capsys)
    assert code == 2 and "raw ILSVRC2012 val download" in err and "one folder per class" in err


def test_cifar_without_internet_is_explained(tmp_path: Path, monkeypatch, capsys) -> None:
    import urllib.error

    import torchvision.datasets.utils as tv_utils

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv_utils, "download_url", offline)
    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", offline, raising=False)
    args = ["fit", "--config", str(CONFIGS / "cifar10.yaml"), *short(tmp_path), *csv_logger(tmp_path)]
    code, err = run_cli([*args, "--data.root", str(tmp_path / "cifar"), "--data.num_workers", "0"], capsys)
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: could not download CIFAR-10 into {tmp_path / 'cifar'} (URLError")
    assert "Without internet, copy the extracted cifar-10-batches-py folder into" in last


@pytest.mark.parametrize("subcommand", ["validate", "predict"])
def test_checkpoint_with_other_classes_points_to_its_own_config(subcommand: str, tmp_path: Path, capsys) -> None:
    code, err = run_cli(short_quickstart(tmp_path), capsys)
    assert code == 0, err
    (config,) = (tmp_path / "run").rglob("config.yaml")
    folder = write_jpeg_tree(tmp_path / "three", {"train": 2, "val": 1}, classes=["a", "b", "c"])
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    args = [subcommand, "--config", str(CONFIGS / "quickstart.yaml"), *short(tmp_path), *csv_logger(tmp_path)]
    args += ["--data", "resnest_pl.data.ImageFolderDataModule", "--data.root", str(folder), "--data.crop_size", "32"]
    args += ["--data.num_workers", "0", "--data.predict_paths", str(folder), "--ckpt_path", str(last)]
    code, err = run_cli(args, capsys)
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: the checkpoint's classifier has 10 classes but this model has 3 ")
    assert f"to {subcommand} the checkpoint, pass the config of the run that wrote it" in line
    assert line.endswith(f"--config {config} --ckpt_path {last}") and "model.pretrained" not in line
    assert last.is_file()  # nothing saved was lost


def test_hparams_yaml_loads_with_safe_load(tmp_path: Path, capsys) -> None:
    code, err = run_cli(short_quickstart(tmp_path), capsys)
    assert code == 0, err
    (saved,) = (tmp_path / "run").rglob("hparams.yaml")
    hparams = yaml.safe_load(saved.read_text())
    assert hparams["config"] == [str(CONFIGS / "quickstart.yaml")]
    assert load_hparams_from_yaml(str(saved))["model_name"] == "resnest14d"


def test_evaluating_a_checkpoint_says_nothing_about_resuming(tmp_path: Path, capsys, caplog) -> None:
    code, err = run_cli(short_quickstart(tmp_path), capsys)
    assert code == 0, err
    last = str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    with caplog.at_level(logging.INFO):
        code, err = run_cli(short_quickstart(tmp_path, "--ckpt_path", last, subcommand="validate"), capsys)
    assert code == 0, err
    assert "resuming" not in caplog.text + err
    with caplog.at_level(logging.INFO):
        code, err = run_cli(short_quickstart(tmp_path, "--ckpt_path", last, "--trainer.max_epochs", "2"), capsys)
    assert code == 0, err
    assert "resuming epoch 0 after its first 3 batches" in caplog.text  # a fit still says so


def test_runs_of_a_wandb_sweep_keep_their_checkpoints_apart(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("WANDB_SWEEP_ID", "sweep1")
    monkeypatch.setenv("WANDB_RUN_ID", "run42")
    code, err = run_cli(short_quickstart(tmp_path, "--trainer.limit_train_batches", "1"), capsys)
    assert code == 0, err
    assert (tmp_path / "run" / "run42" / "checkpoints" / "last.ckpt").is_file()


# ---- run folders and the weights a run loads -------------------------------------------------------------------


def test_run_dir_holds_a_runs_checkpoints_and_logs(tmp_path: Path, capsys) -> None:
    args = ["fit", "--config", str(CONFIGS / "quickstart.yaml"), "--run_dir", str(tmp_path / "mine"), *QUICK]
    code, err = run_cli([*args, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"], capsys)
    assert code == 0, err
    assert (tmp_path / "mine" / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "mine" / "csv_logs" / "version_0" / "metrics.csv").is_file()


def test_a_fit_does_not_overwrite_another_runs_checkpoints(tmp_path: Path, capsys, caplog) -> None:
    code, err = run_cli(short_quickstart(tmp_path), capsys)
    assert code == 0, err
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    folder = write_jpeg_tree(tmp_path / "three", {"train": 4, "val": 2}, classes=["a", "b", "c"])
    three = ["--data", "resnest_pl.data.ImageFolderDataModule", "--data.root", str(folder), "--data.crop_size", "32"]
    three += ["--data.num_workers", "0", "--data.batch_size", "4"]
    code, err = run_cli(short_quickstart(tmp_path, *three), capsys)
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"error: {last} belongs to another run (resnest14d ")
    assert "10 classes, DigitsDataModule) than this fit (" in line and "3 classes, ImageFolderDataModule" in line
    assert "--run_dir runs/<name>" in line and "--ckpt_path last" in line and "--overwrite true" in line
    assert last.read_bytes() == before

    # Fine-tuning it in a folder of its own says which weights it starts from and what it replaced.
    mine = ["--run_dir", str(tmp_path / "three_run"), "--model.pretrained", str(last)]
    with caplog.at_level(logging.INFO):
        code, err = run_cli(short_quickstart(tmp_path, *three, *mine), capsys)
    assert code == 0, err
    (loaded,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("loading weights:")]
    assert loaded.startswith(f"loading weights: {last} (run: resnest14d width_multiplier=0.25 stem_width=8 ")
    assert "10 classes (0, 1, 2, 3, 4, ...), epoch 0, step 3, val/acc1 0." in loaded
    assert loaded.endswith("; classifier 10 → 3 classes, re-initialised")
    code, err = run_cli(short_quickstart(tmp_path, *three, "--overwrite", "true"), capsys)  # said explicitly
    assert code == 0, err
    assert last.read_bytes() != before


def test_evaluating_a_checkpoint_names_it_and_its_run(tmp_path: Path, capsys, caplog) -> None:
    code, err = run_cli(short_quickstart(tmp_path), capsys)
    assert code == 0, err
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    with caplog.at_level(logging.INFO):
        code, err = run_cli(short_quickstart(tmp_path, "--ckpt_path", str(last), subcommand="validate"), capsys)
    assert code == 0, err
    (loaded,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("loading weights:")]
    assert loaded.startswith(f"loading weights: {last} (run: resnest14d ")
    assert "10 classes (0, 1, 2, 3, 4, ...), epoch 0, step 3, val/acc1 0." in loaded
    assert loaded.endswith("); nothing replaced")
