"""Writing ``predict`` results as one CSV: path, top-5 class names and probabilities."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter
from pytorch_lightning.utilities.rank_zero import rank_zero_info

from ..training.evaluation import class_names_for

TOP_K = 5

# One image's result: dataset index, top-k probabilities, top-k class indices.
Row = tuple[int, list[float], list[int]]


class PredictionCSVWriter(BasePredictionWriter):
    """Collects ``predict_step`` outputs (``{"indices", "probs"}``) and writes one CSV row per image, in the
    order of the data module's ``predict_files``.

    Under several processes every rank sends its rows to rank 0, which writes the one file; an image that a
    distributed sampler gave to two ranks (padding to equal shares) is written once.

    Args:
        output: CSV path; ``None`` writes ``predictions.csv`` in ``trainer.default_root_dir``.
        top_k: how many classes per image.
    """

    def __init__(self, output: str | None = None, top_k: int = TOP_K) -> None:
        super().__init__(write_interval="epoch")
        self.output = output
        self.top_k = top_k

    def path(self, trainer: pl.Trainer) -> Path:
        return Path(self.output) if self.output else Path(trainer.default_root_dir) / "predictions.csv"

    def write_on_epoch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        predictions: Any,
        batch_indices: Any,
    ) -> None:
        batches = predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        num_classes = int(pl_module.hparams.num_classes)
        k = min(self.top_k, num_classes)
        rows: list[Row] = []
        for batch in batches:
            probs, classes = torch.topk(batch["probs"].float().cpu(), k, dim=1)
            rows += zip(batch["indices"].tolist(), probs.tolist(), classes.tolist(), strict=True)
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[list[Row]] | None = (
                [[] for _ in range(trainer.world_size)] if trainer.is_global_zero else None
            )
            torch.distributed.gather_object(rows, gathered, dst=0)
            if gathered is None:
                return
            rows = [row for rank_rows in gathered for row in rank_rows]
        unique = {index: (index, p, c) for index, p, c in reversed(rows)}  # first occurrence of each index wins
        self._write(trainer, pl_module, [unique[i] for i in sorted(unique)], k, num_classes)

    def _write(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, rows: list[Row], k: int, num_classes: int
    ) -> None:
        datamodule = trainer.datamodule
        files = datamodule.predict_files
        names = class_names_for(pl_module, datamodule, num_classes)
        path = self.path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            header = ["path"]
            for rank in range(1, k + 1):
                header += [f"top{rank}_class", f"top{rank}_prob"]
            writer.writerow(header)
            for index, p_row, c_row in rows:
                row: list[object] = [files[index]]
                for p, c in zip(p_row, c_row, strict=True):
                    row += [names[c], f"{p:.6f}"]
                writer.writerow(row)
        rank_zero_info(f"wrote {len(rows)} predictions to {path}")
