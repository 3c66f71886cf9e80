"""Small builders shared by the tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from jsonargparse import Namespace
from pytorch_lightning.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from resnest_pl.cli import ResNeStCLI, default_callbacks, main
from resnest_pl.data import ImageDataModule
from resnest_pl.models import ResNeSt, create_model
from resnest_pl.training.module import ResNeStClassifier
from resnest_pl.training.run_record import RUN_KEY

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
QUICK = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
TINY = dict(width_multiplier=0.25, stem_width=8, min_attn_channels=8)
TINY_SMALL_INPUT = {**TINY, "small_input": True}
TEMPLATE_CLASSES = 4


def tiny_model(name: str = "resnest14d", num_classes: int = 10, **overrides: object) -> ResNeSt:
    """A ResNeSt-14 at a quarter width for CPU tests (same code paths as the real ones)."""
    return create_model(name, num_classes=num_classes, **{**TINY, **overrides})


def make_trainer(**kwargs: Any) -> pl.Trainer:
    """A quiet one-CPU Trainer without logger or checkpoints; ``kwargs`` override."""
    options: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    options.update(kwargs)
    return pl.Trainer(**options)


class DumpRankState(Callback):
    """Saves what one process holds as ``<folder>/rank<N>.pt``: at the end of fit its rank, the world size, its
    parameters and the targets of its first training batch; at the end of predict its rank, the world size and the
    dataset indices of the images it predicted. Added to a CLI run with :func:`rank_probe`."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        self.first_targets: torch.Tensor | None = None
        self.predicted: list[int] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, *_: Any) -> None:
        if self.first_targets is None:
            self.first_targets = batch[1].detach().clone()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        parameters = {name: p.detach().clone() for name, p in pl_module.named_parameters()}
        self._save(trainer, parameters=parameters, first_targets=self.first_targets)

    def on_predict_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, *_: Any) -> None:
        self.predicted += batch[1].tolist()  # (images, dataset indices)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(trainer, predicted=self.predicted)

    def _save(self, trainer: pl.Trainer, **state: Any) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        state = {"rank": trainer.global_rank, "world_size": trainer.world_size, **state}
        torch.save(state, self.folder / f"rank{trainer.global_rank}.pt")


def rank_probe(folder: Path) -> list[str]:
    """CLI arguments adding :class:`DumpRankState`, which saves each process's state into ``folder``."""
    probe = {"class_path": "tests.helpers.DumpRankState", "init_args": {"folder": str(folder)}}
    return [f"--trainer.callbacks+={json.dumps(probe)}"]


def rank_states(folder: Path) -> list[dict]:
    """The states :class:`DumpRankState` saved into ``folder``, by rank; there must be two, of a world of two."""
    states = [torch.load(path, weights_only=False) for path in sorted(folder.glob("rank*.pt"))]
    ranks = [(s["rank"], s["world_size"]) for s in states]
    assert ranks == [(0, 2), (1, 2)], f"(rank, world size) of the processes that ran: {ranks}"
    return states


def run_killable(args: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess:
    """``subprocess.run`` in a new session whose whole process group is killed on timeout, so that a hung run (a
    DDP rank waiting for another in a collective, say) fails the test instead of blocking it, and leaves no
    process behind (``subprocess.run`` alone kills only the direct child)."""
    with subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            pytest.fail(f"{' '.join(args[:4])} ... still running after {timeout} s (hung?):\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)


def quickstart_command(tmp_path: Path, subcommand: str, *extra: str) -> list[str]:
    """CLI arguments of the quick start's ``subcommand`` for one epoch, its checkpoints and CSV logs in
    ``tmp_path / "run"``; ``extra`` arguments come last, so they override."""
    run = str(tmp_path / "run")
    return [
        subcommand,
        "--config",
        str(CONFIGS / "quickstart.yaml"),
        "--trainer.default_root_dir",
        run,
        "--trainer.logger.init_args.save_dir",
        run,
        "--trainer.max_epochs",
        "1",
        *QUICK,
        *extra,
    ]


def assert_one_error_line(code: int, err: str, starts: str = "") -> None:
    """The error policy of every command: exit status 2, no traceback, one ``error:`` line, the last."""
    lines = err.strip().splitlines()
    assert code == 2, err
    assert "Traceback" not in err and lines[-1].startswith(f"error: {starts}"), err
    assert sum(line.startswith("error:") for line in lines) == 1, err


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """Run the CLI in this process; returns the exit status and stderr."""
    try:
        main(args)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    return code, capsys.readouterr().err


class RecordInputSizes(Callback):
    """Append ``"<global step> <image side>"`` for every training batch to ``path`` (read by a test process)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        with self.path.open("a") as handle:
            handle.write(f"{trainer.global_step} {batch[0].shape[-1]}\n")


def write_run_checkpoint(
    path: Path,
    radix: int = 2,
    class_names: tuple[str, ...] = ("even", "odd"),
    data: dict | None = None,
    seed: int = 0,
) -> Path:
    """A checkpoint of a tiny network with random weights drawn from ``seed``, shaped as a resnest_pl run writes
    it: hyper-parameters, the weights under ``model.``, the run record with the class names and ``data``'s
    evaluation settings."""
    torch.manual_seed(seed)
    model = tiny_model(radix=radix, num_classes=len(class_names))
    checkpoint = {
        "hyper_parameters": {
            "model_name": "resnest14d",
            "model_overrides": {**TINY, "radix": radix},
            "num_classes": len(class_names),
        },
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        RUN_KEY: {"class_names": list(class_names), "data": dict(data or {})},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


def markdown_table(text: str, header_start: str) -> list[dict[str, str]]:
    """The rows of the first table in ``text`` whose header line starts with ``header_start``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    header = [cell.strip() for cell in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")), strict=True)))
    return rows


def randomise_batchnorm(model: nn.Module) -> nn.Module:
    """Random BN statistics and affine parameters (float64), so every layer matters."""
    generator = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=generator) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=generator) - 0.5)
    return model


def assert_same_outputs(ours: nn.Module, theirs: nn.Module, size: int = 64) -> None:
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        expected = theirs.double().eval()(x)
        actual = ours.double().eval()(x)
    error = (actual - expected).abs().max().item()
    assert error <= 1e-9 * expected.abs().max().item(), f"max abs difference {error}"


def signal_at(step: int, name: str) -> list[str]:
    return [
        "--trainer.callbacks+=tests.interrupt.SignalAtStep",
        "--trainer.callbacks.step",
        str(step),
        "--trainer.callbacks.signal_name",
        name,
    ]


def run_cli_process(
    args: list[str], env: dict[str, str] | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "resnest_pl.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=full_env,
    )


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def tiny_classifier(**kwargs: object) -> ResNeStClassifier:
    """The tiny small-input ResNeSt-14 as a classifier of ``TEMPLATE_CLASSES`` classes (by default)."""
    kwargs.setdefault("num_classes", TEMPLATE_CLASSES)
    return ResNeStClassifier("resnest14d", model_overrides=TINY_SMALL_INPUT, **kwargs)


def template_data(n: int, seed: int, noise: float = 1.0, skipped: bool = False) -> TensorDataset:
    """A learnable task: each class is a fixed random 16x16 image, samples add Gaussian noise."""
    templates = torch.randn(TEMPLATE_CLASSES, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, TEMPLATE_CLASSES, (n,), generator=gen)
    images = templates[targets] + noise * torch.randn(n, 3, 16, 16, generator=gen)
    tensors = (images, targets, torch.ones(n, dtype=torch.long)) if skipped else (images, targets)
    return TensorDataset(*tensors)


def template_loader(n: int = 64, seed: int = 1, batch_size: int = 16, **kwargs: object) -> DataLoader:
    skipped = bool(kwargs.pop("skipped", False))
    return DataLoader(template_data(n, seed, skipped=skipped), batch_size=batch_size, **kwargs)


class ParsedCLI(ResNeStCLI):
    """The real CLI (parser, config files, ``before_instantiate_classes``) that stops before instantiating."""

    def instantiate_classes(self) -> None:
        """Nothing: the tests read ``self.config``."""


def parsed_config(*args: str) -> Namespace:
    """The resolved config of ``python -m resnest_pl.cli fit ARGS``, as the CLI hands it to the classes."""
    cli = ParsedCLI(
        ResNeStClassifier,
        ImageDataModule,
        subclass_mode_data=True,
        trainer_defaults={"callbacks": default_callbacks()},
        run=False,
        args=list(args),
    )
    return cli.config


def assert_same_gradients(ours: nn.Module, theirs: nn.Module, size: int, targets: list[int], rtol: float) -> None:
    """One cross-entropy backward of both float64 models on the same batch: equal gradients, name by name."""
    images = torch.randn(len(targets), 3, size, size, dtype=torch.float64)
    target = torch.tensor(targets)
    nn.functional.cross_entropy(theirs(images), target).backward()
    nn.functional.cross_entropy(ours(images), target).backward()
    theirs_params = dict(theirs.named_parameters())
    for name, param in ours.named_parameters():
        torch.testing.assert_close(param.grad, theirs_params[name].grad, rtol=rtol, atol=1e-12, msg=name)
