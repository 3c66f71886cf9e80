"""``configs/debug/``: each preset, composed with the quick start, does what it says; each composes with a recipe."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import Callback

from resnest_pl.cli import main

from ..helpers import CONFIGS, QUICK, run_cli

DEBUG = CONFIGS / "debug"
PRESETS = ["fast_dev_run", "overfit", "limit_batches", "profiler", "profiler_pytorch", "anomaly"]


def debug_fit(preset: str, root: Path, *extra: str) -> list[str]:
    """``fit`` of the quick start with ``preset`` composed after it, writing under ``root``."""
    args = ["fit", "--config", str(CONFIGS / "quickstart.yaml"), "--config", str(DEBUG / f"{preset}.yaml")]
    return [*args, "--trainer.default_root_dir", str(root), *QUICK, *extra]


def with_callback(name: str, path: Path) -> list[str]:
    """Adds this module's callback ``name``, writing to ``path``, to a CLI run."""
    return [f"--trainer.callbacks+=tests.cli.test_debug_presets.{name}", "--trainer.callbacks.path", str(path)]


class CountBatches(Callback):
    """Appends ``"train <epoch>"`` or ``"val <epoch>"`` to ``path`` for every training / validation batch run
    (not the sanity check's)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def _record(self, trainer: pl.Trainer, stage: str) -> None:
        with self.path.open("a") as handle:
            handle.write(f"{stage} {trainer.current_epoch}\n")

    def on_train_batch_end(self, trainer: pl.Trainer, *_: Any) -> None:
        self._record(trainer, "train")

    def on_validation_batch_end(self, trainer: pl.Trainer, *_: Any) -> None:
        if not trainer.sanity_checking:
            self._record(trainer, "val")


class RecordOverfitBatches(Callback):
    """Appends one JSON line per training batch to ``path``: epoch, batch index, training loss, a fingerprint of
    the images and the accuracy of the model (eval mode) on that batch after its step."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        images, targets = batch[0], batch[1]
        pl_module.eval()
        with torch.no_grad():
            accuracy = (pl_module(images).argmax(dim=1) == targets).float().mean().item()
        pl_module.train()
        row = {
            "epoch": trainer.current_epoch,
            "batch": batch_idx,
            "loss": float(outputs["loss"]),
            "images": float(images.double().sum()),
            "accuracy": accuracy,
        }
        with self.path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")


class NaNInBackward(Callback):
    """Makes the classifier's backward produce NaN while its forward stays finite: ``0 * sqrt(x - x)`` adds 0,
    and its gradient is ``0 * inf``. Without anomaly detection the run goes on with NaN gradients."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        def poison(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
            self.path.write_text(str(torch.is_anomaly_enabled()))
            return output + 0 * torch.sqrt(output - output)

        pl_module.model.fc.register_forward_hook(poison)


def counts(path: Path) -> dict[str, int]:
    lines = path.read_text().splitlines()
    return {line: lines.count(line) for line in set(lines)}


def test_fast_dev_run_runs_one_batch_of_each_and_writes_nothing(tmp_path: Path, capsys) -> None:
    record = tmp_path / "batches.txt"
    code, err = run_cli(debug_fit("fast_dev_run", tmp_path / "run", *with_callback("CountBatches", record)), capsys)
    assert code == 0, err
    assert counts(record) == {"train 0": 1, "val 0": 1}
    assert not list(tmp_path.rglob("*.ckpt"))


def test_limit_batches_runs_its_number_of_batches(tmp_path: Path, capsys) -> None:
    limits = yaml.safe_load((DEBUG / "limit_batches.yaml").read_text())["trainer"]
    record = tmp_path / "batches.txt"
    extra = ["--trainer.max_epochs", "2", *with_callback("CountBatches", record)]  # 2 of its 3 epochs suffice
    code, err = run_cli(debug_fit("limit_batches", tmp_path / "run", *extra), capsys)
    assert code == 0, err
    train, val = limits["limit_train_batches"], limits["limit_val_batches"]
    assert counts(record) == {"train 0": train, "val 0": val, "train 1": train, "val 1": val}
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_overfit_memorises_the_same_few_batches(tmp_path: Path, capsys) -> None:
    record = tmp_path / "overfit.jsonl"
    code, err = run_cli(debug_fit("overfit", tmp_path / "run", *with_callback("RecordOverfitBatches", record)), capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in record.read_text().splitlines()]
    preset = yaml.safe_load((DEBUG / "overfit.yaml").read_text())["trainer"]
    epochs, batches = preset["max_epochs"], preset["overfit_batches"]
    assert [(r["epoch"], r["batch"]) for r in rows] == [(e, b) for e in range(epochs) for b in range(batches)]
    first, last = rows[:batches], rows[-batches:]
    # The same images, augmented the same way, at every epoch.
    assert [r["images"] for r in last] == [r["images"] for r in first]
    assert min(r["loss"] for r in first) > 1.5  # chance level is ln(10) = 2.3
    assert max(r["loss"] for r in last) < 0.05
    assert [r["accuracy"] for r in last] == [1.0] * batches


def test_simple_profiler_writes_its_report(tmp_path: Path, capsys) -> None:
    extra = ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2"]
    code, err = run_cli(debug_fit("profiler", tmp_path / "run", *extra), capsys)
    assert code == 0, err
    report = (tmp_path / "run" / "fit-profile.txt").read_text()
    assert report.startswith("FIT Profiler Report")
    # One row per action: | name | mean duration | calls | total | percentage |
    rows = {
        cells[1].strip(): cells[3].strip()
        for cells in (line.split("|") for line in report.splitlines())
        if len(cells) > 3
    }
    assert rows["run_training_batch"] == "2"
    assert rows["[Strategy]SingleDeviceStrategy.training_step"] == "2"


def test_pytorch_profiler_writes_a_chrome_trace(tmp_path: Path, capsys) -> None:
    # Lightning's default schedule records steps 3 to 5 of each loop and writes the trace after the 5th.
    extra = ["--trainer.limit_train_batches", "5", "--trainer.limit_val_batches", "3"]
    code, err = run_cli(debug_fit("profiler_pytorch", tmp_path / "run", *extra), capsys)
    assert code == 0, err
    traces = list((tmp_path / "run").glob("fit-trace-*training_step*.pt.trace.json"))
    assert len(traces) == 1, sorted(p.name for p in (tmp_path / "run").iterdir())
    events = json.loads(traces[0].read_text())["traceEvents"]
    names = {event.get("name") for event in events}
    assert "aten::convolution" in names and "Optimizer.step#NesterovSGD.step" in names
    assert "FIT Profiler Report" in (tmp_path / "run" / "fit-trace.txt").read_text()


def test_anomaly_detection_names_the_backward_op_that_made_nan(tmp_path: Path, capsys) -> None:
    record = tmp_path / "anomaly_enabled.txt"
    args = debug_fit("anomaly", tmp_path / "run", *with_callback("NaNInBackward", record))
    with pytest.raises(RuntimeError, match="Function 'SqrtBackward0' returned nan values"):
        run_cli(args, capsys)
    assert record.read_text() == "True"


def nested(config: dict, path: list[str]) -> Any:
    for key in path:
        config = config[key]
    return config


def leaves(config: dict, prefix: tuple[str, ...] = ()) -> list[tuple[list[str], Any]]:
    """``(key path, value)`` of every value in a nested dict."""
    found = []
    for key, value in config.items():
        if isinstance(value, dict):
            found += leaves(value, (*prefix, key))
        else:
            found.append(([*prefix, key], value))
    return found


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_composes_with_an_imagenet_recipe(preset: str, capsys) -> None:
    text = (DEBUG / f"{preset}.yaml").read_text()
    assert text.startswith("# Debug preset: ") and f"--config configs/debug/{preset}.yaml" in text
    recipe = CONFIGS / "imagenet" / "resnest50.yaml"
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(recipe), "--config", str(DEBUG / f"{preset}.yaml"), "--print_config"])
    assert exit_.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["model_name"] == "resnest50"
    assert printed["data"]["class_path"] == "resnest_pl.data.ImageNetDataModule"
    assert printed["trainer"]["callbacks"][0]["class_path"] == "resnest_pl.callbacks.DropBlockSchedule"
    for path, value in leaves(yaml.safe_load(text)):
        assert nested(printed, path) == value, path
