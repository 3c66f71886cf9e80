"""The callback that records a run's provenance (:mod:`resnest_pl.provenance`): ``provenance.json`` in the run
folder, the record in every checkpoint, and a warning when a checkpoint is evaluated on other data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities.rank_zero import rank_zero_warn

from ..models.weights import RUN_RECORD_KEY
from ..provenance import DIFF_NAME, FILE_NAME, code_state, data_differences, data_fingerprint, environment


class RecordProvenance(Callback):
    """Writes ``provenance.json`` (and ``code.diff``) into the run folder at setup (only with a logger, as the
    run folder is the logger's), adds the record to every
    checkpoint's run record, and warns in one line when a checkpoint evaluated on data other than it was trained
    on (another data fingerprint)."""

    def __init__(self) -> None:
        self.record: dict[str, Any] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        code, diff = code_state()
        self.record = {"code": code, "environment": environment(trainer), "data": data_fingerprint(trainer.datamodule)}
        folder = trainer.log_dir  # every rank asks: it broadcasts the folder
        if folder is None or not trainer.loggers or not trainer.is_global_zero:
            return
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / FILE_NAME).write_text(json.dumps(self.record, indent=2) + "\n")
        if diff:
            (Path(folder) / DIFF_NAME).write_text(diff)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if self.record is not None:
            checkpoint.setdefault(RUN_RECORD_KEY, {})["provenance"] = self.record

    def _compare(self, pl_module: pl.LightningModule) -> None:
        recorded = (getattr(pl_module, "loaded_provenance", None) or {}).get("data")
        differences = data_differences(recorded, (self.record or {}).get("data"))
        if differences:
            rank_zero_warn(
                f"the checkpoint was trained on other data than given here (differing: {', '.join(differences)}); "
                "its provenance.json or export config.json says which"
            )

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn != "fit":
            self._compare(pl_module)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._compare(pl_module)
