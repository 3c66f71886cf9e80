"""Per-class accuracy and the confusion matrix of a validate/test epoch: a CSV and a PNG in the run's log folder
(beside CSVLogger's ``metrics.csv``), and the figure in TensorBoard or wandb when those loggers are active.

The files hold the latest epoch (each validation overwrites them; in a fit the PNG is drawn at the last validation
only, see :func:`figure_due`); TensorBoard and wandb keep every epoch's figure.
Without a logger (``trainer.logger: false``) nothing is written.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from pytorch_lightning.trainer.states import TrainerFn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# ``class_metrics: null`` (the default) turns them on up to this many classes: CIFAR-100, not ImageNet.
AUTO_MAX_CLASSES = 100
# Above this many classes no figure is drawn (a 1000 x 1000 image says nothing); the CSV is still written.
FIGURE_MAX_CLASSES = 100
# Up to this many classes the figure names every class on its axes, and up to ANNOTATED_MAX_CLASSES it prints
# the counts in the cells.
LABELLED_MAX_CLASSES = 40
ANNOTATED_MAX_CLASSES = 20


def class_metrics_enabled(setting: bool | None, num_classes: int) -> bool:
    """Whether to compute per-class metrics: ``setting``, or when ``None``, whether there are at most
    :data:`AUTO_MAX_CLASSES` classes."""
    return num_classes <= AUTO_MAX_CLASSES if setting is None else setting


def class_metric_collection(num_classes: int) -> MetricCollection:
    """Per-class top-1 accuracy (the recall of each true class) and the confusion matrix (rows: true class,
    columns: predicted), synchronised across processes by torchmetrics at ``compute``."""
    return MetricCollection(
        {
            "accuracy": MulticlassAccuracy(num_classes, average=None),
            "confusion": MulticlassConfusionMatrix(num_classes),
        }
    )


def write_class_accuracy(path: Path, names: Sequence[str], accuracy: np.ndarray, confusion: np.ndarray) -> None:
    """One row per class: its accuracy, its number of samples, and the class it is most often mistaken for."""
    mistakes = confusion.copy()
    np.fill_diagonal(mistakes, 0)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class_index", "class", "accuracy", "support", "most_confused_with", "confused_count"])
        for index, name in enumerate(names):
            other = int(mistakes[index].argmax())
            count = int(mistakes[index, other])
            writer.writerow(
                [
                    index,
                    name,
                    f"{accuracy[index]:.6f}",
                    int(confusion[index].sum()),
                    names[other] if count else "",
                    count,
                ]
            )


def confusion_figure(confusion: np.ndarray, names: Sequence[str], title: str) -> Figure:
    """The confusion matrix as an image, each row divided by its class's sample count (1 on the diagonal is a
    perfect class). Drawn without pyplot, so no GUI backend or global figure state is involved."""
    from matplotlib.figure import Figure  # here: runs without class metrics skip matplotlib's import

    n = len(names)
    rates = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    side = min(4.0 + 0.2 * n, 24.0)
    figure = Figure(figsize=(side + 1.0, side), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(rates, vmin=0.0, vmax=1.0, cmap="Blues")
    figure.colorbar(image, ax=axes, label="share of the true class")
    axes.set(xlabel="predicted class", ylabel="true class", title=title)
    if n <= LABELLED_MAX_CLASSES:
        axes.set_xticks(range(n), names, rotation=90)
        axes.set_yticks(range(n), names)
    if n <= ANNOTATED_MAX_CLASSES:
        for (row, column), count in np.ndenumerate(confusion):
            if count:
                color = "white" if rates[row, column] > 0.5 else "black"
                axes.text(column, row, str(count), ha="center", va="center", color=color, fontsize=7)
    return figure


def figure_due(trainer: pl.Trainer) -> bool:
    """Whether this epoch's figure is drawn: always in validate / test, with a logger that keeps images
    (TensorBoard, wandb), and at a fit's last validation. A CSV-only fit would otherwise redraw the one PNG it
    keeps at every epoch, some 8 % of the quick start's time."""
    if trainer.state.fn != TrainerFn.FITTING:
        return True
    if any(isinstance(logger, (TensorBoardLogger, WandbLogger)) for logger in trainer.loggers):
        return True
    max_epochs = trainer.max_epochs if trainer.max_epochs is not None else -1
    last_epoch = 0 <= max_epochs <= trainer.current_epoch + 1
    last_step = 0 <= trainer.max_steps <= trainer.global_step
    return last_epoch or last_step or trainer.should_stop


def log_figure(loggers: Sequence[object], tag: str, figure: Figure, png: Path, step: int) -> None:
    """Send the figure to the TensorBoard and wandb loggers among ``loggers`` (others have no images)."""
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_figure(tag, figure, global_step=step, close=False)
        elif isinstance(logger, WandbLogger):
            logger.log_image(key=tag, images=[str(png)], step=step)  # wandb is imported by the logger, not here


def report_class_metrics(trainer: pl.Trainer, metrics: MetricCollection, stage: str, names: Sequence[str]) -> None:
    """At the end of a validate/test epoch, on every process: compute (across processes) and reset ``metrics``;
    rank zero writes ``<log dir>/<stage>_class_accuracy.csv`` and, up to :data:`FIGURE_MAX_CLASSES` classes
    and when :func:`figure_due`, ``<stage>_confusion_matrix.png``, and logs the figure. Nothing during the
    sanity check or without a logger."""
    # The same answer on every process (compute and log_dir are collectives): no per-process condition here.
    if trainer.sanity_checking or not trainer.loggers:
        metrics.reset()
        return
    values = metrics.compute()
    metrics.reset()
    folder = Path(trainer.log_dir or trainer.default_root_dir)  # on every rank: log_dir is a collective
    if not trainer.is_global_zero:
        return
    folder.mkdir(parents=True, exist_ok=True)
    accuracy, confusion = values["accuracy"].cpu().numpy(), values["confusion"].cpu().numpy()
    write_class_accuracy(folder / f"{stage}_class_accuracy.csv", names, accuracy, confusion)
    if len(names) <= FIGURE_MAX_CLASSES and figure_due(trainer):
        title = f"{stage} confusion matrix, epoch {trainer.current_epoch}, step {trainer.global_step}"
        figure = confusion_figure(confusion, names, title)
        png = folder / f"{stage}_confusion_matrix.png"
        figure.savefig(png, dpi=100)
        log_figure(trainer.loggers, f"{stage}/confusion_matrix", figure, png, trainer.global_step)
