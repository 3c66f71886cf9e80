"""``python -m resnest_pl.cli fit|validate|test|predict --config configs/X.yaml [--key value ...]``.

A thin ``LightningCLI``: the model is :class:`ResNeStClassifier`, the data any
:class:`ImageDataModule` subclass chosen by ``data.class_path``, and ``data.num_classes``
is linked to ``model.num_classes``. Several ``--config`` files compose left to right
(model + trainer preset + logger preset).
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import torch
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from pytorch_lightning.utilities.rank_zero import rank_zero_info

from .callbacks import KeepHostMemory
from .data import DataLayoutError, DatasetNotFoundError, ImageDataModule
from .loggers import finish_loggers, start_loggers
from .models import IncompatibleCheckpointError, WeightsDownloadError
from .module import ResNeStClassifier
from .prediction import PredictionCSVWriter

# Errors that describe a user's mistake (config, data, checkpoint): shown as one line, not a traceback.
USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    DataLayoutError,
    DatasetNotFoundError,
    IncompatibleCheckpointError,
    WeightsDownloadError,
)
DEBUG_ENV = "RESNEST_PL_DEBUG"


class LoggedConfigCallback(SaveConfigCallback):
    """Saves the resolved config next to the logs and sends it, whole, to every logger (wandb's run config)."""

    def save_config(self, trainer, pl_module, stage: str) -> None:
        for logger in trainer.loggers:
            logger.log_hyperparams(self.config.as_dict())


class ResNeStCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.add_argument(
            "--predictions",
            type=str | None,
            default=None,
            help="predict: CSV to write (default: <trainer.default_root_dir>/predictions.csv)",
        )

    def before_instantiate_classes(self) -> None:
        # ModelCheckpoint writes to <default_root_dir>/checkpoints rather than a per-version folder,
        # so that `fit --ckpt_path last` finds the previous run's last.ckpt.
        config = self.config[self.subcommand] if self.subcommand else self.config
        root = Path(config.trainer.default_root_dir or os.getcwd())
        if os.environ.get("WANDB_SWEEP_ID") and os.environ.get("WANDB_RUN_ID"):
            # Every run of a wandb sweep gets the same command line: keep their checkpoints apart.
            root = root / os.environ["WANDB_RUN_ID"]
            config.trainer.default_root_dir = str(root)
        for callback in self.trainer_defaults["callbacks"]:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
                callback.dirpath = str(root / "checkpoints")
            elif isinstance(callback, PredictionCSVWriter):
                callback.output = config.get("predictions")

    # Lightning touches every logger's experiment before any callback runs: start them first, so that
    # one that cannot start is swapped for CSV logs instead of ending the run.
    def before_fit(self) -> None:
        start_loggers(self.trainer)

    before_validate = before_test = before_predict = before_fit

    def after_fit(self) -> None:
        checkpoint = self.trainer.checkpoint_callback
        log_dir = self.trainer.log_dir or self.trainer.default_root_dir
        lines = [f"logs: {log_dir}"]
        if isinstance(checkpoint, ModelCheckpoint):
            best = checkpoint.best_model_score
            score = f" ({checkpoint.monitor}={best:.4f})" if best is not None else ""
            lines.append(f"best checkpoint: {checkpoint.best_model_path or '(none)'}{score}")
            lines.append(f"last checkpoint: {checkpoint.last_model_path or '(none)'}")
        rank_zero_info("\n".join(lines))
        finish_loggers(self.trainer)

    def after_validate(self) -> None:
        finish_loggers(self.trainer)

    after_test = after_predict = after_validate


def default_callbacks() -> list:
    """Callbacks every run gets: the best `val/acc1` and `last` checkpoints, the LR, the predict CSV, and
    host-memory reuse on the CPU."""
    return [
        ModelCheckpoint(
            monitor="val/acc1",
            mode="max",
            save_last=True,
            filename="epoch{epoch:03d}-val_acc1_{val/acc1:.4f}",
            auto_insert_metric_name=False,
        ),
        LearningRateMonitor(logging_interval="step"),
        PredictionCSVWriter(),
        KeepHostMemory(),
    ]


def user_error_message(err: BaseException) -> str:
    """The message of the error that describes the problem: jsonargparse wraps errors raised while it
    instantiates a class (a missing data set, say) in its own; the original, raised by this package,
    is further down the chain."""
    package = Path(__file__).resolve().parent
    chain: BaseException | None = err
    while chain is not None:
        frames = traceback.extract_tb(chain.__traceback__)
        raised_here = bool(frames) and Path(frames[-1].filename).resolve().is_relative_to(package)
        if chain is not err and (type(chain).__module__.startswith("resnest_pl") or raised_here):
            return str(chain)
        chain = chain.__cause__ or chain.__context__
    return str(err)


def main(args: list[str] | None = None) -> None:
    """Run the CLI; a user error ends with one ``error:`` line and exit status 2 (set
    ``RESNEST_PL_DEBUG=1`` for the traceback)."""
    try:
        ResNeStCLI(
            ResNeStClassifier,
            ImageDataModule,
            subclass_mode_data=True,
            save_config_callback=LoggedConfigCallback,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={"callbacks": default_callbacks()},
            args=args,
        )
        # Lightning leaves the process group up; tearing it down here avoids gloo's threads aborting the
        # interpreter's exit ("terminate called without an active exception") after a finished DDP run.
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    except USER_ERRORS as err:
        if os.environ.get(DEBUG_ENV):
            raise
        print(f"error: {user_error_message(err)}", file=sys.stderr)
        raise SystemExit(2) from err


if __name__ == "__main__":
    main()
