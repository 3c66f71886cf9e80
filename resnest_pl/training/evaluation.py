"""Evaluation: top-1 / top-5 accuracy, horizontal-flip test-time augmentation, the names of the classifier's
outputs, and the hookup of the per-class metrics (:mod:`resnest_pl.training.class_metrics`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from .class_metrics import class_metric_collection, class_metrics_enabled, report_class_metrics


def accuracy_metrics(num_classes: int, prefix: str) -> MetricCollection:
    """Top-1 and top-5 accuracy over all samples (top-k clipped to the number of classes)."""
    return MetricCollection(
        {
            "acc1": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
            "acc5": MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro"),
        },
        prefix=prefix,
    )


def hflip_logits(forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """Logits whose softmax is the mean of the softmax of ``images`` and of their mirror images: the log of that
    mean. Probabilities are averaged, not raw logits, so neither view dominates through its logit scale; as
    logits, the result serves the loss (the cross-entropy of the averaged prediction), the accuracy and
    ``predict``'s softmax unchanged. Two forward passes rather than one of twice the batch: no extra memory peak.
    """
    views = [forward(images).float(), forward(images.flip(-1)).float()]
    return torch.logsumexp(torch.stack([v.log_softmax(dim=-1) for v in views]), dim=0) - math.log(len(views))


def class_names_for(pl_module: pl.LightningModule, datamodule: Any, num_classes: int) -> list[str]:
    """Names of the model's outputs: those the checkpoint was trained with (``pl_module.class_names``), else
    the data module's, else the class indices."""
    for names in (getattr(pl_module, "class_names", None), getattr(datamodule, "class_names", None)):
        if names and len(names) == num_classes:
            return list(names)
    return [str(i) for i in range(num_classes)]


def per_class_metrics(setting: bool | None, num_classes: int) -> nn.ModuleDict | None:
    """Per-class accuracy and confusion matrix for ``val`` and ``test``, when ``setting`` turns them on
    (:func:`~resnest_pl.training.class_metrics.class_metrics_enabled`)."""
    if not class_metrics_enabled(setting, num_classes):
        return None
    return nn.ModuleDict({stage: class_metric_collection(num_classes) for stage in ("val", "test")})


def report_per_class(pl_module: pl.LightningModule, per_class: nn.ModuleDict, stage: str) -> None:
    """Write and log the epoch's per-class metrics of ``stage``, under the classes' names."""
    trainer = pl_module.trainer
    names = class_names_for(pl_module, trainer.datamodule, pl_module.hparams.num_classes)
    report_class_metrics(trainer, per_class[stage], stage, names)
