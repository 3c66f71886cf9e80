"""``python -m resnest_pl.cli fit|validate|test|predict --config configs/X.yaml [--key value ...]``.

A thin ``LightningCLI``: the model is :class:`ResNeStClassifier`, the data any
:class:`ImageDataModule` subclass chosen by ``data.class_path``, and ``data.num_classes``
is linked to ``model.num_classes``. Several ``--config`` files compose left to right
(model + trainer preset + logger preset).
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.utilities.exceptions import MisconfigurationException, SIGTERMException
from pytorch_lightning.utilities.rank_zero import rank_zero_info

from .callbacks import KeepHostMemory, LastCheckpoint, LoggedConfigCallback, PredictionCSVWriter
from .callbacks.checkpointing import HPC_PATTERN, LAST_NAME, check_checkpoint_file
from .cli_errors import OneLineErrorParser, explain_gpu_missing
from .data import DataLayoutError, DatasetNotFoundError, ImageDataModule
from .errors import report, user_error_message
from .eval_settings import fill_published_eval_settings
from .loggers import finish_loggers, start_loggers
from .models import IncompatibleCheckpointError, WeightsDownloadError
from .runs import RunFolderError, check_run_folder, set_run_dir
from .training.module import ResNeStClassifier

# Errors that describe a user's mistake (config, data, checkpoint): shown as one line, not a traceback.
USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    DataLayoutError,
    DatasetNotFoundError,
    IncompatibleCheckpointError,
    WeightsDownloadError,
    MisconfigurationException,  # Lightning's, for impossible Trainer settings (e.g. gradient_clip_algorithm)
    RunFolderError,
)


class ResNeStCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.add_argument(
            "--predictions",
            type=str | None,
            default=None,
            help="predict: CSV to write (default: <trainer.default_root_dir>/predictions.csv)",
        )
        parser.add_argument(
            "--run_dir",
            type=str | None,
            default=None,
            help="the run's folder, for its checkpoints and its logs (sets trainer.default_root_dir and the "
            "logger's save_dir)",
        )
        parser.add_argument(
            "--overwrite",
            type=bool,
            default=False,
            help="fit: replace the checkpoints of another run (another model, classes or data) in the run's folder",
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        if config.get("run_dir"):
            set_run_dir(config, config.run_dir)
        # ModelCheckpoint writes to <default_root_dir>/checkpoints rather than a per-version folder,
        # so that `fit --ckpt_path last` finds the previous run's last.ckpt.
        root = Path(config.trainer.default_root_dir or os.getcwd())
        if os.environ.get("WANDB_SWEEP_ID") and os.environ.get("WANDB_RUN_ID"):
            # Every run of a wandb sweep gets the same command line: keep their checkpoints apart.
            root = root / os.environ["WANDB_RUN_ID"]
            config.trainer.default_root_dir = str(root)
        self.run_root = root
        self.checkpoint_dir = root / "checkpoints"
        if subcommand:
            # Before LightningCLI reads the checkpoint's hyper-parameters, which would fail with a traceback.
            config.ckpt_path = self.resolve_ckpt_path(subcommand, config.get("ckpt_path"))

    def resolve_ckpt_path(self, subcommand: str, ckpt_path: str | None) -> str | None:
        """Turn ``--ckpt_path last`` into the newest checkpoint of this run root (``last.ckpt`` or a SLURM
        requeue checkpoint) and check that the file is a readable training checkpoint before anything loads it.

        ``fit --ckpt_path last`` with nothing saved yet starts from scratch (the first job of a requeue script
        that always passes it); the evaluating subcommands need a checkpoint and stop with an error.
        """
        if ckpt_path is None or ckpt_path in ("best", "hpc", "registry"):
            return ckpt_path
        if ckpt_path == "last":
            candidates = [self.checkpoint_dir / f"{LAST_NAME}.ckpt", *self.run_root.glob(HPC_PATTERN)]
            existing = [path for path in candidates if path.is_file()]
            where = f"{self.checkpoint_dir / LAST_NAME}.ckpt or {self.run_root / HPC_PATTERN}"
            if not existing:
                if subcommand != "fit":
                    raise FileNotFoundError(
                        f"--ckpt_path last: no checkpoint at {where}; train first or pass a checkpoint file"
                    )
                rank_zero_info(f"--ckpt_path last: no checkpoint at {where} yet; starting from scratch")
                return None
            ckpt_path = str(max(existing, key=lambda path: path.stat().st_mtime))
            rank_zero_info(f"--ckpt_path last: resuming from {ckpt_path}")
        check_checkpoint_file(ckpt_path)
        return ckpt_path

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        fill_published_eval_settings(config)
        configured = configured_callback_classes(config.trainer.get("callbacks"))
        kept = []
        for callback in self.trainer_defaults["callbacks"]:
            if type(callback) in configured:
                continue  # the config lists its own, with its own settings
            if isinstance(callback, LearningRateMonitor) and config.trainer.get("logger") is False:
                continue  # it needs a logger to write to
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
                callback.dirpath = str(self.checkpoint_dir)
            elif isinstance(callback, PredictionCSVWriter):
                callback.output = config.get("predictions")
            kept.append(callback)
        self.trainer_defaults["callbacks"] = kept

    # Lightning touches every logger's experiment before any callback runs: start them first, so that
    # one that cannot start is swapped for CSV logs instead of ending the run.
    def before_fit(self) -> None:
        config = self.config[self.subcommand]
        if config.get("ckpt_path") is None and not config.get("overwrite"):
            check_run_folder(self.checkpoint_dir / f"{LAST_NAME}.ckpt", self.model.hparams, self.datamodule)
        start_loggers(self.trainer)

    def before_validate(self) -> None:
        start_loggers(self.trainer)

    before_test = before_predict = before_validate

    def after_fit(self) -> None:
        log_dir = self.trainer.log_dir or self.trainer.default_root_dir
        lines = [f"logs: {log_dir}"]
        for checkpoint in self.trainer.checkpoint_callbacks:
            if isinstance(checkpoint, LastCheckpoint):
                lines.append(f"last checkpoint: {checkpoint.best_model_path or '(none)'}")
            elif isinstance(checkpoint, ModelCheckpoint):
                best = checkpoint.best_model_score
                score = f" ({checkpoint.monitor}={best:.4f})" if best is not None else ""
                lines.append(f"best checkpoint: {checkpoint.best_model_path or '(none)'}{score}")
        rank_zero_info("\n".join(lines))
        finish_loggers(self.trainer)

    def after_validate(self) -> None:
        finish_loggers(self.trainer)

    after_test = after_predict = after_validate


def default_callbacks() -> list:
    """Callbacks every run gets: the best-`val/acc1` checkpoint, `last.ckpt` (the newest state), the LR, the
    predict CSV, and host-memory reuse on the CPU. A callback of the same class listed under
    ``trainer.callbacks`` in a config replaces its default (e.g. ``LastCheckpoint`` with ``every_n_minutes``);
    with ``trainer.logger: false`` the LR monitor stands aside."""
    return [
        ModelCheckpoint(
            monitor="val/acc1",
            mode="max",
            filename="epoch{epoch:03d}-val_acc1_{val/acc1:.4f}",
            auto_insert_metric_name=False,
        ),
        LastCheckpoint(),
        LearningRateMonitor(logging_interval="step"),
        PredictionCSVWriter(),
        KeepHostMemory(),
    ]


def configured_callback_classes(callbacks: Any) -> set[type]:
    """The classes of the callbacks a config lists under ``trainer.callbacks`` (not yet instantiated)."""
    classes = set()
    for entry in callbacks or []:
        class_path = entry.get("class_path") if hasattr(entry, "get") else None
        if isinstance(class_path, str) and "." in class_path:
            module, _, name = class_path.rpartition(".")
            classes.add(getattr(importlib.import_module(module), name))
        elif entry is not None and not hasattr(entry, "get"):
            classes.add(type(entry))
    return classes


def explain_user_error(err: BaseException) -> str:
    """The ``error:`` line of a user error: its own message, or the fix for a GPU preset on a machine without one."""
    message = user_error_message(err)
    return explain_gpu_missing(message) or message


def main(args: list[str] | None = None) -> None:
    """Run the CLI; a user error ends as :mod:`resnest_pl.errors` says (one ``error:`` line, exit status 2)."""
    try:
        ResNeStCLI(
            ResNeStClassifier,
            ImageDataModule,
            subclass_mode_data=True,
            save_config_callback=LoggedConfigCallback,
            save_config_kwargs={"overwrite": True},
            parser_class=OneLineErrorParser,
            trainer_defaults={"callbacks": default_callbacks()},
            args=args,
        )
        # Lightning leaves the process group up; tearing it down here avoids gloo's threads aborting the
        # interpreter's exit ("terminate called without an active exception") after a finished DDP run.
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    except SIGTERMException as stop:
        # Lightning stops the loop cleanly after SIGTERM (LastCheckpoint has saved the step); exit as a process
        # ended by that signal would, so that a scheduler or a shell sees the run did not finish.
        print("stopped by SIGTERM; resume with the same command and --ckpt_path last", file=sys.stderr)
        raise SystemExit(128 + signal.SIGTERM) from stop
    except USER_ERRORS as err:
        raise SystemExit(report(err, explain_user_error(err))) from err


if __name__ == "__main__":
    main()
