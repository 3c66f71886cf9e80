"""Writing ``predict`` results as a CSV: path, top-5 class names and probabilities."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter
from pytorch_lightning.utilities.rank_zero import rank_zero_info

TOP_K = 5


class PredictionCSVWriter(BasePredictionWriter):
    """Collects ``predict_step`` outputs (``{"indices", "probs"}``) and writes one CSV row per image.

    Args:
        output: CSV path; ``None`` writes ``predictions.csv`` in ``trainer.default_root_dir``. Under
            several processes each rank writes ``<stem>.rank<N>.csv``.
        top_k: how many classes per image.
    """

    def __init__(self, output: str | None = None, top_k: int = TOP_K) -> None:
        super().__init__(write_interval="epoch")
        self.output = output
        self.top_k = top_k

    def path(self, trainer: pl.Trainer) -> Path:
        path = Path(self.output) if self.output else Path(trainer.default_root_dir) / "predictions.csv"
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        return path

    def write_on_epoch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        predictions: Any,
        batch_indices: Any,
    ) -> None:
        datamodule = trainer.datamodule
        files = datamodule.predict_files
        names = datamodule.class_names
        batches = predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        k = min(self.top_k, len(names))
        path = self.path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = 0
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            header = ["path"]
            for rank in range(1, k + 1):
                header += [f"top{rank}_class", f"top{rank}_prob"]
            writer.writerow(header)
            for batch in batches:
                probs, classes = torch.topk(batch["probs"], k, dim=1)
                for index, p_row, c_row in zip(
                    batch["indices"].tolist(), probs.tolist(), classes.tolist(), strict=True
                ):
                    row: list[object] = [files[index]]
                    for p, c in zip(p_row, c_row, strict=True):
                        row += [names[c], f"{p:.6f}"]
                    writer.writerow(row)
                    rows += 1
        rank_zero_info(f"wrote {rows} predictions to {path}")
